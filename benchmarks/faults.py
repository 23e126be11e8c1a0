"""`python -m benchmarks.faults`: the fault run, as a new user would meet it, with figures.

`rkllm-mqtt run` with the default configuration (only the broker, library and model set) on the
simulator, and every fault
of README "Reliability": a native crash mid-run, a run that hangs and ignores abort, a burst of
1,000 requests from 20 clients, 3,000 hostile payloads, the broker gone longer than the keepalive in
the middle of a generation, SIGTERM with a full queue. Every request is counted: each must get
exactly one final reply, and a good request must be served after each fault. The tests in
tests/daemon/test_faults.py prove the same with assertions; this prints how long things took.
"""

from __future__ import annotations

import json
import random
import signal
import sys
import threading
import time
import uuid
from collections import Counter
from typing import Any

from benchmarks.harness import Subscriber, broker, simulator
from benchmarks.reliability import daemon_process, hostile_payloads
from rkllm_mqtt.simulator import expected_answer

HANG_TTL_S = 2


def _finals(sub: Subscriber) -> Counter[str]:
    counts: Counter[str] = Counter()
    for r in list(sub.replies):
        if b'"type":"final"' in r.payload[:300]:
            obj = json.loads(r.payload)
            counts[str(obj.get("id"))] += 1
    return counts


def _final(sub: Subscriber, request_id: str) -> dict[str, Any]:
    for r in reversed(list(sub.replies)):
        if b'"type":"final"' in r.payload[:300]:
            obj = json.loads(r.payload)
            if obj.get("id") == request_id:
                return obj
    raise LookupError(request_id)


_REFUSED_FULL: dict[str, int] = {}  # tag -> how often its good request was answered queue_full


def _good(sub: Subscriber, prefix: str, tag: str) -> float:
    """A good request after a fault; seconds until its (correct) answer.

    Answered `queue_full` (the real requests among hostile payloads can still fill the queue),
    it is sent again a little later, as a client does; a retry has an id of its own."""
    t0 = time.perf_counter()
    for attempt in range(50):
        rid = f"good-{tag}" + (f"-{attempt}" if attempt else "")
        sub.request(f"{prefix}/prompt", rid, f"good after {tag}")
        sub.wait_final(rid, 60)
        final = _final(sub, rid)
        if final.get("error", {}).get("code") != "queue_full":
            break
        _REFUSED_FULL[tag] = attempt + 1
        time.sleep(0.2)
    elapsed = time.perf_counter() - t0
    assert final.get("text") == expected_answer(f"good after {tag}"), final
    return elapsed


class _PersistentClient:
    """An MQTT 5 subscriber whose session (and queued replies) the broker keeps across restarts."""

    def __init__(self, b: Any, topic: str) -> None:
        import paho.mqtt.client as paho
        from paho.mqtt.enums import CallbackAPIVersion, MQTTProtocolVersion
        from paho.mqtt.packettypes import PacketTypes
        from paho.mqtt.properties import Properties

        self.payloads: list[bytes] = []
        self._cond = threading.Condition()
        self.client = paho.Client(CallbackAPIVersion.VERSION2, client_id=f"out-{uuid.uuid4().hex}",
                                  protocol=MQTTProtocolVersion.MQTTv5)
        self.client.on_message = self._on_message
        self.client.reconnect_delay_set(min_delay=1, max_delay=1)
        props = Properties(PacketTypes.CONNECT)
        props.SessionExpiryInterval = 3600
        subscribed = threading.Event()
        self.client.on_subscribe = lambda *a: subscribed.set()
        self.client.connect(b.host, b.port, clean_start=False, properties=props)
        self.client.loop_start()
        self.client.subscribe(topic, qos=1)
        if not subscribed.wait(10):
            raise RuntimeError("could not subscribe")

    def _on_message(self, client: Any, userdata: Any, msg: Any) -> None:
        with self._cond:
            self.payloads.append(msg.payload)
            self._cond.notify_all()

    def wait(self, pred: Any, timeout: float) -> list[bytes]:
        with self._cond:
            if not self._cond.wait_for(lambda: pred(self.payloads), timeout):
                raise TimeoutError("the persistent client did not get what it waited for")
            return list(self.payloads)

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()


