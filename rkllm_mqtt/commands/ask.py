"""`rkllm-mqtt ask`: one request to a running daemon, the reply streamed to the terminal.

It is also the smallest complete client of the contract: a fresh id, a private reply topic under
`<base>/reply/` (allowed by the default `mqtt.allowed_response_topics`), tokens printed as they
arrive (deduplicated by `seq`, since QoS 1 may deliver one twice), and the final reply deciding the
exit code. With `--tools`, the calls of the final reply follow the text on stdout, one JSON object
a line, so a script can run them and send the results back.
"""

from __future__ import annotations

import json
import logging
import queue
import sys
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any, TextIO

from paho.mqtt.client import topic_matches_sub

from rkllm_mqtt.config import Settings
from rkllm_mqtt.exitcodes import EXIT_FAILURE, EXIT_OK
from rkllm_mqtt.mqtt_client import InMessage, MqttClient
from rkllm_mqtt.topics import PoolTopics, Topics

log = logging.getLogger(__name__)

RETRY_AFTER_S = 5.0  # a pool request nobody has taken for this long is sent again (same id)
MAX_RESENDS = 3


def load_tools(path: Path) -> list[Any]:
    """The `--tools` file: a JSON list of OpenAI-form tools (the daemon validates each one, and
    answers invalid_request naming the field)."""
    try:
        tools = json.loads(path.read_text(encoding="utf-8"))
    except OSError as err:
        raise ValueError(f"cannot read it ({err.strerror or err})") from None
    except ValueError as err:
        raise ValueError(f"not JSON ({err})") from None
    if not isinstance(tools, list):
        raise ValueError('must be a JSON list of {"type": "function", "function": {...}}')
    return tools


def ask(
    settings: Settings,
    text: str,
    *,
    timeout: float = 120.0,
    stream: bool = True,
    system: str | None = None,
    conversation: str | None = None,
    tools: list[Any] | None = None,
    pool: str | None = None,
    stream_to: TextIO | None = None,
    errors_to: TextIO | None = None,
) -> int:
    """Send `text`, print the answer (streamed when `stream`), return 0 on an ok final reply.

    With `pool` the request goes to that pool's topic, and is sent again, with the same id, when
    nothing took it within RETRY_AFTER_S, or when the member that took it went offline and no
    other member took it over within RETRY_AFTER_S: the members answer one id once.
    """
    out = stream_to or sys.stdout
    err = errors_to or sys.stderr
    client_id = f"rkllm-ask-{uuid.uuid4().hex[:10]}"
    topics = Topics.of(settings)
    reply_topic = f"{topics.reply_base}/{client_id}"
    request_id = uuid.uuid4().hex
    request: dict[str, Any] = {"id": request_id, "prompt": text, "stream": stream,
                               "response_topic": reply_topic}
    if system is not None:
        request["system"] = system
    if conversation is not None:
        request["conversation"] = conversation
    if tools is not None:
        request["tools"] = tools
    if pool is None:
        prompt_topic, status_topic = topics.prompt, topics.status
    else:
        own = PoolTopics.of(settings)
        pool_topics = own if own is not None and own.group == pool else \
            PoolTopics.build(settings.mqtt.base_topic, pool)
        prompt_topic, status_topic = pool_topics.prompt, pool_topics.status

    inbox: queue.SimpleQueue[InMessage] = queue.SimpleQueue()
    client = MqttClient(settings.mqtt, client_id=client_id,
                        subscriptions=[reply_topic, status_topic], on_message=inbox.put)
    client.connect(attempts=3)
    payload = json.dumps(request)
    try:
        client.publish_raw(prompt_topic, payload)
        receiver = _Receiver(request_id, reply_topic, status_topic, stream, out, err)
        resend = (lambda: client.publish_raw(prompt_topic, payload)) if pool is not None else None
        return receiver.run(inbox, timeout, resend)
    finally:
        client.close()


