"""`rkllm-mqtt ask`: one request to a running daemon, the reply streamed to the terminal.

It is also the smallest complete client of the contract: a fresh id, a private reply topic under
`<base>/reply/` (allowed by the default `mqtt.allowed_response_topics`), tokens printed as they
arrive (deduplicated by `seq`, since QoS 1 may deliver one twice), and the final reply deciding the
exit code.
"""

from __future__ import annotations

import json
import logging
import queue
import sys
import time
import uuid
from typing import Any, TextIO

from rkllm_mqtt.config import Settings
from rkllm_mqtt.exitcodes import EXIT_FAILURE, EXIT_OK
from rkllm_mqtt.mqtt_client import InMessage, MqttClient
from rkllm_mqtt.topics import Topics

log = logging.getLogger(__name__)



def ask(
    settings: Settings,
    text: str,
    *,
    timeout: float = 120.0,
    stream: bool = True,
    system: str | None = None,
    conversation: str | None = None,
    stream_to: TextIO | None = None,
    errors_to: TextIO | None = None,
) -> int:
    """Send `text`, print the answer (streamed when `stream`), return 0 on an ok final reply."""
    out = stream_to or sys.stdout
    err = errors_to or sys.stderr
    client_id = f"rkllm-ask-{uuid.uuid4().hex[:10]}"
    topics = Topics.of(settings)
    reply_topic = f"{topics.reply_base}/{client_id}"
    status_topic = topics.status
    request_id = uuid.uuid4().hex
    request: dict[str, Any] = {"id": request_id, "prompt": text, "stream": stream,
                               "response_topic": reply_topic}
    if system is not None:
        request["system"] = system
    if conversation is not None:
        request["conversation"] = conversation

    inbox: queue.SimpleQueue[InMessage] = queue.SimpleQueue()
    client = MqttClient(settings.mqtt, client_id=client_id,
                        subscriptions=[reply_topic, status_topic], on_message=inbox.put)
    client.connect(attempts=3)
    try:
        client.publish_raw(topics.prompt, json.dumps(request))
        return _receive(inbox, request_id, reply_topic, status_topic, timeout, stream, out, err)
    finally:
        client.close()


def _receive(inbox: queue.SimpleQueue[InMessage], request_id: str, reply_topic: str,
             status_topic: str, timeout: float, stream: bool, out: TextIO, err: TextIO) -> int:
    deadline = time.monotonic() + timeout
    next_seq = 0
    daemon_status: str | None = None
    while (left := deadline - time.monotonic()) > 0:
        try:
            msg = inbox.get(timeout=left)
        except queue.Empty:
            break
        if msg.topic == status_topic:
            daemon_status = msg.payload.decode("utf-8", errors="replace")
            continue
        try:
            reply = json.loads(msg.payload)
        except ValueError:
            continue
        if msg.topic != reply_topic or not isinstance(reply, dict) or reply.get("id") != request_id:
            continue
        if reply.get("type") == "token":
            if stream and reply.get("seq", -1) >= next_seq:
                next_seq = reply["seq"] + 1
                out.write(reply.get("text", ""))
                out.flush()
            continue
        if reply.get("type") != "final":
            continue
        if reply.get("status") == "ok":
            out.write(("" if stream else reply.get("text", "")) + "\n")
            out.flush()
            err.write(_summary(reply) + "\n")
            return EXIT_OK
        if stream and next_seq:
            out.write("\n")
        error = reply.get("error") or {}
        err.write(f"rkllm-mqtt: error reply: {error.get('code')}: {error.get('message')}\n")
        return EXIT_FAILURE
    hint = " (the daemon is offline)" if daemon_status == "offline" else (
        " (no daemon has announced itself on this node)" if daemon_status is None else "")
    err.write(f"rkllm-mqtt: no final reply within {timeout:g} s{hint}\n")
    return EXIT_FAILURE


def _summary(final: dict[str, Any]) -> str:
    """The final reply's figures, in the words `rkllm-mqtt generate` uses (stderr, not the answer)."""
    usage = final.get("usage") or {}
    timing = final.get("timing") or {}
    parts = [f"finish: {final.get('finish_reason')}", f"{usage.get('completion_tokens')} tokens"]
    if usage.get("prompt_tokens") is not None:
        parts.append(f"prompt {usage['prompt_tokens']} tokens")
    if timing.get("ttft_ms") is not None:
        parts.append(f"first token {timing['ttft_ms']:.0f} ms")
    if timing.get("tokens_per_s") is not None:
        parts.append(f"{timing['tokens_per_s']:.1f} tokens/s")
    if timing.get("total_ms") is not None:
        parts.append(f"total {timing['total_ms']:.0f} ms")
    return "[" + ", ".join(parts) + "]"
