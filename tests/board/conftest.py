"""A fake board: files standing in for /proc, /sys and /dev below a temporary root."""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path

import pytest

from rkllm_mqtt.board.system import Board

RK3588_CPUINFO = """processor\t: 0
BogoMIPS\t: 48.00
Features\t: fp asimd evtstrm aes pmull sha1 sha2 crc32 atomics fphp asimdhp cpuid asimdrdm lrcpc dcpop asimddp
CPU implementer\t: 0x41
CPU part\t: 0xd05

processor\t: 4
Features\t: fp asimd evtstrm aes pmull sha1 sha2 crc32 atomics fphp asimdhp cpuid asimdrdm lrcpc dcpop asimddp
CPU part\t: 0xd0b
"""


class FakeBoard:
    def __init__(self, root: Path) -> None:
        self.root = root
        self.board = Board(root)

    def write(self, absolute: str, text: str, mode: int | None = None) -> Path:
        path = self.root / absolute.lstrip("/")
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text, encoding="utf-8")
        if mode is not None:
            os.chmod(path, mode)
        return path

    def rk3588(self, *, driver: str = "RKNPU driver: v0.9.8\n", governor: str = "performance",
               node_mode: int = 0o666, mem_kib: int = 7_800_000) -> FakeBoard:
        """An RK3588 board as a vendor kernel shows it."""
        self.write("/proc/device-tree/compatible", "radxa,rock-5b\0rockchip,rk3588\0")
        self.write("/proc/cpuinfo", RK3588_CPUINFO)
        self.write("/proc/meminfo", f"MemTotal: 8000000 kB\nMemAvailable: {mem_kib} kB\n")
        if driver:
            self.write("/sys/kernel/debug/rknpu/version", driver)
        for policy in ("policy0", "policy4", "policy6"):
            self.write(f"/sys/devices/system/cpu/cpufreq/{policy}/scaling_governor", governor + "\n")
        self.write("/sys/class/devfreq/fdab0000.npu/governor", governor + "\n")
        self.write("/dev/rknpu", "", node_mode)
        return self


@pytest.fixture
def fake_board(tmp_path: Path) -> Callable[[], FakeBoard]:
    def make() -> FakeBoard:
        root = tmp_path / f"root{len(list(tmp_path.glob('root*')))}"
        root.mkdir()
        return FakeBoard(root)

    return make
