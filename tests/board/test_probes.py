"""Each finding of `check` from fixture files standing in for /proc, /sys and /dev."""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from rkllm_mqtt.board import probes
from rkllm_mqtt.board.access import User, can_open
from rkllm_mqtt.board.findings import Status, exit_code, fail, ok, warn
from rkllm_mqtt.board.initprobe import InitReport
from rkllm_mqtt.board.modelfile import read_model

Make = Callable[[], Any]  # conftest.FakeBoard
NOBODY = User("nobody", 65534, frozenset({65534}))


def init_log(text: str, ok: bool = True, max_context_len: int | None = 4096) -> InitReport:
    return InitReport(ok, None if ok else "rkllm_init failed", text, max_context_len)


def test_soc_is_read_from_the_device_tree(fake_board: Make) -> None:
    board = fake_board().rk3588().board
    assert board.soc() == "RK3588"
    finding = probes.soc(board, "RK3588")
    assert finding.status is Status.OK and "RK3588" in finding.message


def test_a_model_for_another_platform_fails_with_the_fix(fake_board: Make) -> None:
    finding = probes.soc(fake_board().rk3588().board, "RK3576")
    assert finding.status is Status.FAIL
    assert "RK3576" in finding.message and "target_platform='rk3588'" in (finding.fix or "")


def test_no_device_tree_is_a_warning_not_a_failure(fake_board: Make) -> None:
    assert probes.soc(fake_board().board, None).status is Status.WARN


def test_another_vendor_is_a_warning(fake_board: Make) -> None:
    fb = fake_board()
    fb.write("/proc/device-tree/compatible", "raspberrypi,5-model-b\0brcm,bcm2712\0")
    finding = probes.soc(fb.board, None)
    assert finding.status is Status.WARN and "brcm,bcm2712" in finding.message


@pytest.mark.parametrize(("text", "status"), [
    ("RKNPU driver: v0.9.8\n", Status.OK),
    ("RKNPU driver: v0.9.6\n", Status.FAIL),
    ("RKNPU driver: v0.10.1\n", Status.OK),
])
def test_npu_driver_version_from_debugfs(fake_board: Make, text: str, status: Status) -> None:
    finding = probes.npu_driver(fake_board().rk3588(driver=text).board, None)
    assert finding.status is status
    if status is Status.FAIL:
        assert "#156" in finding.message and "0.9.8" in finding.message


def test_npu_driver_version_from_the_runtime_log_when_debugfs_is_closed(fake_board: Make) -> None:
    board = fake_board().rk3588(driver="").board
    said = "I rkllm: rkllm-runtime version: 1.2.3, rknpu driver version: 0.9.7, platform: RK3588\n"
    finding = probes.npu_driver(board, init_log(said))
    assert finding.status is Status.FAIL and "0.9.7" in finding.message and "init log" in finding.message
    assert probes.npu_driver(board, None).status is Status.WARN


def test_npu_node_the_service_user_cannot_open_fails(fake_board: Make) -> None:
    board = fake_board().rk3588(node_mode=0o600).board
    finding = probes.npu_access(board, NOBODY)
    assert finding.status is Status.FAIL
    assert "nobody cannot open rknpu" in finding.message and "usermod -aG render" in (finding.fix or "")


def test_npu_node_open_to_the_service_user_is_ok(fake_board: Make) -> None:
    finding = probes.npu_access(fake_board().rk3588(node_mode=0o666).board, NOBODY)
    assert finding.status is Status.OK and "/dev/rknpu" in finding.message


def test_the_rknpu_render_node_is_found_through_sysfs(fake_board: Make) -> None:
    fb = fake_board()
    fb.write("/proc/device-tree/compatible", "rockchip,rk3588\0")
    fb.write("/sys/class/drm/renderD129/device/uevent", "DRIVER=RKNPU\nOF_NAME=npu\n")
    fb.write("/sys/class/drm/renderD128/device/uevent", "DRIVER=panfrost\n")
    fb.write("/dev/dri/renderD128", "", 0o666)
    fb.write("/dev/dri/renderD129", "", 0o600)
    finding = probes.npu_access(fb.board, NOBODY)
    assert finding.status is Status.FAIL and "renderD129" in finding.message
    assert "renderD128" not in finding.message


def test_a_rockchip_board_without_an_npu_node_fails(fake_board: Make) -> None:
    fb = fake_board()
    fb.write("/proc/device-tree/compatible", "rockchip,rk3588\0")
    assert probes.npu_access(fb.board, NOBODY).status is Status.FAIL


def test_sve_build_of_1_3_on_a_cpu_without_sve_fails(fake_board: Make) -> None:
    board = fake_board().rk3588().board
    finding = probes.cpu(board, "1.3.0")
    assert finding.status is Status.FAIL
    assert "Illegal instruction" in finding.message and "#518" in finding.message
    assert "release-v1.2.3" in (finding.fix or "")
    assert probes.cpu(board, "1.2.3").status is Status.OK


