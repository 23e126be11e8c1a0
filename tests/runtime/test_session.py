"""Session behaviour against the real simulator library, for every ABI family.

Streaming, UTF-8 reassembly, FIFO serialization, aborts (running and queued), stop sequences,
errors, callbacks on foreign threads, and the callback surviving garbage collection mid-run.
"""

from __future__ import annotations

import gc
import math
import threading
from collections.abc import Callable
from typing import Any

import pytest

from rkllm_mqtt.errors import RuntimeInitError, RuntimeRunError
from rkllm_mqtt.runtime import (
    ErrorEvent,
    Event,
    FinalEvent,
    GenerationRequest,
    Message,
    Session,
    TokenEvent,
)
from rkllm_mqtt.runtime.templates import CHATML
from rkllm_mqtt.simulator import expected_answer, expected_tokens

pytestmark = pytest.mark.timeout(60)

WAIT_S = 30.0  # generous bound for "eventually"; never a timing assertion


class Recorder:
    """A sink that records events and lets a test wait for the first token."""

    def __init__(self, on_token: Callable[[TokenEvent], None] | None = None) -> None:
        self.events: list[Event] = []
        self.threads: set[int] = set()
        self.first_token = threading.Event()
        self._on_token = on_token

    def __call__(self, event: Event) -> None:
        self.events.append(event)
        self.threads.add(threading.get_ident())
        if isinstance(event, TokenEvent):
            self.first_token.set()
            if self._on_token is not None:
                self._on_token(event)

    @property
    def pieces(self) -> list[str]:
        return [e.text for e in self.events if isinstance(e, TokenEvent)]


def run_to_end(session: Session, request: GenerationRequest) -> tuple[list[str], Any]:
    events = list(session.generate(request))
    assert all(isinstance(e, TokenEvent) for e in events[:-1])
    return [e.text for e in events[:-1]], events[-1]


@pytest.mark.parametrize("prompt", ["Hello", "Grüße aus Köln — 你好 🙂", "x" * 100])
def test_streamed_text_equals_final_text_and_the_expected_answer(
    open_session: Callable[..., Session], family: str, prompt: str
) -> None:
    session = open_session(family)
    pieces, final = run_to_end(session, GenerationRequest(prompt=prompt))
    assert isinstance(final, FinalEvent)
    assert final.finish_reason == "stop"
    assert "".join(pieces) == final.text == expected_answer(prompt)
    assert final.stats.completion_tokens == len(expected_tokens(prompt))
    # 1.2.1+ count what the runtime prefilled: the turn in the chat template's markup
    # (ChatML by default); 1.1 and 1.2.0 are estimated from the prompt text alone.
    turn = f"{CHATML.prefix}{prompt}{CHATML.postfix}" if family in ("1.2", "1.3") else prompt
    assert final.stats.prompt_tokens == final.stats.prefill_tokens == math.ceil(
        len(turn.encode()) / 4
    )
    assert final.stats.cached_tokens == 0
    if family in ("1.2", "1.3"):  # FINISH perf, rkllm_get_kv_cache_size
        assert final.stats.tokens_source == "runtime" and final.stats.memory_mb is not None
    else:
        assert final.stats.tokens_source == "estimate" and final.stats.memory_mb is None


def test_characters_split_across_callbacks_arrive_whole(
    open_session: Callable[..., Session], family: str
) -> None:
    session = open_session(family)
    pieces, final = run_to_end(session, GenerationRequest(prompt="hi"))
    # The tail's "—", "ü", "你" and "🙂" are each cut across two callbacks by the simulator.
    chunks = expected_tokens("hi")
    assert any(_incomplete(chunk) for chunk in chunks)
    assert all("\ufffd" not in piece for piece in pieces)
    for char in "—ü你🙂":
        assert any(char in piece for piece in pieces)
    assert final.text == expected_answer("hi")


def test_waiting_callbacks_that_carry_bytes_are_joined(
    open_session: Callable[..., Session], monkeypatch: pytest.MonkeyPatch
) -> None:
    # 1.1 may hand the bytes of an unfinished character over with the WAITING state.
    monkeypatch.setenv("RKLLM_SIM_WAITING_TEXT", "1")
    session = open_session("1.1")
    pieces, final = run_to_end(session, GenerationRequest(prompt="hi"))
    assert all("\ufffd" not in piece for piece in pieces)
    assert final.text == expected_answer("hi")


