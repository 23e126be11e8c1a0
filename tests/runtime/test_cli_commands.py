"""`rkllm-mqtt check` and `rkllm-mqtt generate` against the simulator."""

from __future__ import annotations

import io
import os
import subprocess
import sys
from pathlib import Path

import pytest

from rkllm_mqtt.commands.runtime import check, generate
from rkllm_mqtt.config import RuntimeSettings, Settings
from rkllm_mqtt.simulator import expected_answer

pytestmark = pytest.mark.timeout(120)


def settings(library: Path | str, model: Path | str, **runtime: object) -> Settings:
    return Settings(runtime=RuntimeSettings(library=str(library), model=str(model), **runtime))


def test_generate_streams_the_answer_to_stdout(
    sim_libraries: dict[str, Path], sim_model: Path, family: str
) -> None:
    out, err = io.StringIO(), io.StringIO()
    code = generate(settings(sim_libraries[family], sim_model), "Grüß dich 🙂", out=out, err=err)
    assert code == 0
    assert out.getvalue() == expected_answer("Grüß dich 🙂")
    assert "finish: stop" in err.getvalue()


def test_generate_reports_a_run_error_in_one_line(
    sim_libraries: dict[str, Path], sim_model: Path
) -> None:
    out, err = io.StringIO(), io.StringIO()
    assert generate(settings(sim_libraries["1.2"], sim_model), "[sim:error]", out=out,
                    err=err) == 1
    assert err.getvalue().count("\n") == 1 and "runtime_error" in err.getvalue()


def test_generate_with_a_missing_model_fails_cleanly(
    sim_libraries: dict[str, Path], tmp_path: Path
) -> None:
    out, err = io.StringIO(), io.StringIO()
    missing = tmp_path / "missing.rkllm"
    assert generate(settings(sim_libraries["1.3"], missing), "hi", out=out, err=err) == 3
    assert out.getvalue() == ""
    assert err.getvalue() == (f"rkllm-mqtt: rkllm_init failed: model file not found: {missing} "
                              "(check runtime.model)\n")


def test_check_reports_library_abi_version_and_model(
    sim_libraries: dict[str, Path], sim_model: Path, family: str
) -> None:
    out, err = io.StringIO(), io.StringIO()
    assert check(settings(sim_libraries[family], sim_model), out=out, err=err) == 0
    report = out.getvalue()
    assert f"ABI family:      {family} (auto-detected)" in report
    assert str(sim_libraries[family].resolve()) in report
    assert "rkllm_createDefaultParam" in report and str(sim_model) in report
    assert "rkllm_init:      ok" in report
    assert err.getvalue() == ""


def test_check_fails_with_one_line_when_the_library_is_missing(tmp_path: Path) -> None:
    out, err = io.StringIO(), io.StringIO()
    assert check(settings(tmp_path / "nolib.so", tmp_path / "m.rkllm"), out=out, err=err) == 3
    assert err.getvalue().count("\n") == 1 and "runtime.library" in err.getvalue()


def test_console_script_generate(
    sim_libraries: dict[str, Path], sim_model: Path, tmp_path: Path
) -> None:
    env = dict(os.environ)
    env.update({
        "RKLLM_MQTT_RUNTIME__LIBRARY": str(sim_libraries["1.3"]),
        "RKLLM_MQTT_RUNTIME__MODEL": str(sim_model),
        "RKLLM_SIM_CALLBACK_THREAD": "1",
    })
    proc = subprocess.run(
        [sys.executable, "-m", "rkllm_mqtt", "generate", "Hallo Welt"],
        capture_output=True, text=True, env=env, cwd=tmp_path, timeout=60, check=False,
    )
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout == expected_answer("Hallo Welt")
    assert "finish: stop" in proc.stderr
