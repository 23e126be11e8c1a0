"""Function calling in the runtime: the markup filter and parser, Qwen's rendering, the plan per
family, and what reaches rkllm_set_function_tools / RKLLMInput.role in the simulator."""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

import pytest

from rkllm_mqtt.runtime import GenerationRequest, Message, Session
from rkllm_mqtt.runtime.contract import ToolCall
from rkllm_mqtt.runtime.prompt import TemplateConfig, plan_request
from rkllm_mqtt.runtime.tools import (
    MAX_BLOCK_CHARS,
    ToolCallFilter,
    ToolSet,
    hermes_system,
    merge_tool_results,
    render_tool_calls,
    render_tool_results,
)
from rkllm_mqtt.simulator import expected_answer

LIGHT = {"type": "function", "function": {"name": "HassTurnOn", "parameters": {
    "type": "object", "properties": {"name": {"type": "string"}, "brightness": {"type": "integer"}}}}}
TOOLS_JSON = json.dumps([LIGHT])
TOOLS = ToolSet.from_json(TOOLS_JSON)


def run_filter(pieces: list[str]) -> tuple[list[str], str, list[tuple[str, dict[str, Any]]]]:
    f = ToolCallFilter(TOOLS)
    released = [f.feed(p) for p in pieces] + [f.finish()]
    assert "".join(released) == f.text  # tokens concatenate to the final text
    return released, f.text, [(c.name, c.arguments) for c in f.calls]


def test_a_call_split_one_character_at_a_time_never_reaches_the_text() -> None:
    output = 'Sure.\n<tool_call>\n{"name": "HassTurnOn", "arguments": {"name": "lamp"}}\n</tool_call>'
    released, text, calls = run_filter(list(output))
    assert text == "Sure."
    assert calls == [("HassTurnOn", {"name": "lamp"})]
    assert not any("<" in piece or "{" in piece for piece in released)


def test_xml_form_with_and_without_tool_call_and_typed_values() -> None:
    wrapped = ("<tool_call>\n<function=HassTurnOn>\n<parameter=name>\nkitchen\n</parameter>\n"
               "<parameter=brightness>\n40\n</parameter>\n</function>\n</tool_call>")
    assert run_filter([wrapped])[2] == [("HassTurnOn", {"name": "kitchen", "brightness": 40})]
    bare = "<function=HassTurnOn><parameter=name>7</parameter></function>"
    assert run_filter([bare])[2] == [("HassTurnOn", {"name": "7"})]  # a string stays a string


def test_arguments_as_a_json_string_and_several_calls() -> None:
    output = ('<tool_call>{"name": "HassTurnOn", "arguments": "{\\"name\\": \\"a\\"}"}</tool_call>\n'
              '<tool_call>{"name": "HassTurnOn", "arguments": {"name": "b"}}</tool_call>\n')
    assert run_filter([output]) [1:] == ("", [("HassTurnOn", {"name": "a"}),
                                              ("HassTurnOn", {"name": "b"})])


@pytest.mark.parametrize("block", [
    '<tool_call>{"name": "HassTurnOn", "arguments": {oops}}</tool_call>',
    '<tool_call>{"name": "Other", "arguments": {}}</tool_call>',
    '<tool_call>{"name": "HassTurnOn", "arguments": "not json"}</tool_call>',
    '<tool_call>["HassTurnOn"]</tool_call>',
    '<tool_call><function=HassTurnOn>x<parameter=name>a</parameter></function></tool_call>',
    '<function=Other></function>',
    '<tool_call>{"name": "HassTurnOn", "arguments": {}}',
])
def test_malformed_blocks_are_text_exactly_as_written(block: str) -> None:
    output = f"before {block} after"
    if not block.endswith("</tool_call>") and not block.endswith("</function>"):
        output = f"before {block}"  # an unclosed block runs to the end
    assert run_filter([output])[1:] == (output, [])


def test_a_block_that_never_closes_is_released_once_too_long() -> None:
    """The stream is not held for ever: past MAX_BLOCK_CHARS the block is text, and streams."""
    f = ToolCallFilter(TOOLS)
    assert f.feed("<tool_call>{") == ""
    released = f.feed("x" * MAX_BLOCK_CHARS)
    assert released == "<tool_call>{" + "x" * MAX_BLOCK_CHARS
    assert f.feed(" more") == " more" and f.finish() == "" and f.calls == []


