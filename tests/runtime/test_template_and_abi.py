"""Chat templates and system prompts per family; ABI detection and library loading errors."""

from __future__ import annotations

import ctypes
import ctypes.util
import os
import shutil
import subprocess
import sys
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from rkllm_mqtt.config import RuntimeSettings
from rkllm_mqtt.errors import AbiDetectionError, RuntimeLoadError
from rkllm_mqtt.runtime import GenerationRequest, Session, TokenEvent, detect_abi
from rkllm_mqtt.runtime.library import open_library
from rkllm_mqtt.simulator import ABIS, build_simulator, expected_answer

pytestmark = pytest.mark.timeout(60)

TEMPLATE = {"system_prompt": "<sys>Be brief.</sys>", "prompt_prefix": "<user>",
            "prompt_postfix": "</user><bot>"}


def test_configured_template(
    open_session: Callable[..., Session], inspect: Callable[[Session], dict[str, Any]],
    family: str,
) -> None:
    session = open_session(family, **TEMPLATE)
    outcome = session.generate(GenerationRequest(prompt="hi")).result()
    record = inspect(session)
    if family == "1.1":  # no template API: applied in Python
        sent = "<sys>Be brief.</sys><user>hi</user><bot>"
        assert record["chat_template"] is None
    else:
        sent = "hi"
        assert record["chat_template"] == TEMPLATE
    assert record["run"]["prompt"] == sent
    assert outcome.text == expected_answer(sent)


@pytest.mark.parametrize("family", ["1.2.0", "1.2", "1.3"])
def test_request_system_uses_the_template_for_one_run(
    open_session: Callable[..., Session], inspect: Callable[[Session], dict[str, Any]],
    inspect_now: Callable[[Session], Callable[[], dict[str, Any]]], family: str,
) -> None:
    session = open_session(family, **TEMPLATE)
    peek = inspect_now(session)
    during: list[Any] = []
    seen = threading.Event()

    def sink(event: Any) -> None:
        if isinstance(event, TokenEvent) and not seen.is_set():
            during.append(peek()["chat_template"])
            seen.set()

    request = GenerationRequest(prompt="hi [sim:hang]", system="You are a pirate.")
    generation = session.generate(request, sink)
    assert seen.wait(30)
    generation.abort()
    generation.result(30)
    assert during == [TEMPLATE | {"system_prompt": "You are a pirate."}]
    record = inspect(session)
    assert record["run"]["prompt"] == "hi [sim:hang]"
    assert record["chat_template"] == TEMPLATE  # restored after the run


def test_request_system_without_prefix_and_postfix_is_prepended(
    open_session: Callable[..., Session], inspect: Callable[[Session], dict[str, Any]],
    family: str,
) -> None:
    session = open_session(family)
    outcome = session.generate(GenerationRequest(prompt="hi", system="Be kind.")).result()
    record = inspect(session)
    assert record["run"]["prompt"] == "Be kind.\n\nhi"
    assert record["chat_template"] is None  # the model's own template stays in charge
    assert outcome.text == expected_answer("Be kind.\n\nhi")


def test_configured_system_prompt_alone_keeps_the_models_template(
    open_session: Callable[..., Session], inspect: Callable[[Session], dict[str, Any]],
    family: str,
) -> None:
    session = open_session(family, system_prompt="Be kind.")
    session.generate(GenerationRequest(prompt="hi")).result()
    record = inspect(session)
    assert record["run"]["prompt"] == "Be kind.\n\nhi"
    assert record["chat_template"] is None


# -- ABI detection and loading --------------------------------------------------------------------


def test_auto_detects_every_family(sim_libraries: dict[str, Path], family: str) -> None:
    assert detect_abi(str(sim_libraries[family])) == family
    loaded = open_library(str(sim_libraries[family]), "auto")
    assert loaded.abi == family
    assert loaded.runtime_version == {"1.1": "1.1.4", "1.2.0": "1.2.0", "1.2": "1.2.3",
                                      "1.3": "1.3.0"}[family]


def test_auto_session_reports_abi_version_and_model(
    settings_for: Callable[..., Any], family: str
) -> None:
    with Session(settings_for(family, abi="auto")) as session:
        assert session.abi == family
        assert session.runtime_version is not None
        assert session.model_name == "model.rkllm"
        assert session.supports_history == (family != "1.1")


