"""The daemon's loop: MQTT in, scheduler, one runtime session, MQTT out.

What Home Assistant sees is published through `ha_outputs`, topics come from `topics`, and the
`rkllm-mqtt run` command around this class is `commands.run`; docs/architecture.md walks a
request through all of them.

Threads and who owns what:
- paho's network thread parses each message (`protocol.parse_request`) and puts a call on the inbox;
- the service loop (one thread) owns the scheduler, conversations, counters and every decision;
  it also answers rejects, expires deadlines, sends the watchdog pings and publishes `~/state`;
- the runtime's thread emits events through the `Engine` boundary: tokens are published straight
  from there (one small JSON and one publish per token, nothing else), finals go to the inbox.

The runtime sits behind `Engine` (commands in, events out, all plain picklable values): in this
process (`InProcessEngine`), or in a child process (`ProcessEngine`), where a crash of the native
library becomes a `runtime_crashed` reply and a reload instead of the end of the daemon.
"""

from __future__ import annotations

import logging
import os
import queue
import random
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from functools import partial

from rkllm_mqtt.config import RuntimeSettings, Settings
from rkllm_mqtt.conversations import Conversations, Plan
from rkllm_mqtt.engine import (
    Engine,
    EngineInfo,
    EngineSink,
    InProcessEngine,
    ProcessEngine,
    RunCommand,
)
from rkllm_mqtt.errors import RkllmMqttError, one_line
from rkllm_mqtt.ha_outputs import HomeAssistantOutputs
from rkllm_mqtt.memory import HeapTrimmer
from rkllm_mqtt.mqtt_client import InMessage, MqttClient
from rkllm_mqtt.pool import PoolMember
from rkllm_mqtt.protocol import (
    Outgoing,
    ReplyTarget,
    Request,
    RequestPolicy,
    RequestRejected,
    final_error,
    final_ok,
    parse_abort,
    parse_request,
    token_reply,
)
from rkllm_mqtt.runtime import ErrorEvent, Event, FinalEvent, GenerationRequest, Sampling, TokenEvent
from rkllm_mqtt.runtime.contract import (
    AbortReason,
    ErrorCode,
    FinishReason,
    Message,
    StateLimits,
    StateName,
    StatePayload,
    Timing,
    Usage,
)
from rkllm_mqtt.scheduler import QueueFull, RecentIds, Scheduler
from rkllm_mqtt.sdnotify import Notifier
from rkllm_mqtt.topics import PoolTopics, Topics

log = logging.getLogger(__name__)

SHUTDOWN_FLUSH_S = 5.0


# ----------------------------------------------------------------------------- the service


@dataclass(eq=False)
class Job:
    """A request in the daemon's hands: its times, its deadline, how far its answer got."""

    request: Request
    received: float
    deadline: float | None
    new_messages: tuple[Message, ...]
    plan: Plan | None = None
    started: float | None = None
    run_deadline: float | None = None
    seq: int = 0
    abort_reason: AbortReason | None = None  # why we asked the engine to stop
    abort_message: str = ""
    # Read for every token on the runtime's thread: copied once out of the pydantic model, whose
    # computed properties cost microseconds each.
    key: str = field(init=False)
    target: ReplyTarget = field(init=False)
    stream: bool = field(init=False)

    def __post_init__(self) -> None:
        self.key, self.target, self.stream = (self.request.key, self.request.target,
                                              self.request.stream)


@dataclass
class _Stats:
    requests_total: int = 0
    errors_total: int = 0
    tokens_per_second: float | None = None
    ttft_ms: float | None = None


