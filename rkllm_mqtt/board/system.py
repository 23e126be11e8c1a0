"""What the kernel says about this board, read from files below a root that tests can replace.

Each reader returns None (or nothing) when its file is missing or unreadable: a finding decides
what that means, because a container or a non-root user legitimately sees less.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

# Device-tree "compatible" SoC names -> the target_platform rkllm-toolkit converts for.
SOCS = {"rk3588": "RK3588", "rk3588s": "RK3588", "rk3576": "RK3576", "rk3562": "RK3562",
        "rv1126b": "RV1126B"}
_VERSION = re.compile(r"(\d+)\.(\d+)\.(\d+)")


def _read(path: Path) -> str | None:
    try:
        return path.read_text(encoding="utf-8", errors="replace")
    except OSError:
        return None


def version_tuple(text: str) -> tuple[int, int, int] | None:
    match = _VERSION.search(text)
    return (int(match[1]), int(match[2]), int(match[3])) if match else None


@dataclass(frozen=True)
class Board:
    """The files of one machine; `root` is "/" except in tests and diagnostics of an image."""

    root: Path = Path("/")

    def path(self, absolute: str) -> Path:
        return self.root / absolute.lstrip("/")

    def compatible(self) -> list[str] | None:
        """The device tree's compatible strings, e.g. ["radxa,rock-5b", "rockchip,rk3588"]."""
        text = _read(self.path("/proc/device-tree/compatible"))
        return None if text is None else [part for part in text.split("\0") if part]

    def soc(self) -> str | None:
        """The target_platform name of this SoC ("RK3588"), from the compatible strings."""
        for entry in self.compatible() or ():
            vendor, _, chip = entry.partition(",")
            if vendor == "rockchip" and chip in SOCS:
                return SOCS[chip]
        return None

    def npu_driver_version(self) -> str | None:
        """"0.9.8" from debugfs ("RKNPU driver: v0.9.8"); debugfs is readable by root only."""
        text = _read(self.path("/sys/kernel/debug/rknpu/version"))
        version = version_tuple(text) if text else None
        return ".".join(map(str, version)) if version else None

    def cpu_features(self) -> set[str] | None:
        """The aarch64 "Features" flags of /proc/cpuinfo; None when it has none (not an Arm CPU)."""
        text = _read(self.path("/proc/cpuinfo"))
        if text is None:
            return None
        flags: set[str] | None = None
        for line in text.splitlines():
            key, _, value = line.partition(":")
            if key.strip() == "Features":
                flags = (flags or set()) | set(value.split())
        return flags

    def mem_available(self) -> int | None:
        """MemAvailable of /proc/meminfo in bytes."""
        for line in (_read(self.path("/proc/meminfo")) or "").splitlines():
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024
        return None

    def cpu_governors(self) -> dict[str, str]:
        """{"policy0": "schedutil", ...} for every cpufreq policy."""
        base = self.path("/sys/devices/system/cpu/cpufreq")
        found = {}
        for policy in sorted(base.glob("policy*")):
            governor = _read(policy / "scaling_governor")
            if governor is not None:
                found[policy.name] = governor.strip()
        return found

    def npu_governors(self) -> dict[str, str]:
        """{"fdab0000.npu": "simple_ondemand"} for the NPU's devfreq device."""
        found = {}
        for device in sorted(self.path("/sys/class/devfreq").glob("*npu*")):
            governor = _read(device / "governor")
            if governor is not None:
                found[device.name] = governor.strip()
        return found

    def npu_nodes(self) -> list[Path]:
        """The NPU's device nodes: /dev/rknpu (vendor kernels) or the rknpu DRM render node."""
        nodes = []
        misc = self.path("/dev/rknpu")
        if misc.exists():
            nodes.append(misc)
        for card in sorted(self.path("/sys/class/drm").glob("renderD*")):
            driver = (card / "device" / "driver").resolve().name
            uevent = _read(card / "device" / "uevent") or ""
            if "rknpu" in driver.lower() or "driver=rknpu" in uevent.lower():
                node = self.path(f"/dev/dri/{card.name}")
                if node.exists():
                    nodes.append(node)
        return nodes
