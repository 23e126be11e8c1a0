"""Device control over MQTT: tools in, tool calls out, results back, on every ABI family.

Real Mosquitto, the real simulator of each family; what crossed the C boundary is read back from
the simulator's own record (rkllm_sim_inspect).
"""

from __future__ import annotations

import ctypes
import json
from typing import Any

import pytest

from rkllm_mqtt.simulator import ABIS, build_simulator, expected_answer

pytestmark = pytest.mark.timeout(60)

TURN_ON = {"type": "function", "function": {
    "name": "HassTurnOn", "description": "Turns on/opens a device or entity",
    "parameters": {"type": "object", "properties": {"name": {"type": "string"},
                                                    "area": {"type": "string"}}}}}
TURN_OFF = {"type": "function", "function": {
    "name": "HassTurnOff", "description": "Turns off/closes a device or entity",
    "parameters": {"type": "object", "properties": {"name": {"type": "string"}}}}}
GET_TIME = {"type": "function", "function": {"name": "t", "parameters": {
    "type": "object", "properties": {"n": {"type": "integer"}}}}}
TOOLS = [TURN_ON, TURN_OFF]
DEEP: list = [1]
for _ in range(15):
    DEEP = [DEEP]
TOOLS_JSON = json.dumps(TOOLS, ensure_ascii=False)  # the canonical form the runtime receives


def _inspect(lib: Any, handle: Any) -> dict[str, Any]:
    fn = lib["rkllm_sim_inspect"]
    fn.argtypes = [ctypes.c_void_p]
    fn.restype = ctypes.c_char_p
    return json.loads(fn(handle))


def inspect(svc: Any) -> dict[str, Any]:
    return svc.engine.session.call_native(_inspect)


def tokens_text(replies: list[dict]) -> str:
    by_seq = {r["seq"]: r["text"] for r in replies if r["type"] == "token"}
    return "".join(by_seq[i] for i in sorted(by_seq))


@pytest.fixture
def on_family(broker, daemon):
    def start(abi: str, **sections: Any) -> Any:
        runtime = {"library": str(build_simulator(abi)), "abi": abi} | sections.pop("runtime", {})
        return daemon(broker, runtime=runtime, **sections)
    return start


@pytest.mark.parametrize("abi", ABIS)
def test_turn_on_is_a_tool_call_then_the_result_is_answered(abi, broker, on_family,
                                                            probe_factory):
    svc = on_family(abi)
    probe = probe_factory(broker, topics=(f"{svc.prefix}/#",))
    probe.publish(svc.topics["prompt"], {"id": "c1", "conversation": "kitchen", "system": "Be brief.",
                                         "prompt": "Turn on the kitchen light.", "tools": TOOLS})
    final = probe.final("c1")
    assert final["status"] == "ok" and final["finish_reason"] == "tool_calls"
    assert final["text"] == ""
    [call] = final["tool_calls"]
    assert (call["name"], call["arguments"]) == ("HassTurnOn", {"name": "kitchen light"})
    assert call["id"].startswith("call_")
    # the simulator wrote the call over many 3-byte tokens; none of them reached MQTT
    assert probe.replies("c1", "token") == []
    sim = inspect(svc)
    assert sim["run"]["tool_call"] == "HassTurnOn"
    if abi in ("1.2", "1.3"):  # the tools and the system prompt went to rkllm_set_function_tools
        assert sim["function_tools"] == {"system_prompt": "Be brief.", "tools": TOOLS_JSON,
                                         "tool_response_str": "tool_response", "calls": 1}
        assert (sim["run"]["prompt"], sim["run"]["role"]) == ("Turn on the kitchen light.", "user")
    else:  # rendered into the system text by the daemon, Qwen's way
        assert "function_tools" not in sim or sim["function_tools"] is None
        prompt = sim["run"]["prompt"]
        assert prompt.startswith("Be brief.\n\n# Tools\n")
        assert "<tools>\n" + "\n".join(json.dumps(t) for t in TOOLS) + "\n</tools>" in prompt
        assert prompt.endswith("Turn on the kitchen light.")

    result = json.dumps({"success": True, "targets": ["light.kitchen"]})
    probe.publish(svc.topics["prompt"], {
        "id": "c2", "conversation": "kitchen", "system": "Be brief.", "tools": TOOLS,
        "messages": [{"role": "tool", "tool_call_id": call["id"], "name": "HassTurnOn",
                      "content": result}]})
    final = probe.final("c2")
    sim = inspect(svc)
    assert final["status"] == "ok" and final["finish_reason"] == "stop"
    assert "tool_calls" not in final
    assert tokens_text(probe.replies("c2")) == final["text"]
    if abi in ("1.2", "1.3"):  # only the result, as one role "tool" input; tools not set again
        assert (sim["run"]["prompt"], sim["run"]["role"]) == (f"[{result}]", "tool")
        assert sim["function_tools"]["calls"] == 1
    elif abi == "1.2.0":  # the KV cache continues: only the result is prefilled
        assert sim["run"]["prompt"] == f"<tool_response>\n{result}\n</tool_response>"
        assert sim["run"]["keep_history"] == 1
    else:  # 1.1 has no KV cache: the whole chat is replayed, the result in Qwen's markup
        assert sim["run"]["prompt"].endswith(f"<tool_response>\n{result}\n</tool_response>")
        assert '"name": "HassTurnOn", "arguments": {"name": "kitchen light"}' in sim["run"]["prompt"]
    assert final["text"] == expected_answer(sim["run"]["prompt"])


