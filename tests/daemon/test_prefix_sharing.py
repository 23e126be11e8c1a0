"""The shared prefix over MQTT: a long system prompt and tools are prefilled once for every conversation.

Real Mosquitto, the real simulator; after each reply the simulator's record says what that run
sent (its prompt text), what it prefilled and whether any clear dropped the system prompt.
"""

from __future__ import annotations

import ctypes
import json
import math
from typing import Any

import pytest

from rkllm_mqtt.simulator import build_simulator

pytestmark = pytest.mark.timeout(120)

SYSTEM = ("You are the voice assistant of a smart home. Answer in one short sentence. " * 30).strip()
TOOLS = [{"type": "function", "function": {
    "name": "HassTurnOn", "description": "Turns on/opens a device or entity",
    "parameters": {"type": "object", "properties": {"name": {"type": "string"}}}}}]
TEMPLATE = {"prompt_prefix": "<|im_start|>user\n", "prompt_postfix": "<|im_end|>\n<|im_start|>assistant\n"}


def _inspect(lib: Any, handle: Any) -> dict[str, Any]:
    fn = lib["rkllm_sim_inspect"]
    fn.argtypes = [ctypes.c_void_p]
    fn.restype = ctypes.c_char_p
    return json.loads(fn(handle))


def inspect(svc: Any) -> dict[str, Any]:
    return svc.engine.session.call_native(_inspect)


@pytest.fixture
def on_family(broker, daemon):
    def start(abi: str, **runtime: Any) -> Any:
        # In-process, so the test can read the simulator's record through the Session.
        keys = ({"library": str(build_simulator(abi)), "abi": abi, "max_context_len": 4096,
                 "isolation": "thread"} | TEMPLATE | runtime)
        return daemon(broker, runtime=keys)
    return start


def _ask(probe: Any, svc: Any, rid: str, conversation: str, text: str,
         system: str = SYSTEM) -> dict[str, Any]:
    probe.publish(svc.topics["prompt"], {"id": rid, "conversation": conversation,
                                         "system": system, "prompt": text, "tools": TOOLS})
    final = probe.final(rid)
    assert final["status"] == "ok", final
    return final


@pytest.mark.parametrize("abi", ["1.2.0", "1.2", "1.3"])
def test_three_conversations_prefill_the_prefix_once(abi, broker, on_family, probe_factory):
    svc = on_family(abi)
    probe = probe_factory(broker, topics=(f"{svc.prefix}/#",))
    prefix_tokens = math.ceil(len(SYSTEM) / 4)
    first = True
    for c in range(3):
        for t in range(3):
            text = f"Question {t} in room {c}?"
            final = _ask(probe, svc, f"r{c}{t}", f"voice-{c}", text)
            sim = inspect(svc)
            run = sim["run"]
            assert run["prompt"] == text  # only the new turn crosses into the library
            assert SYSTEM[:40] not in run["prompt"]
            assert sim["kv_cache"]["system_dropped_by_clear"] == 0
            if sim["clear_kv_cache"]["count"]:
                assert sim["clear_kv_cache"]["keep_system_prompt"] == 1
            usage = final["usage"]
            assert usage["prompt_tokens"] == usage["prefill_tokens"] + usage["cached_tokens"]
            if first:
                assert run["prefill_tokens"] > prefix_tokens
                first = False
            else:  # the prefix, and within a conversation its turns, come from the cache
                assert run["cached_tokens"] >= prefix_tokens
                assert run["prefill_tokens"] < 30
                assert usage["cached_tokens"] >= prefix_tokens
            if abi in ("1.2", "1.3"):
                assert sim["function_tools"]["calls"] == 1  # set once, kept in the KV cache
                assert sim["function_tools"]["system_prompt"] == SYSTEM
                assert usage["tokens_source"] == "runtime"
                assert usage["prefill_tokens"] == run["prefill_tokens"]
            else:
                assert sim["chat_template"]["system_prompt"].startswith(SYSTEM)
        assert inspect(svc)["clear_kv_cache"]["count"] == c  # one clear per new conversation


@pytest.fixture
def on_defaults(broker, daemon):
    """The daemon with the DEFAULT runtime config (chat_template "auto", no prefix/postfix)."""
    def start(abi: str) -> Any:
        keys = {"library": str(build_simulator(abi)), "abi": abi, "max_context_len": 4096,
                "isolation": "thread"}
        return daemon(broker, runtime=keys)
    return start


