"""Request/reply plumbing to one daemon, over Home Assistant's own MQTT client.

One reply topic per config entry is subscribed at setup (HA sends SUBSCRIBEs after a debounce, so a
per-request subscription would lose the first replies); replies are routed to the waiting request
by their `id`. The daemon's retained `~/status` drives availability, and a daemon that goes offline
fails its pending requests at once instead of letting them run into the timeout. Its retained
`~/state` announces the `limits` a request must stay within.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from typing import Any
from uuid import uuid4

from homeassistant.components import mqtt
from homeassistant.core import CALLBACK_TYPE, HomeAssistant, callback
from homeassistant.exceptions import HomeAssistantError

from .const import (
    DEFAULT_MAX_PAYLOAD_BYTES,
    DEFAULT_MAX_PROMPT_CHARS,
    LOGGER,
    STATUS_ONLINE,
    exception_args,
    state_topic,
    status_topic,
)

# Seconds the daemon's deadline for a request (`ttl_s`) runs past this side's timeout.
TTL_GRACE_S = 1.0

# Put into a pending request's queue when the daemon goes offline, or when the entry unloads.
_OFFLINE: dict[str, Any] = {"type": "_offline"}
_UNLOADED: dict[str, Any] = {"type": "_unloaded"}


class RkllmError(HomeAssistantError):
    """A failure the user sees as one sentence (Assist speaks it, an action call shows it)."""

    def __init__(self, key: str, **placeholders: str) -> None:
        args, kwargs = exception_args(key, **placeholders)
        super().__init__(*args, **kwargs)


class DaemonOfflineError(RkllmError):
    """The daemon's status is not `online`, or it went offline while answering."""


class IntegrationUnloadedError(RkllmError):
    """The config entry unloaded (reload, removal, Home Assistant stopping) while the request ran."""


class DaemonTimeoutError(RkllmError):
    """No final reply within the timeout; the request was aborted on the daemon."""


class DaemonReplyError(RkllmError):
    """The daemon answered with an error, or stopped before the answer was finished."""

    def __init__(self, code: str, node_id: str, message: str = "") -> None:
        if code in ("aborted", "abort"):
            super().__init__("aborted")
        elif code in ("deadline_exceeded", "deadline"):
            super().__init__("deadline", node_id=node_id)
        elif code in ("queue_full", "context_too_long"):
            super().__init__(code, node_id=node_id)
        else:
            super().__init__("reply_error", node_id=node_id, code=code, message=message)
        self.code = code
        self.detail = message


@dataclass(frozen=True, slots=True)
class Limits:
    """The most a request may hold before the daemon refuses it (its `limits` configuration)."""

    max_prompt_chars: int = DEFAULT_MAX_PROMPT_CHARS  # prompt + messages' contents + system
    max_payload_bytes: int = DEFAULT_MAX_PAYLOAD_BYTES  # the whole JSON request
    # The runtime's context in tokens (system prompt, tools, history, turn and answer), when the
    # daemon's runtime.max_context_len is set; None when the library decides.
    max_context_tokens: int | None = None


def limits_of(payload: str | bytes) -> Limits | None:
    """The `limits` a daemon's `~/state` announces (the defaults for any it leaves out); None for a
    state without them."""
    try:
        state = json.loads(payload)
    except ValueError:
        return None
    limits = state.get("limits") if isinstance(state, dict) else None
    if not isinstance(limits, dict):
        return None
    values = {
        key: value for key in ("max_prompt_chars", "max_payload_bytes", "max_context_tokens")
        if isinstance(value := limits.get(key), int) and not isinstance(value, bool) and value > 0
    }
    return Limits(**values)


# Error codes of a request the daemon refused for its size (the runtime's own refusal included).
SIZE_ERRORS = frozenset({"payload_too_large", "context_too_long"})


def refused_for_size(err: Exception) -> bool:
    """True when the daemon refused a request because it was too long (nothing was generated)."""
    if not isinstance(err, DaemonReplyError):
        return False
    return err.code in SIZE_ERRORS or (err.code == "invalid_request" and "limits.max_" in err.detail)


@dataclass(frozen=True, slots=True)
class GenerationResult:
    """The daemon's final `ok` reply: what the action returns."""

    text: str
    finish_reason: str
    usage: dict[str, Any]
    timing: dict[str, Any]
    # `finish_reason: "tool_calls"`: the functions the model called, `{"id", "name", "arguments"}`.
    tool_calls: list[dict[str, Any]] = field(default_factory=list)

    def as_dict(self) -> dict[str, Any]:
        return {"text": self.text, "finish_reason": self.finish_reason, "usage": self.usage,
                "timing": self.timing}