def test_whole_chat_with_the_tool_round_continues_the_cache(broker, daemon, probe_factory):
    """Home Assistant's way: every turn sends the whole chat; only the results are new."""
    svc = daemon(broker)
    probe = probe_factory(broker, topics=(f"{svc.prefix}/#",))
    chat: list[dict[str, Any]] = [{"role": "system", "content": "You control the house."},
                                  {"role": "user", "content": "Turn off the porch light"}]
    probe.publish(svc.topics["prompt"], {"id": "w1", "conversation": "ha-1", "messages": chat,
                                         "tools": TOOLS})
    final = probe.final("w1")
    [call] = final["tool_calls"]
    assert (call["name"], call["arguments"]) == ("HassTurnOff", {"name": "porch light"})
    assert inspect(svc)["function_tools"]["system_prompt"] == "You control the house."
    chat += [{"role": "assistant", "content": None,
              "tool_calls": [{"id": call["id"], "type": "function", "function": {
                  "name": call["name"], "arguments": json.dumps(call["arguments"])}}]},
             {"role": "tool", "tool_call_id": call["id"], "name": call["name"],
              "content": '{"success": true}'},
             {"role": "tool", "tool_call_id": "other", "name": "HassTurnOff",
              "content": "not JSON"}]
    probe.publish(svc.topics["prompt"], {"id": "w2", "conversation": "ha-1", "messages": chat,
                                         "tools": TOOLS})
    final = probe.final("w2")
    sim = inspect(svc)
    # both results of the round merged into one JSON array, as Rockchip's 1.3.0 demo does
    assert (sim["run"]["prompt"], sim["run"]["role"]) == ('[{"success": true}, "not JSON"]', "tool")
    assert sim["clear_kv_cache"]["count"] == 0 and sim["function_tools"]["calls"] == 1
    assert final["finish_reason"] == "stop"
    # the next user turn continues too: the tool round is part of the stored conversation
    chat += [{"role": "assistant", "content": final["text"]},
             {"role": "user", "content": "Thanks"}]
    probe.publish(svc.topics["prompt"], {"id": "w3", "conversation": "ha-1", "messages": chat,
                                         "tools": TOOLS})
    assert probe.final("w3")["text"] == expected_answer("Thanks")
    sim = inspect(svc)
    assert (sim["run"]["prompt"], sim["run"]["role"]) == ("Thanks", "user")
    assert sim["clear_kv_cache"]["count"] == 0


def test_other_tools_in_a_conversation_rebuild_its_cache(broker, daemon, probe_factory):
    svc = daemon(broker)
    probe = probe_factory(broker, topics=(f"{svc.prefix}/#",))
    probe.publish(svc.topics["prompt"], {"id": "o1", "conversation": "c", "prompt": "hello",
                                         "tools": [TURN_ON]})
    assert probe.final("o1")["finish_reason"] == "stop"
    probe.publish(svc.topics["prompt"], {"id": "o2", "conversation": "c", "prompt": "again",
                                         "tools": TOOLS})
    probe.final("o2")
    sim = inspect(svc)
    assert sim["clear_kv_cache"]["count"] == 1  # the cache was built with the other tools
    assert sim["function_tools"]["tools"] == TOOLS_JSON and sim["function_tools"]["calls"] == 2
    assert sim["run"]["prompt"].startswith("User: hello\nAssistant: ")  # replayed
    # a request without tools takes them away again ("[]"), and is plain text
    probe.publish(svc.topics["prompt"], {"id": "o3", "prompt": "Turn on the light"})
    final = probe.final("o3")
    assert final["finish_reason"] == "stop" and final["text"] == expected_answer("Turn on the light")
    assert inspect(svc)["function_tools"]["tools"] == "[]"


def test_text_around_a_call_streams_and_the_call_does_not(broker, daemon, probe_factory):
    """The model's output is the echo of the prompt ([sim:echo]): text, a call, more text."""
    svc = daemon(broker)
    probe = probe_factory(broker, topics=(f"{svc.prefix}/#",))
    prompt = 'a <tool_call>{"name":"t","arguments":{"n":7}}</tool_call> b [sim:echo]'
    assert prompt.index(" [sim") <= 60  # the simulator echoes the first 60 characters
    probe.publish(svc.topics["prompt"], {"id": "e1", "prompt": prompt, "tools": [GET_TIME]})
    final = probe.final("e1")
    assert final["finish_reason"] == "tool_calls"
    assert [(c["name"], c["arguments"]) for c in final["tool_calls"]] == [("t", {"n": 7})]
    echo = expected_answer(prompt)
    before, after = echo.split(" <tool_call>")[0], echo.split("</tool_call>")[1]
    assert final["text"] == before + after
    tokens = [r["text"] for r in probe.replies("e1", "token")]
    assert "".join(tokens) == final["text"]
    assert not any(ch in "".join(tokens) for ch in "<{}>")