@pytest.mark.parametrize("with_tools", [False, True], ids=["no-tools", "tools"])
@pytest.mark.parametrize("abi", ["1.2.0", "1.2", "1.3"])
def test_with_the_default_config_the_prefix_reaches_the_library_once(
    abi, with_tools, broker, on_defaults, probe_factory
):
    """Issue #9's bar: 3 voice sessions (new conversation ids) of 3 turns each. The long system
    prompt (and tools) reach rkllm_set_chat_template / rkllm_set_function_tools once, never a
    prompt text; no clear drops the system prompt; each run sends only its new turn."""
    svc = on_defaults(abi)
    probe = probe_factory(broker, topics=(f"{svc.prefix}/#",))
    native_tools = with_tools and abi != "1.2.0"
    prefix_tokens = math.ceil(len(SYSTEM) / 4)
    for c in range(3):
        for t in range(3):
            text = f"Question {t} in room {c}?"
            rid = f"d{c}{t}"
            request = {"id": rid, "conversation": f"assist-{c}", "system": SYSTEM, "prompt": text}
            probe.publish(svc.topics["prompt"], request | ({"tools": TOOLS} if with_tools else {}))
            final = probe.final(rid)
            assert final["status"] == "ok", final
            sim = inspect(svc)
            run = sim["run"]
            assert run["prompt"] == text  # only the new turn, never the system prompt
            for entry in sim["history"]:
                assert SYSTEM[:40] not in entry
            assert sim["kv_cache"]["system_dropped_by_clear"] == 0
            if sim["clear_kv_cache"]["count"]:
                assert sim["clear_kv_cache"]["keep_system_prompt"] == 1
            if native_tools:  # 1.2.1+: the tools call holds the system prompt
                assert sim["function_tools"]["calls"] == 1
                assert sim["function_tools"]["system_prompt"] == SYSTEM
                assert sim["chat_template"] is None
            else:  # the chat template's system segment holds it (with the tools on 1.2.0)
                template = sim["chat_template"]
                assert template["calls"] == 1
                assert template["system_prompt"].startswith(f"<|im_start|>system\n{SYSTEM}")
                assert template["system_prompt"].endswith("<|im_end|>\n")
                assert ("<tools>" in template["system_prompt"]) == with_tools
                assert template["prompt_prefix"] == "<|im_start|>user\n"
                if abi == "1.2" and not with_tools:
                    assert sim.get("function_tools") is None
            if (c, t) != (0, 0):  # the prefix came from the KV cache
                assert run["cached_tokens"] >= prefix_tokens
                assert run["prefill_tokens"] < 40
    assert inspect(svc)["clear_kv_cache"]["count"] == 2  # one per new conversation after the first


def test_switching_between_two_conversations_never_prefills_the_prefix_again(
    broker, on_family, probe_factory
):
    svc = on_family("1.3")
    probe = probe_factory(broker, topics=(f"{svc.prefix}/#",))
    prefix_tokens = math.ceil(len(SYSTEM) / 4)
    _ask(probe, svc, "a0", "a", "first in a")
    for n, conversation in enumerate(["b", "a", "b", "a"], start=1):
        _ask(probe, svc, f"s{n}", conversation, f"turn {n} in {conversation}")
        run = inspect(svc)["run"]
        assert run["cached_tokens"] >= prefix_tokens
        assert run["prefill_tokens"] < prefix_tokens  # its own history and turn, not the prefix
        assert run["prompt"].endswith(f"turn {n} in {conversation}")
    assert inspect(svc)["kv_cache"]["system_dropped_by_clear"] == 0


def test_another_system_prompt_rebuilds_the_prefix(broker, on_family, probe_factory):
    svc = on_family("1.2")
    probe = probe_factory(broker, topics=(f"{svc.prefix}/#",))
    _ask(probe, svc, "x1", "one", "hello")
    other = SYSTEM.replace("smart home", "garden shed")
    _ask(probe, svc, "x2", "two", "hello", system=other)
    sim = inspect(svc)
    assert sim["function_tools"]["system_prompt"] == other and sim["function_tools"]["calls"] == 2
    assert sim["run"]["prefill_tokens"] > math.ceil(len(other) / 4)
    assert sim["run"]["cached_tokens"] == 0


def test_context_too_long_says_by_how_much(broker, on_family, probe_factory):
    svc = on_family("1.2", max_context_len=256)
    probe = probe_factory(broker, topics=(f"{svc.prefix}/#",))
    probe.publish(svc.topics["prompt"], {"id": "long", "conversation": "c", "system": SYSTEM,
                                         "prompt": "hello", "tools": TOOLS})
    final = probe.final("long")
    assert final["status"] == "error" and final["error"]["code"] == "context_too_long"
    message = final["error"]["message"]
    assert "more than runtime.max_context_len (256)" in message
    needed = int(message.split("about ")[1].split(" tokens")[0])
    assert needed > math.ceil(len(SYSTEM) / 4)
    assert f"{needed - 256} more than" in message
    # and the daemon keeps serving
    probe.publish(svc.topics["prompt"], {"id": "short", "prompt": "hi"})
    assert probe.final("short")["status"] == "ok"


def test_the_prefix_is_shared_with_the_runtime_in_a_child_process(broker, on_family, probe_factory):
    svc = on_family("1.3", isolation="process")
    probe = probe_factory(broker, topics=(f"{svc.prefix}/#",))
    first = _ask(probe, svc, "p1", "one", "hello")
    second = _ask(probe, svc, "p2", "two", "hello again")
    assert first["usage"]["cached_tokens"] == 0
    assert second["usage"]["cached_tokens"] >= math.ceil(len(SYSTEM) / 4)
    assert second["usage"]["prefill_tokens"] < 30 and second["usage"]["tokens_source"] == "runtime"