def test_every_function_is_bound_with_its_prototype(
    sim_libraries: dict[str, Path], family: str
) -> None:
    loaded = open_library(str(sim_libraries[family]), family)
    for fn in loaded.module.FUNCTIONS:
        bound = getattr(loaded.functions, fn.name)
        assert bound.argtypes == list(fn.argtypes)
        assert bound.restype is fn.restype
    assert loaded.functions.rkllm_createDefaultParam.restype is loaded.module.RKLLMParam
    returns_int = loaded.module.LLMResultCallback._restype_ is ctypes.c_int
    assert returns_int == (family in ("1.2", "1.3"))


@pytest.mark.parametrize("family", ABIS)
def test_without_a_version_string_only_symbols_decide(
    sim_cache: Path, family: str
) -> None:
    path = str(build_simulator(family, cache_dir=sim_cache,
                               defines=["RKLLM_SIM_NO_VERSION"]))
    if family in ("1.1", "1.2.0"):
        assert detect_abi(path) == family
        return
    with pytest.raises(AbiDetectionError) as err:
        detect_abi(path)
    message = str(err.value)
    assert "runtime.abi" in message and '"1.2"' in message and '"1.3"' in message
    assert open_library(path, family).abi == family  # an explicit choice is accepted


@pytest.mark.parametrize("family", ABIS)
def test_a_trimmed_library_is_never_guessed_but_runs_when_named(
    sim_cache: Path, sim_model: Path, family: str
) -> None:
    # Only the entry points a server calls, no version string: its exports match no release's
    # complete list (a 1.2/1.3 build would look like 1.2.0, a 1.1 build like 1.0.x), so "auto" stops.
    path = str(build_simulator(family, cache_dir=sim_cache,
                               defines=["RKLLM_SIM_MINIMAL", "RKLLM_SIM_NO_VERSION"]))
    with pytest.raises(AbiDetectionError, match=r"runtime\.abi"):
        detect_abi(path)
    with Session(RuntimeSettings(library=path, abi=family, model=str(sim_model))) as session:
        outcome = session.generate(GenerationRequest(prompt="trimmed")).result()
    assert outcome.text == expected_answer("trimmed")


def test_a_trimmed_library_with_a_version_string_is_detected(sim_cache: Path) -> None:
    path = build_simulator("1.3", cache_dir=sim_cache, defines=["RKLLM_SIM_MINIMAL"])
    assert detect_abi(str(path)) == "1.3"


@pytest.mark.parametrize(("library", "configured"), [
    ("1.3", "1.2"), ("1.2", "1.3"), ("1.2", "1.1"), ("1.2.0", "1.2"), ("1.1", "1.2.0"),
])
def test_explicit_abi_that_contradicts_the_library_is_refused(
    sim_libraries: dict[str, Path], library: str, configured: str
) -> None:
    with pytest.raises(AbiDetectionError, match=r"runtime\.abi"):
        open_library(str(sim_libraries[library]), configured)


def test_missing_library_names_the_key(tmp_path: Path) -> None:
    path = str(tmp_path / "librkllmrt.so")
    with pytest.raises(RuntimeLoadError) as err:
        detect_abi(path)
    assert path in str(err.value) and "runtime.library" in str(err.value)


def test_a_library_that_is_not_rkllm_names_the_key() -> None:
    libc = ctypes.util.find_library("c")
    assert libc is not None
    with pytest.raises(RuntimeLoadError, match=r"not an RKLLM runtime.*runtime\.library"):
        open_library(libc, "auto")


def test_importing_the_package_loads_no_library() -> None:
    code = ("import rkllm_mqtt.runtime, sys; "
            "maps = open('/proc/self/maps').read(); sys.exit('rkllm' in maps)")
    assert subprocess.run([sys.executable, "-c", code], check=False).returncode == 0


def test_bare_library_name_is_found_through_the_loader_path(
    sim_libraries: dict[str, Path], tmp_path: Path
) -> None:
    """The default `librkllmrt.so` is a bare name: the version string must be read from the file
    the dynamic loader actually picked."""
    shutil.copy(sim_libraries["1.3"], tmp_path / "librkllmrt.so")
    env = dict(os.environ, LD_LIBRARY_PATH=str(tmp_path))
    code = ("from rkllm_mqtt.runtime.library import open_library; "
            "lib = open_library('librkllmrt.so', 'auto'); print(lib.abi, lib.path)")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env,
                          timeout=60, check=False)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.split() == ["1.3", str((tmp_path / "librkllmrt.so").resolve())]
