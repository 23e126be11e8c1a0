"""The MQTT contract's payloads: request parsing and validation, and the one reply builder.

Everything a client sends passes through `parse_request` before the daemon acts on it, so a bad
payload becomes an error reply instead of an exception in the network thread. Every reply is built
by `reply()`, which copies the request's id (and its MQTT 5 correlation data, carried beside the
payload) the way Zigbee2MQTT copies `transaction`: no reply path can forget them.

Decisions (the README repeats them):
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
- Function calling (`tools`, tool turns in `messages`, `tool_calls` in a final) is validated and
  bounded in `tool_requests`; a final reply with calls has `finish_reason: "tool_calls"`, and
  markup the model wrote that is not a valid call is listed in `invalid_tool_calls`.
- The MQTT 5 Response Topic property passes the same allow-list as the JSON `response_topic`; when
  both are given the JSON field wins, but a forbidden property is refused either way. Errors found
  before the target is known go to `~/response` (or to an allowed property topic) with id null.
"""

from __future__ import annotations

import json
import re
import uuid
from dataclasses import dataclass, field, replace
from enum import StrEnum
from typing import Annotated, Any

from paho.mqtt.client import topic_matches_sub
from pydantic import (
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    PlainSerializer,
    PrivateAttr,
    ValidationError,
    field_validator,
    model_validator,
)
from pydantic_core import ErrorDetails

from rkllm_mqtt.runtime.contract import (
    DEFAULT_MAX_PAYLOAD_BYTES,
    DEFAULT_MAX_PROMPT_CHARS,
    FLOAT32_MAX,
    INT32_MAX,
    ErrorCode,
    FinishReason,
    InvalidToolCall,
    Message,
    Timing,
    ToolCall,
    Usage,
)
from rkllm_mqtt.tool_requests import Tools, parse_tools, tool_message, tools_list

MAX_ID_CHARS = 128
MAX_ID_INT = 2**53  # integer ids a JSON client in any language can hold exactly
MAX_TOPIC_LEVELS = 200
_FORBIDDEN_IN_TOPIC = re.compile("[\x00-\x1f\x7f-\x9f\ufdd0-\ufdef\ufffe\uffff]")
MAX_STOP_SEQUENCES = 8
ROLES = frozenset({"system", "user", "assistant", "tool"})


class Priority(StrEnum):
    INTERACTIVE = "interactive"
    BACKGROUND = "background"


@dataclass(frozen=True, slots=True)
class ReplyTarget:
    """Where, and under which id, every reply to one request goes."""

    id: str | int | None
    topic: str
    correlation_data: bytes | None = None
    node: str | None = None  # the daemon that answers: every reply says so (a pool has many)


@dataclass(frozen=True, slots=True)
class Outgoing:
    """One message ready for `MqttClient.publish`; correlation data travels as an MQTT 5 property."""

    topic: str
    payload: bytes
    correlation_data: bytes | None = None


def _one_or_more(value: Any) -> Any:
    """`stop` may be one string or a list of them."""
    if isinstance(value, str):
        return (value,)
    return tuple(value) if isinstance(value, list) else value


def _roles_message(value: Any) -> Any:
    """`{"role", "content"}` objects become Messages; anything else fails on the item's index.

    Tool results and assistant turns with `tool_calls` have their own shape (tool_requests)."""
    if isinstance(value, list):
        return tuple(_message(i, item) for i, item in enumerate(value))
    return value


def _message(i: int, item: Any) -> Message | _BadMessage:
    if not isinstance(item, dict) or not isinstance(item.get("role"), str) \
            or item["role"] not in ROLES:
        return _BadMessage()
    if item["role"] == "tool" or (item["role"] == "assistant"
                                  and item.get("tool_calls") not in (None, [])):
        return tool_message(i, item)
    if not isinstance(item.get("content"), str):
        return _BadMessage()
    return Message(item["role"], item["content"])


class _BadMessage:
    """Stands for a messages item of the wrong shape, so its index is the one reported."""


_NonEmpty = Annotated[str, Field(min_length=1)]


