"""The MQTT contract's payloads: request parsing and validation, and the one reply builder.

Everything a client sends passes through `parse_request` before the daemon acts on it, so a bad
payload becomes an error reply instead of an exception in the network thread. Every reply is built
by `reply()`, which copies the request's id (and its MQTT 5 correlation data, carried beside the
payload) the way Zigbee2MQTT copies `transaction`: no reply path can forget them.

Decisions (the README and the report repeat them):
- A payload whose first non-blank character is `{` is a JSON request; anything else is a plain
  text prompt. So a typo in JSON is `invalid_json`, never silently answered as a prompt. A payload
  that is a whole JSON array (`[...]` that parses) is `invalid_request`: a client sent JSON, just
  not an object, while "[kitchen] lights?" stays a prompt.
- `stream` defaults to true for every request (plain text included): tokens flow unless a client
  says `"stream": false`.
- Unknown JSON fields are ignored (clients written for a later contract keep working); a known field
  of the wrong type or out of range is `invalid_request` with the field named.
- A request without `id` gets one from the daemon (`auto-…`), so its replies and `~/event` can be
  told apart and it can be aborted; only client ids take part in duplicate detection.
- The prompt size (prompt + messages + system, in characters) over `limits.max_prompt_chars` is
  `invalid_request`; `context_too_long` is kept for what the runtime itself refuses.
- The MQTT 5 Response Topic property passes the same allow-list as the JSON `response_topic`; when
  both are given the JSON field wins, but a forbidden property is refused either way. Errors found
  before the target is known go to `~/response` (or to an allowed property topic) with id null.
"""

from __future__ import annotations

import json
import math
import re
import uuid
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any

from paho.mqtt.client import topic_matches_sub

MAX_ID_CHARS = 128
MAX_ID_INT = 2**53  # integer ids a JSON client in any language can hold exactly
MAX_TOPIC_LEVELS = 200
_FORBIDDEN_IN_TOPIC = re.compile("[\x00-\x1f\x7f-\x9f\ufdd0-\ufdef\ufffe\uffff]")
# Per-run values end up in int32_t / float fields of RKLLMInferParam and RKLLMSamplingParam.
INT32_MAX = 2**31 - 1
FLOAT32_MAX = 3.4028234663852886e38
MAX_STOP_SEQUENCES = 8
ROLES = frozenset({"system", "user", "assistant"})


class ErrorCode(StrEnum):
    """The `error.code` values of the contract."""

    INVALID_JSON = "invalid_json"
    INVALID_REQUEST = "invalid_request"
    PAYLOAD_TOO_LARGE = "payload_too_large"
    FORBIDDEN_TOPIC = "forbidden_topic"
    QUEUE_FULL = "queue_full"
    DEADLINE_EXCEEDED = "deadline_exceeded"
    CONTEXT_TOO_LONG = "context_too_long"
    RUNTIME_ERROR = "runtime_error"
    RUNTIME_CRASHED = "runtime_crashed"
    ABORTED = "aborted"


class Priority(StrEnum):
    INTERACTIVE = "interactive"
    BACKGROUND = "background"


@dataclass(frozen=True, slots=True)
class ReplyTarget:
    """Where, and under which id, every reply to one request goes."""

    id: str | int | None
    topic: str
    correlation_data: bytes | None = None


@dataclass(frozen=True, slots=True)
class Outgoing:
    """One message ready for `MqttClient.publish`; correlation data travels as an MQTT 5 property."""

    topic: str
    payload: bytes
    correlation_data: bytes | None = None


@dataclass(frozen=True, slots=True)
class Message:
    role: str
    content: str


@dataclass(frozen=True, slots=True)
class Request:
    """A validated request; `key` is what abort, dedupe and the scheduler use."""

    target: ReplyTarget
    key: str
    client_id_given: bool
    prompt: str | None = None
    messages: tuple[Message, ...] = ()
    system: str | None = None
    conversation: str | None = None
    stream: bool = True
    max_new_tokens: int | None = None
    temperature: float | None = None
    top_p: float | None = None
    top_k: int | None = None
    priority: Priority = Priority.INTERACTIVE
    ttl_s: float | None = None
    stop: tuple[str, ...] = ()
    plain: bool = False

    @property
    def id(self) -> str | int | None:
        return self.target.id


