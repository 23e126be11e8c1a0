"""The token hand-off: the C callback never waits for Python, and the Python fallback (a build
without a C compiler) serves the same answers.

The GIL test holds the GIL in the main thread (a pure-Python loop with a switch interval longer
than the loop) while the simulator generates: the runtime's callbacks, stamped by the simulator
itself (RKLLM_SIM_CALLBACK_TIMES), must all have returned inside that window with the C hand-off,
and cannot with the Python one.
"""

from __future__ import annotations

import ctypes
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from rkllm_mqtt.runtime import Event, FinalEvent, GenerationRequest, Session, TokenEvent
from rkllm_mqtt.runtime import handoff as handoff_module
from rkllm_mqtt.simulator import expected_answer

WAIT_S = 30


@pytest.fixture
def python_handoff(monkeypatch: pytest.MonkeyPatch) -> None:
    """Sessions opened from now on use the Python callback, as a build without the C part does."""
    monkeypatch.setattr(handoff_module, "native_library", lambda: None)


@pytest.fixture
def callback_times(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    path = tmp_path / "callback-ns"
    path.write_text("")
    monkeypatch.setenv("RKLLM_SIM_CALLBACK_TIMES", str(path))
    return path


def _returned_ns(path: Path) -> list[int]:
    """When each NORMAL callback returned to the runtime (CLOCK_MONOTONIC ns)."""
    rows = [line.split() for line in path.read_text().splitlines() if line.strip()]
    return [int(start) + int(ns) for start, ns in rows]


def test_the_c_handoff_is_built_and_used(open_session: Callable[..., Session]) -> None:
    assert handoff_module.native_library() is not None, "rkllm_mqtt/runtime/handoff.c was not built"
    session = open_session("1.3")
    assert session.handoff_kind == "C"


@pytest.mark.parametrize("kind", ["C", "Python"])
def test_every_family_answers_the_same_through_either_handoff(
    request: pytest.FixtureRequest, open_session: Callable[..., Session], family: str, kind: str,
) -> None:
    if kind == "Python":
        request.getfixturevalue("python_handoff")
    session = open_session(family)
    assert session.handoff_kind == kind
    pieces: list[str] = []
    # multi-byte characters cut across callbacks, a stop sequence, a length cap
    outcome = session.generate(GenerationRequest(prompt="hi")).result(WAIT_S)
    assert isinstance(outcome, FinalEvent) and outcome.text == expected_answer("hi")
    if family in ("1.2", "1.3"):  # RKLLMPerfStat came through the hand-off with FINISH
        assert outcome.stats.prefill_ms is not None and outcome.stats.memory_mb is not None
    generation = session.generate(GenerationRequest(prompt="[sim:tokens=9]", stop=("tok4",)))
    for event in generation:
        if isinstance(event, TokenEvent):
            pieces.append(event.text)
    final = generation.result(WAIT_S)
    assert isinstance(final, FinalEvent)
    assert (final.text, final.finish_reason) == ("tok0 tok1 tok2 tok3 ", "stop_sequence")
    assert "".join(pieces) == final.text
    capped = session.generate(GenerationRequest(prompt="[sim:tokens=9]", max_new_tokens=2))
    final = capped.result(WAIT_S)
    assert isinstance(final, FinalEvent)
    assert (final.text, final.finish_reason, final.stats.completion_tokens) == (
        "tok0 tok1", "length", 2)


@pytest.fixture
def gil_held() -> Iterator[Callable[[float], tuple[int, int]]]:
    """hold(seconds): spin in Python without giving up the GIL; returns (start, end) in ns."""
    saved = sys.getswitchinterval()

    def hold(seconds: float) -> tuple[int, int]:
        sys.setswitchinterval(seconds * 20)  # no other thread gets the GIL before we block
        start = time.monotonic_ns()
        end_by = start + int(seconds * 1e9)
        while time.monotonic_ns() < end_by:
            pass
        end = time.monotonic_ns()
        sys.setswitchinterval(saved)
        return start, end

    yield hold
    sys.setswitchinterval(saved)


def _generate_while_the_gil_is_held(session: Session,
                                    hold: Callable[[float], tuple[int, int]]
                                    ) -> tuple[FinalEvent, tuple[int, int]]:
    first = threading.Event()

    def sink(event: Event) -> None:
        first.set()

    # 40 tokens 5 ms apart: the run is well inside the 1 s window once its first token is out
    generation = session.generate(
        GenerationRequest(prompt="[sim:tokens=40] [sim:delay_ms=5]"), sink)
    assert first.wait(WAIT_S)
    window = hold(1.0)
    outcome = generation.result(WAIT_S)
    assert isinstance(outcome, FinalEvent) and outcome.text == " ".join(
        f"tok{i}" for i in range(40))
    return outcome, window


def test_the_c_callback_returns_while_python_holds_the_gil(
    open_session: Callable[..., Session], callback_times: Path,
    gil_held: Callable[[float], tuple[int, int]],
) -> None:
    session = open_session("1.3")
    _, (start, end) = _generate_while_the_gil_is_held(session, gil_held)
    returned = _returned_ns(callback_times)
    assert len(returned) == 40
    during = [t for t in returned if t > start]
    assert len(during) >= 30  # most tokens were made inside the window ...
    assert max(returned) < end  # ... and none of them waited for the GIL


def test_the_python_callback_waits_for_the_gil(
    python_handoff: None, open_session: Callable[..., Session], callback_times: Path,
    gil_held: Callable[[float], tuple[int, int]],
) -> None:
    """The cost the C hand-off removes (and why `check` and the log say which one runs)."""
    session = open_session("1.3")
    _, (_, end) = _generate_while_the_gil_is_held(session, gil_held)
    returned = _returned_ns(callback_times)
    assert len(returned) == 40
    assert any(t >= end for t in returned)  # the runtime sat in its callback until we let go


@pytest.mark.parametrize("kind", ["C", "Python"])
def test_a_callback_outside_a_run_is_dropped(
    request: pytest.FixtureRequest, open_session: Callable[..., Session], kind: str,
) -> None:
    """A library that calls back after rkllm_run returned (or before the next one) must not put
    text into a finished answer or the next one."""
    if kind == "Python":
        request.getfixturevalue("python_handoff")
    session = open_session("1.3")
    events: list[Event] = []
    first = session.generate(GenerationRequest(prompt="[sim:tokens=3]"), events.append)
    assert first.result(WAIT_S).text == "tok0 tok1 tok2"
    module = session._lib.module  # type: ignore[union-attr]
    stray = module.RKLLMResult()
    stray.text = b" stray"
    assert session._handoff is not None
    session._handoff.callback(ctypes.byref(stray), None, 0)  # RKLLM_RUN_NORMAL, between runs
    second = session.generate(GenerationRequest(prompt="[sim:tokens=2]")).result(WAIT_S)
    assert second.text == "tok0 tok1"
    assert isinstance(events[-1], FinalEvent)  # nothing reached the first after its final


def test_an_entry_larger_than_the_read_buffer_gets_through(open_session: Callable[..., Session]) -> None:
    """The C reader moves whole entries into a 64 KiB buffer; a larger one makes it grow the
    buffer instead of stalling the token thread (and every run after it)."""
    session = open_session("1.3")
    assert session.handoff_kind == "C"
    module = session._lib.module  # type: ignore[union-attr]
    huge = module.RKLLMResult()
    huge.text = b"x" * 100_000
    assert session._handoff is not None
    session._handoff.callback(ctypes.byref(huge), None, 0)  # between runs: read, then dropped
    outcome = session.generate(GenerationRequest(prompt="[sim:tokens=2]")).result(WAIT_S)
    assert isinstance(outcome, FinalEvent) and outcome.text == "tok0 tok1"


def test_with_every_c_slot_taken_a_session_runs_on_the_python_callback(
    open_session: Callable[..., Session],
) -> None:
    """handoff.c has a fixed table of callbacks; the seventeenth session at once must still run."""
    lib = handoff_module.native_library()
    assert lib is not None
    taken: list[int] = []
    try:
        while (slot := lib.rkmq_handoff_open(0, 0, 0)) >= 0:
            taken.append(slot)
        assert len(taken) <= 16
        session = open_session("1.3")
        assert session.handoff_kind == "Python"
        outcome = session.generate(GenerationRequest(prompt="[sim:tokens=3]")).result(WAIT_S)
        assert isinstance(outcome, FinalEvent) and outcome.text == "tok0 tok1 tok2"
    finally:
        for slot in taken:
            lib.rkmq_handoff_close(slot)
    assert open_session("1.3").handoff_kind == "C"  # a freed slot is used again


def test_the_c_callback_has_the_type_its_header_declares(
    open_session: Callable[..., Session], family: str,
) -> None:
    """rkllm.h declares LLMResultCallback returning void in 1.1.x and 1.2.0, int from 1.2.1."""
    session = open_session(family)
    lib = handoff_module.native_library()
    handoff = session._handoff
    assert lib is not None and isinstance(handoff, handoff_module.NativeHandOff)
    returns_int = family in ("1.2", "1.3")
    given = ctypes.cast(handoff.callback, ctypes.c_void_p).value
    assert given == lib.rkmq_handoff_callback(handoff._slot, returns_int)
    assert given != lib.rkmq_handoff_callback(handoff._slot, not returns_int)
