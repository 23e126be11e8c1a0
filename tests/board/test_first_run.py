"""`rkllm-mqtt run` as a new user meets it: which config file it read, then the runtime and the
model, all before any broker connection."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from rkllm_mqtt.broker import free_port
from rkllm_mqtt.config import DEFAULT_CONFIG_PATH
from rkllm_mqtt.exitcodes import EXIT_RUNTIME
from rkllm_mqtt.simulator import build_simulator

pytestmark = pytest.mark.timeout(60)


def run(*args: str, **env: str) -> subprocess.CompletedProcess[str]:
    # No broker listens on this port: a connection attempt would show as a retry line.
    environ = {k: v for k, v in os.environ.items() if not k.startswith("RKLLM_MQTT_")}
    environ |= {"RKLLM_MQTT_MQTT__PORT": str(free_port()), **env}
    return subprocess.run([sys.executable, "-m", "rkllm_mqtt", "run", *args], capture_output=True,
                          text=True, timeout=30, env=environ, check=False)


@pytest.mark.skipif(DEFAULT_CONFIG_PATH.exists(), reason=f"{DEFAULT_CONFIG_PATH} exists here")
def test_no_config_file_is_said_and_the_model_is_checked_before_the_broker() -> None:
    proc = run()
    assert proc.returncode == EXIT_RUNTIME
    lines = proc.stderr.splitlines()
    assert f"config: no config file ({DEFAULT_CONFIG_PATH} does not exist" in lines[0]
    assert lines[-1] == "rkllm-mqtt: runtime.model is not set (the path of the .rkllm model file)"
    assert "connect" not in proc.stderr and "broker" not in proc.stderr


def test_the_config_file_read_is_named(tmp_path: Path) -> None:
    config = tmp_path / "c.toml"
    config.write_text(f'[runtime]\nmodel = "{tmp_path}/missing.rkllm"\n', encoding="utf-8")
    proc = run("--config", str(config))
    assert proc.returncode == EXIT_RUNTIME
    assert f"config: read {config}" in proc.stderr
    assert proc.stderr.splitlines()[-1] == (
        f"rkllm-mqtt: model file not found: {tmp_path}/missing.rkllm (check runtime.model)")
    assert "broker" not in proc.stderr


def test_a_library_that_is_not_rkllm_stops_before_the_broker(tmp_path: Path) -> None:
    model = tmp_path / "m.rkllm"
    model.write_bytes(b"model")
    not_rkllm = tmp_path / "libnot.so"
    not_rkllm.write_bytes(b"not an ELF file")
    proc = run(RKLLM_MQTT_RUNTIME__MODEL=str(model), RKLLM_MQTT_RUNTIME__LIBRARY=str(not_rkllm))
    assert proc.returncode == EXIT_RUNTIME
    assert "runtime.library" in proc.stderr.splitlines()[-1] and "broker" not in proc.stderr


def test_a_good_runtime_goes_on_to_the_broker(tmp_path: Path) -> None:
    model = tmp_path / "m.rkllm"
    model.write_bytes(b"model")
    proc = subprocess.Popen(
        [sys.executable, "-m", "rkllm_mqtt", "run"], stderr=subprocess.PIPE, text=True,
        env={**os.environ, "RKLLM_MQTT_MQTT__PORT": str(free_port()),
             "RKLLM_MQTT_RUNTIME__MODEL": str(model),
             "RKLLM_MQTT_RUNTIME__LIBRARY": str(build_simulator("1.2"))})
    assert proc.stderr is not None
    try:
        seen = ""
        while "MQTT connect attempt" not in seen:
            line = proc.stderr.readline()
            assert line, seen
            seen += line
    finally:
        proc.terminate()
        proc.wait(timeout=20)
    assert "runtime.model" not in seen
