"""The pure parts: message rendering, prompt planning, the text stream, layout and init checks."""

from __future__ import annotations

import ctypes
from pathlib import Path

import pytest

from rkllm_mqtt.runtime import Message, render_messages
from rkllm_mqtt.runtime.common import check_layout
from rkllm_mqtt.runtime.nativelog import explain_init_failure, logged_runtime_version
from rkllm_mqtt.runtime.prompt import Template, TemplateConfig, plan_prompt
from rkllm_mqtt.runtime.stream import TextStream


def test_single_user_message_is_passed_as_is() -> None:
    assert render_messages([Message("user", "Hi there")], None) == (None, "Hi there")


def test_system_messages_join_the_system_text() -> None:
    system, prompt = render_messages(
        [Message("system", "Be brief."), Message("user", "Hi")], "You are a bot."
    )
    assert (system, prompt) == ("You are a bot.\n\nBe brief.", "Hi")


def test_several_turns_become_a_transcript() -> None:
    """Tool results keep the <tool_response> markup of Qwen's template inside a transcript."""
    messages = [Message("user", "Hi"), Message("assistant", "Hello!"),
                Message("tool", "22 °C"), Message("user", "Thanks")]
    assert render_messages(messages, None) == (
        None, "User: Hi\nAssistant: Hello!\nTool: <tool_response>\n22 °C\n</tool_response>\n"
              "User: Thanks")


def test_nothing_to_ask_is_an_error() -> None:
    with pytest.raises(ValueError):
        render_messages([Message("system", "only a system prompt")], None)


FULL = TemplateConfig("<s>", "<u>", "</u>")


@pytest.mark.parametrize(("config", "system", "native", "text", "template"), [
    (TemplateConfig(), None, True, "q", None),
    (TemplateConfig(), "S", True, "S\n\nq", None),
    (TemplateConfig("C"), None, True, "C\n\nq", None),
    (TemplateConfig("C"), "S", True, "S\n\nq", None),
    (FULL, None, True, "q", None),
    (FULL, "S", True, "q", Template("S", "<u>", "</u>")),
    (TemplateConfig(None, "<u>", None), "S", True, "S\n\nq", None),
    (TemplateConfig(), None, False, "q", None),
    (TemplateConfig(), "S", False, "S\n\nq", None),
    (FULL, None, False, "<s><u>q</u>", None),
    (FULL, "S", False, "S<u>q</u>", None),
])
def test_plan_prompt(config: TemplateConfig, system: str | None, native: bool, text: str,
                     template: Template | None) -> None:
    plan = plan_prompt(config, system, "q", native_template=native)
    assert (plan.text, plan.template) == (text, template)


def test_configured_template_needs_prefix_or_postfix() -> None:
    assert TemplateConfig("sys").native() is None
    assert TemplateConfig(None, "<u>", None).native() == Template("", "<u>", "")


def feed_all(stream: TextStream, chunks: list[bytes]) -> list[str]:
    pieces = [stream.feed(chunk) for chunk in chunks]
    pieces.append(stream.finish())
    return [p for p in pieces if p]


def test_multibyte_characters_are_reassembled() -> None:
    data = "a🙂b你".encode()
    stream = TextStream()
    pieces = feed_all(stream, [data[i : i + 1] for i in range(len(data))])
    assert pieces == ["a", "🙂", "b", "你"]
    assert stream.text == "a🙂b你"


def test_dangling_partial_character_becomes_a_replacement_at_the_end() -> None:
    stream = TextStream()
    assert feed_all(stream, [b"ok", "你".encode()[:2]]) == ["ok", "\ufffd"]


def test_a_run_cut_short_drops_the_partial_character() -> None:
    stream = TextStream()
    assert stream.feed(b"ok" + "你".encode()[:2]) == "ok"
    assert stream.finish(complete=False) == "" and stream.text == "ok"


def test_stop_sequence_across_chunks_is_cut_and_never_streamed() -> None:
    stream = TextStream(("STOP",))
    pieces = feed_all(stream, [b"abc S", b"T", b"OP and more"])
    assert pieces == ["abc "]
    assert stream.stopped and stream.text == "abc "
    assert stream.feed(b"later") == ""


def test_held_text_is_released_when_it_is_not_a_stop_sequence() -> None:
    stream = TextStream(("STOP",))
    assert stream.feed(b"xST") == "x"
    assert stream.feed(b"ay") == "STay"
    assert stream.feed(b"ST") == ""
    assert stream.finish() == "ST"
    assert stream.text == "xSTayST" and not stream.stopped


def test_earliest_of_several_stop_sequences_wins() -> None:
    stream = TextStream(("world", "lo w", ""))
    assert feed_all(stream, [b"hello world"]) == ["hel"]


def test_layout_check_refuses_a_wrong_mirror() -> None:
    class Wrong(ctypes.Structure):
        _fields_ = [("a", ctypes.c_int32), ("b", ctypes.c_float)]

    check_layout("test", {Wrong: 8}, {(Wrong, "b"): 4})
    with pytest.raises(ImportError, match=r"sizeof\(Wrong\) = 8, header says 12"):
        check_layout("test", {Wrong: 12}, {})
    with pytest.raises(ImportError, match=r"offsetof\(Wrong, b\) = 4, header says 8"):
        check_layout("test", {}, {(Wrong, "b"): 8})


def test_init_failure_explanations(tmp_path: Path) -> None:
    model = tmp_path / "m.rkllm"
    model.write_bytes(b"x")
    log = ("I rkllm: rkllm-runtime version: 1.2.3, rknpu driver version: 0.9.8\n"
           "E rkllm: invalid rknn llm model magic, failed to load model\n")
    assert logged_runtime_version(log) == "1.2.3"
    mismatch = explain_init_failure(-1, str(model), 4096, log, abi="1.2", version="1.2.3")
    assert mismatch.startswith(f"the model {model} does not fit runtime 1.2.3")
    assert "E rkllm: invalid rknn llm model magic" in mismatch

    generic = explain_init_failure(-1, str(model), 2048, "I rkllm: loading\n", abi="1.3",
                                   version=None)
    assert generic.startswith(f"returned -1 for {model};")
    assert "runtime.max_context_len (2048)" in generic and "the 1.3 runtime" in generic
