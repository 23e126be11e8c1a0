"""Request validation and the reply builder: every rule of the contract that needs no broker."""

from __future__ import annotations

import json

import pytest

from rkllm_mqtt.protocol import (
    ErrorCode,
    Message,
    Priority,
    ReplyTarget,
    RequestPolicy,
    RequestRejected,
    final_error,
    final_ok,
    parse_abort,
    parse_request,
    reply,
    token_reply,
)

POLICY = RequestPolicy(
    default_topic="rkllm/n/response",
    allowed_response_topics=("rkllm/reply/#", "panel/+/answer"),
    reserved_topics=frozenset({"rkllm/n/prompt", "rkllm/reply/n/prompt-loop"}),
    max_payload_bytes=1024,
    max_prompt_chars=100,
)


def rejected(payload: bytes | str | dict, **kwargs) -> RequestRejected:
    if isinstance(payload, dict):
        payload = json.dumps(payload)
    if isinstance(payload, str):
        payload = payload.encode()
    with pytest.raises(RequestRejected) as info:
        parse_request(payload, POLICY, **kwargs)
    return info.value


def test_plain_text_prompt_gets_an_id_and_streams():
    req = parse_request(b"  Hello there \n", POLICY)
    assert req.plain and req.prompt == "Hello there" and req.stream is True
    assert isinstance(req.id, str) and req.id.startswith("auto-") and req.key == req.id
    assert not req.client_id_given
    assert req.target.topic == "rkllm/n/response"


def test_full_json_request():
    req = parse_request(json.dumps({
        "id": "kitchen-42", "prompt": "hi", "system": "be brief", "conversation": "c1",
        "stream": False, "response_topic": "rkllm/reply/panel1", "max_new_tokens": 5,
        "temperature": 0.7, "top_p": 0.9, "top_k": 40, "priority": "background", "ttl_s": 10,
        "stop": ["\n\n"], "future_field": {"x": 1},
    }).encode(), POLICY, correlation_data=b"\x01\x02")
    assert req.id == "kitchen-42" and req.client_id_given and req.key == "kitchen-42"
    assert req.target == ReplyTarget("kitchen-42", "rkllm/reply/panel1", b"\x01\x02")
    assert (req.prompt, req.system, req.conversation, req.stream) == ("hi", "be brief", "c1", False)
    assert (req.max_new_tokens, req.temperature, req.top_p, req.top_k) == (5, 0.7, 0.9, 40)
    assert req.priority is Priority.BACKGROUND and req.ttl_s == 10.0 and req.stop == ("\n\n",)


def test_messages_and_integer_id():
    req = parse_request(json.dumps({"id": 7, "messages": [
        {"role": "system", "content": "s"}, {"role": "user", "content": "u"}]}).encode(), POLICY)
    assert req.id == 7 and req.key == "7"
    assert req.messages == (Message("system", "s"), Message("user", "u")) and req.prompt is None


def test_payload_too_large_is_checked_before_parsing():
    err = rejected(b"{" + b"x" * 2000)  # would be invalid JSON if it were parsed
    assert err.code is ErrorCode.PAYLOAD_TOO_LARGE and err.target.id is None
    assert err.target.topic == "rkllm/n/response" and "1024" in err.message


@pytest.mark.parametrize("payload", [b'{"prompt": "x"', b"{nope}", b'{"a":1} trailing'])
def test_invalid_json_has_null_id(payload):
    err = rejected(payload)
    assert err.code is ErrorCode.INVALID_JSON and err.target.id is None
    assert err.target.topic == POLICY.default_topic


def test_json_array_is_refused_but_bracketed_text_is_a_prompt():
    err = rejected(b'["turn", "on"]')
    assert err.code is ErrorCode.INVALID_REQUEST and "object" in err.message
    req = parse_request(b"[kitchen] is the light on?", POLICY)
    assert req.plain and req.prompt == "[kitchen] is the light on?"


