"""Which conversation owns the KV cache, and how stored history stays bounded."""

from __future__ import annotations

from rkllm_mqtt.conversations import Conversations
from rkllm_mqtt.protocol import Message


def user(text: str) -> tuple[Message, ...]:
    return (Message("user", text),)


def store(**kw) -> Conversations:
    args = {"max_conversations": 3, "max_turns": 3, "max_chars": 1000, "kv_cache": True, **kw}
    return Conversations(**args)


def test_same_conversation_continues_the_cache_other_is_rebuilt():
    c = store()
    p = c.plan("a", user("a1"), None)
    assert p.messages == user("a1") and p.keep_history and not p.clear_kv and not p.continues_kv
    c.finished("a", user("a1"), None, "A1")
    p = c.plan("a", user("a2"), None)
    assert p.continues_kv and p.messages == user("a2") and not p.clear_kv
    c.finished("a", user("a2"), None, "A2")
    p = c.plan("b", user("b1"), None)
    assert p.clear_kv and not p.continues_kv and p.messages == user("b1")
    c.finished("b", user("b1"), None, "B1")
    p = c.plan("a", user("a3"), None)  # back to a: rebuilt from its history
    assert p.clear_kv and p.keep_history and p.messages == (
        Message("user", "a1"), Message("assistant", "A1"), Message("user", "a2"),
        Message("assistant", "A2"), Message("user", "a3"))
    assert c.kv_owner == "a"


def test_request_without_conversation_clears_a_used_cache():
    c = store()
    c.plan("a", user("x"), None)
    c.finished("a", user("x"), None, "y")
    p = c.plan(None, user("q"), None)
    assert p.clear_kv and not p.keep_history and p.messages == user("q")
    assert not c.plan(None, user("q2"), None).clear_kv  # nothing left to clear
    assert c.plan("a", user("z"), None).clear_kv is False  # cache empty: rebuild without clear


def test_failed_run_forces_rebuild_and_is_not_recorded():
    c = store()
    c.plan("a", user("1"), None)
    c.finished("a", user("1"), None, "one")
    c.plan("a", user("2"), None)
    c.finished("a", user("2"), None, None)  # aborted
    assert c.history("a") == (Message("user", "1"), Message("assistant", "one"))
    p = c.plan("a", user("3"), None)
    assert p.clear_kv and not p.continues_kv and len(p.messages) == 3


def test_any_failed_run_clears_the_cache_before_the_next_conversation():
    c = store()
    c.plan(None, user("q"), None)
    c.finished(None, user("q"), None, None)  # an aborted one-off run: the cache state is unknown
    assert c.plan("a", user("1"), None).clear_kv


def test_bounds_turns_chars_and_count():
    c = store(max_turns=2, max_chars=20)
    for i in range(4):
        c.plan("a", user(f"q{i}"), None)
        c.finished("a", user(f"q{i}"), None, f"a{i}")
    assert c.history("a") == (Message("user", "q2"), Message("assistant", "a2"),
                              Message("user", "q3"), Message("assistant", "a3"))
    # trimming happened while "a" owned the cache: the next run rebuilds from the bounded history
    assert c.plan("a", user("q4"), None).clear_kv
    c.finished("a", user("x" * 15), None, "y" * 10)  # 25 chars alone: over max_chars
    assert c.history("a") == ()
    for name in ("b", "c", "d", "e"):
        c.plan(name, user("q"), None)
        c.finished(name, user("q"), None, "a")
    assert len(c) == 3 and c.history("b") == ()  # the oldest conversations were evicted


def test_system_prompt_change_rebuilds_and_sticks():
    c = store()
    c.plan("a", user("1"), "sys1")
    c.finished("a", user("1"), "sys1", "one")
    p = c.plan("a", user("2"), None)  # no system given: the stored one applies
    assert p.continues_kv and p.system == "sys1"
    c.finished("a", user("2"), None, "two")
    p = c.plan("a", user("3"), "sys2")
    assert p.clear_kv and p.system == "sys2" and len(p.messages) == 5


def test_without_kv_cache_history_is_always_replayed():
    c = store(kv_cache=False)
    c.plan("a", user("1"), "s")
    c.finished("a", user("1"), "s", "one")
    p = c.plan("a", user("2"), None)
    assert not p.keep_history and not p.clear_kv and p.system == "s"
    assert p.messages == (Message("user", "1"), Message("assistant", "one"), Message("user", "2"))


def chat(*texts: str) -> tuple[Message, ...]:
    """user, assistant, user, ... as a chat client sends its whole history."""
    return tuple(Message("user" if i % 2 == 0 else "assistant", t) for i, t in enumerate(texts))


def test_whole_chat_continues_from_what_is_stored():
    c = store()
    c.plan("a", user("q1"), None)
    c.finished("a", user("q1"), None, "a1")
    new = c.new_part("a", (Message("system", "s"), *chat("q1", "a1", "q2")))
    assert new == (Message("system", "s"), Message("user", "q2"))
    p = c.plan("a", new, None)
    assert p.continues_kv and p.messages == new


def test_whole_chat_the_daemon_does_not_hold_is_replayed_and_replaces_it():
    c = store()
    c.plan("a", user("q1"), None)
    c.finished("a", user("q1"), None, "other answer")  # the client remembers a different chat
    full = chat("q1", "a1", "q2")
    assert c.new_part("a", full) == full and c.history("a") == ()
    p = c.plan("a", full, None)
    assert p.clear_kv and not p.continues_kv and p.messages == full
    assert c.new_part("fresh", full) == full  # nothing stored (evicted, restarted): replay it all


def test_new_turns_without_assistant_messages_are_appended():
    c = store()
    c.finished("a", user("q1"), None, "a1")
    assert c.new_part("a", user("q2")) == user("q2")
    assert c.new_part(None, chat("q1", "a1", "q2")) == chat("q1", "a1", "q2")


def test_an_answer_cut_by_a_stop_sequence_rebuilds_the_cache_next_time():
    c = store()
    c.plan("a", user("q1"), None)
    c.finished("a", user("q1"), None, "cut", cache_exact=False)
    p = c.plan("a", user("q2"), None)
    assert p.clear_kv and not p.continues_kv
    assert p.messages == (*user("q1"), Message("assistant", "cut"), *user("q2"))


def test_a_tool_round_continues_the_cache_whatever_ids_the_client_gave_the_calls():
    from rkllm_mqtt.runtime.contract import ToolCall

    c, tools = store(), '[{"type": "function", "function": {"name": "F"}}]'
    c.plan("a", user("switch it on"), None, tools)
    calls = (ToolCall("call_1", "F", {"x": 1}),)
    c.finished("a", user("switch it on"), None, Message("assistant", "", tool_calls=calls),
               tools=tools)
    result = Message("tool", '{"ok": true}', tool_call_id="mine-7")
    chat = (Message("system", "S"), *user("switch it on"),
            Message("assistant", " ", tool_calls=(ToolCall("mine-7", "F", {"x": 1}),)), result)
    new = c.new_part("a", chat)
    assert new == (Message("system", "S"), result)  # only the result is new
    p = c.plan("a", new, None, tools)
    assert p.continues_kv and not p.clear_kv and p.messages == new
    c.finished("a", new, None, "done", tools=tools)
    assert c.history("a")[1] == Message("assistant", "", tool_calls=calls)
    p = c.plan("a", user("and now?"), None, None)  # other tools (none): the cache is rebuilt
    assert not p.continues_kv and p.messages[-1] == Message("user", "and now?")
    assert p.messages[:2] == (*user("switch it on"), Message("assistant", "", tool_calls=calls))
