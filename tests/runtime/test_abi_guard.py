"""A wrong `runtime.abi` never reaches rkllm_init.

A 1.3.0 library bound as 1.2 gets a bare function pointer where rkllm_init expects a struct (the
crash pattern of rknn-llm #509); a 1.2.1b1 library bound as 1.2.0 gets 24-byte input structs where
it reads 48. Both are refused from the library's version string, before init: the simulator prints
its "rkllm-runtime version" banner from rkllm_init, so that line never appearing proves it.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest

from rkllm_mqtt.errors import AbiDetectionError
from rkllm_mqtt.runtime import Session
from rkllm_mqtt.simulator import build_simulator

INIT_BANNER = "I rkllm: rkllm-runtime version"


@pytest.mark.parametrize(("library", "configured", "version"), [
    ("1.3", "1.2", "1.3.0"), ("1.2", "1.3", "1.2.3"), ("1.2.0", "1.2", "1.2.0"),
    ("1.2", "1.2.0", "1.2.3"), ("1.1", "1.2.0", "1.1.4"),
])
def test_explicit_abi_contradicting_the_version_string_is_refused_before_init(
    settings_for: Callable[..., object], capfd: pytest.CaptureFixture[str], library: str,
    configured: str, version: str,
) -> None:
    settings = settings_for(library, abi=configured)
    session = Session(settings)
    with pytest.raises(AbiDetectionError) as raised:
        session.open()
    message = str(raised.value)
    assert "\n" not in message  # one line
    assert f'runtime.abi is "{configured}"' in message and f"runtime version {version}" in message
    assert INIT_BANNER not in capfd.readouterr().err


@pytest.mark.parametrize("configured", ["1.2.0", "1.2", "auto"])
def test_a_1_2_1b1_library_is_never_taken_for_1_2_0(
    settings_for: Callable[..., object], sim_cache: Path,
    capfd: pytest.CaptureFixture[str], configured: str,
) -> None:
    # 1.2.0's layout with a 1.2.1b1 label: what a pre-release build looks like from outside
    beta = build_simulator("1.2.0", cache_dir=sim_cache,
                           defines=('RKLLM_SIM_VERSION_STRING="1.2.1b1"',))
    session = Session(settings_for("1.2.0", library=str(beta), abi=configured))
    with pytest.raises(AbiDetectionError) as raised:
        session.open()
    message = str(raised.value)
    assert "1.2.1b1" in message and "pre-release" in message and "\n" not in message
    if configured != "auto":
        assert f'runtime.abi is "{configured}"' in message
    assert INIT_BANNER not in capfd.readouterr().err