class RkllmClient:
    """One daemon (`<base_topic>/<node_id>`) as seen from Home Assistant."""

    def __init__(self, hass: HomeAssistant, *, base_topic: str, node_id: str, reply_topic: str) -> None:
        self.hass = hass
        self.node_id = node_id
        self.prefix = f"{base_topic}/{node_id}"
        self.reply_topic = reply_topic
        self.online = False
        self.limits = Limits()
        self._seen_online = False
        self._status_topic = status_topic(base_topic, node_id)
        self._state_topic = state_topic(base_topic, node_id)
        self._pending: dict[str, asyncio.Queue[dict[str, Any]]] = {}
        self._listeners: list[Callable[[], None]] = []
        self._unsubscribe: list[CALLBACK_TYPE] = []

    async def async_start(self) -> None:
        """Subscribe to the daemon's status and to this entry's reply topic."""
        self._unsubscribe = [
            await mqtt.async_subscribe(self.hass, self._status_topic, self._on_status, qos=1),
            await mqtt.async_subscribe(self.hass, self._state_topic, self._on_state, qos=1),
            await mqtt.async_subscribe(self.hass, self.reply_topic, self._on_reply, qos=1),
            # After a reconnect HA re-subscribes and the retained status arrives again.
            mqtt.async_subscribe_connection_status(self.hass, self._on_connection),
        ]

    async def async_stop(self) -> None:
        """The entry is unloading: unsubscribe, fail what is still waiting and abort it on the daemon.

        Nobody will read those answers, so the NPU should not keep working on them.
        """
        for unsubscribe in self._unsubscribe:
            unsubscribe()
        self._unsubscribe = []
        pending = list(self._pending)
        self._fail_pending(_UNLOADED)
        for request_id in pending:
            try:
                await self.async_abort(request_id)
            except HomeAssistantError as err:  # MQTT is already gone (Home Assistant is stopping)
                LOGGER.debug("Could not abort %s on %s: %s", request_id, self.prefix, err)

    @callback
    def async_add_listener(self, update: Callable[[], None]) -> CALLBACK_TYPE:
        """Call `update` whenever `online` changes; returns the function that removes it."""
        self._listeners.append(update)
        return lambda: self._listeners.remove(update)

    @callback
    def _on_status(self, msg: mqtt.ReceiveMessage) -> None:
        self._set_online(msg.payload == STATUS_ONLINE)

    @callback
    def _on_state(self, msg: mqtt.ReceiveMessage) -> None:
        """Keep the announced limits; a daemon that announces none keeps the defaults."""
        if (limits := limits_of(msg.payload)) is not None:
            self.limits = limits

    @callback
    def _on_connection(self, connected: bool) -> None:
        if not connected:
            self._set_online(False)

    @callback
    def _set_online(self, online: bool) -> None:
        if online == self.online:
            return
        self.online = online
        # One info line when the daemon is lost and one when it is back (not at the first status).
        if online and self._seen_online:
            LOGGER.info("The RKLLM daemon %s is back online", self.prefix)
        elif not online and self._seen_online:
            LOGGER.info("The RKLLM daemon %s is unavailable (offline, or MQTT disconnected)", self.prefix)
        else:
            LOGGER.debug("Daemon %s is %s", self.prefix, "online" if online else "offline")
        self._seen_online = True
        if not online:
            self._fail_pending(_OFFLINE)
        for update in list(self._listeners):
            update()

    @callback
    def _on_reply(self, msg: mqtt.ReceiveMessage) -> None:
        try:
            reply = json.loads(msg.payload)
        except ValueError:
            LOGGER.warning("Ignoring a reply on %s that is not JSON: %.200s", msg.topic, msg.payload)
            return
        if not isinstance(reply, dict):
            LOGGER.warning("Ignoring a reply on %s that is not an object: %.200s", msg.topic, msg.payload)
            return
        queue = self._pending.get(str(reply.get("id")))
        if queue is None:
            # A reply to a request this Home Assistant gave up on (timeout, restart): nothing waits.
            LOGGER.debug("Ignoring a reply for no pending request: %.200s", msg.payload)
            return
        queue.put_nowait(reply)

    @callback
    def _fail_pending(self, reason: dict[str, Any]) -> None:
        for queue in self._pending.values():
            queue.put_nowait(reason)

    def generate(
        self,
        *,
        timeout: float,
        prompt: str | None = None,
        messages: list[dict[str, Any]] | None = None,
        system: str | None = None,
        tools: list[dict[str, Any]] | None = None,
        conversation: str | None = None,
        max_new_tokens: int | None = None,
        temperature: float | None = None,
        priority: str | None = None,
        stream: bool = True,
    ) -> Generation:
        """A request, sent when iteration starts; fields left None are the daemon's defaults."""
        request: dict[str, Any] = {
            "id": f"ha-{uuid4().hex}",
            "prompt": prompt,
            "messages": messages,
            "system": system,
            "tools": tools,
            "conversation": conversation,
            "stream": stream,
            "response_topic": self.reply_topic,
            "max_new_tokens": max_new_tokens,
            "temperature": temperature,
            "priority": priority,
            # The daemon's own deadline for it, queued or running: nobody waits for it after that, even
            # when this Home Assistant is gone before it could publish an abort. A little later than
            # the timeout here, so that this side's timeout (and its abort) is what normally ends it.
            "ttl_s": timeout + TTL_GRACE_S,
        }
        return Generation(self, {k: v for k, v in request.items() if v is not None}, timeout)

    async def async_generate(self, **kwargs: Any) -> GenerationResult:
        """A request without token messages; returns the final answer."""
        generation = self.generate(stream=False, **kwargs)
        async for _text in generation:
            pass
        assert generation.result is not None  # iteration ends only with a result or an exception
        return generation.result

    async def async_abort(self, request_id: str) -> None:
        """Ask the daemon to stop a request (running or queued); `~/abort` takes the id."""
        await mqtt.async_publish(self.hass, f"{self.prefix}/abort", request_id, qos=1, retain=False)


