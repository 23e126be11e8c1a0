"""The measures of the performance budgets (benchmarks/README.md); each returns plain numbers."""

from __future__ import annotations

import contextlib
import json
import os
import re
import select
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from benchmarks.harness import (
    MAX_CONTEXT,
    Broker,
    RawMqtt,
    Simulator,
    Subscriber,
    broker_pid,
    daemon,
    nodelay_of,
    now,
    percentile,
    set_nodelay,
    settings_for,
    sim_env,
)
from rkllm_mqtt.mqtt_client import MqttClient
from rkllm_mqtt.protocol import ReplyTarget, token_reply

REPO = Path(__file__).resolve().parent.parent
CLK_TCK = os.sysconf("SC_CLK_TCK")


def _warm_up(sub: Subscriber, prompt_topic: str) -> None:
    """One short request first: imports, ctypes, JSON and the broker's routes are warm after it."""
    rid = f"warm-{uuid.uuid4().hex[:6]}"
    sub.request(prompt_topic, rid, "[sim:tokens=20]")
    sub.wait_final(rid, 30)
    sub.forget()


def proc_cpu_s(pid: int, tid: int | None = None) -> float:
    """utime + stime of a process (all its threads) or of one of its threads, in seconds."""
    path = f"/proc/{pid}/stat" if tid is None else f"/proc/{pid}/task/{tid}/stat"
    fields = Path(path).read_text().rpartition(")")[2].split()
    return (int(fields[11]) + int(fields[12])) / CLK_TCK


def thread_cpu_s() -> dict[str, float]:
    """CPU seconds of this process's Python threads, by thread name."""
    pid = os.getpid()
    out: dict[str, float] = {}
    for t in threading.enumerate():
        if t.native_id is not None:
            with contextlib.suppress(OSError):  # ended meanwhile
                out[t.name] = out.get(t.name, 0.0) + proc_cpu_s(pid, t.native_id)
    return out


# ----------------------------------------------------------------------------- throughput


@dataclass
class Throughput:
    counter: str  # who counted: "python" (paho, its own process) or "c" (mosquitto_sub)
    engine: str
    qos: int
    tokens: int  # left the runtime
    received: int  # distinct seqs at the subscriber
    subscriber_tps: float  # first to last token at the subscriber
    runtime_tps: float  # first to last token leaving the runtime (includes the publish call)
    drain_ms: float  # last token left the runtime -> last token at the subscriber
    daemon_us: float  # CPU per token: the daemon (this process + a runtime child), Mosquitto, counter
    broker_us: float
    subscriber_us: float
    threads_us: dict[str, float]  # the daemon's share by thread (runtime callback, paho network)


