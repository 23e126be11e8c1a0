"""A token counter in its own process, the way a real client (Home Assistant) is one.

`python -m benchmarks.subscriber HOST PORT TOPIC REQUEST_ID QOS` subscribes, prints `ready`, and once
the final reply to REQUEST_ID arrives prints one JSON line: token messages, distinct seqs, and the
perf_counter stamps of the first and last token (CLOCK_MONOTONIC on Linux, so comparable with the
parent's stamps) and the CPU time it spent meanwhile. The callback only stamps and counts; no JSON
parsing beyond finding `seq`.
"""

from __future__ import annotations

import json
import sys
import threading
import time
import uuid
from typing import Any

import paho.mqtt.client as paho
from paho.mqtt.enums import CallbackAPIVersion, MQTTProtocolVersion

TIMEOUT_S = 90.0


def main(host: str, port: int, topic: str, request_id: str, qos: int) -> int:
    seqs: set[int] = set()
    state: dict[str, Any] = {"count": 0, "first": None, "last": None}
    done = threading.Event()
    subscribed = threading.Event()
    token_head = b'{"id":' + json.dumps(request_id).encode() + b',"type":"token","seq":'
    final_head = b'{"id":' + json.dumps(request_id).encode() + b',"type":"final"'

    def on_message(client: paho.Client, userdata: Any, msg: paho.MQTTMessage) -> None:
        t = time.perf_counter()
        payload = msg.payload
        if payload.startswith(token_head):
            if state["first"] is None:
                state["first"] = t
            state["last"] = t
            state["count"] += 1
            end = payload.index(b",", len(token_head))
            seqs.add(int(payload[len(token_head):end]))
        elif payload.startswith(final_head):
            done.set()

    client = paho.Client(CallbackAPIVersion.VERSION2, client_id=f"bench-count-{uuid.uuid4().hex[:8]}",
                         protocol=MQTTProtocolVersion.MQTTv5)
    client.on_message = on_message
    client.on_subscribe = lambda *a: subscribed.set()
    client.connect(host, port, keepalive=30)
    client.loop_start()
    client.subscribe(topic, qos=qos)
    if not subscribed.wait(10):
        return 2
    print("ready", flush=True)
    cpu0 = time.process_time()
    ok = done.wait(TIMEOUT_S)
    cpu = time.process_time() - cpu0
    client.disconnect()
    client.loop_stop()
    print(json.dumps({"ok": ok, "count": state["count"], "distinct": len(seqs),
                      "first": state["first"], "last": state["last"], "cpu_s": cpu}), flush=True)
    return 0 if ok else 1


if __name__ == "__main__":
    h, p, t, rid, q = sys.argv[1:6]
    sys.exit(main(h, int(p), t, rid, int(q)))
