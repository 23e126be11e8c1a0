"""The command line: exit codes and one clear line for every expected failure, never a traceback."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from rkllm_mqtt.exitcodes import EXIT_FAILURE, EXIT_OK, EXIT_RUNTIME, EXIT_USAGE
from rkllm_mqtt.simulator import expected_answer


def run_cli(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "rkllm_mqtt", *args], capture_output=True,
                          text=True, timeout=60, env=env)


def config(tmp_path: Path, runtime: str) -> Path:
    path = tmp_path / "c.toml"
    path.write_text(f"[runtime]\n{runtime}\n", encoding="utf-8")
    return path


def assert_one_line_error(proc: subprocess.CompletedProcess[str], code: int, needle: str) -> None:
    assert proc.returncode == code, proc.stderr
    lines = [line for line in proc.stderr.splitlines() if line.startswith("rkllm-mqtt:")]
    assert len(lines) == 1 and needle in lines[0], proc.stderr
    assert "Traceback" not in proc.stderr


def test_missing_config_file_is_a_usage_error(tmp_path: Path) -> None:
    proc = run_cli("check", "--config", str(tmp_path / "absent.toml"))
    assert_one_line_error(proc, EXIT_USAGE, "absent.toml")


def test_invalid_value_names_the_key(tmp_path: Path) -> None:
    proc = run_cli("generate", "--config", str(config(tmp_path, "temperature = -3")), "hi")
    assert_one_line_error(proc, EXIT_USAGE, "runtime.temperature")


def test_missing_library_is_a_runtime_error(tmp_path: Path) -> None:
    cfg = config(tmp_path, f'library = "{tmp_path}/nope.so"\nabi = "1.2"\nmodel = "{tmp_path}/m"')
    proc = run_cli("check", "--config", str(cfg))
    assert_one_line_error(proc, EXIT_RUNTIME, "nope.so")


@pytest.mark.parametrize("abi", ["1.1", "1.3"])
def test_generate_prints_the_answer(tmp_path: Path, abi: str, sim_libraries: dict[str, Path],
                                    sim_model: Path) -> None:
    cfg = config(tmp_path, f'library = "{sim_libraries[abi]}"\nabi = "{abi}"\n'
                           f'model = "{sim_model}"')
    proc = run_cli("generate", "--config", str(cfg), "Grüße aus der Küche")
    assert proc.returncode == EXIT_OK, proc.stderr
    assert proc.stdout.rstrip("\n") == expected_answer("Grüße aus der Küche")
    assert "Traceback" not in proc.stderr


def test_help_lists_every_command() -> None:
    proc = run_cli("--help")
    assert proc.returncode == EXIT_OK
    for command in ("run", "check", "generate", "ask", "demo", "discovery"):
        assert command in proc.stdout


def test_sigterm_ends_generate_like_ctrl_c(tmp_path: Path, sim_library: Path,
                                           sim_model: Path) -> None:
    cfg = config(tmp_path, f'library = "{sim_library}"\nabi = "1.2"\n'
                           f'model = "{sim_model}"')
    proc = subprocess.Popen([sys.executable, "-m", "rkllm_mqtt", "generate", "--config", str(cfg),
                             "[sim:hang] forever"], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True)
    assert proc.stdout is not None
    proc.stdout.read(3)  # the first token arrived: the run is inside the library
    proc.send_signal(signal.SIGTERM)
    try:
        proc.wait(timeout=30)
    finally:
        proc.kill()
    assert proc.returncode == 130
    assert "Traceback" not in proc.stderr.read()


def test_ask_without_a_broker_is_a_failed_question_not_a_runtime_error() -> None:
    from rkllm_mqtt.broker import free_port

    env = {**os.environ, "RKLLM_MQTT_MQTT__PORT": str(free_port())}
    proc = run_cli("ask", "--timeout", "5", "hello", env=env)
    assert_one_line_error(proc, EXIT_FAILURE, "")