def test_plain_text_with_angle_brackets_and_trailing_blanks_is_kept() -> None:
    output = "1 < 2 and <b>bold</b> <tool or <functio\n\n"
    assert run_filter(list(output))[1] == output


def test_a_valid_call_next_to_a_malformed_one() -> None:
    output = ('<tool_call>{"name": "Other"}</tool_call>'
              '<tool_call>{"name": "HassTurnOn", "arguments": {}}</tool_call>')
    _, text, calls = run_filter([output])
    assert text == '<tool_call>{"name": "Other"}</tool_call>' and calls == [("HassTurnOn", {})]


_OUTPUTS = [
    'ok <tool_call>{"name": "HassTurnOn", "arguments": {"name": "x"}}</tool_call> then',
    "<function=HassTurnOn><parameter=name>y</parameter></function>\n",
    '<tool_call>{"name": "Nope", "arguments": {}}</tool_call><tool_call>{"name": "HassTurnOn"}'
    "</tool_call><tool",
    "a <b> </tool_call> <function <function=x <tool_call",
]


@pytest.mark.parametrize("output", _OUTPUTS)
def test_how_the_output_is_cut_into_tokens_changes_nothing(output: str) -> None:
    """Every single cut, every pair of cuts and every fixed token size give the same result."""
    whole = run_filter([output])[1:]
    n = len(output)
    splits = [[output[:i], output[i:]] for i in range(n + 1)]
    splits += [[output[:i], output[i:j], output[j:]] for i in range(n) for j in range(i, n, 5)]
    splits += [[output[i:i + k] for i in range(0, n, k)] for k in range(1, 13)]
    for pieces in splits:
        assert run_filter(pieces)[1:] == whole, pieces


def test_odd_schemas_do_not_break_the_parser() -> None:
    odd = ToolSet.from_json(json.dumps([
        {"type": "function", "function": {"name": "a", "parameters": {"properties": [1]}}},
        {"type": "function", "function": {"name": "b", "parameters": {"properties": {
            "x": {"type": ["integer", "null"]}, "y": 3}}}},
        {"type": "function", "function": {"name": "c"}}]))
    assert odd.functions == {"a": {}, "b": {"x": "string", "y": "string"}, "c": {}}


def test_hermes_rendering_is_qwens() -> None:
    system = hermes_system("Be brief.", TOOLS_JSON)
    assert system.startswith("Be brief.\n\n# Tools\n\nYou may call one or more functions")
    assert f"<tools>\n{json.dumps(LIGHT)}\n</tools>" in system
    assert system.endswith('<tool_call>\n{"name": <function-name>, "arguments": '
                           '<args-json-object>}\n</tool_call>')
    assert hermes_system(None, TOOLS_JSON).startswith("# Tools\n")
    results = [Message("tool", '{"ok": 1}'), Message("tool", "done")]
    assert render_tool_results(results) == ('<tool_response>\n{"ok": 1}\n</tool_response>\n'
                                            "<tool_response>\ndone\n</tool_response>")
    assert merge_tool_results(results) == '[{"ok": 1}, "done"]'
    deep = "[" * 5000 + "]" * 5000  # too deep to parse: kept as the string it is
    assert merge_tool_results([Message("tool", deep)]) == json.dumps([deep])
    assert render_tool_calls([ToolCall("c", "HassTurnOn", {"name": "é"})]) == (
        '<tool_call>\n{"name": "HassTurnOn", "arguments": {"name": "é"}}\n</tool_call>')


CHAT = (Message("user", "turn on the lamp"),
        Message("assistant", "", tool_calls=(ToolCall("c1", "HassTurnOn", {"name": "lamp"}),)),
        Message("tool", '{"ok": true}', tool_call_id="c1", name="HassTurnOn"))


