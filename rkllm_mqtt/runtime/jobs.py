"""The daemon's jobs on one Session: run, forward, abort, the path both engines share.

`rkllm_mqtt.engine.InProcessEngine` drives a `Jobs` on the daemon's own thread;
`rkllm_mqtt.runtime.child` drives the same class inside the child process and sends what its sink
receives back over the socket. So a run behaves alike in both; only the transport differs.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from functools import partial

from rkllm_mqtt.errors import RkllmMqttError
from rkllm_mqtt.runtime.contract import AbortReason, ErrorCode
from rkllm_mqtt.runtime.events import ErrorEvent, Event, GenerationRequest, TokenEvent
from rkllm_mqtt.runtime.session import Generation, Session

# Receives every event of a job, from the runtime's threads.
JobSink = Callable[[str, Event], None]


@dataclass(frozen=True, slots=True)
class EngineInfo:
    """What the daemon publishes about the loaded runtime (`~/state`, logs, discovery)."""

    model: str
    abi: str
    runtime_version: str | None
    supports_history: bool

    @classmethod
    def of(cls, session: Session) -> EngineInfo:
        return cls(session.model_name, session.abi, session.runtime_version,
                   session.supports_history)


@dataclass(frozen=True, slots=True)
class RunCommand:
    """One run: clear the KV cache first when the conversation plan says so, then generate."""

    request: GenerationRequest
    clear_kv: bool = False


class Jobs:
    """A Session's generations keyed by the daemon's job id; every outcome reaches the sink."""

    def __init__(self, session: Session, sink: JobSink) -> None:
        self.session = session
        self._sink = sink
        self._generations: dict[str, Generation] = {}

    def run(self, job_id: str, command: RunCommand) -> None:
        """Start a job; a refusal (closed session, failed clear) becomes its ErrorEvent."""
        try:
            if command.clear_kv:
                self.session.clear()
            generation = self.session.generate(command.request, partial(self._forward, job_id))
        except (RkllmMqttError, ValueError) as err:
            self._sink(job_id, ErrorEvent(ErrorCode.RUNTIME_ERROR, str(err)))
            return
        self._generations[job_id] = generation
        if generation.done:  # it ended before it was stored: _forward found nothing to drop
            self._generations.pop(job_id, None)

    def abort(self, job_id: str, reason: AbortReason) -> None:
        generation = self._generations.get(job_id)
        if generation is not None:
            generation.abort(reason)

    def _forward(self, job_id: str, event: Event) -> None:
        if not isinstance(event, TokenEvent):
            self._generations.pop(job_id, None)
        self._sink(job_id, event)