@pytest.mark.parametrize(("payload", "field"), [
    ({"id": "a", "prompt": 5}, "prompt"),
    ({"id": "a", "prompt": "x", "stream": "yes"}, "stream"),
    ({"id": "a", "prompt": "x", "max_new_tokens": 0}, "max_new_tokens"),
    ({"id": "a", "prompt": "x", "max_new_tokens": True}, "max_new_tokens"),
    ({"id": "a", "prompt": "x", "temperature": -1}, "temperature"),
    ({"id": "a", "prompt": "x", "top_p": 1.5}, "top_p"),
    ({"id": "a", "prompt": "x", "top_k": 1.5}, "top_k"),
    ({"id": "a", "prompt": "x", "top_k": 2**31}, "top_k"),
    ({"id": "a", "prompt": "x", "max_new_tokens": 99999999999}, "max_new_tokens"),
    ({"id": "a", "prompt": "x", "temperature": 1e40}, "temperature"),
    ({"id": "a", "prompt": "x", "priority": "urgent"}, "priority"),
    ({"id": "a", "prompt": "x", "ttl_s": 0}, "ttl_s"),
    ({"id": "a", "prompt": "x", "stop": [""]}, "stop"),
    ({"id": "a", "prompt": "x", "conversation": ""}, "conversation"),
    ({"id": "a", "messages": [{"role": "robot", "content": "x"}]}, "messages[0]"),
    ({"id": "a", "messages": []}, "messages"),
    ({"id": "a", "prompt": "x", "response_topic": 3}, "response_topic"),
])
def test_wrong_types_name_the_field(payload, field):
    err = rejected(payload)
    assert err.code is ErrorCode.INVALID_REQUEST
    assert err.message.startswith(field + ":"), err.message
    assert err.target.id == "a"


@pytest.mark.parametrize("payload", [{"id": "a"}, {"id": "a", "prompt": "x", "messages": [
    {"role": "user", "content": "y"}]}, {"id": "a", "prompt": "   "}])
def test_prompt_or_messages_required(payload):
    err = rejected(payload)
    assert err.code is ErrorCode.INVALID_REQUEST and err.target.id == "a"


@pytest.mark.parametrize("bad_id", [True, [1], {"a": 1}, "", "x" * 129, 1.5])
def test_bad_id_is_invalid_request_with_null_id(bad_id):
    err = rejected({"id": bad_id, "prompt": "x"})
    assert err.code is ErrorCode.INVALID_REQUEST and err.target.id is None
    assert err.message.startswith("id:")


def test_prompt_over_limit():
    err = rejected({"id": "a", "prompt": "x" * 101})
    assert err.code is ErrorCode.INVALID_REQUEST and "max_prompt_chars" in err.message
    err = rejected({"id": "a", "prompt": "x" * 60, "system": "y" * 41})
    assert err.code is ErrorCode.INVALID_REQUEST
    assert rejected("z" * 101).code is ErrorCode.INVALID_REQUEST


def test_deeply_nested_json_is_refused_not_a_crash():
    policy = RequestPolicy("r", ("x/#",), max_payload_bytes=200_000)
    payload = b'{"a":' + b"[" * 50_000 + b"]" * 50_000 + b"}"
    with pytest.raises(RequestRejected) as info:
        parse_request(payload, policy)
    assert info.value.code is ErrorCode.INVALID_JSON


def test_empty_and_non_utf8():
    assert rejected(b"").code is ErrorCode.INVALID_REQUEST
    assert rejected(b"  \n ").code is ErrorCode.INVALID_REQUEST
    err = rejected(b"caf\xe9")
    assert err.code is ErrorCode.INVALID_REQUEST and "UTF-8" in err.message


@pytest.mark.parametrize("topic", ["homeassistant/device/x/config", "rkllm/n/prompt",
                                   "rkllm/reply/#", "rkllm/reply/+", "$SYS/x", "rkllm/replyx",
                                   "rkllm/reply/n/prompt-loop", ""])
def test_forbidden_response_topics(topic):
    err = rejected({"id": "f1", "prompt": "x", "response_topic": topic})
    assert err.code is ErrorCode.FORBIDDEN_TOPIC
    assert err.target == ReplyTarget("f1", POLICY.default_topic, None)


def test_allowed_response_topics_match_filters():
    for topic in ("rkllm/reply/a", "rkllm/reply/a/b", "panel/7/answer"):
        assert parse_request(json.dumps({"prompt": "x", "response_topic": topic}).encode(),
                             POLICY).target.topic == topic


