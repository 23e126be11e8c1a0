"""The simulator's KV cache and prompt cache: what each run prefills, per family.

The daemon's prefix sharing is tested against this model, so the model itself is pinned here
through plain ctypes: the system segment (template / function tools) is prefilled once and kept,
keep_history keeps turns, clear_kv_cache(keep_system_prompt) keeps or drops the system prompt, and
a saved prompt cache spares the common prefix of a later run that starts cold.
"""
# ruff: noqa: F811

from __future__ import annotations

import ctypes
import math
from pathlib import Path
from typing import Any

import pytest

# The ctypes mirror and its fixtures come from test_simulator (imported fixtures are fixtures here).
from test_simulator import Sim, _only, abi, make_sim, sim  # noqa: F401

SYSTEM = b"You are the voice of a house. " * 40  # 1200 bytes = 300 tokens
TOOLS = b'[{"type": "function", "function": {"name": "HassTurnOn"}}]'


def _tokens(data: bytes) -> int:
    return math.ceil(len(data) / 4)


def _set_system(sim: Sim, system: bytes) -> None:
    if sim.family >= 3:
        assert sim.lib.rkllm_set_function_tools(sim.handle, system, TOOLS, b"tool_response") == 0
    else:
        assert sim.lib.rkllm_set_chat_template(sim.handle, system, b"<u>", b"</u>") == 0


def _system_tokens(sim: Sim, system: bytes) -> int:
    if sim.family >= 3:
        return _tokens(system + b"\n# Tools\n" + TOOLS)
    return _tokens(system)


def _turn_tokens(sim: Sim, prompt: bytes) -> int:
    return _tokens(prompt) if sim.family >= 3 else _tokens(b"<u>" + prompt + b"</u>")


def _clear(sim: Sim, keep_system_prompt: int) -> None:
    extra = (None, None) if sim.family >= 3 else ()
    assert sim.lib.rkllm_clear_kv_cache(sim.handle, keep_system_prompt, *extra) == 0


def _run(sim: Sim, prompt: bytes, **kw: Any) -> dict[str, Any]:
    assert sim.run(prompt, **kw) == 0
    return sim.inspect()["run"]


@_only("1.2.0", "1.2", "1.3")
def test_the_system_segment_is_prefilled_once_and_kept_across_clears(sim: Sim) -> None:
    _set_system(sim, SYSTEM)
    system = _system_tokens(sim, SYSTEM)
    first = _run(sim, b"[sim:tokens=3] turn on the light", keep_history=1)
    assert first["prefill_tokens"] == system + _turn_tokens(sim, b"[sim:tokens=3] turn on the light")
    assert first["cached_tokens"] == 0

    second = _run(sim, b"[sim:tokens=2] and the fan", keep_history=1)
    assert second["cached_tokens"] == first["context_tokens"] + 3  # its turn and 3 answer tokens
    assert second["prefill_tokens"] == _turn_tokens(sim, b"[sim:tokens=2] and the fan")

    _clear(sim, 1)  # a new conversation: the system prompt stays
    third = _run(sim, b"hello", keep_history=1)
    assert (third["cached_tokens"], third["prefill_tokens"]) == (system, _turn_tokens(sim, b"hello"))
    assert sim.inspect()["kv_cache"]["system_dropped_by_clear"] == 0

    _clear(sim, 0)  # everything goes, the system prompt included
    fourth = _run(sim, b"hello", keep_history=1)
    assert fourth["prefill_tokens"] == system + _turn_tokens(sim, b"hello")
    assert sim.inspect()["kv_cache"]["system_dropped_by_clear"] == 1


@_only("1.2.0", "1.2", "1.3")
def test_keep_history_0_drops_the_turn_but_keeps_the_system_prompt(sim: Sim) -> None:
    _set_system(sim, SYSTEM)
    _run(sim, b"one")
    again = _run(sim, b"two")
    assert again["cached_tokens"] == _system_tokens(sim, SYSTEM)
    assert again["prefill_tokens"] == _turn_tokens(sim, b"two")