@dataclass(frozen=True, slots=True)
class RequestPolicy:
    """What the configuration allows; built once by the service from Settings."""

    default_topic: str
    allowed_response_topics: tuple[str, ...]
    reserved_topics: frozenset[str] = field(default_factory=frozenset)
    max_payload_bytes: int = 65536
    max_prompt_chars: int = 16000


class RequestRejected(Exception):
    """A request the daemon answers with an error instead of running it."""

    def __init__(self, code: ErrorCode, message: str, target: ReplyTarget) -> None:
        super().__init__(f"{code}: {message}")
        self.code = code
        self.message = message
        self.target = target


# --------------------------------------------------------------------------- replies


def _dumps(obj: dict[str, Any]) -> bytes:
    # "replace": a lone surrogate echoed from a client (a field value in an error message) must
    # not turn a reply into an exception.
    return json.dumps(obj, ensure_ascii=False, separators=(",", ":")).encode("utf-8", "replace")


def reply(target: ReplyTarget, **fields: Any) -> Outgoing:
    """The one builder of every reply: id first, then the fields; correlation data alongside."""
    return Outgoing(target.topic, _dumps({"id": target.id, **fields}), target.correlation_data)


def token_reply(target: ReplyTarget, seq: int, text: str) -> Outgoing:
    return reply(target, type="token", seq=seq, text=text)


def final_ok(
    target: ReplyTarget, text: str, finish_reason: str, usage: dict[str, Any], timing: dict[str, Any]
) -> Outgoing:
    return reply(target, type="final", status="ok", text=text, finish_reason=finish_reason,
                 usage=usage, timing=timing)


def final_error(
    target: ReplyTarget,
    code: ErrorCode,
    message: str,
    *,
    finish_reason: str | None = None,
    text: str | None = None,
    usage: dict[str, Any] | None = None,
    timing: dict[str, Any] | None = None,
) -> Outgoing:
    """An error final; the partial text, usage and timing ride along when a run had started."""
    fields: dict[str, Any] = {"type": "final", "status": "error",
                              "error": {"code": str(code), "message": message}}
    if finish_reason is not None:
        fields["finish_reason"] = finish_reason
    if text is not None:
        fields["text"] = text
    if usage is not None:
        fields["usage"] = usage
    if timing is not None:
        fields["timing"] = timing
    return reply(target, **fields)


# --------------------------------------------------------------------------- requests


def new_request_id() -> str:
    return f"auto-{uuid.uuid4().hex[:12]}"


def check_response_topic(topic: str, policy: RequestPolicy) -> str | None:
    """Why `topic` may not receive replies, or None when it may."""
    if not topic or not _encodable(topic) or len(topic.encode("utf-8")) > 65535:
        return "response_topic must be a non-empty UTF-8 topic"
    if any(ch in topic for ch in "+#") or topic.startswith("$"):
        return f"response_topic {topic!r} must be a plain topic (no wildcards, not $SYS)"
    # Brokers drop the connection of a client that publishes to a topic with control characters,
    # noncharacters or too many levels, and paho would resend it after every reconnect.
    if any(_FORBIDDEN_IN_TOPIC.match(ch) for ch in topic) or topic.count("/") >= MAX_TOPIC_LEVELS:
        return (f"response_topic {topic!r} has control characters, noncharacters or more than "
                f"{MAX_TOPIC_LEVELS} levels")
    if topic in policy.reserved_topics:
        return f"response_topic {topic!r} is one of the daemon's own topics"
    if not any(topic_matches_sub(flt, topic) for flt in policy.allowed_response_topics):
        return (f"response_topic {topic!r} is not allowed by mqtt.allowed_response_topics "
                f"({', '.join(policy.allowed_response_topics)})")
    return None


