"""Prompt cache files through the Session: a warm start prefills nothing an earlier process did.

Real simulator of each family; the simulator's record says what each run prefilled and which
prompt cache file it has loaded, so these tests assert what the NPU would have computed.
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from rkllm_mqtt.runtime import Session
from rkllm_mqtt.runtime.events import FinalEvent, GenerationRequest
from rkllm_mqtt.runtime.prompt_cache import Prefix, PromptCacheStore

SYSTEM = "You are the voice assistant of a house with many rooms and devices. " * 20
WAIT_S = 30


def _ask(session: Session, prompt: str, system: str | None = SYSTEM) -> FinalEvent:
    outcome = session.generate(GenerationRequest(prompt=prompt, system=system)).result(WAIT_S)
    assert isinstance(outcome, FinalEvent), outcome
    return outcome


def _keys(tmp_path: Path, **extra: Any) -> dict[str, Any]:
    # A configured prefix/postfix sends the request's system prompt through the chat template on
    # 1.2.0+; on 1.1 the daemon puts it at the start of the prompt text.
    return {"prompt_prefix": "<u>", "prompt_postfix": "</u>",
            "prompt_cache_dir": str(tmp_path / "cache"), **extra}


def _cache_files(tmp_path: Path) -> list[Path]:
    return sorted((tmp_path / "cache").glob("*.prompt-cache"))


def test_a_restart_loads_the_prefix_and_prefills_only_the_turn(
    open_session: Callable[..., Session], inspect: Callable[[Session], dict[str, Any]],
    family: str, tmp_path: Path,
) -> None:
    first = open_session(family, **_keys(tmp_path))
    cold = _ask(first, "What time is it?")
    assert cold.stats.prefill_tokens is not None and cold.stats.prefill_tokens > 300
    [saved] = _cache_files(tmp_path)
    assert inspect(first)["run"]["prompt_cache_path"].startswith(str(saved))
    first.close()

    second = open_session(family, **_keys(tmp_path))
    record = inspect(second)
    assert record["prompt_cache"]["loaded"] == str(saved)  # at open, before any request
    assert record["run"]["count"] == 0
    warm = _ask(second, "Is the kitchen light on?")
    run = inspect(second)["run"]
    assert run["prompt_cache_tokens"] >= math.ceil(len(SYSTEM) / 4) - 1
    assert run["prefill_tokens"] <= 12  # only the turn (and the template around it)
    assert warm.stats.prefill_tokens is not None and warm.stats.prefill_tokens <= 12
    assert warm.stats.cached_tokens is not None and warm.stats.cached_tokens >= 300


@pytest.mark.parametrize("family", ["1.2.0", "1.2", "1.3"])
def test_the_prefix_is_loaded_once_and_later_conversations_reuse_the_kv_cache(
    open_session: Callable[..., Session], inspect: Callable[[Session], dict[str, Any]],
    family: str, tmp_path: Path,
) -> None:
    session = open_session(family, **_keys(tmp_path))
    _ask(session, "one")
    session.clear()  # a new conversation: rkllm_clear_kv_cache(keep_system_prompt = 1)
    second = _ask(session, "two")
    record = inspect(session)
    assert record["clear_kv_cache"]["keep_system_prompt"] == 1
    assert record["kv_cache"]["system_dropped_by_clear"] == 0
    assert record["run"]["cached_tokens"] >= 300 and record["run"]["prompt_cache_tokens"] == 0
    assert record["prompt_cache"]["saves"] == 1  # one file for the prefix, not one per turn
    assert second.stats.tokens_source == ("runtime" if family in ("1.2", "1.3") else "estimate")


def test_a_corrupt_file_is_deleted_and_rebuilt(
    open_session: Callable[..., Session], inspect: Callable[[Session], dict[str, Any]],
    tmp_path: Path,
) -> None:
    first = open_session("1.2", **_keys(tmp_path))
    _ask(first, "hello")
    first.close()
    [path] = _cache_files(tmp_path)
    path.write_bytes(path.read_bytes()[:-3] + b"xyz")  # same size, other content
    foreign = tmp_path / "cache" / "notes.txt"
    foreign.write_text("not ours")

    second = open_session("1.2", **_keys(tmp_path))
    assert inspect(second)["prompt_cache"]["loaded"] is None  # never handed to the runtime
    cold = _ask(second, "hello again")
    assert cold.stats.prefill_tokens is not None and cold.stats.prefill_tokens > 300
    store = second._prefill.store
    assert store is not None and store.valid(Prefix(SYSTEM, "<u>", "</u>")) == path  # saved anew
    assert foreign.read_text() == "not ours"


def test_a_file_the_runtime_refuses_is_dropped(
    open_session: Callable[..., Session], settings_for: Callable[..., Any], tmp_path: Path,
) -> None:
    # A sidecar that vouches for a file the runtime still refuses (another runtime's format).
    session = open_session("1.3", **_keys(tmp_path))
    store = session._prefill.store
    assert store is not None
    prefix = Prefix(SYSTEM, "<u>", "</u>")
    store.temporary_path(prefix).write_bytes(b"RKLLMSIM-PROMPT-CACHE 1 abi=1.1\nforeign")
    assert store.commit(prefix) is not None
    final = _ask(session, "hi")
    assert final.stats.prefill_tokens is not None and final.stats.prefill_tokens > 300
    meta = json.loads(Path(str(store.path_for(prefix)) + ".json").read_text())
    assert meta["size"] == store.path_for(prefix).stat().st_size  # the rebuilt file


def test_the_directory_is_bounded_least_recently_used_first(
    open_session: Callable[..., Session], tmp_path: Path,
) -> None:
    session = open_session("1.2", **_keys(tmp_path, prompt_cache_max_files=2))
    for n in range(3):
        _ask(session, "hi", system=f"{SYSTEM} Variant {n}.")
    files = _cache_files(tmp_path)
    assert len(files) == 2
    store = session._prefill.store
    assert store is not None
    assert store.path_for(Prefix(f"{SYSTEM} Variant 0.", "<u>", "</u>")) not in files


def test_prefill_at_start_builds_the_configured_prefix_before_the_first_request(
    open_session: Callable[..., Session], inspect: Callable[[Session], dict[str, Any]],
    tmp_path: Path,
) -> None:
    session = open_session("1.2", **_keys(tmp_path, system_prompt=SYSTEM, prefill_at_start=True))
    record = inspect(session)
    assert record["run"]["count"] == 1 and record["prompt_cache"]["saves"] == 1
    first = _ask(session, "hello", system=None)
    assert first.stats.prefill_tokens is not None and first.stats.prefill_tokens <= 12


def test_the_store_ignores_other_models_and_runtime_versions(tmp_path: Path) -> None:
    model = tmp_path / "m.rkllm"
    model.write_bytes(b"model")
    a = PromptCacheStore(tmp_path / "c", model=str(model), runtime_version="1.2.3",
                         max_files=4, max_bytes=1 << 20)
    b = PromptCacheStore(tmp_path / "c", model=str(model), runtime_version="1.3.0",
                         max_files=4, max_bytes=1 << 20)
    assert a.ensure_directory()
    prefix = Prefix("system")
    a.temporary_path(prefix).write_bytes(b"cache")
    assert a.commit(prefix) is not None
    assert a.valid(prefix) is not None and a.last_used() == prefix
    assert b.valid(prefix) is None and b.last_used() is None
    assert a.path_for(prefix) != b.path_for(prefix)


def test_prefill_at_start_primes_a_prefix_with_tools_through_set_function_tools(
    open_session: Callable[..., Session], inspect: Callable[[Session], dict[str, Any]],
    settings_for: Callable[..., Any], tmp_path: Path,
) -> None:
    tools = json.dumps([{"type": "function", "function": {"name": "HassTurnOn"}}])
    keys = {"prompt_cache_dir": str(tmp_path / "cache"), "prefill_at_start": True}
    # A file the sidecar vouches for but the runtime refuses: dropped, and the prefix primed.
    first = open_session("1.3", **keys)
    store = first._prefill.store
    assert store is not None
    prefix = Prefix(SYSTEM, tools=tools)
    store.temporary_path(prefix).write_bytes(b"RKLLMSIM-PROMPT-CACHE 1 abi=1.2\nforeign")
    assert store.commit(prefix) is not None
    first.close()

    second = open_session("1.3", **keys)
    record = inspect(second)
    assert record["run"]["count"] == 1 and record["prompt_cache"]["saves"] == 1
    assert record["function_tools"]["system_prompt"] == SYSTEM
    assert record["function_tools"]["tools"] == tools
    final = second.generate(GenerationRequest(prompt="hello", system=SYSTEM, tools_json=tools)
                            ).result(WAIT_S)
    assert isinstance(final, FinalEvent)
    assert final.stats.prefill_tokens is not None and final.stats.prefill_tokens <= 5
    assert inspect(second)["function_tools"]["calls"] == 1  # not set again for the request


@pytest.mark.parametrize("family", ["1.1", "1.2"])
def test_switching_between_two_long_system_prompts_reuses_their_files(
    open_session: Callable[..., Session], inspect: Callable[[Session], dict[str, Any]],
    family: str, tmp_path: Path,
) -> None:
    other = SYSTEM.replace("house", "boat")
    session = open_session(family, **_keys(tmp_path))
    _ask(session, "one")
    _ask(session, "two", system=other)
    back = _ask(session, "three")  # the cache holds the other prompt: this one comes from its file
    run = inspect(session)["run"]
    assert run["prompt_cache_tokens"] >= math.ceil(len(SYSTEM) / 4) - 1
    assert back.stats.prefill_tokens is not None and back.stats.prefill_tokens <= 12
    assert len(_cache_files(tmp_path)) == 2