class _PythonCounter:
    """benchmarks/subscriber.py in its own process: a paho client, like Home Assistant."""

    def __init__(self, b: Broker, topic: str, rid: str, qos: int, sub: Subscriber) -> None:
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "benchmarks.subscriber", b.host, str(b.port), topic, rid, str(qos)],
            cwd=REPO, stdout=subprocess.PIPE, text=True)
        assert self.proc.stdout is not None
        if self.proc.stdout.readline().strip() != "ready":
            raise RuntimeError("the counting subscriber did not start")

    def result(self, timeout: float) -> dict[str, Any]:
        assert self.proc.stdout is not None
        line = self.proc.stdout.readline()  # the counter gives up by itself after its timeout
        self.proc.wait(10)
        result = json.loads(line) if line else {"ok": False}
        if not result["ok"]:
            raise RuntimeError(f"throughput: no final reply at the counting subscriber: {result}")
        return result

    def close(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()


class _CCounter:
    """mosquitto_sub writing `<unix time> <payload>` lines to a file: a client that costs ~nothing,
    so the rate is what the daemon and the broker sustain. Parsed after the run."""

    def __init__(self, b: Broker, topic: str, rid: str, qos: int, sub: Subscriber) -> None:
        if MOSQUITTO_SUB is None:
            raise RuntimeError("the C counter needs mosquitto_sub (make broker installs it)")
        self.rid = rid
        self.out = tempfile.NamedTemporaryFile(prefix="rkllm-bench-sub-", suffix=".txt")  # noqa: SIM115
        self.proc = subprocess.Popen(
            [MOSQUITTO_SUB, "-h", b.host, "-p", str(b.port), "-t", topic, "-q", str(qos), "-V", "mqttv5",
             "-F", "%U %p"], stdout=self.out, stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + 10
        while Path(self.out.name).stat().st_size == 0:  # subscribed once a probe comes back
            if time.monotonic() > deadline or self.proc.poll() is not None:
                raise RuntimeError("mosquitto_sub did not subscribe")
            sub.client.publish(topic, b"probe", qos=0)
            time.sleep(0.1)
        self.final = f'{{"id":{json.dumps(rid)},"type":"final"'.encode()

    def result(self, timeout: float) -> dict[str, Any]:
        path = Path(self.out.name)
        deadline = time.monotonic() + timeout
        seen = 0
        with path.open("rb") as f:
            while True:  # scan only what is new (plus an overlap for a marker cut in two)
                f.seek(max(0, seen - len(self.final)))
                chunk = f.read()
                seen += len(chunk) - min(seen, len(self.final))
                if self.final in chunk:
                    break
                if time.monotonic() > deadline:
                    raise RuntimeError("throughput: no final reply at mosquitto_sub")
                time.sleep(0.1)
        self.proc.terminate()
        _, _, usage = os.wait4(self.proc.pid, 0)
        self.proc.returncode = 0
        offset = time.time() - now()  # %U is wall-clock time; the daemon's stamps are perf_counter
        head = f'{{"id":{json.dumps(self.rid)},"type":"token","seq":'.encode()
        seqs, first, last = set(), None, None
        for line in path.read_bytes().splitlines():
            stamp, _, payload = line.partition(b" ")
            if payload.startswith(head):
                t = float(stamp) - offset
                first = t if first is None else first
                last = t
                seqs.add(int(payload[len(head):payload.index(b",", len(head))]))
        return {"ok": True, "distinct": len(seqs), "first": first, "last": last,
                "cpu_s": usage.ru_utime + usage.ru_stime}

    def close(self) -> None:
        if self.proc.poll() is None and self.proc.returncode is None:
            self.proc.kill()
            self.proc.wait()
        self.out.close()


MOSQUITTO_SUB = shutil.which("mosquitto_sub")
COUNTERS: dict[str, type[_PythonCounter] | type[_CCounter]] = {"python": _PythonCounter,
                                                               "c": _CCounter}


def throughput(b: Broker, sim: Simulator, tokens: int = 20000, *, qos: int = 1,
               engine: str = "in-process", counter: str = "python") -> Throughput:
    """One `[sim:tokens=N]` request at unlimited simulator speed, counted by a subscriber process.

    The counter runs in its own process, like a real client: inside this process it would share
    the daemon's GIL and measure the benchmark, not the bridge. `qos` is the daemon's mqtt.qos
    (tokens and finals) and the counter's subscription QoS.
    """
    rid = f"throughput-{uuid.uuid4().hex[:6]}"
    with sim_env(), daemon(settings_for(b, sim, mqtt={"qos": qos}), engine) as (service, times):
        sub = Subscriber(b, service.topics.response)
        count = None
        try:
            _warm_up(sub, service.topics.prompt)
            sub.unsubscribe()
            count = COUNTERS[counter](b, service.topics.response, rid, qos, sub)
            inner = getattr(service.engine, "inner", None)  # the TimedEngine's wrapped engine
            child = getattr(inner, "pid", None)  # the child-process engine's runtime
            daemon_client = f"paho-mqtt-client-{service.mqtt.client._client_id.decode()}"
            cpu0, broker0 = _daemon_cpu_s(child), proc_cpu_s(broker_pid(b))
            threads0 = thread_cpu_s()
            sub.request(service.topics.prompt, rid, f"[sim:tokens={tokens}]")
            result = count.result(90)
            cpu1, broker1 = _daemon_cpu_s(child), proc_cpu_s(broker_pid(b))
            threads1 = thread_cpu_s()
        finally:
            if count is not None:
                count.close()
            sub.close()
    sent = times.tokens[rid]
    n = len(sent)
    threads = {name: (threads1[name] - threads0.get(name, 0.0)) / n * 1e6 for name in threads1}
    if child is not None:
        threads["runtime child process"] = (cpu1 - cpu0) / n * 1e6 - sum(threads.values())
    return Throughput(
        counter=counter, engine=engine, qos=qos, tokens=n, received=result["distinct"],
        subscriber_tps=(result["distinct"] - 1) / (result["last"] - result["first"]),
        runtime_tps=(n - 1) / (sent[-1] - sent[0]),
        drain_ms=(result["last"] - sent[-1]) * 1000,
        daemon_us=(cpu1 - cpu0) / n * 1e6,
        broker_us=(broker1 - broker0) / n * 1e6,
        subscriber_us=result["cpu_s"] / n * 1e6,
        threads_us={_THREAD_LABELS.get(name, "paho network thread" if name == daemon_client else name): us
                    for name, us in threads.items() if us > 0},
    )


def _daemon_cpu_s(child: int | None) -> float:
    return time.process_time() + (proc_cpu_s(child) if child is not None else 0.0)


_THREAD_LABELS = {"rkllm-worker": "runtime thread (callback, JSON, publish call)",
                  "rkllm-engine-reader": "engine reader (child-process pipe)",
                  "rkllm-service": "service loop"}


# ----------------------------------------------------------------------------- per-token latency


@dataclass
class TokenLatency:
    label: str
    decode_tps: float
    tokens: int
    p50_ms: float
    p99_ms: float
    max_ms: float


def _summary(label: str, decode_tps: float, added: list[float]) -> TokenLatency:
    return TokenLatency(label, decode_tps, len(added), percentile(added, 50), percentile(added, 99),
                        max(added))


def token_latency(b: Broker, sim: Simulator, tokens: int = 300, decode_tps: float = 50.0,
                  ) -> tuple[TokenLatency, TokenLatency, TokenLatency]:
    """Token leaves the runtime (engine sink stamp) → the subscriber has it, at an NPU-like pace.

    Also split at the moment the daemon's paho thread writes the token to its socket (a stamp
    around paho's `_sock_send`, observation only): (end to end, daemon's share, broker + subscriber).
    """
    rid = "latency"
    writes: list[tuple[float, bytes]] = []
    with sim_env(RKLLM_SIM_DECODE_TPS=f"{decode_tps:g}"), \
            daemon(settings_for(b, sim)) as (service, times):
        client = service.mqtt.client
        send = client._sock_send

        def stamped_send(buf: bytes) -> int:
            writes.append((now(), bytes(buf)))
            return send(buf)

        client._sock_send = stamped_send  # type: ignore[method-assign,assignment]
        sub = Subscriber(b, service.topics.response)
        try:
            _warm_up(sub, service.topics.prompt)
            sub.request(service.topics.prompt, rid, f"[sim:tokens={tokens}]")
            sub.wait_final(rid, tokens / decode_tps + 30)
            arrived, final, _ = sub.parsed(rid)
        finally:
            sub.close()
    sent = times.tokens[rid]
    if final is None or final.get("status") != "ok" or len(arrived) != len(sent):
        raise RuntimeError(f"latency run: {len(arrived)} of {len(sent)} tokens, final {final}")
    written: dict[int, float] = {}
    for t, buf in writes:
        for m in _TOKEN_SEQ.finditer(buf):
            written.setdefault(int(m.group(1)), t)
    n = len(sent)
    if len(written) != n:
        raise RuntimeError(f"latency run: saw {len(written)} of {n} tokens leave the daemon's socket")
    return (_summary("daemon", decode_tps, [(arrived[i] - sent[i]) * 1000 for i in range(n)]),
            _summary("sink → socket", decode_tps, [(written[i] - sent[i]) * 1000 for i in range(n)]),
            _summary("socket → subscriber", decode_tps,
                     [(arrived[i] - written[i]) * 1000 for i in range(n)]))


_TOKEN_SEQ = re.compile(rb'"id":"latency","type":"token","seq":(\d+)')


def transport_floor(b: Broker, tokens: int = 300, rate: float = 50.0) -> TokenLatency:
    """The same token messages through the product's MqttClient → Mosquitto → the same subscriber,
    with no Service, Session or ctypes: what MQTT itself costs on this machine."""
    settings = settings_for(b, _NO_SIM)
    topic = f"{settings.mqtt.prefix}/response"
    sub = Subscriber(b, topic)
    client = MqttClient(settings.mqtt, client_id=f"bench-floor-{uuid.uuid4().hex[:6]}")
    client.connect(attempts=3)
    target = ReplyTarget("floor", topic)
    sent: list[float] = []
    try:
        for i in range(tokens):
            sent.append(now())
            client.publish(token_reply(target, i, f" tok{i}"))
            time.sleep(1 / rate)
        sub_deadline = time.monotonic() + 10
        while len(sub.replies) < tokens and time.monotonic() < sub_deadline:
            time.sleep(0.01)
        arrived, _, _ = sub.parsed("floor")
    finally:
        client.close()
        sub.close()
    if len(arrived) != tokens:
        raise RuntimeError(f"transport floor: {len(arrived)} of {tokens} messages arrived")
    return _summary("transport floor", rate, [(arrived[i] - sent[i]) * 1000 for i in range(tokens)])


def mosquitto_floor(b: Broker, messages: int = 300, rate: float = 50.0) -> TokenLatency:
    """The same payloads between two raw-socket MQTT 3.1.1 clients (QoS 0, blocking reads on a
    thread): Mosquitto and the kernel, without paho or the daemon."""
    sub, pub = RawMqtt(b, "bench-raw-sub"), RawMqtt(b, "bench-raw-pub")
    topic = f"bench/raw/{uuid.uuid4().hex[:6]}"
    got: list[float] = []
    try:
        sub.subscribe(topic)

        def receive() -> None:
            with contextlib.suppress(OSError):
                while len(got) < messages:
                    if sub.read_packet()[0] & 0xF0 == 0x30:
                        got.append(now())

        thread = threading.Thread(target=receive, name="bench-raw-sub", daemon=True)
        thread.start()
        sent: list[float] = []
        for i in range(messages):
            sent.append(now())
            pub.publish(topic, b'{"id":"floor","type":"token","seq":%d,"text":" tok%d"}' % (i, i))
            time.sleep(1 / rate)
        thread.join(10)
    finally:
        sub.close()
        pub.close()
    if len(got) != messages:
        raise RuntimeError(f"raw floor: {len(got)} of {messages} messages arrived")
    return _summary("Mosquitto, raw sockets", rate, [(g - s) * 1000 for g, s in zip(got, sent, strict=True)])


_NO_SIM = Simulator(Path("/nonexistent/librkllmrt.so"), Path("/nonexistent/model.rkllm"))


# ----------------------------------------------------------------------------- TTFT overhead


@dataclass
class Ttft:
    engine: str
    nodelay: bool  # the daemon's socket, as read back during the run
    requests: int
    p50_ms: float  # subscriber TTFT minus the runtime's own ttft
    p99_ms: float
    max_ms: float
    source: str  # where the runtime's ttft came from
    reported_p50_ms: float  # the same with timing.ttft_ms of the final reply
    inbound_p50_ms: float | None  # publish -> Service calls engine.run
    inbound_p99_ms: float | None
    outbound_p50_ms: float | None  # first token leaves the runtime -> subscriber
    outbound_p99_ms: float | None


def ttft(b: Broker, sim: Simulator, *, nodelay: bool = True, engine: str = "in-process",
         requests: int = 60, tokens: int = 3, decode_tps: float = 50.0) -> Ttft:
    """Publish → first token at the subscriber, minus what the runtime itself took for it.

    The runtime's ttft is engine.run → first token leaves the runtime (the engine stamps); the
    final reply's timing.ttft_ms (measured inside the Session, rounded to 0.1 ms) is the
    cross-check, and the only source for the child-process engine, whose stamps are taken after
    the pipe. Decode runs at an NPU-like pace so the first token does not race the rest of the
    answer for the GIL; requests go one after another with a pause, like a user's.
    """
    overhead, reported, inbound, outbound = [], [], [], []
    in_process = engine == "in-process"
    with sim_env(RKLLM_SIM_DECODE_TPS=f"{decode_tps:g}"), \
            daemon(settings_for(b, sim), engine) as (service, times):
        sock = service.mqtt.client.socket()
        if not nodelay:  # the client has no switch: undo its setsockopt, in the benchmark only
            set_nodelay(sock, False)
        measured_nodelay = nodelay_of(sock)
        sub = Subscriber(b, service.topics.response)
        try:
            _warm_up(sub, service.topics.prompt)
            for i in range(requests):
                rid = f"ttft-{i}"
                t0 = sub.request(service.topics.prompt, rid, f"[sim:tokens={tokens}]")
                sub.wait_final(rid, 30)
                arrived, final, _ = sub.parsed(rid)
                sub.forget()
                if final is None or final.get("status") != "ok" or 0 not in arrived:
                    raise RuntimeError(f"ttft run {rid}: {final}")
                seen = arrived[0] - t0
                reported.append(seen * 1000 - final["timing"]["ttft_ms"])
                if in_process:
                    started, first = times.run[rid], times.tokens[rid][0]
                    overhead.append((seen - (first - started)) * 1000)
                    inbound.append((started - t0) * 1000)
                    outbound.append((arrived[0] - first) * 1000)
                time.sleep(0.03)
        finally:
            sub.close()
    main = overhead if in_process else reported
    return Ttft(
        engine, bool(measured_nodelay), requests, percentile(main, 50), percentile(main, 99),
        max(main), "engine stamps" if in_process else "timing.ttft_ms",
        percentile(reported, 50),
        percentile(inbound, 50) if inbound else None,
        percentile(inbound, 99) if inbound else None,
        percentile(outbound, 50) if outbound else None,
        percentile(outbound, 99) if outbound else None,
    )


# ----------------------------------------------------------------------------- RSS


@dataclass
class Rss:
    rss_mb: float  # VmRSS after one request (the daemon and its child processes, if any)
    hwm_mb: float  # VmHWM, the peak
    idle_rss_mb: float  # VmRSS once serving, before any request
    processes: int
    tokens: int


def _tree(pid: int) -> list[int]:
    """pid and its descendants (the child-process engine runs the runtime in one)."""
    out = [pid]
    for tid in os.listdir(f"/proc/{pid}/task"):
        children = Path(f"/proc/{pid}/task/{tid}/children").read_text().split()
        for child in children:
            out += _tree(int(child))
    return out


def _memory_mb(pid: int) -> tuple[float, float, int]:
    rss = hwm = 0.0
    pids = _tree(pid)
    for p in pids:
        for line in Path(f"/proc/{p}/status").read_text().splitlines():
            key, _, value = line.partition(":")
            if key == "VmRSS":
                rss += int(value.split()[0]) / 1024  # kB -> MiB
            elif key == "VmHWM":
                hwm += int(value.split()[0]) / 1024
    return rss, hwm, len(pids)


def rss(b: Broker, sim: Simulator, tokens: int = 200) -> Rss:
    """The daemon as users run it (`python -m rkllm_mqtt run --config`), a child process."""
    node = f"rss{uuid.uuid4().hex[:6]}"
    prefix = f"rkllm/{node}"
    with tempfile.TemporaryDirectory(prefix="rkllm-bench-") as tmp:
        config = Path(tmp) / "config.toml"
        config.write_text(
            f'[mqtt]\nhost = "{b.host}"\nport = {b.port}\nnode_id = "{node}"\n'
            f'[runtime]\nlibrary = "{sim.library}"\nabi = "1.2"\nmodel = "{sim.model}"\n'
            f"max_context_len = {MAX_CONTEXT}\n"
            '[homeassistant]\ndiscovery = false\n[queue]\non_shutdown = "abort"\n')
        env = {k: v for k, v in os.environ.items() if not k.startswith(("RKLLM_SIM_", "RKLLM_MQTT_"))}
        env["RKLLM_SIM_MODEL_MAX_CONTEXT"] = str(MAX_CONTEXT)
        proc = subprocess.Popen([sys.executable, "-m", "rkllm_mqtt", "--log-level", "WARNING", "run",
                                 "--config", str(config)],
                                cwd=REPO, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        sub = Subscriber(b, f"{prefix}/#")
        try:
            _wait_state(sub, "idle", proc, 30)
            idle, _, _ = _memory_mb(proc.pid)
            rid = "rss"
            sub.request(f"{prefix}/prompt", rid, f"[sim:tokens={tokens}]")
            sub.wait_final(rid, 30)
            time.sleep(0.2)  # let the loop publish its state and settle
            after, peak, processes = _memory_mb(proc.pid)
        finally:
            sub.close()
            proc.send_signal(signal.SIGTERM)
            try:
                _, err = proc.communicate(timeout=15)
            except subprocess.TimeoutExpired:
                proc.kill()
                _, err = proc.communicate()
        if proc.returncode != 0:
            raise RuntimeError(f"daemon exited with {proc.returncode}: {err.decode()[-2000:]}")
    return Rss(after, peak, idle, processes, tokens)


def _wait_state(sub: Subscriber, state: str, proc: subprocess.Popen[bytes],
                timeout: float) -> dict[str, Any]:
    """Wait for the daemon's `~/state` to say `state` (the subscriber listens to `~/#`)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"the daemon exited early ({proc.returncode})")
        for r in list(sub.replies):
            if r.payload.startswith(b"{") and b'"state":"' + state.encode() in r.payload:
                obj = json.loads(r.payload)
                if obj.get("state") == state:
                    return obj
        time.sleep(0.05)
    raise TimeoutError(f"the daemon did not reach state {state!r} within {timeout:g} s")


# ----------------------------------------------------------------------------- host jitter


def host_wakeup(samples: int = 600, rate: float = 200.0) -> TokenLatency:
    """One Python thread wakes another through a socketpair: the scheduler's own latency on this
    machine, which every hop of the MQTT path pays (runtime → paho → Mosquitto → subscriber)."""
    a, b = socket.socketpair()
    got: list[float] = []

    def receive() -> None:
        for _ in range(samples):
            select.select([b], [], [], 5)
            b.recv(16)
            got.append(now())

    thread = threading.Thread(target=receive, name="bench-wakeup", daemon=True)
    thread.start()
    sent: list[float] = []
    try:
        for _ in range(samples):
            sent.append(now())
            a.send(b"x")
            time.sleep(1 / rate)
        thread.join(10)
    finally:
        a.close()
        b.close()
    return _summary("thread wake-up", rate, [(g - s) * 1000 for g, s in zip(got, sent, strict=False)])
