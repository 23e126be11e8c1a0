"""`python -m benchmarks.pool`: throughput of a pool of 1, 2 and 3 members at RK3588 speed, side by side.

Each member is its own `rkllm-mqtt run` process (a board of its own) on the simulator at RK3588
pace (`RKLLM_SIM_SPEED=rk3588`: Qwen2.5-1.5B w8a8, 16.7 tokens/s), all on one private Mosquitto.
A burst of requests goes to the pool topic; the clock runs from the first publish to the last
final reply. The figure that matters is the ratio to one member, measured in the same run.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections import Counter
from pathlib import Path
from typing import Any

import paho.mqtt.client as paho
from paho.mqtt.enums import CallbackAPIVersion, MQTTProtocolVersion

from benchmarks import harness

REPO = Path(__file__).resolve().parents[1]
GOAL_3 = 2.8  # issue #10: close to linear, at least 2.8x with three members


def _member_config(directory: Path, broker: Any, sim: harness.Simulator, base: str, node: str,
                   max_pending: int) -> Path:
    path = directory / f"{node}.toml"
    path.write_text(f"""
[mqtt]
host = "{broker.host}"
port = {broker.port}
base_topic = "{base}"
node_id = "{node}"

[runtime]
library = "{sim.library}"
abi = "{harness.ABI}"
model = "{sim.model}"

[queue]
max_pending = {max_pending}

[homeassistant]
discovery = false