class Request(BaseModel):
    """A validated `~/prompt` request; `key` is what abort, dedupe and the scheduler use.

    Strict: JSON gives a bool for a bool and an int for an int, and a client's `"5"` is refused
    rather than guessed. Unknown fields are ignored, so clients written for a later contract keep
    working. Where the reply goes (`target`) is decided by `parse_request` and set after
    validation; `id` None in the payload becomes an `auto-…` id there.
    """

    model_config = ConfigDict(strict=True, frozen=True, extra="ignore", allow_inf_nan=False)

    client_id: str | int | None = Field(None, alias="id")
    response_topic: str | None = None
    prompt: str | None = None
    messages: Annotated[tuple[Message, ...], BeforeValidator(_roles_message),
                        Field(min_length=1)] = ()
    system: str | None = None
    conversation: Annotated[str, Field(max_length=MAX_ID_CHARS)] | None = None
    stream: bool = True
    max_new_tokens: Annotated[int, Field(ge=1, le=INT32_MAX)] | None = None
    temperature: Annotated[float, Field(ge=0.0, le=FLOAT32_MAX)] | None = None
    top_p: Annotated[float, Field(ge=0.0, le=1.0)] | None = None
    top_k: Annotated[int, Field(ge=0, le=INT32_MAX)] | None = None
    priority: Priority = Field(Priority.INTERACTIVE, strict=False)  # from its JSON string
    ttl_s: Annotated[float, Field(gt=0.0, le=FLOAT32_MAX)] | None = None
    stop: Annotated[tuple[_NonEmpty, ...], BeforeValidator(_one_or_more),
                    Field(max_length=MAX_STOP_SEQUENCES)] = ()
    # Written back as the list it was given (a pool member passes a request on as JSON).
    tools: Annotated[Tools | None, BeforeValidator(parse_tools),
                     PlainSerializer(tools_list, when_used="json")] = None

    _target: ReplyTarget = PrivateAttr()
    _client_id_given: bool = PrivateAttr(default=False)
    _plain: bool = PrivateAttr(default=False)

    @field_validator("client_id", mode="before")
    @classmethod
    def _check_id(cls, value: Any) -> Any:
        if value is None:
            return None
        if isinstance(value, bool) or not isinstance(value, str | int):
            raise ValueError("must be a string or an integer")
        if isinstance(value, str) and not (0 < len(value) <= MAX_ID_CHARS and _encodable(value)):
            raise ValueError(f"must be 1 to {MAX_ID_CHARS} characters of UTF-8")
        if isinstance(value, int) and abs(value) > MAX_ID_INT:
            raise ValueError(f"an integer id must be within ±{MAX_ID_INT}")
        return value

    @field_validator("prompt", "conversation")
    @classmethod
    def _not_blank(cls, value: str | None) -> str | None:
        if value is not None and not value.strip():
            raise ValueError("must not be empty")
        return value

    @field_validator("messages")
    @classmethod
    def _not_only_system(cls, value: tuple[Message, ...]) -> tuple[Message, ...]:
        if all(m.role == "system" for m in value):
            raise ValueError("needs at least one user, assistant or tool message")
        return value

    @model_validator(mode="after")
    def _prompt_or_messages(self) -> Request:
        if (self.prompt is None) == (not self.messages):
            raise ValueError("give exactly one of prompt (string) or messages (list)")
        return self

    @property
    def id(self) -> str | int | None:
        """The id every reply carries: the client's, or the one the daemon gave it."""
        return self._target.id

    @property
    def target(self) -> ReplyTarget:
        return self._target

    @property
    def key(self) -> str:
        return str(self._target.id)

    @property
    def client_id_given(self) -> bool:
        return self._client_id_given

    @property
    def plain(self) -> bool:
        """A plain-text payload (no JSON): the whole payload is the prompt."""
        return self._plain

    @property
    def chat(self) -> tuple[Message, ...]:
        """The turns this request adds: its messages, or its prompt as one user turn."""
        return self.messages or (Message("user", self.prompt or ""),)

    def addressed(self, target: ReplyTarget, *, client_id_given: bool,
                  plain: bool = False) -> Request:
        """This request with where its replies go; set once, by parse_request."""
        self._target = target
        self._client_id_given = client_id_given
        self._plain = plain
        return self


@dataclass(frozen=True, slots=True)
class RequestPolicy:
    """What the configuration allows; built once by the service from Settings."""

    default_topic: str
    allowed_response_topics: tuple[str, ...]
    reserved_topics: frozenset[str] = field(default_factory=frozenset)
    max_payload_bytes: int = DEFAULT_MAX_PAYLOAD_BYTES
    max_prompt_chars: int = DEFAULT_MAX_PROMPT_CHARS
    node: str | None = None  # `mqtt.node_id`, written into every reply


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
    """The one builder of every reply: id first, then the fields and the node; correlation data alongside."""
    body = {"id": target.id, **fields}
    if target.node is not None:
        body["node"] = target.node
    return Outgoing(target.topic, _dumps(body), target.correlation_data)


def token_reply(target: ReplyTarget, seq: int, text: str) -> Outgoing:
    return reply(target, type="token", seq=seq, text=text)


def final_ok(
    target: ReplyTarget, text: str, finish_reason: FinishReason, usage: Usage, timing: Timing,
    tool_calls: tuple[ToolCall, ...] = (),
    invalid_tool_calls: tuple[InvalidToolCall, ...] = (),
) -> Outgoing:
    """The ok final; with calls, `tool_calls` follows `finish_reason` ("tool_calls"), and
    markup that was not a call follows as `invalid_tool_calls`."""
    fields: dict[str, Any] = {"type": "final", "status": "ok", "text": text,
                              "finish_reason": finish_reason}
    if tool_calls:
        fields["tool_calls"] = tool_calls_json(tool_calls)
    if invalid_tool_calls:
        fields["invalid_tool_calls"] = [{"raw": c.raw, "error": c.error}
                                        for c in invalid_tool_calls]
    return reply(target, **fields, usage=usage, timing=timing)