def test_mqtt5_response_topic_property():
    req = parse_request(b"hello", POLICY, response_topic="rkllm/reply/v5",
                        correlation_data=b"corr")
    assert req.target.topic == "rkllm/reply/v5" and req.target.correlation_data == b"corr"
    # the JSON field wins over the property
    req = parse_request(b'{"prompt": "x", "response_topic": "rkllm/reply/json"}', POLICY,
                        response_topic="rkllm/reply/v5")
    assert req.target.topic == "rkllm/reply/json"
    err = rejected(b"hello", response_topic="homeassistant/x", correlation_data=b"c")
    assert err.code is ErrorCode.FORBIDDEN_TOPIC
    assert err.target == ReplyTarget(None, POLICY.default_topic, b"c")
    # an error before parsing still goes to an allowed property topic, with correlation data
    err = rejected(b"{bad", response_topic="rkllm/reply/v5", correlation_data=b"c")
    assert err.target == ReplyTarget(None, "rkllm/reply/v5", b"c")


def test_one_builder_copies_id_and_correlation_data():
    target = ReplyTarget("r1", "t/1", b"cd")
    token = token_reply(target, 3, "Hé")
    assert token.topic == "t/1" and token.correlation_data == b"cd"
    assert json.loads(token.payload) == {"id": "r1", "type": "token", "seq": 3, "text": "Hé"}
    assert "Hé".encode() in token.payload  # UTF-8, not \u escapes
    ok = json.loads(final_ok(target, "abc", "stop", {"prompt_tokens": 1, "completion_tokens": 2},
                             {"queue_ms": 0}).payload)
    assert ok == {"id": "r1", "type": "final", "status": "ok", "text": "abc", "finish_reason": "stop",
                  "usage": {"prompt_tokens": 1, "completion_tokens": 2}, "timing": {"queue_ms": 0}}
    err = final_error(ReplyTarget(None, "t/2"), ErrorCode.QUEUE_FULL, "full")
    assert json.loads(err.payload) == {"id": None, "type": "final", "status": "error",
                                       "error": {"code": "queue_full", "message": "full"}}
    assert err.correlation_data is None
    partial = json.loads(final_error(target, ErrorCode.ABORTED, "a", finish_reason="abort",
                                     text="pa").payload)
    assert partial["finish_reason"] == "abort" and partial["text"] == "pa"
    assert json.loads(reply(target, type="x").payload) == {"id": "r1", "type": "x"}


def test_parse_abort():
    assert parse_abort(b"") is None
    assert parse_abort(b"  ") is None
    assert parse_abort(b"kitchen-42") == "kitchen-42"
    assert parse_abort(b'{"id": "k"}') == "k"
    assert parse_abort(b'{"id": 7}') == "7"
    assert parse_abort(b"{}") == ""  # names no request: must not abort the running one
    assert parse_abort(b'{"foo": 1}') == ""
    assert parse_abort(b"{" * 100_000) == "{" * 100_000  # too deep for JSON: taken as an id


@pytest.mark.parametrize("topic", [
    "rkllm/reply/a\u0001b", "rkllm/reply/a\u0085", "rkllm/reply/\uffff", "rkllm/reply/\udc00",
    "rkllm/reply/" + "a/" * 300,
])
def test_response_topics_a_broker_would_refuse_are_forbidden(topic):
    err = rejected(json.dumps({"id": "t", "prompt": "x", "response_topic": topic}).encode())
    assert err.code is ErrorCode.FORBIDDEN_TOPIC


@pytest.mark.parametrize("payload", [
    b'{"id": "\\ud800", "prompt": "x"}',
    b'{"id": 99999999999999999999, "prompt": "x"}',
    b'{"messages": [{"role": [], "content": "x"}]}',
    b'{"messages": [{"role": {}, "content": "x"}]}',
    b'{"prompt": "x", "ttl_s": 1' + b"0" * 400 + b"}",
    b'{"prompt": "x", "temperature": 1' + b"0" * 400 + b"}",
])
def test_odd_values_are_invalid_requests_not_exceptions(payload):
    assert rejected(payload).code is ErrorCode.INVALID_REQUEST


def test_giant_integers_are_invalid_json_not_exceptions():
    roomy = RequestPolicy(default_topic=POLICY.default_topic,
                          allowed_response_topics=POLICY.allowed_response_topics)
    with pytest.raises(RequestRejected) as info:
        parse_request(b'{"prompt": "x", "top_k": ' + b"9" * 5000 + b"}", roomy)
    assert info.value.code is ErrorCode.INVALID_JSON


def test_a_reply_with_a_lone_surrogate_still_encodes():
    target = ReplyTarget("r", "rkllm/n/response")
    payload = final_error(target, ErrorCode.INVALID_REQUEST, "bad \udc00 value").payload
    assert json.loads(payload)["error"]["message"] == "bad ? value"