@pytest.mark.parametrize("markup", [
    '<tool_call>{"name":"t","arguments":{bad}}</tool_call>',  # bad JSON
    '<tool_call>{"name":"no","arguments":{}}</tool_call>',  # a function not offered
    '<tool_call>{"name":"t","arguments":[1]}</tool_call>',  # arguments not an object
    '<function=no><parameter=n>1</parameter></function>',  # XML form, unknown function
    '<tool_call>{"name":"t","arguments":{}',  # still open when the answer ends
])
def test_malformed_markup_is_text_every_time(markup, broker, daemon, probe_factory, caplog):
    svc = daemon(broker)
    probe = probe_factory(broker, topics=(f"{svc.prefix}/#",))
    prompt = f"say {markup} [sim:echo]"
    assert prompt.index(" [sim") <= 60  # the simulator echoes the first 60 characters
    probe.publish(svc.topics["prompt"], {"id": "m1", "prompt": prompt, "tools": [GET_TIME]})
    final = probe.final("m1")
    assert final["status"] == "ok" and final["finish_reason"] == "stop"
    assert "tool_calls" not in final
    assert final["text"] == expected_answer(prompt)  # exactly what the model wrote
    assert tokens_text(probe.replies("m1")) == final["text"]
    assert any("kept as text" in r.getMessage() for r in caplog.records)


def test_xml_form_and_no_streaming(broker, daemon, probe_factory):
    svc = daemon(broker)
    probe = probe_factory(broker, topics=(f"{svc.prefix}/#",))
    probe.publish(svc.topics["prompt"], {"id": "x1", "prompt": "turn on the fan [sim:tool_xml]",
                                         "tools": TOOLS, "stream": False})
    final = probe.final("x1")
    assert [(c["name"], c["arguments"]) for c in final["tool_calls"]] == [
        ("HassTurnOn", {"name": "fan"})]
    assert probe.replies("x1", "token") == []


def test_tool_calls_cross_the_process_boundary(broker, on_family, probe_factory):
    svc = on_family("1.3", runtime={"isolation": "process"})
    probe = probe_factory(broker, topics=(f"{svc.prefix}/#",))
    probe.publish(svc.topics["prompt"], {"id": "p1", "prompt": "Use HassTurnOff now",
                                         "tools": TOOLS})
    final = probe.final("p1")
    assert [(c["name"], c["arguments"]) for c in final["tool_calls"]] == [("HassTurnOff", {})]


@pytest.mark.parametrize(("tools", "message"), [
    ("x", "tools: must be a list"),
    ([TURN_ON] * 2, "tools[1].function.name: 'HassTurnOn' is given twice"),
    ([{"type": "function", "function": {"name": f"f{i}"}} for i in range(65)],
     "tools: at most 64 tools"),
    ([{"type": "function", "function": {"name": "bad name"}}], "tools[0].function.name: must be"),
    ([{"type": "retrieval", "function": {"name": "f"}}], "tools[0]: must be"),
    ([{"type": "function", "function": {"name": "f", "parameters": "x"}}],
     "tools[0].function.parameters: must be a JSON schema object"),
    ([{"type": "function", "function": {"name": "f", "parameters": {"a": DEEP}}}],
     "tools[0]: nested deeper than 16 levels"),
    ([{"type": "function", "function": {"name": f"f{i}", "description": "d" * 1000}}
      for i in range(40)], "characters of JSON, over 32768"),
])
def test_tool_limits_are_invalid_request_naming_the_field(tools, message, broker, daemon,
                                                          probe_factory):
    svc = daemon(broker, limits={"max_payload_bytes": 200000})
    probe = probe_factory(broker, topics=(f"{svc.prefix}/#",))
    probe.publish(svc.topics["prompt"], {"id": "l1", "prompt": "hi", "tools": tools})
    final = probe.final("l1")
    assert final["status"] == "error" and final["error"]["code"] == "invalid_request"
    assert message in final["error"]["message"]


@pytest.mark.parametrize(("message", "why"), [
    ({"role": "tool", "content": 5}, "messages[0].content: a tool result must be a string"),
    ({"role": "tool", "content": "x", "tool_call_id": 3}, "messages[0].tool_call_id: must be"),
    ({"role": "assistant", "tool_calls": [{"id": "c"}]}, "messages[0].tool_calls[0]: must be"),
    ({"role": "assistant", "tool_calls": "x"}, "messages[0].tool_calls: must be a list"),
])
def test_bad_tool_turns_are_invalid_request(message, why, broker, daemon, probe_factory):
    svc = daemon(broker)
    probe = probe_factory(broker, topics=(f"{svc.prefix}/#",))
    probe.publish(svc.topics["prompt"], {"id": "b1", "messages": [message]})
    final = probe.final("b1")
    assert final["error"]["code"] == "invalid_request" and why in final["error"]["message"]
    # and the daemon keeps serving
    probe.publish(svc.topics["prompt"], {"id": "b2", "prompt": "still there?"})
    assert probe.final("b2")["text"] == expected_answer("still there?")
