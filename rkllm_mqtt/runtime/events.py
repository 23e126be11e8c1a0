"""The values that cross the Session boundary: what a caller asks for and what a run reports.

Frozen dataclasses with no ctypes in them, so the daemon can pass them between threads and keep
them after the native buffers are gone.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from rkllm_mqtt.runtime.contract import ErrorCode, FinishReason, Message, ToolCall


@dataclass(frozen=True)
class Sampling:
    """Per-request sampling; None keeps the configured (or library default) value."""

    top_k: int | None = None
    top_p: float | None = None
    temperature: float | None = None
    repeat_penalty: float | None = None
    frequency_penalty: float | None = None
    presence_penalty: float | None = None
    mirostat: int | None = None
    mirostat_tau: float | None = None
    mirostat_eta: float | None = None

    def overrides(self) -> dict[str, int | float]:
        """Only the fields the request set, keyed by their C names."""
        return {name: value for name, value in vars(self).items() if value is not None}


@dataclass(frozen=True)
class GenerationRequest:
    prompt: str | None = None
    messages: tuple[Message, ...] = ()
    system: str | None = None
    keep_history: bool = False
    # The KV cache already holds this conversation (system prompt included): send only the new
    # turn, without putting the system text in front of it again.
    continues_history: bool = False
    max_new_tokens: int | None = None
    sampling: Sampling = field(default_factory=Sampling)
    stop: tuple[str, ...] = ()
    role: str = "user"
    enable_thinking: bool = False
    # The functions the model may call: the OpenAI-form list as one JSON string, exactly what
    # rkllm_set_function_tools receives on 1.2.1+ (and what is rendered into the system text before).
    tools_json: str | None = None


@dataclass(frozen=True)
class TokenEvent:
    text: str


@dataclass(frozen=True)
class RunStats:
    prompt_tokens: int | None
    completion_tokens: int
    ttft_ms: float | None
    total_ms: float
    tokens_per_s: float | None
    prefill_ms: float | None
    generate_ms: float | None
    memory_mb: float | None


NO_STATS = RunStats(
    prompt_tokens=None,
    completion_tokens=0,
    ttft_ms=None,
    total_ms=0.0,
    tokens_per_s=None,
    prefill_ms=None,
    generate_ms=None,
    memory_mb=None,
)


@dataclass(frozen=True)
class FinalEvent:
    text: str
    finish_reason: FinishReason  # never "error": a failed run is an ErrorEvent
    stats: RunStats
    tool_calls: tuple[ToolCall, ...] = ()  # finish_reason "tool_calls"


@dataclass(frozen=True)
class ErrorEvent:
    code: ErrorCode  # RUNTIME_ERROR or CONTEXT_TOO_LONG from a Session; RUNTIME_CRASHED from an engine
    message: str
    text: str = ""  # what was streamed before the error


Event = TokenEvent | FinalEvent | ErrorEvent