def test_plan_per_family() -> None:
    config = TemplateConfig(system_prompt="Configured.")
    native = plan_request(config, CHAT[:1], None, native_template=True, native_tools=True,
                          tools_json=TOOLS_JSON)
    assert (native.text, native.role, native.function_tools) == (
        "turn on the lamp", "user", ("Configured.", TOOLS_JSON))
    rendered = plan_request(config, CHAT[:1], "Mine.", native_template=True, native_tools=False,
                            tools_json=TOOLS_JSON)
    assert rendered.function_tools is None
    assert rendered.text == hermes_system("Mine.", TOOLS_JSON) + "\n\nturn on the lamp"
    round_native = plan_request(config, CHAT[2:], None, native_template=True, native_tools=True,
                                tools_json=TOOLS_JSON, continues=True)
    assert (round_native.text, round_native.role) == ('[{"ok": true}]', "tool")
    round_text = plan_request(config, CHAT[2:], None, native_template=True, native_tools=False,
                              tools_json=TOOLS_JSON, continues=True)
    assert (round_text.text, round_text.role) == (
        '<tool_response>\n{"ok": true}\n</tool_response>', "user")
    replay = plan_request(config, CHAT, None, native_template=True, native_tools=True,
                          tools_json=TOOLS_JSON)
    assert replay.role == "user" and replay.text == (
        "User: turn on the lamp\nAssistant: <tool_call>\n"
        '{"name": "HassTurnOn", "arguments": {"name": "lamp"}}\n</tool_call>\n'
        'Tool: <tool_response>\n{"ok": true}\n</tool_response>')


def test_a_replayed_chat_has_its_system_text_once() -> None:
    """Each turn of a chat client brings the system message; the replay states it once."""
    chat = (Message("system", "S"), *CHAT[:2], Message("system", "S"), CHAT[2])
    plan = plan_request(TemplateConfig(), chat, None, native_template=True, native_tools=True,
                        tools_json=TOOLS_JSON)
    assert plan.function_tools == ("S", TOOLS_JSON)


@pytest.mark.parametrize("abi", ["1.2", "1.3"])
def test_set_function_tools_only_when_system_or_tools_change(
        abi: str, open_session: Callable[..., Session],
        inspect: Callable[[Session], dict[str, Any]]) -> None:
    session = open_session(abi)

    def ask(prompt: str, system: str | None, tools: str | None) -> Any:
        return session.generate(GenerationRequest(prompt=prompt, system=system,
                                                  tools_json=tools)).result(10)

    ask("hello", "S1", TOOLS_JSON)
    ask("hello again", "S1", TOOLS_JSON)
    assert inspect(session)["function_tools"]["calls"] == 1
    ask("hello", "S2", TOOLS_JSON)
    assert inspect(session)["function_tools"]["system_prompt"] == "S2"
    ask("hello", "S2", json.dumps([LIGHT, LIGHT | {"function": {"name": "X"}}]))
    assert inspect(session)["function_tools"]["calls"] == 3
    final = ask("no tools", None, None)
    record = inspect(session)
    assert (record["function_tools"]["tools"], record["function_tools"]["calls"]) == ("[]", 4)
    assert final.text == expected_answer("no tools") and final.tool_calls == ()
    ask("still none", None, None)
    assert inspect(session)["function_tools"]["calls"] == 4


@pytest.mark.parametrize("abi", ["1.1", "1.2.0"])
def test_without_set_function_tools_the_tools_are_in_the_text(
        abi: str, open_session: Callable[..., Session],
        inspect: Callable[[Session], dict[str, Any]]) -> None:
    session = open_session(abi, prompt_prefix="<u>", prompt_postfix="</u>")
    final = session.generate(GenerationRequest(
        prompt="Turn off the lamp", system="S", tools_json=TOOLS_JSON)).result(10)
    assert [(c.name, c.arguments) for c in final.tool_calls] == [("HassTurnOn", {"name": "lamp"})]
    assert final.finish_reason == "tool_calls"
    record = inspect(session)
    if abi == "1.2.0":  # the system text, tools included, went to the chat template (the
        # simulator found them there), restored to the configured one after the run
        assert record["run"]["prompt"] == "Turn off the lamp"
        assert record["chat_template"] == {"system_prompt": "", "prompt_prefix": "<u>",
                                           "prompt_postfix": "</u>"}
    else:  # 1.1: the whole template is applied by the daemon
        assert record["run"]["prompt"] == (hermes_system("S", TOOLS_JSON)
                                           + "<u>Turn off the lamp</u>")