[pool]
group = "bench"
""")
    return path


class _Client:
    """Publishes the burst and collects the finals (one paho client, MQTT 5)."""

    def __init__(self, broker: Any, base: str) -> None:
        self.reply = f"{base}/reply/bench"
        self.members = f"{base}/pool/bench/members/+"
        self.finals: dict[str, dict[str, Any]] = {}
        self.final_messages = 0  # more than len(finals): some request was answered twice
        self.records: dict[str, dict[str, Any]] = {}
        self.done = threading.Event()
        self.expected = 0
        self.client = paho.Client(CallbackAPIVersion.VERSION2, client_id=f"bench-{uuid.uuid4().hex[:6]}",
                                  protocol=MQTTProtocolVersion.MQTTv5)
        self.client.on_message = self._on_message
        subscribed = threading.Event()
        self.client.on_subscribe = lambda *a: subscribed.set()
        self.client.connect(broker.host, broker.port)
        self.client.loop_start()
        self.client.subscribe([(self.reply, 1), (self.members, 1)])
        subscribed.wait(10)

    def _on_message(self, client: paho.Client, userdata: Any, msg: paho.MQTTMessage) -> None:
        if not msg.payload:
            return
        obj = json.loads(msg.payload)
        if msg.topic == self.reply:
            if obj.get("type") == "final":
                self.final_messages += 1
                self.finals.setdefault(obj["id"], obj)
                if len(self.finals) >= self.expected:
                    self.done.set()
        else:
            self.records[obj["node"]] = obj

    def wait_members(self, nodes: list[str], timeout: float = 60) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if all(self.records.get(n, {}).get("online") for n in nodes):
                return
            time.sleep(0.05)
        raise RuntimeError(f"members {nodes} did not come online")

    def burst(self, prompt_topic: str, requests: int, lengths: list[int], timeout: float) -> float:
        self.finals.clear()
        self.final_messages = 0
        self.done.clear()
        self.expected = requests
        t0 = time.perf_counter()
        for i in range(requests):
            self.client.publish(prompt_topic, json.dumps({
                "id": f"q{i}-{uuid.uuid4().hex[:4]}",
                "prompt": f"[sim:tokens={lengths[i % len(lengths)]}] question {i}",
                "stream": True, "response_topic": self.reply}), qos=1)
        if not self.done.wait(timeout):
            raise RuntimeError(f"{len(self.finals)} of {requests} answered within {timeout:g} s")
        return time.perf_counter() - t0

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()


def measure(members: int, *, requests: int, lengths: list[int], directory: Path, broker: Any,
            sim: harness.Simulator, kill_after_s: float | None = None) -> dict[str, Any]:
    """One burst; with `kill_after_s`, the first member is SIGKILLed that long after it started."""
    base = f"pb{uuid.uuid4().hex[:6]}"
    nodes = [f"m{i}" for i in range(members)]
    env = {**os.environ, "RKLLM_SIM_SPEED": "rk3588"}
    procs = [subprocess.Popen([sys.executable, "-m", "rkllm_mqtt", "run", "--config",
                               str(_member_config(directory, broker, sim, base, n, requests))],
                              env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, cwd=REPO)
             for n in nodes]
    client = _Client(broker, base)
    try:
        client.wait_members(nodes)
        if kill_after_s is not None:
            threading.Timer(kill_after_s, procs[0].send_signal, (signal.SIGKILL,)).start()
        seconds = client.burst(f"{base}/pool/bench/prompt", requests, lengths,
                               timeout=requests * max(lengths) / 5 + 30)
        time.sleep(0.5)  # a second final for some id would arrive now
        finals = list(client.finals.values())
        ok = [f for f in finals if f.get("status") == "ok"]
        completion = sum(f["usage"]["completion_tokens"] for f in ok)
        return {"members": members, "killed": kill_after_s is not None,
                "seconds": seconds, "requests": len(finals), "ok": len(ok),
                "twice": client.final_messages - len(finals),
                "tokens_per_s": completion / seconds, "requests_per_min": len(ok) / seconds * 60,
                "by_node": dict(sorted(Counter(f["node"] for f in ok).items()))}
    finally:
        client.close()
        for p in procs:
            p.send_signal(signal.SIGTERM)
        for p in procs:
            try:
                p.wait(20)
            except subprocess.TimeoutExpired:
                p.kill()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.pool", description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=12, help="requests per burst (default 12)")
    parser.add_argument("--lengths", default="24",
                        help="tokens per answer, comma-separated lengths taken in turn (default 24; "
                             "40,8 gives uneven work that round-robin alone would not spread)")
    args = parser.parse_args(argv)
    lengths = [int(n) for n in args.lengths.split(",")]
    sim = harness.simulator()
    rows = []
    with harness.broker() as broker, tempfile.TemporaryDirectory() as tmp:
        for members in (1, 2, 3):
            print(f"[bench] pool of {members} ...", file=sys.stderr, flush=True)
            rows.append(measure(members, requests=args.requests, lengths=lengths,
                                directory=Path(tmp), broker=broker, sim=sim))
        print("[bench] pool of 3, one member SIGKILLed 2 s into the burst ...", file=sys.stderr,
              flush=True)
        rows.append(measure(3, requests=args.requests, lengths=lengths, directory=Path(tmp),
                            broker=broker, sim=sim, kill_after_s=2.0))
    one = rows[0]["tokens_per_s"]
    print(f"Pool throughput at RK3588 speed: {args.requests} requests of {args.lengths} tokens, "
          f"one burst to the pool topic (Mosquitto {harness.mosquitto_version()})")
    print()
    print("| members | wall time | tokens/s | requests/min | vs 1 member | answered by | answered twice |")
    print("|---|---|---|---|---|---|---|")
    for r in rows:
        spread = ", ".join(f"{n}: {c}" for n, c in r["by_node"].items())
        label = f"{r['members']}, m0 killed at 2 s" if r["killed"] else str(r["members"])
        print(f"| {label} | {r['seconds']:.2f} s | {r['tokens_per_s']:.1f} | "
              f"{r['requests_per_min']:.1f} | {r['tokens_per_s'] / one:.2f}x | {spread} | {r['twice']} |")
    ratio = rows[2]["tokens_per_s"] / one
    print()
    print(f"3 members: {ratio:.2f}x one member (goal >= {GOAL_3}x): "
          f"{'met' if ratio >= GOAL_3 else 'missed'}")
    return 0 if all(r["ok"] == args.requests and not r["twice"] for r in rows) else 1


if __name__ == "__main__":
    sys.exit(main())