def main() -> int:
    sim = simulator()
    figures: list[tuple[str, str]] = []
    with broker() as b, daemon_process(b, sim, defaults=True) as d:
        sub, prefix = d.sub, d.prefix

        # a native crash in the middle of a run, a request queued behind it
        t0 = time.perf_counter()
        sub.request(f"{prefix}/prompt", "crash", "[sim:tokens=20][sim:delay_ms=20][sim:crash]")
        sub.request(f"{prefix}/prompt", "behind-crash", "queued behind the crash")
        sub.wait_final("crash", 60)
        t_crash = time.perf_counter()
        sub.wait_final("behind-crash", 60)
        t_next = time.perf_counter()
        code = _final(sub, "crash")["error"]["code"]
        figures.append(("native crash mid-run (SIGSEGV)",
                        f"answered `{code}` {1000 * (t_crash - t0):.0f} ms after the request; "
                        f"the request behind it answered {1000 * (t_next - t_crash):.0f} ms "
                        "later (child restarted, model reloaded)"))
        _good(sub, prefix, "crash")

        # a run that hangs and ignores abort, with a deadline
        t0 = time.perf_counter()
        sub.request(f"{prefix}/prompt", "hang", "[sim:hang_hard]", ttl_s=HANG_TTL_S)
        sub.request(f"{prefix}/prompt", "behind-hang", "queued behind the hang")
        sub.wait_final("hang", 60)
        t_hang = time.perf_counter()
        sub.wait_final("behind-hang", 60)
        t_next = time.perf_counter()
        code = _final(sub, "hang")["error"]["code"]
        figures.append((f"a hang that ignores abort (ttl_s {HANG_TTL_S})",
                        f"answered `{code}` after {t_hang - t0:.1f} s (deadline, then the child "
                        f"killed 10 s after the abort); the request behind it "
                        f"{1000 * (t_next - t_hang):.0f} ms later"))
        _good(sub, prefix, "hang")

        # 1,000 requests from 20 clients
        clients = [Subscriber(b, f"rkllm/reply/burst{c}") for c in range(20)]
        ids = {c: [f"b{c}-{r}" for r in range(50)] for c in range(20)}
        t0 = time.perf_counter()

        def send(c: int) -> None:
            for rid in ids[c]:
                clients[c].request(f"{prefix}/prompt", rid, f"burst {rid}",
                                   response_topic=f"rkllm/reply/burst{c}", stream=c % 2 == 0)

        senders = [threading.Thread(target=send, args=(c,)) for c in range(20)]
        for t in senders:
            t.start()
        for t in senders:
            t.join()
        for c, client in enumerate(clients):
            for rid in ids[c]:
                client.wait_final(rid, 300)
        elapsed = time.perf_counter() - t0
        once = all(set(_finals(cl).values()) == {1} and len(_finals(cl)) == 50 for cl in clients)
        codes = Counter(_final(cl, rid).get("status") for c, cl in enumerate(clients)
                        for rid in ids[c])
        for client in clients:
            client.close()
        figures.append(("1,000 requests from 20 clients",
                        f"all answered in {elapsed:.1f} s, each exactly once: {once}; "
                        f"statuses {dict(codes)} (queue.max_pending 8: the rest `queue_full`)"))
        _good(sub, prefix, "burst")

        # 3,000 hostile payloads
        rng = random.Random(3)
        source = hostile_payloads(rng)
        t0 = time.perf_counter()
        for _ in range(3000):
            topic, payload = next(source)
            sub.client.publish(f"{prefix}/{topic}", payload, qos=1)
        sent = time.perf_counter() - t0
        after = _good(sub, prefix, "hostile")  # answered after every payload before it
        figures.append(("3,000 hostile payloads",
                        f"sent in {sent:.1f} s; all handled and a good request after them "
                        f"answered {after:.1f} s after the last was sent"
                        + (f" (sent {_REFUSED_FULL['hostile'] + 1} times: the real requests "
                           "among them had filled the queue)" if "hostile" in _REFUSED_FULL
                           else "")))

        # the broker gone longer than the keepalive in the middle of a generation; the client
        # keeps a persistent session, as Home Assistant's MQTT integration does
        replies = _PersistentClient(b, "rkllm/reply/outage")
        sub.request(f"{prefix}/prompt", "outage", "[sim:tokens=80][sim:delay_ms=100] outage",
                    response_topic="rkllm/reply/outage")
        replies.wait(lambda payloads: any(b'"type":"token"' in p for p in payloads), 20)
        b.stop()
        time.sleep(40)  # > the default keepalive (30 s)
        b.start()
        got = replies.wait(lambda payloads: any(b'"type":"final"' in p for p in payloads), 120)
        finals = [json.loads(p) for p in got if b'"type":"final"' in p]
        replies.close()
        sub_after = Subscriber(b, f"{prefix}/#")  # paho does not re-subscribe a clean session
        figures.append(("broker down 40 s mid-generation (keepalive 30 s)",
                        f"final `{finals[0]['status']}` with "
                        f"{finals[0]['usage']['completion_tokens']} tokens, {len(finals)} time(s); "
                        f"good request after: {1000 * _good(sub_after, prefix, 'outage'):.0f} ms"))
        sub.close()
        sub = sub_after

        # SIGTERM with a full queue
        sub.forget()
        sub.request(f"{prefix}/prompt", "running", "[sim:tokens=30][sim:delay_ms=50]")
        time.sleep(0.3)
        queued = [f"q{i}" for i in range(9)]
        for rid in queued:
            sub.request(f"{prefix}/prompt", rid, rid)
        time.sleep(0.5)
        t0 = time.perf_counter()
        d.proc.send_signal(signal.SIGTERM)
        code = d.proc.wait(60)
        elapsed = time.perf_counter() - t0
        counts = _finals(sub)
        statuses = Counter(_final(sub, rid).get("error", {}).get("code", "ok")
                           for rid in ["running", *queued])
        figures.append(("SIGTERM with a full queue (8 waiting, 1 more refused)",
                        f"exit {code} after {elapsed:.1f} s (the running one finished: "
                        f"queue.on_shutdown finish); finals {dict(statuses)}, each exactly once: "
                        f"{all(counts[r] == 1 for r in ['running', *queued])}"))
    with broker() as b, daemon_process(b, sim, defaults=True) as d:
        figures.append(("a new daemon after SIGTERM",
                        f"good request served in {1000 * _good(d.sub, d.prefix, 'sigterm'):.0f} ms"))

    print("| fault | figures |\n|---|---|")
    for name, text in figures:
        print(f"| {name} | {text} |")
    print(f"\nrun {uuid.uuid4().hex[:6]} at {time.strftime('%Y-%m-%d %H:%M')}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