def _encodable(text: str) -> bool:
    """False for text with lone surrogates (JSON can carry them; UTF-8 and MQTT cannot)."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def parse_request(
    payload: bytes,
    policy: RequestPolicy,
    *,
    response_topic: str | None = None,
    correlation_data: bytes | None = None,
) -> Request:
    """Validate one `~/prompt` payload; raises RequestRejected with where to send the error.

    `response_topic` / `correlation_data` are the MQTT 5 properties of the PUBLISH, if any; a JSON
    `response_topic` field takes precedence over the property.
    """
    target = ReplyTarget(None, policy.default_topic, correlation_data)
    if response_topic is not None and check_response_topic(response_topic, policy) is None:
        target = ReplyTarget(None, response_topic, correlation_data)
    if len(payload) > policy.max_payload_bytes:
        raise RequestRejected(
            ErrorCode.PAYLOAD_TOO_LARGE,
            f"payload is {len(payload)} bytes, over limits.max_payload_bytes ({policy.max_payload_bytes})",
            target)
    if response_topic is not None and target.topic != response_topic:
        raise RequestRejected(ErrorCode.FORBIDDEN_TOPIC,
                              check_response_topic(response_topic, policy) or "", target)
    try:
        text = payload.decode("utf-8")
    except UnicodeDecodeError as err:
        raise RequestRejected(ErrorCode.INVALID_REQUEST,
                              f"payload is not valid UTF-8 (byte {err.start})", target) from None
    stripped = text.strip()
    if not stripped:
        raise RequestRejected(ErrorCode.INVALID_REQUEST, "empty prompt", target)
    if stripped.startswith("[") and _is_json(stripped):
        raise RequestRejected(ErrorCode.INVALID_REQUEST,
                              "a JSON request must be an object ({...}), not an array", target)
    if not stripped.startswith("{"):
        target = ReplyTarget(new_request_id(), target.topic, correlation_data)
        _check_size(len(stripped), policy, target)
        return Request(target=target, key=str(target.id), client_id_given=False,
                       prompt=stripped, plain=True)
    try:
        obj = json.loads(stripped)
    except (ValueError, RecursionError) as err:  # ValueError: also int digit limits
        raise RequestRejected(ErrorCode.INVALID_JSON, f"payload is not valid JSON: {err}",
                              target) from None
    return _from_json(obj, policy, target)


def _is_json(text: str) -> bool:
    try:
        json.loads(text)
    except (ValueError, RecursionError):
        return False
    return True


def _from_json(obj: dict[str, Any], policy: RequestPolicy, target: ReplyTarget) -> Request:
    raw_id = obj.get("id")
    given = raw_id is not None
    if not given:
        raw_id = new_request_id()
    elif isinstance(raw_id, bool) or not isinstance(raw_id, str | int):
        raise RequestRejected(ErrorCode.INVALID_REQUEST, "id: must be a string or an integer", target)
    elif isinstance(raw_id, str) and not (0 < len(raw_id) <= MAX_ID_CHARS and _encodable(raw_id)):
        raise RequestRejected(ErrorCode.INVALID_REQUEST,
                              f"id: must be 1 to {MAX_ID_CHARS} characters of UTF-8", target)
    elif isinstance(raw_id, int) and abs(raw_id) > MAX_ID_INT:
        raise RequestRejected(ErrorCode.INVALID_REQUEST,
                              f"id: an integer id must be within ±{MAX_ID_INT}", target)
    target = ReplyTarget(raw_id, target.topic, target.correlation_data)

    if "response_topic" in obj:
        topic = obj["response_topic"]
        if not isinstance(topic, str):
            raise RequestRejected(ErrorCode.INVALID_REQUEST, "response_topic: must be a string",
                                  target)
        why = check_response_topic(topic, policy)
        if why is not None:
            raise RequestRejected(ErrorCode.FORBIDDEN_TOPIC, why, target)
        target = ReplyTarget(raw_id, topic, target.correlation_data)

    f = _Fields(obj, target)
    prompt = f.string("prompt")
    messages = f.messages()
    if (prompt is None) == (not messages):
        raise RequestRejected(ErrorCode.INVALID_REQUEST,
                              "give exactly one of prompt (string) or messages (list)", target)
    system = f.string("system", allow_empty=True)
    size = len(prompt or "") + sum(len(m.content) for m in messages) + len(system or "")
    _check_size(size, policy, target)
    return Request(
        target=target,
        key=str(raw_id),
        client_id_given=given,
        prompt=prompt,
        messages=messages,
        system=system,
        conversation=f.string("conversation", max_len=MAX_ID_CHARS),
        stream=f.boolean("stream", default=True),
        max_new_tokens=f.integer("max_new_tokens", minimum=1),
        temperature=f.number("temperature", minimum=0.0),
        top_p=f.number("top_p", minimum=0.0, maximum=1.0),
        top_k=f.integer("top_k", minimum=0),
        priority=f.priority(),
        ttl_s=f.number("ttl_s", minimum=0.0, exclusive=True),
        stop=f.stop(),
    )


def _check_size(chars: int, policy: RequestPolicy, target: ReplyTarget) -> None:
    if chars > policy.max_prompt_chars:
        raise RequestRejected(
            ErrorCode.INVALID_REQUEST,
            f"prompt: {chars} characters, over limits.max_prompt_chars ({policy.max_prompt_chars})",
            target)


class _Fields:
    """Typed getters that name the offending field in the error reply."""

    def __init__(self, obj: dict[str, Any], target: ReplyTarget) -> None:
        self._obj = obj
        self._target = target

    def _bad(self, name: str, why: str) -> RequestRejected:
        return RequestRejected(ErrorCode.INVALID_REQUEST, f"{name}: {why}", self._target)

    def string(self, name: str, *, allow_empty: bool = False, max_len: int | None = None) -> str | None:
        value = self._obj.get(name)
        if value is None:
            return None
        if not isinstance(value, str):
            raise self._bad(name, "must be a string")
        if not allow_empty and not value.strip():
            raise self._bad(name, "must not be empty")
        if max_len is not None and len(value) > max_len:
            raise self._bad(name, f"must be at most {max_len} characters")
        return value

    def boolean(self, name: str, *, default: bool) -> bool:
        value = self._obj.get(name)
        if value is None:
            return default
        if not isinstance(value, bool):
            raise self._bad(name, "must be true or false")
        return value

    def integer(self, name: str, *, minimum: int) -> int | None:
        value = self._obj.get(name)
        if value is None:
            return None
        if isinstance(value, bool) or not isinstance(value, int):
            raise self._bad(name, "must be an integer")
        if value < minimum:
            raise self._bad(name, f"must be >= {minimum}")
        if value > INT32_MAX:
            raise self._bad(name, f"must be <= {INT32_MAX}")
        return value

    def number(self, name: str, *, minimum: float, maximum: float | None = None,
               exclusive: bool = False) -> float | None:
        value = self._obj.get(name)
        if value is None:
            return None
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise self._bad(name, "must be a number")
        try:
            value = float(value)
        except OverflowError:  # an integer too large for a float
            raise self._bad(name, "must be a finite number") from None
        if not math.isfinite(value):
            raise self._bad(name, "must be a number")
        if value < minimum or (exclusive and value == minimum):
            raise self._bad(name, f"must be {'>' if exclusive else '>='} {minimum:g}")
        maximum = FLOAT32_MAX if maximum is None else maximum
        if value > maximum:
            raise self._bad(name, f"must be <= {maximum:g}")
        return value

    def priority(self) -> Priority:
        value = self._obj.get("priority")
        if value is None:
            return Priority.INTERACTIVE
        try:
            return Priority(value)
        except ValueError:
            raise self._bad("priority", "must be \"interactive\" or \"background\"") from None

    def stop(self) -> tuple[str, ...]:
        value = self._obj.get("stop")
        if value is None:
            return ()
        if isinstance(value, str):
            value = [value]
        if (not isinstance(value, list) or len(value) > MAX_STOP_SEQUENCES
                or not all(isinstance(s, str) and s for s in value)):
            raise self._bad("stop", f"must be a string or a list of at most {MAX_STOP_SEQUENCES} "
                                    "non-empty strings")
        return tuple(value)

    def messages(self) -> tuple[Message, ...]:
        value = self._obj.get("messages")
        if value is None:
            return ()
        if not isinstance(value, list) or not value:
            raise self._bad("messages", "must be a non-empty list")
        out = []
        for i, item in enumerate(value):
            if (not isinstance(item, dict) or not isinstance(item.get("role"), str)
                    or item["role"] not in ROLES or not isinstance(item.get("content"), str)):
                raise self._bad(f"messages[{i}]",
                                "must be {\"role\": system|user|assistant, \"content\": string}")
            out.append(Message(item["role"], item["content"]))
        if all(m.role == "system" for m in out):
            raise self._bad("messages", "needs at least one user or assistant message")
        return tuple(out)


def parse_abort(payload: bytes) -> str | None:
    """The request key an `~/abort` payload names; None means "the running request".

    Accepts empty (HA's button), a bare id, or `{"id": ...}`; a JSON object without an id names
    no request and gives "".
    """
    text = payload.decode("utf-8", errors="replace").strip()
    if not text:
        return None
    if text.startswith("{"):
        try:
            obj = json.loads(text)
        except (ValueError, RecursionError):
            return text
        value = obj.get("id") if isinstance(obj, dict) else None
        # An object without an id names no request (""): it must not abort someone else's run.
        return "" if value is None else str(value)
    return text