class Generation:
    """One request; iterate it for the answer's text pieces, then read `result`.

    The pieces are the token messages as they arrive, then whatever the final reply holds beyond
    them (all of it when the daemon sent no tokens). A lost token message makes `streamed` differ
    from `result.text`; the final text is the answer, so a caller that showed the pieces corrects
    what it showed. Errors are raised from the iteration as RkllmError subclasses; a caller that
    stops early or is cancelled aborts the request.
    """

    def __init__(self, client: RkllmClient, request: dict[str, Any], timeout: float) -> None:
        self.id: str = request["id"]
        self.result: GenerationResult | None = None
        self.streamed = ""
        # What is published, so its size can be checked against the daemon's max_payload_bytes.
        self.payload = json.dumps(request, ensure_ascii=False).encode()
        self._client = client
        self._timeout = timeout

    async def __aiter__(self) -> AsyncIterator[str]:
        client = self._client
        if not client.online:
            raise DaemonOfflineError("offline", node_id=client.node_id)
        queue: asyncio.Queue[dict[str, Any]] = asyncio.Queue()
        client._pending[self.id] = queue
        finished = False
        try:
            await mqtt.async_publish(
                client.hass, f"{client.prefix}/prompt", self.payload, qos=1, retain=False
            )
            deadline = asyncio.get_running_loop().time() + self._timeout
            last_seq = -1
            while True:
                try:
                    async with asyncio.timeout_at(deadline):
                        reply = await queue.get()
                except TimeoutError:
                    finished = True
                    await client.async_abort(self.id)
                    raise DaemonTimeoutError(
                        "timeout", node_id=client.node_id, timeout=f"{self._timeout:g}"
                    ) from None
                if reply is _OFFLINE:
                    finished = True
                    raise DaemonOfflineError("went_offline", node_id=client.node_id)
                if reply is _UNLOADED:
                    finished = True  # RkllmClient.async_stop publishes the abort
                    raise IntegrationUnloadedError("unloaded")
                if reply.get("type") == "token":
                    seq, text = reply.get("seq"), reply.get("text")
                    if isinstance(seq, int):
                        if seq <= last_seq:
                            continue  # a QoS 1 redelivery
                        last_seq = seq
                    if isinstance(text, str) and text:
                        self.streamed += text
                        yield text
                    continue
                if reply.get("type") != "final":
                    continue
                finished = True
                self.result = _final_result(reply, client.node_id)
                if self.result.text.startswith(self.streamed) and len(self.result.text) > len(self.streamed):
                    rest = self.result.text[len(self.streamed):]
                    self.streamed += rest
                    yield rest
                return
        finally:
            client._pending.pop(self.id, None)
            if not finished:
                # Cancelled (the voice pipeline gave up) or abandoned: free the NPU for the next request.
                client.hass.async_create_background_task(
                    client.async_abort(self.id), f"rkllm_mqtt abort {self.id}"
                )


def _final_result(reply: dict[str, Any], node_id: str) -> GenerationResult:
    """The final reply as a result, or the sentence that says why there is none."""
    finish_reason = str(reply.get("finish_reason") or "")
    if reply.get("status") != "ok":
        error = reply.get("error") if isinstance(reply.get("error"), dict) else {}
        code = str(error.get("code") or "unknown")
        raise DaemonReplyError(code, node_id, str(error.get("message") or ""))
    if finish_reason in ("abort", "deadline"):
        raise DaemonReplyError(finish_reason, node_id)
    usage, timing = reply.get("usage"), reply.get("timing")
    return GenerationResult(
        text=str(reply.get("text") or ""),
        finish_reason=finish_reason,
        usage=usage if isinstance(usage, dict) else {},
        timing=timing if isinstance(timing, dict) else {},
        tool_calls=_tool_calls(reply.get("tool_calls")),
    )


def _tool_calls(calls: Any) -> list[dict[str, Any]]:
    """The final reply's well-formed tool calls; a call without a name or id cannot be run or answered."""
    if not isinstance(calls, list):
        return []
    valid = [
        call for call in calls
        if isinstance(call, dict) and isinstance(call.get("name"), str) and call["name"]
        and isinstance(call.get("id"), str | int) and isinstance(call.get("arguments", {}), dict)
    ]
    if len(valid) != len(calls):
        LOGGER.warning("Ignoring malformed tool calls in a reply: %.200s", calls)
    return valid