def tool_calls_json(tool_calls: tuple[ToolCall, ...]) -> list[dict[str, Any]]:
    """`tool_calls` as the contract writes them (final replies, Home Assistant's outputs)."""
    return [{"id": c.id, "name": c.name, "arguments": c.arguments} for c in tool_calls]


def final_error(
    target: ReplyTarget,
    code: ErrorCode,
    message: str,
    *,
    finish_reason: FinishReason | None = None,
    text: str | None = None,
    usage: Usage | None = None,
    timing: Timing | None = None,
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
    target = ReplyTarget(None, policy.default_topic, correlation_data, policy.node)
    if response_topic is not None and check_response_topic(response_topic, policy) is None:
        target = replace(target, topic=response_topic)
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
        target = replace(target, id=new_request_id())
        _check_size(len(stripped), policy, target)
        return Request(prompt=stripped).addressed(target, client_id_given=False, plain=True)
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
    try:
        request = Request.model_validate(obj)
    except ValidationError as err:
        raise _rejection(err, obj, policy, target) from None
    given = request.client_id is not None
    target = replace(target, id=request.client_id if given else new_request_id())
    if request.response_topic is not None:
        why = check_response_topic(request.response_topic, policy)
        if why is not None:
            raise RequestRejected(ErrorCode.FORBIDDEN_TOPIC, why, target)
        target = replace(target, topic=request.response_topic)
    # The contract's measure (README): prompt + every message's content + system. A client that
    # cuts its history to fit it must never be refused, so tool-call arguments do not count here
    # (they are bounded by the payload size, MAX_TOOL_CALLS and the nesting limit).
    size = (len(request.prompt or "") + sum(len(m.content) for m in request.messages)
            + len(request.system or ""))
    _check_size(size, policy, target)
    return request.addressed(target, client_id_given=given)


def _rejection(err: ValidationError, obj: dict[str, Any], policy: RequestPolicy,
               target: ReplyTarget) -> RequestRejected:
    """The one error reply for an invalid request: the first problem, its field named.

    An invalid id is answered with id null; a forbidden response_topic wins over other fields,
    as the topic decides where the answer may go.
    """
    errors = err.errors(include_url=False)
    for error in errors:
        if error["loc"][:1] == ("id",):
            return RequestRejected(ErrorCode.INVALID_REQUEST, _sentence(error), target)
    raw_id = obj.get("id")
    target = replace(target, id=new_request_id() if raw_id is None else raw_id)
    topic = obj.get("response_topic")
    if isinstance(topic, str) and (why := check_response_topic(topic, policy)) is not None:
        return RequestRejected(ErrorCode.FORBIDDEN_TOPIC, why, target)
    if isinstance(topic, str):
        target = replace(target, topic=topic)
    return RequestRejected(ErrorCode.INVALID_REQUEST, _sentence(errors[0]), target)


_MESSAGE_SHAPE = "must be {\"role\": system|user|assistant|tool, \"content\": string}"
_SENTENCES = {
    "string_type": "must be a string",
    "bool_type": "must be true or false",
    "int_type": "must be an integer",
    "float_type": "must be a number",
    "finite_number": "must be a number",
}


def _sentence(error: ErrorDetails) -> str:
    """`field: why`, in the contract's words rather than pydantic's."""
    loc, kind, ctx = error["loc"], error["type"], error.get("ctx", {})
    if not loc:  # the model's own check
        return str(ctx.get("error", error["msg"]))
    name = str(loc[0])
    if name in ("tools", "messages") and kind == "value_error":
        return f"{name}{ctx.get('error', error['msg'])}"  # "[i]…: why" from tool_requests
    if name == "messages" and len(loc) > 1 and isinstance(loc[1], int):
        return f"messages[{loc[1]}]: {_MESSAGE_SHAPE}"
    if name == "messages" and kind in ("too_short", "tuple_type"):
        return "messages: must be a non-empty list"
    if name == "stop":
        return f"stop: must be a string or a list of at most {MAX_STOP_SEQUENCES} non-empty strings"
    if name == "priority":
        return 'priority: must be "interactive" or "background"'
    if kind == "value_error":
        why = str(ctx.get("error", error["msg"]))
    elif kind == "float_type" and isinstance(error["input"], int):
        why = "must be a finite number"  # an integer too large for a float
    elif kind in _SENTENCES:
        why = _SENTENCES[kind]
    elif kind in _BOUNDS:
        symbol, key = _BOUNDS[kind]
        why = f"must be {symbol} {_number(ctx[key])}"
    elif kind == "string_too_long":
        why = f"must be at most {ctx['max_length']} characters"
    else:
        why = error["msg"]
    return f"{name}: {why}"


_BOUNDS = {"greater_than_equal": (">=", "ge"), "greater_than": (">", "gt"),
           "less_than_equal": ("<=", "le")}


def _number(value: Any) -> str:
    return format(value, "g") if isinstance(value, float) else str(value)


def _check_size(chars: int, policy: RequestPolicy, target: ReplyTarget) -> None:
    if chars > policy.max_prompt_chars:
        raise RequestRejected(
            ErrorCode.INVALID_REQUEST,
            f"prompt: {chars} characters, over limits.max_prompt_chars ({policy.max_prompt_chars})",
            target)


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