class _Receiver:
    """The replies to one request: tokens to `out` (by seq), the final deciding the exit code."""

    def __init__(self, request_id: str, reply_topic: str, status_topic: str, stream: bool,
                 out: TextIO, err: TextIO) -> None:
        self.request_id = request_id
        self.reply_topic = reply_topic
        self.status_topic = status_topic
        self.stream = stream
        self.out = out
        self.err = err
        self.next_seq = 0
        self.node: str | None = None  # the member that last said it took the request
        self.statuses: dict[str, str] = {}  # node -> online/offline

    def run(self, inbox: queue.SimpleQueue[InMessage], timeout: float,
            resend: Callable[[], object] | None) -> int:
        deadline = time.monotonic() + timeout
        waiting_since: float | None = time.monotonic()  # since we last heard who holds it
        resent = 0
        while (now := time.monotonic()) < deadline:
            wake = deadline
            if resend is not None and waiting_since is not None:
                wake = min(wake, waiting_since + RETRY_AFTER_S)
                if now >= waiting_since + RETRY_AFTER_S and resent < MAX_RESENDS:
                    resent += 1
                    log.info("no member holds the request; sending it again (%d)", resent)
                    resend()
                    waiting_since = now
                    continue
            try:
                msg = inbox.get(timeout=max(wake - now, 0.01))
            except queue.Empty:
                continue
            if topic_matches_sub(self.status_topic, msg.topic):
                node = msg.topic.rsplit("/", 2)[-2]
                self.statuses[node] = msg.payload.decode("utf-8", errors="replace")
                if node == self.node and self.statuses[node] == "offline":
                    waiting_since = time.monotonic()  # a live member should take it over
                continue
            reply = _reply_to(msg, self.reply_topic, self.request_id)
            if reply is None:
                continue
            kind = reply.get("type")
            if kind == "accepted":
                self._accepted(reply.get("node"))
                waiting_since = None
            elif kind == "token":
                if self.stream and reply.get("seq", -1) >= self.next_seq:
                    self.next_seq = reply["seq"] + 1
                    self.out.write(reply.get("text", ""))
                    self.out.flush()
            elif kind == "final":
                return self._final(reply)
        self.err.write(f"rkllm-mqtt: no final reply within {timeout:g} s{self._hint()}\n")
        return EXIT_FAILURE

    def _accepted(self, node: object) -> None:
        if not isinstance(node, str) or node == self.node:
            return
        if self.node is not None:  # taken over: the answer starts again
            if self.next_seq:
                self.out.write("\n")
            self.err.write(f"rkllm-mqtt: {self.node} went away; {node} answers instead\n")
            self.next_seq = 0
        self.node = node

    def _final(self, reply: dict[str, Any]) -> int:
        if reply.get("status") == "ok":
            _print_answer(reply, self.stream, self.out, self.err)
            return EXIT_OK
        if self.stream and self.next_seq:
            self.out.write("\n")
        error = reply.get("error") or {}
        self.err.write(f"rkllm-mqtt: error reply: {error.get('code')}: {error.get('message')}\n")
        return EXIT_FAILURE

    def _hint(self) -> str:
        if not self.statuses:
            return " (no daemon has announced itself on this node)"
        if all(status == "offline" for status in self.statuses.values()):
            return " (the daemon is offline)" if len(self.statuses) == 1 else " (every daemon is offline)"
        return ""


def _reply_to(msg: InMessage, reply_topic: str, request_id: str) -> dict[str, Any] | None:
    if msg.topic != reply_topic:
        return None
    try:
        reply = json.loads(msg.payload)
    except ValueError:
        return None
    return reply if isinstance(reply, dict) and reply.get("id") == request_id else None


def _print_answer(final: dict[str, Any], streamed: bool, out: TextIO, err: TextIO) -> None:
    """The text (unless it streamed), then each tool call as one JSON line; markup that was not a
    call is only reported on stderr, like the figures."""
    text, calls = final.get("text", ""), final.get("tool_calls") or []
    if not streamed:
        out.write(text)
    if text or not calls:
        out.write("\n")
    for call in calls:
        out.write(json.dumps(call, ensure_ascii=False) + "\n")
    out.flush()
    for invalid in final.get("invalid_tool_calls") or []:
        err.write(f"rkllm-mqtt: a malformed tool call was left out: {invalid.get('error')}\n")
    err.write(_summary(final) + "\n")


def _summary(final: dict[str, Any]) -> str:
    """The final reply's figures, in the words `rkllm-mqtt generate` uses (stderr, not the answer)."""
    usage = final.get("usage") or {}
    timing = final.get("timing") or {}
    parts = [f"finish: {final.get('finish_reason')}", f"{usage.get('completion_tokens')} tokens"]
    if usage.get("prompt_tokens") is not None:
        prefilled = usage.get("prefill_tokens")
        parts.append(f"prompt {usage['prompt_tokens']} tokens"
                     + (f" ({prefilled} prefilled)" if prefilled is not None else ""))
    if timing.get("ttft_ms") is not None:
        parts.append(f"first token {timing['ttft_ms']:.0f} ms")
    if timing.get("tokens_per_s") is not None:
        parts.append(f"{timing['tokens_per_s']:.1f} tokens/s")
    if timing.get("total_ms") is not None:
        parts.append(f"total {timing['total_ms']:.0f} ms")
    if final.get("node") is not None:
        parts.append(f"node {final['node']}")
    return "[" + ", ".join(parts) + "]"
