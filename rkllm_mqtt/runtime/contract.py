"""The shapes the MQTT contract shares with the runtime: messages, codes, reasons, usage, timing.

They live here, below the daemon, because the runtime produces them (an `ErrorEvent` carries an
`ErrorCode`, a `FinalEvent` a finish reason) and the runtime must import nothing of the daemon;
`protocol`, `engine` and `service` use these same names, so a code never crosses a boundary as a
bare string to be mapped back. Standard library only: the child process imports it too.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum
from typing import Any, Literal, TypedDict

# The C types of rkllm.h's RKLLMParam / RKLLMInferParam / RKLLMSamplingParam fields (int32_t,
# float): a value outside them would wrap or become inf in C, so config and requests stop there.
INT32_MIN = -(2**31)
INT32_MAX = 2**31 - 1
FLOAT32_MAX = 3.4028234663852886e38

# Defaults of the `limits` config section; a RequestPolicy built without Settings uses them too.
DEFAULT_MAX_PAYLOAD_BYTES = 65536
DEFAULT_MAX_PROMPT_CHARS = 16000


@dataclass(frozen=True, slots=True)
class ToolCall:
    """One function call the model made (a final reply's `tool_calls`, or an earlier turn's)."""

    id: str
    name: str
    arguments: dict[str, Any]


@dataclass(frozen=True, slots=True)
class Message:
    """One chat turn; a request's `messages` and the runtime's prompt rendering use this type."""

    role: str  # "system" | "user" | "assistant" | "tool"
    content: str
    tool_calls: tuple[ToolCall, ...] = ()  # an assistant turn that called tools
    tool_call_id: str | None = None  # a tool result: the call it answers
    name: str | None = None  # a tool result: the function that produced it


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


# Why the daemon asked a run to stop; a FinalEvent of an aborted run carries it as its reason.
AbortReason = Literal["abort", "deadline"]
# `finish_reason` of a final reply: how the run ended ("error" for a run that failed).
FinishReason = Literal["stop", "length", "stop_sequence", "tool_calls", "abort", "deadline",
                       "error"]


class Usage(TypedDict):
    prompt_tokens: int | None
    completion_tokens: int


class Timing(TypedDict):
    queue_ms: float
    ttft_ms: float | None
    total_ms: float
    tokens_per_s: float | None


StateName = Literal["loading", "idle", "generating", "error"]


class StateLimits(TypedDict):
    """What a client must stay within (`limits` of `~/state`)."""

    max_prompt_chars: int
    max_payload_bytes: int


class StatePayload(TypedDict):
    """The retained `~/state` JSON."""

    state: StateName
    busy: bool
    queue: int
    model: str
    runtime_version: str | None
    abi: str
    tokens_per_second: float | None
    ttft_ms: float | None
    requests_total: int
    errors_total: int
    limits: StateLimits