class Service:
    """The whole daemon; `start()` connects and loads the model, `stop()` shuts down cleanly."""

    def __init__(self, settings: Settings, *, notifier: Notifier | None = None,
                 engine_factory: Callable[[RuntimeSettings, EngineSink], Engine] | None = None,
                 ) -> None:
        if engine_factory is None:
            isolated = settings.runtime.isolation == "process"
            engine_factory = ProcessEngine if isolated else InProcessEngine
        self.settings = settings
        m = settings.mqtt
        self.topics = Topics.of(settings)
        self.policy = RequestPolicy(
            default_topic=self.topics.response,
            allowed_response_topics=m.response_filters,
            reserved_topics=self.topics.own,
            max_payload_bytes=settings.limits.max_payload_bytes,
            max_prompt_chars=settings.limits.max_prompt_chars,
            node=m.node_id,
        )
        self.notifier = notifier or Notifier({})
        self.engine = engine_factory(settings.runtime, self._on_engine_event)
        self._info = EngineInfo(os.path.basename(settings.runtime.model or ""), settings.runtime.abi,
                                None, False)
        subscriptions = list(self.topics.commands)
        if settings.homeassistant.discovery:
            subscriptions.append(settings.homeassistant.status_topic)
        pool_topics = PoolTopics.of(settings)
        if pool_topics is not None:
            subscriptions += pool_topics.subscriptions
        self.mqtt = MqttClient(m, availability_topic=self.topics.status,
                               subscriptions=subscriptions, on_message=self._on_message,
                               on_connected=lambda: self._post(self._on_connected))
        self.pool: PoolMember | None = None
        if pool_topics is not None:
            pool_policy = replace(
                self.policy, default_topic=pool_topics.response,
                allowed_response_topics=(*self.policy.allowed_response_topics, pool_topics.response),
                reserved_topics=self.policy.reserved_topics | {pool_topics.prompt, pool_topics.ledger})
            self.pool = PoolMember(pool_topics, node=m.node_id, prompt_topic=self.topics.prompt,
                                   max_hops=settings.pool.max_hops,
                                   dedupe_window_s=settings.queue.dedupe_window_s,
                                   mqtt=self.mqtt, policy=pool_policy, host=self, post=self._post)
        self.outputs = HomeAssistantOutputs(self.mqtt, self.topics, settings)
        q = settings.queue
        self._scheduler: Scheduler[Job] = Scheduler(q.max_pending)
        self._recent = RecentIds(q.dedupe_window_s)
        self._conversations = Conversations(
            max_conversations=settings.conversation.max_conversations,
            max_turns=settings.conversation.max_turns,
            max_chars=settings.conversation.max_chars,
            kv_cache=False,
        )
        self._inbox: queue.SimpleQueue[Callable[[], None]] = queue.SimpleQueue()
        self._heap = HeapTrimmer()
        self._running: Job | None = None
        self._state: StateName = "loading"
        self._stats = _Stats()
        self._timers: list[tuple[float, Callable[[], None]]] = []
        self._stopping = False  # the loop's view: intake closed
        self._stopped = False  # stop() ran
        self._ready = False
        self._loop_thread: threading.Thread | None = None
        self._next_ping = 0.0
        self._announced_at_start = False
        self._rediscovery_pending = False

    # ------------------------------------------------------------------ lifecycle

    def start(self, *, stop: threading.Event | None = None,
              connect_attempts: int | None = None) -> None:
        """Connect (retrying), publish availability/discovery/state, load the model, serve."""
        self.mqtt.connect(attempts=connect_attempts, stop=stop)
        if self.pool is not None:
            self.pool.start(attempts=connect_attempts, stop=stop)
        # Announce now, before a model load that can take a minute; the loop then skips the
        # announcement the first connect queued for it, so Home Assistant sees one per start.
        self._publish_discovery()
        self._publish_state(force=True)
        self._announced_at_start = True
        try:
            self._info = self.engine.open()
        except RkllmMqttError:
            self._state = "error"
            self._publish_state()
            self.mqtt.close(timeout=SHUTDOWN_FLUSH_S)
            if self.pool is not None:
                self.pool.close()
            raise
        self._conversations.kv_cache = (self._info.supports_history
                                        and self.settings.runtime.keep_history)
        self._state = "idle"
        self._ready = True
        self._heap.trim()
        log.info("serving %s (RKLLM %s, runtime %s) on %s", self._info.model, self._info.abi,
                 self._info.runtime_version or "unknown", self.topics.prompt)
        self._loop_thread = threading.Thread(target=self._loop, name="rkllm-service", daemon=True)
        self._loop_thread.start()

    def stop(self) -> None:
        """Stop intake, finish or abort the running request, answer queued ones, go offline."""
        if self._stopped:
            return
        self._stopped = True
        if self._loop_thread is not None:
            self._post(self._begin_shutdown)
            limit = self.settings.queue.request_timeout_s + 10
            self._loop_thread.join(limit)
            if self._loop_thread.is_alive():
                log.error("the running request did not end within %.0f s; closing anyway", limit)
        try:
            self.mqtt.close(timeout=SHUTDOWN_FLUSH_S)
            if self.pool is not None:
                self.pool.close()
        finally:
            self.engine.close()
        log.info("stopped")

    @property
    def alive(self) -> bool:
        return self._loop_thread is not None and self._loop_thread.is_alive()

    @property
    def prefix(self) -> str:
        """`~` of the README's topics."""
        return self.topics.prefix

    @property
    def info(self) -> EngineInfo:
        return self._info

    # ------------------------------------------------------------------ inputs (paho thread)

    def _post(self, fn: Callable[[], None]) -> None:
        self._inbox.put(fn)

    def _on_message(self, msg: InMessage) -> None:
        self._heap.received += len(msg.payload)
        if self.pool is not None and self.pool.handles(msg.topic):
            self.pool.on_message(msg, time.monotonic())
            return
        if msg.retain and msg.topic in self.topics.commands:
            # A retained command would be replayed at every (re)connect: run once, then forever.
            log.warning("ignored a retained message on %s (publish commands without retain; "
                        "clear it with an empty retained message)", msg.topic)
            return
        if msg.topic == self.topics.prompt:
            try:
                request = parse_request(msg.payload, self.policy, response_topic=msg.response_topic,
                                        correlation_data=msg.correlation_data)
            except RequestRejected as rejected:
                self._post(partial(self._reject, rejected))
                return
            except Exception:  # a parser bug must still answer the client, never go silent
                log.exception("could not parse a request on %s", msg.topic)
                target = ReplyTarget(None, self.policy.default_topic, msg.correlation_data,
                                     self.policy.node)
                self._post(partial(self._reject, RequestRejected(
                    ErrorCode.INVALID_REQUEST, "the request could not be read", target)))
                return
            self._post(partial(self._on_request, request, time.monotonic()))
        elif msg.topic == self.topics.abort:
            self._post(partial(self._on_abort, parse_abort(msg.payload)))
        elif (msg.topic == self.settings.homeassistant.status_topic and not msg.retain
              and msg.payload.strip() == b"online"):
            self._post(self._on_ha_online)

    def _on_engine_event(self, job_id: str, event: Event) -> None:
        """Runtime thread: publish tokens now; hand the outcome to the loop."""
        if isinstance(event, TokenEvent):
            job = self._running
            if job is not None and job.key == job_id and job.stream:
                self.mqtt.publish(token_reply(job.target, job.seq, event.text))
                job.seq += 1
            return
        self._post(partial(self._on_outcome, job_id, event))

    # ------------------------------------------------------------------ the loop

    def _loop(self) -> None:
        interval = self.notifier.watchdog_interval_s
        while True:
            now = time.monotonic()
            # A run already asked to stop has no deadline left to wake for (waking at a passed
            # one would spin while a slow runtime winds down).
            running = self._running
            run_deadline = (running.run_deadline
                            if running is not None and running.abort_reason is None else None)
            wake = min([1.0] + [t - now for t, _ in self._timers]
                       + [d - now for d in (self._scheduler.next_deadline(), run_deadline)
                          if d is not None]
                       + ([self._next_ping - now] if interval else []))
            try:
                fn = self._inbox.get(timeout=max(wake, 0.0))
            except queue.Empty:
                fn = None
            try:
                if fn is not None:
                    fn()
                self._tick(interval)
            except Exception:  # the loop must outlive any single message
                log.exception("service loop: unexpected error")
            if self._stopping and self._running is None and self._inbox.empty():
                self._publish_state()
                return

    def _tick(self, watchdog_interval: float | None) -> None:
        now = time.monotonic()
        if watchdog_interval and now >= self._next_ping:
            self.notifier.watchdog()
            self._next_ping = now + watchdog_interval
        due = [fn for t, fn in self._timers if t <= now]
        self._timers = [(t, fn) for t, fn in self._timers if t > now]
        for fn in due:
            fn()
        failure = self.engine.failure
        if failure is not None:  # the runtime keeps failing: waiting would only delay the answer
            for job in self._scheduler.drain():
                self._answer_error(job.request, ErrorCode.RUNTIME_ERROR,
                                   f"the runtime is unavailable ({failure})")
        for job in self._scheduler.expire(now):
            self._answer_error(job.request, ErrorCode.DEADLINE_EXCEEDED,
                               f"ttl_s ({job.request.ttl_s:g} s) passed while the request waited",
                               finish_reason="deadline")
        running = self._running
        if running is not None and running.abort_reason is None \
                and running.run_deadline is not None and now >= running.run_deadline:
            if running.deadline is not None and running.run_deadline == running.deadline:
                message = f"ttl_s ({running.request.ttl_s:g} s) passed while the request ran"
            else:
                message = (f"the run took longer than queue.request_timeout_s "
                           f"({self.settings.queue.request_timeout_s:g} s)")
            self._abort_running("deadline", message)
        self._dispatch()
        if self.pool is not None:
            self.pool.tick(now)
        if self._running is None:
            self._heap.maybe_trim()  # idle: give large payloads' pages back (RSS stays flat)
        self._publish_state()

    # ------------------------------------------------------------------ requests

    def _on_request(self, request: Request, received: float) -> None:
        if self._stopping:
            self._answer_error(request, ErrorCode.ABORTED, "the daemon is shutting down",
                               finish_reason="abort")
            return
        key = request.key
        if request.client_id_given and (self.pool_holds(key) or self._recent.seen(key, received)):
            log.info("duplicate request id %r ignored (already answered or in progress)", key)
            return
        self._admit(request, received)

    def _admit(self, request: Request, received: float, *, force: bool = False) -> bool:
        """Queue a request (`force`: even over queue.max_pending); False when refused (and answered)."""
        key = request.key
        new = request.chat
        deadline = received + request.ttl_s if request.ttl_s is not None else None
        job = Job(request, received, deadline, new)
        try:
            self._scheduler.submit(key, job, priority=request.priority, deadline=deadline,
                                   runs_now=self._running is None and self._ready, force=force)
        except QueueFull as err:
            self._answer_error(request, ErrorCode.QUEUE_FULL, str(err))
            return False
        if request.client_id_given:
            self._recent.add(key, received)
        return True

    # ------------------------------------------------------------------ the pool's hooks (PoolHost)

    def pool_load(self) -> tuple[int, int]:
        capacity = self.settings.queue.max_pending + 1
        if not (self._ready and self.engine.ready):  # loading: as good as full
            return capacity, capacity
        return int(self._running is not None) + len(self._scheduler), capacity

    def pool_holds(self, key: str) -> bool:
        return (self._running is not None and self._running.key == key) \
            or key in self._scheduler

    def pool_take(self, request: Request, received: float, *, force: bool = False) -> bool:
        if self._stopping:
            self._answer_error(request, ErrorCode.ABORTED, "the daemon is shutting down",
                               finish_reason="abort")
            return False
        return self._admit(request, received, force=force)

    def pool_queued(self) -> list[Request]:
        return [job.request for job in reversed(list(self._scheduler))]

    def pool_release(self, key: str) -> bool:
        return self._scheduler.cancel(key) is not None

    def pool_keeps(self, request: Request) -> bool:
        conv = request.conversation
        return conv is not None and bool(self._conversations.history(conv))

    def pool_reject(self, rejected: RequestRejected) -> None:
        self._reject(rejected)

    def _reject(self, rejected: RequestRejected) -> None:
        log.info("rejected request %r: %s: %s", rejected.target.id, rejected.code, rejected.message)
        self._finish_reply(final_error(rejected.target, rejected.code, rejected.message),
                           rejected.target.id, error=(rejected.code, rejected.message))

    def _on_abort(self, key: str | None) -> None:
        job = self._running
        if job is not None and (key is None or job.key == key):
            self._abort_running("abort", "aborted on request")
            return
        if key is None:
            log.info("abort: nothing is running")
            return
        queued = self._scheduler.cancel(key)
        if queued is None:
            log.info("abort: no queued or running request %r", key)
            return
        self._answer_error(queued.request, ErrorCode.ABORTED, "aborted on request before it ran",
                           finish_reason="abort")

    def _abort_running(self, reason: AbortReason, message: str) -> None:
        job = self._running
        if job is None or job.abort_reason is not None:
            return
        job.abort_reason, job.abort_message = reason, message
        log.info("aborting %r: %s", job.key, message)
        self.engine.abort(job.key, reason)

    def _dispatch(self) -> None:
        if self._running is not None or not self._ready or self._stopping or not self.engine.ready:
            return
        job = self._scheduler.pop()
        if job is None:
            return
        request = job.request
        job.new_messages = self._conversations.new_part(request.conversation, job.new_messages)
        tools = request.tools.json if request.tools is not None else None
        plan = self._conversations.plan(request.conversation, job.new_messages, request.system,
                                        tools)
        job.plan = plan
        job.started = now = time.monotonic()
        timeout_at = now + self.settings.queue.request_timeout_s
        job.run_deadline = min(timeout_at, job.deadline) if job.deadline else timeout_at
        generation = GenerationRequest(
            messages=plan.messages,
            system=plan.system,
            keep_history=plan.keep_history,
            continues_history=plan.continues_kv,
            max_new_tokens=request.max_new_tokens,
            sampling=Sampling(top_k=request.top_k, top_p=request.top_p,
                              temperature=request.temperature),
            stop=request.stop,
            tools_json=tools,
        )
        self._running = job
        self._state = "generating"
        try:
            self.engine.run(request.key, RunCommand(generation, plan.clear_kv))
        except (RkllmMqttError, ValueError) as err:
            self._on_outcome(request.key, ErrorEvent(ErrorCode.RUNTIME_ERROR, one_line(err)))
        except Exception as err:  # a bug: answer the request now, not at its timeout
            log.error("request %s could not start: %s", request.key, one_line(err), exc_info=True)
            self._on_outcome(request.key, ErrorEvent(ErrorCode.RUNTIME_ERROR, one_line(err)))

    def _on_outcome(self, job_id: str, event: FinalEvent | ErrorEvent) -> None:
        job = self._running
        if job is None or job.key != job_id:
            log.warning("outcome for %r, which is not running; ignored", job_id)
            return
        self._running = None
        self._state = "idle"
        now = time.monotonic()
        request, target = job.request, job.target
        plan = job.plan
        if isinstance(event, ErrorEvent):
            self._conversations.finished(request.conversation, job.new_messages, request.system, None)
            code = event.code
            message = event.message
            finish_reason: FinishReason = "error"
            if code is ErrorCode.RUNTIME_CRASHED and job.abort_reason is not None:
                # killed because it ignored our abort: the answer is still the abort's
                code = (ErrorCode.DEADLINE_EXCEEDED if job.abort_reason == "deadline"
                        else ErrorCode.ABORTED)
                message = f"{job.abort_message}; the runtime did not stop and was restarted"
                finish_reason = job.abort_reason
            self._answer_error(request, code, message, finish_reason=finish_reason,
                               text=event.text or None)
            return
        stats = event.stats
        usage: Usage = {"prompt_tokens": stats.prompt_tokens,
                        "completion_tokens": stats.completion_tokens,
                        "prefill_tokens": stats.prefill_tokens,
                        "cached_tokens": stats.cached_tokens,
                        "tokens_source": stats.tokens_source}
        timing: Timing = {
            "queue_ms": _ms(job.started - job.received if job.started else 0.0),
            "ttft_ms": _round(stats.ttft_ms),
            "total_ms": _ms(now - job.received),
            "tokens_per_s": _round(stats.tokens_per_s),
        }
        if event.finish_reason in ("abort", "deadline"):
            self._conversations.finished(request.conversation, job.new_messages, request.system, None)
            code = ErrorCode.DEADLINE_EXCEEDED if event.finish_reason == "deadline" else ErrorCode.ABORTED
            self._answer_error(request, code, job.abort_message or "aborted",
                               finish_reason=event.finish_reason, text=event.text, usage=usage,
                               timing=timing)
            return
        self._conversations.finished(request.conversation, job.new_messages,
                                     plan.system if plan else request.system,
                                     Message("assistant", event.text, tool_calls=event.tool_calls),
                                     cache_exact=event.finish_reason != "stop_sequence",
                                     tools=request.tools.json if request.tools else None)
        log.info("answered %r: %s, %d tokens, %.0f ms (queue %.0f ms)", target.id,
                 event.finish_reason, stats.completion_tokens, timing["total_ms"],
                 timing["queue_ms"])
        self._stats.tokens_per_second = timing["tokens_per_s"]
        self._stats.ttft_ms = timing["ttft_ms"]
        self._finish_reply(final_ok(target, event.text, event.finish_reason, usage, timing,
                                    event.tool_calls, event.invalid_tool_calls), target.id)
        self.outputs.last_response(target.id, event.text, event.finish_reason, usage, timing,
                                   event.tool_calls)
        self.outputs.completed(target.id, event.text, event.finish_reason, usage, timing,
                               event.tool_calls)

    # ------------------------------------------------------------------ replies and outputs

    def _answer_error(self, request: Request, code: ErrorCode, message: str, *,
                      finish_reason: FinishReason | None = None, text: str | None = None,
                      usage: Usage | None = None, timing: Timing | None = None) -> None:
        out = final_error(request.target, code, message, finish_reason=finish_reason, text=text,
                          usage=usage, timing=timing)
        self._finish_reply(out, request.id, error=(code, message))

    def _finish_reply(self, out: Outgoing, request_id: str | int | None,
                      error: tuple[ErrorCode, str] | None = None) -> None:
        """Publish a final reply and account for it (counters, `~/event` for errors)."""
        self.mqtt.publish(out)
        if self.pool is not None and request_id is not None:
            self.pool.answered(str(request_id))
        self._stats.requests_total += 1
        if error is None:
            return
        code, message = error
        if code is not ErrorCode.ABORTED:
            self._stats.errors_total += 1
        self.outputs.failed(request_id, code, message)

    def state_payload(self) -> StatePayload:
        state = self._state
        failure = self.engine.failure
        if failure is not None:
            state = "error"  # reloads keep failing; they go on, with backoff
        elif state == "idle" and not self.engine.ready:
            state = "loading"  # a crashed runtime is being reloaded
        payload: StatePayload = {
            "state": state,
            "busy": self._running is not None,
            "queue": len(self._scheduler),
            "model": self._info.model,
            "runtime_version": self._info.runtime_version,
            "abi": self._info.abi,
            "tokens_per_second": self._stats.tokens_per_second,
            "ttft_ms": self._stats.ttft_ms,
            "requests_total": self._stats.requests_total,
            "errors_total": self._stats.errors_total,
            # What a client must stay within, so it can cut a chat before the daemon refuses it.
            "limits": self._limits(),
        }
        # Only when there is something to say, so a healthy daemon's state stays as it was.
        restarts = self.engine.restarts
        if restarts:
            payload["runtime_restarts"] = restarts
        if failure is not None:
            payload["error"] = failure
        return payload

    def _limits(self) -> StateLimits:
        limits: StateLimits = {"max_prompt_chars": self.policy.max_prompt_chars,
                               "max_payload_bytes": self.policy.max_payload_bytes}
        # The runtime's context in tokens (system prompt, history, turn and answer together), so
        # a client can cut history before a context_too_long; absent when the library decides.
        if self.settings.runtime.max_context_len:
            limits["max_context_tokens"] = self.settings.runtime.max_context_len
        return limits

    def _publish_state(self, *, force: bool = False) -> None:
        self.outputs.state(self.state_payload(), force=force)
        self._publish_pool_record(force=force)

    def _publish_pool_record(self, *, force: bool) -> None:
        if self.pool is not None:
            self.pool.publish_record(running=self._running is not None, queued=len(self._scheduler),
                                     capacity=self.settings.queue.max_pending + 1,
                                     model=self._info.model, ready=self._ready, force=force)

    def _publish_discovery(self) -> None:
        self.outputs.discovery(self._info.model)

    def _on_connected(self) -> None:
        """After every (re)connect: the broker may have lost our retained topics."""
        if self._announced_at_start:
            self._announced_at_start = False
            return
        self._announce()

    def _announce(self) -> None:
        self.outputs.announce(self.state_payload(), self._info.model)
        self._publish_pool_record(force=True)

    def _on_ha_online(self) -> None:
        if self._rediscovery_pending:  # one re-announcement however often "online" arrives
            return
        self._rediscovery_pending = True
        delay = random.uniform(0, self.settings.homeassistant.rediscovery_delay_max_s)
        log.info("Home Assistant came online; re-sending discovery in %.1f s", delay)
        self._timers.append((time.monotonic() + delay, self._rediscover))

    def _rediscover(self) -> None:
        self._rediscovery_pending = False
        self._announce()

    def _begin_shutdown(self) -> None:
        if self._stopping:
            return
        self._stopping = True
        self.mqtt.unsubscribe(self.topics.prompt)
        if self.pool is not None:
            self.pool.leave()
        for job in self._scheduler.drain():
            self._answer_error(job.request, ErrorCode.ABORTED,
                               "the daemon is shutting down; the request did not run",
                               finish_reason="abort")
        if self._running is not None:
            if self.settings.queue.on_shutdown == "abort":
                self._abort_running("abort", "the daemon is shutting down")
            else:
                log.info("finishing %r before shutting down", self._running.key)


# ----------------------------------------------------------------------------- helpers


def _round(value: float | None, digits: int = 1) -> float | None:
    return None if value is None else round(value, digits)


def _ms(seconds: float) -> float:
    return round(seconds * 1000, 1)
