"""The release artifacts and the installer: `make dist` output passes `twine check`, and
scripts/install.sh installs into a temporary root, idempotently, and uninstalls what it added."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

from rkllm_mqtt import __version__

REPO = Path(__file__).resolve().parent.parent
pytestmark = pytest.mark.timeout(300)


def _wheel(dist: Path) -> Path:
    """The wheel for this machine: the C token hand-off makes it platform-specific (abi3)."""
    wheels = list(dist.glob(f"rkllm_mqtt-{__version__}-cp311-abi3-linux_*.whl"))
    assert len(wheels) == 1, sorted(p.name for p in dist.iterdir())
    return wheels[0]


@pytest.fixture(scope="module")
def dist(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("dist")
    subprocess.run([sys.executable, "-m", "build", "--no-isolation", "--outdir", str(out), str(REPO)],
                   check=True, capture_output=True, timeout=240)
    return out


def test_dist_passes_twine_check_and_ships_the_license(dist: Path) -> None:
    wheel = _wheel(dist)
    sdist = dist / f"rkllm_mqtt-{__version__}.tar.gz"
    proc = subprocess.run([sys.executable, "-m", "twine", "check", "--strict", str(wheel), str(sdist)],
                          capture_output=True, text=True, timeout=120, check=False)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    with zipfile.ZipFile(wheel) as zf:
        names = zf.namelist()
        metadata = zf.read(f"rkllm_mqtt-{__version__}.dist-info/METADATA").decode()
    assert any(name.endswith("licenses/LICENSE") for name in names)
    assert "License-Expression: Apache-2.0" in metadata
    assert "Classifier: Operating System :: POSIX :: Linux" in metadata
    assert "rkllm_mqtt/simulator/rkllm_sim.c" in names
    assert "rkllm_mqtt/runtime/_handoff.abi3.so" in names  # built, not left to the Python callback
    listing = subprocess.run(["tar", "tzf", str(sdist)], capture_output=True, text=True,
                             check=True).stdout
    for kit in ("rkllm_mqtt/runtime/handoff.c", "scripts/install.sh", "systemd/rkllm-mqtt.service",
                "systemd/99-rknpu.rules", "config/rkllm-mqtt.example.toml"):
        assert f"rkllm_mqtt-{__version__}/{kit}" in listing


def _seed_root(root: Path) -> None:
    """The account files useradd --root edits, as a fresh system has them."""
    etc = root / "etc"
    etc.mkdir(parents=True)
    (etc / "passwd").write_text("root:x:0:0:root:/root:/bin/sh\n")
    (etc / "group").write_text("root:x:0:\nvideo:x:44:\n")
    (etc / "shadow").write_text("root:*:19000:0:99999:7:::\n")
    (etc / "gshadow").write_text("root:*::\nvideo:!::\n")
    for name in ("shadow", "gshadow"):
        (etc / name).chmod(0o640)


def _install(root: Path, wheel: Path, *args: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "DESTDIR": str(root), "SYSTEMD": "no", "WHEEL": str(wheel),
           "PYTHON": sys.executable, "PIP_ARGS": "--no-deps --no-index"}
    return subprocess.run(["sh", str(REPO / "scripts" / "install.sh"), *args], capture_output=True,
                          text=True, env=env, timeout=240, check=False)


def _tree(root: Path) -> dict[str, tuple[int, float]]:
    return {str(p.relative_to(root)): (p.lstat().st_mode, p.lstat().st_mtime)
            for p in root.rglob("*") if "venv" not in p.parts}


@pytest.mark.skipif(os.geteuid() != 0 or shutil.which("useradd") is None,
                    reason="the installer test needs root and useradd (it runs useradd --root)")
def test_installer_into_a_temporary_root(dist: Path, tmp_path: Path) -> None:
    root = tmp_path / "root"
    _seed_root(root)
    (root / "dev").mkdir()
    (root / "dev" / "rknpu").touch()
    os.chown(root / "dev" / "rknpu", 0, 44)  # a vendor kernel that gave the node to "video"
    wheel = _wheel(dist)

    first = _install(root, wheel)
    assert first.returncode == 0, first.stdout + first.stderr
    steps = first.stdout.splitlines()
    assert "user: created system user rkllm (groups: render,video)" in steps
    assert "config: installed /etc/rkllm-mqtt/config.toml from the example" in first.stdout
    assert "systemd: skipped (SYSTEMD=no)" in steps
    assert steps[-1].startswith("done: ") and "changes" in steps[-1]
    passwd = (root / "etc" / "passwd").read_text()
    assert "rkllm:" in passwd and "/usr/sbin/nologin" in passwd
    group = (root / "etc" / "group").read_text()
    assert any(line.startswith("render:") and line.endswith(":rkllm") for line in group.splitlines())
    assert any(line.startswith("video:") and line.endswith(":rkllm") for line in group.splitlines())
    config = root / "etc" / "rkllm-mqtt" / "config.toml"
    assert config.read_text() == (REPO / "config" / "rkllm-mqtt.example.toml").read_text()
    assert config.stat().st_mode & 0o777 == 0o640
    unit = (root / "etc" / "systemd" / "system" / "rkllm-mqtt.service").read_text()
    assert "ExecStart=/opt/rkllm-mqtt/venv/bin/rkllm-mqtt run --config /etc/rkllm-mqtt/config.toml" in unit
    assert (root / "etc" / "udev" / "rules.d" / "99-rknpu.rules").read_text() == (
        REPO / "systemd" / "99-rknpu.rules").read_text()
    venv_cli = root / "opt" / "rkllm-mqtt" / "venv" / "bin" / "rkllm-mqtt"
    assert venv_cli.exists()
    assert os.readlink(root / "usr" / "local" / "bin" / "rkllm-mqtt") == "/opt/rkllm-mqtt/venv/bin/rkllm-mqtt"

    config.write_text("# edited by the user\n")
    before = _tree(root)
    second = _install(root, wheel)
    assert second.returncode == 0, second.stderr
    assert second.stdout.splitlines()[-1] == "done: nothing changed"
    assert "config: /etc/rkllm-mqtt/config.toml exists (kept)" in second.stdout
    assert _tree(root) == before
    assert config.read_text() == "# edited by the user\n"

    removed = _install(root, wheel, "uninstall")
    assert removed.returncode == 0, removed.stderr
    assert "config: /etc/rkllm-mqtt/config.toml kept" in removed.stdout
    assert config.read_text() == "# edited by the user\n"
    assert not (root / "opt" / "rkllm-mqtt").exists()
    assert not (root / "etc" / "systemd" / "system" / "rkllm-mqtt.service").exists()
    assert not (root / "etc" / "udev" / "rules.d" / "99-rknpu.rules").exists()
    assert "rkllm:" not in (root / "etc" / "passwd").read_text()
    assert "render:" not in (root / "etc" / "group").read_text()
    assert "video:x:44:" in (root / "etc" / "group").read_text()  # not ours: kept
    again = _install(root, wheel, "uninstall")
    assert again.stdout.splitlines()[-1] == "done: nothing to remove"