def test_a_cpu_with_sve_runs_1_3(fake_board: Make) -> None:
    fb = fake_board()
    fb.write("/proc/cpuinfo", "processor\t: 0\nFeatures\t: fp asimd sve sve2\n")
    assert probes.cpu(fb.board, "1.3.0").status is Status.OK


def test_not_an_arm_cpu_is_a_warning(fake_board: Make) -> None:
    fb = fake_board()
    fb.write("/proc/cpuinfo", "processor\t: 0\nflags\t\t: fpu sse2 avx2\n")
    assert probes.cpu(fb.board, "1.3.0").status is Status.WARN


def test_powersave_governors_warn_with_the_fix_freq_hint(fake_board: Make) -> None:
    board = fake_board().rk3588(governor="powersave").board
    for finding in (probes.cpu_governor(board), probes.npu_governor(board)):
        assert finding.status is Status.WARN and "powersave" in finding.message
        assert "performance" in (finding.fix or "") and "fix_freq_rk3588.sh" in (finding.fix or "")


@pytest.mark.parametrize("governor", ["performance", "userspace"])
def test_pinned_governors_are_ok(fake_board: Make, governor: str) -> None:
    board = fake_board().rk3588(governor=governor).board
    assert probes.cpu_governor(board).status is Status.OK
    finding = probes.npu_governor(board)
    assert finding.status is Status.OK and "fdab0000.npu" in finding.message


@pytest.mark.parametrize(("mem_kib", "status"), [
    (1_000_000, Status.FAIL), (2_000_000, Status.WARN), (4_000_000, Status.OK)])
def test_free_memory_against_the_model_size(fake_board: Make, mem_kib: int, status: Status) -> None:
    board = fake_board().rk3588(mem_kib=mem_kib).board
    assert probes.memory(board, 1800 * 2**20).status is status


def test_context_above_the_models_limit_fails() -> None:
    said = "I rkllm: rkllm-toolkit version: 1.2.3, max_context_limit: 4096, npu_core_num: 3\n"
    finding = probes.context(8192, init_log(said))
    assert finding.status is Status.FAIL and "4096" in (finding.fix or "")
    assert probes.context(4096, init_log(said)).status is Status.OK
    failed = "E rkllm: max_context[16384] must be less than the model's max_context_limit[4096]\n"
    assert init_log(failed, ok=False).max_context_limit == 4096
    assert probes.context(None, init_log(said, max_context_len=2048)).status is Status.OK


def test_model_header_platform_and_toolkit(tmp_path: Path) -> None:
    model = tmp_path / "Qwen-rk3588-w8a8.rkllm"
    model.write_bytes(b"\0" * 64 + b"rkllm-toolkit version: 1.2.1 target_platform rk3576 " + b"\0" * 4096)
    info = read_model(model)
    assert (info.platform, info.platform_from, info.toolkit_version) == ("RK3576", "file header", "1.2.1")
    plain = tmp_path / "Qwen-rk3588-w8a8.rkllm2"
    plain.write_bytes(b"\0" * 128)
    assert (read_model(plain).platform, read_model(plain).platform_from) == ("RK3588", "file name")
    finding = probes.model(str(model), User.current(), info, None)
    assert finding.status is Status.OK and "RK3576" in finding.message and "1.2.1" in finding.message


def test_model_unreadable_by_the_service_user_fails(tmp_path: Path) -> None:
    model = tmp_path / "m.rkllm"
    model.write_bytes(b"x")
    model.chmod(0o600)
    finding = probes.model(str(model), NOBODY, None, None)
    assert finding.status is Status.FAIL and "nobody cannot read" in finding.message
    assert probes.model(None, NOBODY, None, None).message.startswith("runtime.model is not set")


def test_access_needs_search_permission_on_every_directory(tmp_path: Path) -> None:
    closed = tmp_path / "closed"
    closed.mkdir()
    target = closed / "lib.so"
    target.write_bytes(b"x")
    target.chmod(0o644)
    tmp_path.chmod(0o755)
    closed.chmod(0o700)
    assert not can_open(NOBODY, target, below=tmp_path)
    closed.chmod(0o711)
    assert can_open(NOBODY, target, below=tmp_path)
    assert not can_open(NOBODY, target, "rw", below=tmp_path)
    if os.getuid() != 0:
        assert can_open(User.current(), target)


def test_a_build_without_the_c_handoff_warns_with_the_fix() -> None:
    found = probes.callback(False)
    assert found.status is Status.WARN
    assert found.fix is not None and "gcc" in found.fix and "REINSTALL=yes" in found.fix
    assert probes.callback(True).status is Status.OK


def test_exit_code_is_non_zero_on_any_fail() -> None:
    assert exit_code([ok("a", "x"), warn("b", "y")]) == 0
    assert exit_code([ok("a", "x"), fail("broker", "down")]) == 1
    assert exit_code([fail("broker", "down"), fail("library", "missing")]) == 3
