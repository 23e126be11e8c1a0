"""`rkllm-mqtt check` end to end: the console command on the real simulator, a fake board root and
a real broker."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from rkllm_mqtt.broker import Broker, find_mosquitto, free_port, start_broker
from rkllm_mqtt.exitcodes import EXIT_FAILURE, EXIT_OK, EXIT_RUNTIME
from rkllm_mqtt.simulator import build_simulator, sim_model_file
from rkllm_mqtt.simulator.build import SOURCE, find_compiler

pytestmark = pytest.mark.timeout(120)


@pytest.fixture(scope="module")
def mqtt_broker() -> Iterator[Broker]:
    with start_broker() as broker:
        yield broker


@pytest.fixture(scope="module")
def sim(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    cache = tmp_path_factory.mktemp("board-sim")
    return {"1.2": build_simulator("1.2", cache_dir=cache), "1.3": build_simulator("1.3", cache_dir=cache),
            "model": sim_model_file(cache)}


def check(tmp_path: Path, broker_port: int, library: Path, model: Path, *args: str,
          extra: str = "", env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    config = tmp_path / "config.toml"
    config.write_text(f'[mqtt]\nhost = "127.0.0.1"\nport = {broker_port}\n{extra}\n'
                      f'[runtime]\nlibrary = "{library}"\nmodel = "{model}"\nmax_context_len = 4096\n',
                      encoding="utf-8")
    return subprocess.run(
        [sys.executable, "-m", "rkllm_mqtt", "check", "--config", str(config), *args],
        capture_output=True, text=True, timeout=90, env={**os.environ, **(env or {})}, check=False,
    )


def by_name(proc: subprocess.CompletedProcess[str]) -> dict[str, dict[str, Any]]:
    report = json.loads(proc.stdout)
    return {item["name"]: item for item in report["findings"]}


def test_a_good_board_passes_with_one_line_per_finding(
    tmp_path: Path, fake_board: Callable[[], Any], mqtt_broker: Broker, sim: dict[str, Path]
) -> None:
    root = fake_board().rk3588().root
    proc = check(tmp_path, mqtt_broker.port, sim["1.2"], sim["model"], "--root", str(root))
    assert proc.returncode == EXIT_OK, proc.stdout + proc.stderr
    lines = proc.stdout.splitlines()
    names = [line.split()[1].rstrip(":") for line in lines]
    assert names == ["config", "soc", "npu-driver", "npu-access", "library", "callback", "cpu", "model",
                     "context", "rkllm_init", "cpu-governor", "npu-governor", "memory", "broker"]
    assert all(line.split()[0] in ("OK", "WARN") for line in lines)
    assert "OK   soc: RK3588, the model's target platform" in proc.stdout
    assert "OK   callback: token hand-off in C" in proc.stdout  # this checkout built it
    assert "within the model's limit of 4096" in proc.stdout
    assert "I rkllm:" not in proc.stdout  # the runtime's own lines stay out of the report


def test_json_gives_the_same_findings(
    tmp_path: Path, fake_board: Callable[[], Any], mqtt_broker: Broker, sim: dict[str, Path]
) -> None:
    root = fake_board().rk3588(governor="powersave").root
    proc = check(tmp_path, mqtt_broker.port, sim["1.2"], sim["model"], "--root", str(root), "--json")
    assert proc.returncode == EXIT_OK, proc.stderr
    found = by_name(proc)
    assert found["cpu-governor"]["status"] == "WARN" and "fix_freq" in found["cpu-governor"]["fix"]
    assert found["library"]["status"] == "OK" and "ABI family 1.2" in found["library"]["message"]
    assert json.loads(proc.stdout)["ok"] is True


def test_a_library_the_service_user_cannot_read_fails(
    tmp_path: Path, fake_board: Callable[[], Any], mqtt_broker: Broker, sim: dict[str, Path]
) -> None:
    private = tmp_path / "librkllmrt.so"
    private.write_bytes(sim["1.2"].read_bytes())
    private.chmod(0o600)
    root = fake_board().rk3588().root
    proc = check(tmp_path, mqtt_broker.port, private, sim["model"], "--root", str(root),
                 "--user", "nobody")
    assert proc.returncode == EXIT_RUNTIME, proc.stdout + proc.stderr
    assert f"FAIL library: nobody cannot read {private}" in proc.stdout
    assert "chmod 0644" in proc.stdout


def test_the_sve_build_on_rk3588_fails_before_it_can_crash(
    tmp_path: Path, fake_board: Callable[[], Any], mqtt_broker: Broker, sim: dict[str, Path]
) -> None:
    root = fake_board().rk3588().root
    proc = check(tmp_path, mqtt_broker.port, sim["1.3"], sim["model"], "--root", str(root), "--json")
    assert proc.returncode == EXIT_RUNTIME
    cpu = by_name(proc)["cpu"]
    assert cpu["status"] == "FAIL" and "#518" in cpu["message"]


def test_the_context_above_the_models_limit_fails(
    tmp_path: Path, fake_board: Callable[[], Any], mqtt_broker: Broker, sim: dict[str, Path]
) -> None:
    root = fake_board().rk3588().root
    proc = check(tmp_path, mqtt_broker.port, sim["1.2"], sim["model"], "--root", str(root), "--json",
                 env={"RKLLM_SIM_MODEL_MAX_CONTEXT": "2048"})
    assert proc.returncode == EXIT_RUNTIME
    context = by_name(proc)["context"]
    assert context["status"] == "FAIL" and context["fix"] == "set runtime.max_context_len to 2048 or less"


def test_an_unreachable_broker_fails_with_exit_1(
    tmp_path: Path, fake_board: Callable[[], Any], sim: dict[str, Path]
) -> None:
    root = fake_board().rk3588().root
    proc = check(tmp_path, free_port(), sim["1.2"], sim["model"], "--root", str(root))
    assert proc.returncode == EXIT_FAILURE, proc.stdout + proc.stderr
    assert proc.stdout.splitlines()[-1].startswith("FAIL broker: 127.0.0.1:")


def test_wrong_credentials_fail_the_broker_finding(
    tmp_path: Path, fake_board: Callable[[], Any], sim: dict[str, Path]
) -> None:
    if find_mosquitto() is None:
        pytest.skip("the mosquitto binary is not installed")
    root = fake_board().rk3588().root
    with start_broker(prefer="mosquitto", users={"rkllm": "right"}) as broker:
        proc = check(tmp_path, broker.port, sim["1.2"], sim["model"], "--root", str(root), "--json",
                     extra='username = "rkllm"\npassword = "wrong"')
    assert proc.returncode == EXIT_FAILURE
    found = by_name(proc)["broker"]
    assert found["status"] == "FAIL" and "user rkllm" in found["message"]


def test_a_missing_model_fails_without_trying_init(
    tmp_path: Path, fake_board: Callable[[], Any], mqtt_broker: Broker, sim: dict[str, Path]
) -> None:
    root = fake_board().rk3588().root
    proc = check(tmp_path, mqtt_broker.port, sim["1.2"], tmp_path / "absent.rkllm", "--root", str(root))
    assert proc.returncode == EXIT_RUNTIME
    assert f"FAIL model: model file not found: {tmp_path / 'absent.rkllm'}" in proc.stdout
    assert "rkllm_init" not in proc.stdout


@pytest.fixture(scope="module")
def trapping_library(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The 1.2 simulator whose rkllm_init executes an illegal instruction, as the SVE build of
    1.3.0 does on RK3588 (rknn-llm #518)."""
    work = tmp_path_factory.mktemp("trap")
    (work / "trap.c").write_text(
        f'#define rkllm_init rkllm_init_untrapped\n#include "{SOURCE}"\n#undef rkllm_init\n'
        "int rkllm_init(void *handle, void *param, void *callback) {\n"
        "    (void)handle; (void)param; (void)callback;\n    __builtin_trap();\n}\n",
        encoding="utf-8")
    library = work / "librkllmrt.so"
    subprocess.run([*find_compiler(), "-std=gnu11", "-DRKLLM_SIM_ABI=12", "-fPIC", "-shared", "-O2",
                    "-pthread", "-o", str(library), str(work / "trap.c")], check=True, timeout=120)
    return library


def test_a_runtime_that_crashes_in_init_is_a_finding_not_a_crash(
    tmp_path: Path, fake_board: Callable[[], Any], mqtt_broker: Broker, sim: dict[str, Path],
    trapping_library: Path,
) -> None:
    root = fake_board().rk3588().root
    proc = check(tmp_path, mqtt_broker.port, trapping_library, sim["model"], "--root", str(root))
    assert proc.returncode == EXIT_RUNTIME, proc.stdout + proc.stderr
    assert "FAIL rkllm_init: rkllm_init crashed with SIGILL (Illegal instruction)" in proc.stdout
    # the configured context is still known (reported before rkllm_init), the limit is not
    assert "WARN context: max_context_len 4096; the runtime did not report" in proc.stdout
    assert proc.stdout.splitlines()[-1].startswith("OK   broker: connected")