@_only("1.2.0", "1.2", "1.3")
def test_another_system_prompt_rebuilds_the_cache(sim: Sim) -> None:
    _set_system(sim, SYSTEM)
    _run(sim, b"one", keep_history=1)
    _set_system(sim, b"Another system prompt.")
    run = _run(sim, b"two", keep_history=1)
    assert run["cached_tokens"] == 0
    assert run["prefill_tokens"] == _system_tokens(sim, b"Another system prompt.") + _turn_tokens(
        sim, b"two"
    )
    assert sim.inspect()["history"] == ["two", sim.inspect()["history"][1]]


@_only("1.2", "1.3")
def test_perf_and_kv_cache_size_report_the_same_counts(sim: Sim) -> None:
    _set_system(sim, SYSTEM)
    run = _run(sim, b"[sim:tokens=4] hi", keep_history=1)
    perf = sim.events[-1].perf
    assert perf is not None and perf["prefill_tokens"] == run["prefill_tokens"]
    size = ctypes.c_int(-1)
    assert sim.lib.rkllm_get_kv_cache_size(sim.handle, ctypes.byref(size)) == 0
    assert size.value == run["context_tokens"] + 4


def test_a_saved_prompt_cache_spares_the_common_prefix_after_a_restart(
    make_sim: Any, abi: str, tmp_path: Path
) -> None:
    path = tmp_path / "prefix.bin"
    prefix = SYSTEM  # on 1.1 the system text is part of the prompt: the cache is all there is
    before = make_sim(abi)
    if before.family >= 2:
        _set_system(before, prefix)
        saved = _run(before, b"first turn", prompt_cache=(1, str(path).encode()))
    else:
        saved = _run(before, prefix + b"first turn", prompt_cache=(1, str(path).encode()))
    assert saved["save_prompt_cache"] == 1 and saved["prompt_cache_path"] == str(path)
    assert before.inspect()["prompt_cache"]["saves"] == 1
    assert path.read_bytes().startswith(b"RKLLMSIM-PROMPT-CACHE 1 abi=" + abi.encode() + b"\n")

    after = make_sim(abi)  # a new handle: nothing in its KV cache
    assert after.lib.rkllm_load_prompt_cache(after.handle, str(path).encode()) == 0
    if after.family >= 2:
        _set_system(after, prefix)
        run = _run(after, b"other turn")
        system = _system_tokens(after, prefix)
    else:
        run = _run(after, prefix + b"other turn")
        system = _tokens(prefix)
    assert run["prompt_cache_tokens"] >= system - 1  # the prefix came from the file (rounding)
    assert run["prefill_tokens"] == run["context_tokens"] - run["prompt_cache_tokens"]
    assert run["prefill_tokens"] <= 10
    assert after.inspect()["prompt_cache"]["loaded"] == str(path)

    assert after.lib.rkllm_release_prompt_cache(after.handle) == 0
    assert after.inspect()["prompt_cache"]["loaded"] is None


@pytest.mark.parametrize("content", [b"", b"garbage", b"RKLLMSIM-PROMPT-CACHE 1 abi=other\nx"])
def test_a_corrupt_or_foreign_prompt_cache_is_refused(sim: Sim, tmp_path: Path, content: bytes) -> None:
    path = tmp_path / "bad.bin"
    path.write_bytes(content)
    assert sim.lib.rkllm_load_prompt_cache(sim.handle, str(path).encode()) == -1
    assert sim.inspect()["prompt_cache"]["loaded"] is None


def test_prefill_is_charged_for_what_is_computed(make_sim: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    # Lower bounds only (a sleep never ends early): the first run pays for the system prompt.
    sim = make_sim("1.2")
    monkeypatch.setenv("RKLLM_SIM_PREFILL_TPS", "1000")
    _set_system(sim, SYSTEM)
    _run(sim, b"[sim:tokens=1] x")
    perf = sim.events[-1].perf
    assert perf is not None
    assert perf["prefill_tokens"] > 300 and perf["prefill_time_ms"] >= perf["prefill_tokens"] * 1.0