def test_abort_inside_a_character_drops_its_bytes(
    open_session: Callable[..., Session], family: str
) -> None:
    session = open_session(family)
    chunks = expected_tokens("hi")
    cut = next(i for i, chunk in enumerate(chunks) if _incomplete(chunk)) + 1
    generation = session.generate(GenerationRequest(prompt="hi", max_new_tokens=cut))
    final = generation.result(timeout=30)
    assert final.finish_reason == "length" and "\ufffd" not in final.text
    assert expected_answer("hi").startswith(final.text)


def _incomplete(chunk: bytes) -> bool:
    try:
        chunk.decode()
    except UnicodeDecodeError:
        return True
    return False


def test_sink_receives_every_event_and_iteration_only_the_last(
    open_session: Callable[..., Session], family: str
) -> None:
    session = open_session(family)
    sink = Recorder()
    generation = session.generate(GenerationRequest(prompt="sink"), sink)
    assert list(generation) == [generation.result()]
    assert sink.events[-1] == generation.result()
    assert "".join(sink.pieces) == expected_answer("sink")


def test_callbacks_from_the_librarys_own_thread(
    open_session: Callable[..., Session], inspect: Callable[[Session], dict[str, Any]],
    family: str, monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("RKLLM_SIM_CALLBACK_THREAD", "1")
    session = open_session(family)
    sink = Recorder()
    outcome = session.generate(GenerationRequest(prompt="threaded"), sink).result()
    assert inspect(session)["run"]["callback_thread"] is True
    assert isinstance(outcome, FinalEvent) and outcome.text == expected_answer("threaded")
    assert "".join(sink.pieces) == outcome.text
    assert threading.get_ident() not in sink.threads


def test_abort_of_a_running_generation_ends_it_and_the_session_goes_on(
    open_session: Callable[..., Session], inspect: Callable[[Session], dict[str, Any]],
    family: str,
) -> None:
    session = open_session(family)
    sink = Recorder()
    generation = session.generate(GenerationRequest(prompt="wait [sim:hang]"), sink)
    assert sink.first_token.wait(WAIT_S)
    generation.abort("deadline")
    outcome = generation.result(WAIT_S)
    assert isinstance(outcome, FinalEvent)
    assert outcome.finish_reason == "deadline"
    assert outcome.text == "".join(sink.pieces) != ""
    assert inspect(session)["run"]["aborted"] is True

    assert session.generate(GenerationRequest(prompt="next")).result(WAIT_S).text == (
        expected_answer("next"))


def test_abort_of_a_queued_generation_never_runs_it(
    open_session: Callable[..., Session], inspect: Callable[[Session], dict[str, Any]],
    family: str,
) -> None:
    session = open_session(family)
    sink = Recorder()
    running = session.generate(GenerationRequest(prompt="[sim:hang]"), sink)
    queued_sink = Recorder()
    queued = session.generate(GenerationRequest(prompt="never"), queued_sink)
    assert sink.first_token.wait(WAIT_S)
    queued.abort()
    assert queued.result(WAIT_S) == queued_sink.events[-1]
    outcome = queued.result()
    assert isinstance(outcome, FinalEvent)
    assert (outcome.finish_reason, outcome.text, queued_sink.pieces) == ("abort", "", [])
    running.abort()
    assert running.result(WAIT_S).finish_reason == "abort"
    session.generate(GenerationRequest(prompt="after")).result(WAIT_S)
    run = inspect(session)["run"]
    assert (run["count"], run["prompt"]) == (2, "after")  # "never" did not reach the library


def test_abort_right_after_submit_is_not_lost(
    open_session: Callable[..., Session], family: str
) -> None:
    session = open_session(family)
    for _ in range(20):  # lands before, during or just after the start of rkllm_run
        generation = session.generate(GenerationRequest(prompt="[sim:hang]"))
        generation.abort()
        assert generation.result(WAIT_S).finish_reason == "abort"


def test_generations_never_overlap_inside_the_library(
    open_session: Callable[..., Session], inspect: Callable[[Session], dict[str, Any]],
    family: str,
) -> None:
    session = open_session(family)
    outcomes: list[Any] = []
    lock = threading.Lock()

    def client(n: int) -> None:
        for i in range(3):
            prompt = f"client {n} request {i} [sim:delay_ms=2][sim:tokens=4]"
            result = session.generate(GenerationRequest(prompt=prompt)).result(WAIT_S)
            with lock:
                outcomes.append(result)

    threads = [threading.Thread(target=client, args=(n,)) for n in range(3)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(WAIT_S)
    assert len(outcomes) == 9
    assert all(o.text == "tok0 tok1 tok2 tok3" for o in outcomes)
    record = inspect(session)
    assert record["max_concurrent_runs"] == 1
    assert record["run"]["count"] == 9


def test_fifo_order(open_session: Callable[..., Session], family: str) -> None:
    session = open_session(family)
    order: list[str] = []
    generations = [
        session.generate(GenerationRequest(prompt=f"p{i} [sim:tokens=2][sim:delay_ms=1]"),
                         lambda e, i=i: order.append(f"p{i}") if isinstance(e, FinalEvent) else None)
        for i in range(5)
    ]
    for generation in generations:
        generation.result(WAIT_S)
    assert order == [f"p{i}" for i in range(5)]


def test_callback_survives_garbage_collection_during_a_run(
    open_session: Callable[..., Session], family: str
) -> None:
    session = open_session(family)
    stop = threading.Event()

    def collector() -> None:
        while not stop.is_set():
            gc.collect()

    thread = threading.Thread(target=collector)
    thread.start()
    try:
        sink = Recorder(on_token=lambda _: gc.collect())
        prompt = "collect [sim:delay_ms=1] — ü"
        outcome = session.generate(GenerationRequest(prompt=prompt), sink).result(WAIT_S)
    finally:
        stop.set()
        thread.join()
    assert outcome.text == expected_answer(prompt) == "".join(sink.pieces)


def test_stop_sequence_ends_the_run_without_the_stop_text(
    open_session: Callable[..., Session], inspect: Callable[[Session], dict[str, Any]],
    family: str,
) -> None:
    session = open_session(family)
    # at a token's pace (5 ms here, 60 ms on an NPU): the token thread sees the stop sequence and
    # aborts the library before its next token; at unlimited speed the run could end first
    prompt = "stop here [sim:delay_ms=5]"
    answer = expected_answer(prompt)
    sink = Recorder()
    request = GenerationRequest(prompt=prompt, stop=("unknown", "ünï"))
    outcome = session.generate(request, sink).result(WAIT_S)
    assert isinstance(outcome, FinalEvent)
    assert outcome.finish_reason == "stop_sequence"
    assert outcome.text == answer[: answer.index("ünï")] == "".join(sink.pieces)
    assert inspect(session)["run"]["aborted"] is True  # the library stopped generating


def test_sink_may_abort_the_run_it_receives_tokens_from(
    open_session: Callable[..., Session], inspect: Callable[[Session], dict[str, Any]],
    family: str,
) -> None:
    session = open_session(family)
    generations: list[Any] = []

    def abort_at_third(event: TokenEvent) -> None:
        if "tok2" in event.text:
            generations[0].abort()

    # the sink runs on the token thread, so at a token's pace the abort lands within a token
    sink = Recorder(on_token=abort_at_third)
    generations.append(session.generate(
        GenerationRequest(prompt="[sim:tokens=500][sim:delay_ms=2]"), sink))
    outcome = generations[0].result(WAIT_S)
    assert outcome.finish_reason == "abort"
    assert outcome.text.startswith("tok0 tok1 tok2") and outcome.text == "".join(sink.pieces)
    run = inspect(session)["run"]
    assert run["aborted"] is True and run["generated_tokens"] < 500


def test_nul_and_lone_surrogates_never_reach_the_library(
    open_session: Callable[..., Session], inspect: Callable[[Session], dict[str, Any]],
    family: str,
) -> None:
    session = open_session(family)
    outcome = session.generate(GenerationRequest(prompt="a\x00b\ud800c")).result(WAIT_S)
    assert inspect(session)["run"]["prompt"] == "ab?c"
    assert outcome.text == expected_answer("ab?c")


def test_text_that_only_looks_like_a_stop_sequence_is_released(
    open_session: Callable[..., Session], family: str
) -> None:
    session = open_session(family)
    request = GenerationRequest(prompt="abc", stop=("said: abX", "done.!"))
    pieces, final = run_to_end(session, request)
    assert final.finish_reason == "stop"
    assert "".join(pieces) == final.text == expected_answer("abc")


def test_request_max_new_tokens_gives_length(
    open_session: Callable[..., Session], family: str
) -> None:
    session = open_session(family)
    pieces, final = run_to_end(session, GenerationRequest(prompt="short", max_new_tokens=4))
    assert final.finish_reason == "length"
    assert final.text == b"".join(expected_tokens("short")[:4]).decode(errors="replace")
    assert "".join(pieces) == final.text


def test_max_new_tokens_aborts_the_run_at_an_npu_pace(
    open_session: Callable[..., Session], inspect: Callable[[Session], dict[str, Any]],
    family: str,
) -> None:
    """Families without a native cap: the token thread counts and aborts; the runtime stops soon
    after the limit instead of generating the whole answer, and the text holds exactly N tokens."""
    session = open_session(family)
    _, final = run_to_end(session, GenerationRequest(prompt="[sim:tokens=200] [sim:delay_ms=5]",
                                                     max_new_tokens=3))
    assert (final.text, final.finish_reason) == ("tok0 tok1 tok2", "length")
    run = inspect(session)["run"]
    assert run["generated_tokens"] < 20
    assert run["aborted"] is (family != "1.3")  # 1.3 caps it natively


def test_configured_max_new_tokens_gives_length(
    open_session: Callable[..., Session], family: str
) -> None:
    session = open_session(family, max_new_tokens=3)
    _, final = run_to_end(session, GenerationRequest(prompt="[sim:tokens=10]"))
    assert (final.text, final.finish_reason) == ("tok0 tok1 tok2", "length")


def test_run_error_becomes_an_error_event(
    open_session: Callable[..., Session], family: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    session = open_session(family)
    _, event = run_to_end(session, GenerationRequest(prompt="[sim:error_after=3] boom"))
    assert isinstance(event, ErrorEvent)
    assert event.code == "runtime_error"
    assert event.text  # the partial text before the error
    monkeypatch.setenv("RKLLM_SIM_FAIL", "run")
    _, event = run_to_end(session, GenerationRequest(prompt="fine"))
    assert isinstance(event, ErrorEvent) and event.code == "runtime_error"
    monkeypatch.delenv("RKLLM_SIM_FAIL")
    assert session.generate(GenerationRequest(prompt="ok")).result(WAIT_S).text == (
        expected_answer("ok"))


def test_prompt_over_the_context_is_context_too_long(
    open_session: Callable[..., Session], family: str
) -> None:
    session = open_session(family, max_context_len=64)
    _, event = run_to_end(session, GenerationRequest(prompt="word " * 100))
    assert isinstance(event, ErrorEvent)
    assert event.code == "context_too_long"
    assert "runtime.max_context_len (64)" in event.message


def test_init_errors_are_one_clear_line(
    settings_for: Callable[..., Any], family: str, monkeypatch: pytest.MonkeyPatch,
    tmp_path: Any,
) -> None:
    missing = tmp_path / "nope.rkllm"
    with pytest.raises(RuntimeInitError, match=r"model file not found: .*nope\.rkllm"):
        Session(settings_for(family, model=str(missing))).open()

    with pytest.raises(RuntimeInitError) as err:
        Session(settings_for(family, max_context_len=8192)).open()
    assert "runtime.max_context_len = 8192 is above the model's limit of 4096" in str(err.value)

    monkeypatch.setenv("RKLLM_SIM_FAIL", "init")
    with pytest.raises(RuntimeInitError) as err:
        Session(settings_for(family)).open()
    assert "rkllm_init failed" in str(err.value) and "\n" not in str(err.value)


def test_closed_session_refuses_work_and_close_is_idempotent(
    open_session: Callable[..., Session], family: str
) -> None:
    session = open_session(family)
    sink = Recorder()
    running = session.generate(GenerationRequest(prompt="[sim:hang]"), sink)
    queued = session.generate(GenerationRequest(prompt="queued"))
    assert sink.first_token.wait(WAIT_S)
    session.close()
    session.close()
    assert running.result(WAIT_S).finish_reason == "abort"
    assert (queued.result(WAIT_S).finish_reason, queued.result().text) == ("abort", "")
    with pytest.raises(RuntimeRunError):
        session.generate(GenerationRequest(prompt="late"))


def test_generate_before_open_is_refused(settings_for: Callable[..., Any]) -> None:
    with pytest.raises(RuntimeRunError, match="not open"):
        Session(settings_for("1.2")).generate(GenerationRequest(prompt="x"))


def test_messages_are_rendered_into_one_prompt(
    open_session: Callable[..., Session], inspect: Callable[[Session], dict[str, Any]],
    family: str,
) -> None:
    session = open_session(family)
    request = GenerationRequest(messages=(
        Message("user", "Hi"), Message("assistant", "Hello!"),
        Message("user", "Weather?"),
    ))
    outcome = session.generate(request).result(WAIT_S)
    prompt = "User: Hi\nAssistant: Hello!\nUser: Weather?"
    assert inspect(session)["run"]["prompt"] == prompt
    assert outcome.text == expected_answer(prompt)
