"""`python -m benchmarks.reliability`: what the runtime's child process costs, and that memory stays flat.

- RSS of the daemon plus its runtime child without a model (budget 60 MB), and in-process beside it;
- how long the runtime waits for our callback per token (budget 10 µs p99), timed by the simulator
  around each callback it makes (RKLLM_SIM_CALLBACK_TIMES): ctypes' entry, the GIL and our body;
- one request end to end at RK3588 pace (100 tokens of 60 ms after a 378 ms prefill) against the
  runtime alone on the same simulator (goal: within 0.1 %);
- a soak of 10,000 hostile payloads, the daemon's RSS after every 1,000 (budget: within 5 MB of
  the value after the first 1,000).

Each daemon is `python -m rkllm_mqtt run --config` as users run it. Prints a table and writes it to
benchmarks/reliability-results.md.
"""

from __future__ import annotations

import argparse
import ctypes
import json
import os
import random
import signal
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from benchmarks import measures, report
from benchmarks.harness import (
    ABI,
    MAX_CONTEXT,
    Broker,
    Simulator,
    Subscriber,
    broker,
    now,
    percentile,
    sim_env,
    simulator,
)
from rkllm_mqtt.runtime import Event, FinalEvent, GenerationRequest, Session
from rkllm_mqtt.runtime import session as session_module
from rkllm_mqtt.runtime.contract import Message
from rkllm_mqtt.runtime.handoff import HandOff, NativeHandOff, PythonHandOff, open_handoff
from rkllm_mqtt.runtime.options import RuntimeOptions

REPO = Path(__file__).resolve().parent.parent
RSS_BUDGET_MB = 60.0
CALLBACK_BUDGET_US = 10.0
SOAK_BUDGET_MB = 5.0
TOKEN_BUDGET_MS = 1.0
E2E_GOAL_PCT = 0.1
E2E_PROMPT = "[sim:tokens=100] " + "x" * 495  # 512 bytes = 128 prompt tokens: 378 ms at RK3588 pace


@dataclass
class Daemon:
    proc: subprocess.Popen[bytes]
    sub: Subscriber
    prefix: str


@contextmanager
def daemon_process(b: Broker, sim: Simulator, *, isolation: str | None = None,
                   defaults: bool = False) -> Iterator[Daemon]:
    """`python -m rkllm_mqtt run` on the simulator, with a subscriber on its topics; `defaults`
    leaves every key but the broker, library and model at its default."""
    node = f"rel{uuid.uuid4().hex[:6]}"
    with tempfile.TemporaryDirectory(prefix="rkllm-bench-") as tmp:
        config = Path(tmp) / "config.toml"
        config.write_text(
            f'[mqtt]\nhost = "{b.host}"\nport = {b.port}\nnode_id = "{node}"\n'
            f'[runtime]\nlibrary = "{sim.library}"\nmodel = "{sim.model}"\n'
            + ("" if defaults else f'abi = "{ABI}"\n')
            + ("" if defaults else f"max_context_len = {MAX_CONTEXT}\n")
            + (f'isolation = "{isolation}"\n' if isolation else "")
            + ("" if defaults else
               '[homeassistant]\ndiscovery = false\n[queue]\non_shutdown = "abort"\n'))
        proc = subprocess.Popen([sys.executable, "-m", "rkllm_mqtt", "--log-level", "ERROR", "run",
                                 "--config", str(config)], cwd=REPO, stdout=subprocess.DEVNULL,
                                stderr=subprocess.PIPE)
        sub = Subscriber(b, f"rkllm/{node}/#")
        try:
            measures._wait_state(sub, "idle", proc, 30)
            yield Daemon(proc, sub, f"rkllm/{node}")
        finally:
            sub.close()
            proc.send_signal(signal.SIGTERM)
            try:
                proc.communicate(timeout=15)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.communicate()


# ----------------------------------------------------------------------------- callback time


@dataclass
class CallbackTime:
    label: str
    tokens: int
    p50_us: float
    p99_us: float
    max_us: float

    @classmethod
    def of(cls, label: str, ns: list[int]) -> CallbackTime:
        us = [n / 1000 for n in ns]
        return cls(label, len(us), percentile(us, 50), percentile(us, 99), max(us))


@contextmanager
def _callback_times() -> Iterator[Path]:
    """A file the simulator appends each NORMAL callback's duration to (ns), for the block."""
    with tempfile.TemporaryDirectory(prefix="rkllm-cb-") as tmp:
        path = Path(tmp) / "callback-ns"
        path.write_text("")
        saved = os.environ.get("RKLLM_SIM_CALLBACK_TIMES")
        os.environ["RKLLM_SIM_CALLBACK_TIMES"] = str(path)
        try:
            yield path
        finally:
            if saved is None:
                os.environ.pop("RKLLM_SIM_CALLBACK_TIMES", None)
            else:
                os.environ["RKLLM_SIM_CALLBACK_TIMES"] = saved


def _read_callbacks(path: Path) -> list[tuple[int, int]]:
    """(CLOCK_MONOTONIC ns when the callback was made, how long it took) per NORMAL callback."""
    rows = [line.split() for line in path.read_text().splitlines() if line.strip()]
    return [(int(start), int(ns)) for start, ns in rows]


def _read_ns(path: Path) -> list[int]:
    return [ns for _, ns in _read_callbacks(path)]


class _NoOpHandOff(PythonHandOff):
    """The floor any ctypes binding pays per callback: a Python callback that does nothing."""

    def __init__(self, module: Any) -> None:
        super().__init__(module)
        self.callback = module.LLMResultCallback(lambda result, userdata, state: 0)


_C_NOOP = "int rkmq_noop(void *result, void *userdata, int state) { return 0; }\n"


class _CNoOpHandOff(PythonHandOff):
    """The floor of the machine itself: a C callback that returns 0 at once (what a C program
    such as Rockchip's own demo would at best pay)."""

    library: ctypes.CDLL | None = None

    def __init__(self, module: Any) -> None:
        super().__init__(module)
        if _CNoOpHandOff.library is None:
            work = Path(tempfile.mkdtemp(prefix="rkllm-noop-"))
            (work / "noop.c").write_text(_C_NOOP)
            subprocess.run(["cc", "-O2", "-shared", "-fPIC", "-o", str(work / "libnoop.so"),
                            str(work / "noop.c")], check=True, timeout=60)
            _CNoOpHandOff.library = ctypes.CDLL(str(work / "libnoop.so"))
        address = ctypes.cast(_CNoOpHandOff.library.rkmq_noop, ctypes.c_void_p).value
        self.callback = module.LLMResultCallback(address)


def callback_in_session(sim: Simulator, tokens: int = 1000, decode_tps: float = 500.0
                        ) -> tuple[CallbackTime, CallbackTime, CallbackTime, CallbackTime]:
    """How long the runtime waits for the callback, in one process, one after the other: a C
    no-op (the machine's floor), a no-op Python callback (the floor of any ctypes binding on this
    machine now), our Python callback (used when the C part is not built) and our C hand-off, each
    with the token thread doing a daemon's work per token (competing for the GIL)."""
    options = RuntimeOptions(library=str(sim.library), abi=ABI, model=str(sim.model),
                             max_context_len=MAX_CONTEXT)
    variants: dict[str, Callable[[Any], HandOff]] = {
        "no-op C callback": _CNoOpHandOff,
        "no-op Python callback": _NoOpHandOff,
        "ours, Python callback": PythonHandOff,
        "ours, C hand-off": lambda module: NativeHandOff.open(module) or _missing_c(),
    }
    results: dict[str, list[int]] = {}
    with sim_env(RKLLM_SIM_DECODE_TPS=str(decode_tps)), _callback_times() as path:
        for name, make in variants.items():
            with _session_with(make, options) as session:
                path.write_text("")
                request = GenerationRequest(prompt=f"[sim:tokens={tokens}]")
                session.generate(request, _json_sink).result(120)
                results[name] = _read_ns(path)
    pace = f"{decode_tps:g} tok/s"
    c_noop, noop, python, native = (CallbackTime.of(f"{name}, {pace}", ns)
                                    for name, ns in results.items())
    return c_noop, noop, python, native


def handoff_cpu(sim: Simulator) -> dict[str, float]:
    """CPU the process uses during one RK3588-paced run (100 tokens at 60 ms after a 378 ms
    prefill), in % of one CPU, with the C hand-off and with the Python callback: what waiting for
    tokens costs besides the runtime's own threads (the simulator's sleep costs nothing)."""
    options = RuntimeOptions(library=str(sim.library), abi=ABI, model=str(sim.model),
                             max_context_len=MAX_CONTEXT)
    used: dict[str, float] = {}
    variants: dict[str, Callable[[Any], HandOff]] = {
        "C hand-off": lambda module: NativeHandOff.open(module) or _missing_c(),
        "Python callback": PythonHandOff,
    }
    with sim_env(RKLLM_SIM_SPEED="rk3588"):
        for name, make in variants.items():
            with _session_with(make, options) as session:
                cpu0, t0 = time.process_time(), time.monotonic()
                session.generate(GenerationRequest(prompt=E2E_PROMPT)).result(60)
                used[name] = (time.process_time() - cpu0) / (time.monotonic() - t0) * 100
    return used


@contextmanager
def _session_with(make: Callable[[Any], HandOff], options: RuntimeOptions) -> Iterator[Session]:
    """An open Session whose callback is the hand-off `make` builds (the benchmark's choice, not
    the one the build would pick)."""
    session_module.open_handoff = make  # type: ignore[assignment]
    try:
        session = Session(options)
        session.open()
        try:
            yield session
        finally:
            session.close()
    finally:
        session_module.open_handoff = open_handoff


def _missing_c() -> HandOff:
    raise RuntimeError("the C hand-off is not built (pip install -e . builds it with a C compiler)")


def _json_sink(event: Event) -> None:
    """Some work per token on the token thread, as a daemon does (competing for the GIL)."""
    json.dumps({"event": str(event)})


def callback_in_daemon(b: Broker, sim: Simulator, *, isolation: str, tokens: int = 1000,
                       decode_tps: float = 500.0) -> CallbackTime:
    """The same, timed by the simulator inside the whole daemon (its child, or its thread)."""
    with sim_env(RKLLM_SIM_DECODE_TPS=str(decode_tps)), _callback_times() as path, \
            daemon_process(b, sim, isolation=isolation) as d:
        path.write_text("")  # only the measured run
        d.sub.request(f"{d.prefix}/prompt", "cb", f"[sim:tokens={tokens}]")
        d.sub.wait_final("cb", 120)
        ns = _read_ns(path)
    return CallbackTime.of(f"whole daemon, isolation {isolation}, {decode_tps:g} tok/s", ns)


@dataclass
class TokenPath:
    label: str
    tokens: int
    p50_ms: float
    p99_ms: float
    max_ms: float


def token_path(b: Broker, sim: Simulator, *, isolation: str, tokens: int = 300,
               decode_tps: float = 50.0) -> TokenPath:
    """Per token, from the moment the runtime makes its callback (the simulator's
    CLOCK_MONOTONIC stamp, the clock of time.perf_counter on Linux) to the subscriber having the
    token: the whole hand-off, through the child's pipe too, that the daemon adds."""
    with sim_env(RKLLM_SIM_DECODE_TPS=str(decode_tps)), _callback_times() as path, \
            daemon_process(b, sim, isolation=isolation) as d:
        replies = Subscriber(b, f"{d.prefix}/response")
        try:
            path.write_text("")
            replies.request(f"{d.prefix}/prompt", "path", f"[sim:tokens={tokens}]")  # 1 token each
            replies.wait_final("path", 120)
            arrivals, _, _ = replies.parsed("path")
        finally:
            replies.close()
        starts = [start for start, _ in _read_callbacks(path)]
    added = [(arrivals[i] - starts[i] / 1e9) * 1000 for i in range(min(len(starts), len(arrivals)))
             if i in arrivals]
    return TokenPath(f"isolation {isolation}, {decode_tps:g} tok/s", len(added),
                     percentile(added, 50), percentile(added, 99), max(added))


# ----------------------------------------------------------------------------- end to end


@dataclass
class EndToEnd:
    alone_ms: list[float]  # every round of the runtime alone
    daemon_ms: dict[str, list[float]]  # publish → final at the subscriber, per isolation
    inside_ms: dict[str, list[float]]  # the daemon's own receipt → final (`timing.total_ms`)

    @property
    def runtime_ms(self) -> float:
        return min(self.alone_ms)

    def best(self, isolation: str) -> float:
        return min(self.daemon_ms[isolation])

    def best_inside(self, isolation: str) -> float:
        return min(self.inside_ms[isolation])

    def transport_ms(self, isolation: str) -> float:
        """The request's way in and the final's way out (MQTT), the median over the rounds."""
        ways = sorted(e - i for e, i in zip(self.daemon_ms[isolation], self.inside_ms[isolation],
                                            strict=True))
        return ways[len(ways) // 2]


def _runtime_alone_ms(sim: Simulator) -> float:
    """The same request through the runtime binding alone, no daemon, no MQTT."""
    session = Session(RuntimeOptions(library=str(sim.library), abi=ABI, model=str(sim.model),
                                     max_context_len=MAX_CONTEXT))
    session.open()
    try:
        request = GenerationRequest(messages=(Message("user", E2E_PROMPT),))
        t0 = now()
        outcome = session.generate(request).result(60)
        elapsed = (now() - t0) * 1000
        if not isinstance(outcome, FinalEvent):
            raise RuntimeError(f"the runtime alone failed: {outcome}")
        return elapsed
    finally:
        session.close()


def end_to_end(b: Broker, sim: Simulator, rounds: int = 5) -> EndToEnd:
    """Each variant `rounds` times, interleaved; judged on the best of each (noise only ever adds)."""
    result = EndToEnd([], {"process": [], "thread": []}, {"process": [], "thread": []})
    with sim_env(RKLLM_SIM_SPEED="rk3588"), daemon_process(b, sim, isolation="process") as p, \
            daemon_process(b, sim, isolation="thread") as t:
        for n in range(rounds):
            result.alone_ms.append(_runtime_alone_ms(sim))
            for isolation, d in (("process", p), ("thread", t)):
                rid = f"e2e-{isolation}-{n}"
                t0 = d.sub.request(f"{d.prefix}/prompt", rid, E2E_PROMPT)
                d.sub.wait_final(rid, 60)
                final = next(r for r in reversed(d.sub.replies)
                             if b'"type":"final"' in r.payload[:200]
                             and rid.encode() in r.payload[:200])
                result.daemon_ms[isolation].append((final.at - t0) * 1000)
                result.inside_ms[isolation].append(
                    float(json.loads(final.payload)["timing"]["total_ms"]))
    return result


# ----------------------------------------------------------------------------- soak


@dataclass
class Soak:
    payloads: int
    curve_mb: list[tuple[int, float]]  # (payloads sent, RSS of the daemon and its child)
    daemon_mb: list[float] = field(default_factory=list)  # the daemon's own share at each point

    @property
    def drift_mb(self) -> float:
        base = self.curve_mb[1][1] if len(self.curve_mb) > 1 else self.curve_mb[0][1]
        return max(abs(mb - base) for _, mb in self.curve_mb[1:]) if len(self.curve_mb) > 1 else 0.0


def hostile_payloads(rng: random.Random) -> Iterator[tuple[str, bytes]]:
    """(topic suffix, payload) of every kind a flaky or hostile client sends, for ever."""
    junk_types: list[Any] = [None, True, 5, -1.5, [], {}, "x" * 300, [1, [2, [3]]], {"a": {"b": 1}}]
    fields = ("prompt", "messages", "system", "conversation", "stream", "response_topic",
              "max_new_tokens", "temperature", "top_p", "top_k", "priority", "ttl_s", "stop", "id")
    while True:
        kind = rng.randrange(12)
        if kind == 0:
            yield "prompt", rng.randbytes(rng.randrange(1, 400))  # binary, invalid UTF-8
        elif kind == 1:
            yield "prompt", b'{"prompt": "unterminated' + rng.randbytes(20)
        elif kind == 2:
            yield "prompt", json.dumps([rng.random() for _ in range(20)]).encode()  # an array
        elif kind == 3:
            yield "prompt", b"{" + b"x" * 70_000  # over limits.max_payload_bytes
        elif kind == 4:
            obj = {f: rng.choice(junk_types) for f in rng.sample(fields, rng.randrange(1, 6))}
            yield "prompt", json.dumps(obj).encode()  # wrong types and ranges
        elif kind == 5:
            yield "prompt", json.dumps({"prompt": "hi", "response_topic": rng.choice(
                ["#", "a/+/b", "$SYS/x", "rkllm/x/prompt", "\u0000", "a/" * 300])}).encode()
        elif kind == 6:
            yield "prompt", (b'{"a":' * 500) + b"1" + (b"}" * 500)  # deep nesting
        elif kind == 7:
            yield "prompt", json.dumps({"messages": [{"role": "wizard", "content": 1}] * 50}).encode()
        elif kind == 8:
            yield "abort", rng.choice([b"", b"nope", b'{"id": []}', rng.randbytes(64), b"{" * 100])
        elif kind == 9:
            yield "prompt", json.dumps({"id": uuid.uuid4().hex, "prompt": "p" * 20_000}).encode()
        elif kind == 10:
            yield "prompt", json.dumps({"prompt": "", "stop": ["a"] * 100}).encode()
        else:  # a real request now and then: the runtime path must stay flat too
            yield "prompt", json.dumps({"id": uuid.uuid4().hex, "prompt": "a short one",
                                        "stream": rng.random() < 0.5}).encode()


def soak(b: Broker, sim: Simulator, payloads: int = 10_000, every: int = 1_000) -> Soak:
    rng = random.Random(12)
    source = hostile_payloads(rng)
    own: list[float] = []

    def daemon_alone(pid: int) -> float:
        status = Path(f"/proc/{pid}/status").read_text()
        return int(status.split("VmRSS:")[1].split()[0]) / 1024

    with sim_env(), daemon_process(b, sim) as d:
        curve = [(0, measures._memory_mb(d.proc.pid)[0])]
        own.append(daemon_alone(d.proc.pid))
        for sent in range(every, payloads + every, every):
            for _ in range(every):
                topic, payload = next(source)
                d.sub.client.publish(f"{d.prefix}/{topic}", payload, qos=1)
            marker = f"mark-{sent}"  # answered after everything before it: all were handled
            d.sub.request(f"{d.prefix}/prompt", marker, "marker")
            d.sub.wait_final(marker, 120)
            d.sub.forget()
            curve.append((sent, measures._memory_mb(d.proc.pid)[0]))
            own.append(daemon_alone(d.proc.pid))
    return Soak(payloads, curve, own)


# ----------------------------------------------------------------------------- the run


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.reliability",
                                     description=__doc__.splitlines()[0])
    parser.add_argument("--output", type=Path,
                        default=Path(__file__).with_name("reliability-results.md"))
    parser.add_argument("--no-write", action="store_true")
    args = parser.parse_args(argv)
    machine = report.Machine.start()
    rows: list[report.Row] = []
    notes: list[str] = []
    sim = simulator()
    with broker() as b:
        print("[bench] RSS, daemon + runtime child / in-process ...", file=sys.stderr, flush=True)
        with sim_env():
            child = measures.rss(b, sim, isolation="process")
            inproc = measures.rss(b, sim, isolation="thread")
        rows.append(report.Row("RSS, daemon + runtime child (isolation process), no model",
                               f"{child.rss_mb:.1f} MB ({child.processes} processes; peak "
                               f"{child.hwm_mb:.1f} MB)", f"≤ {RSS_BUDGET_MB:.0f} MB",
                               report._verdict(child.rss_mb <= RSS_BUDGET_MB)))
        rows.append(report.Row("RSS, in-process runtime (isolation thread), no model",
                               f"{inproc.rss_mb:.1f} MB", "—", "info",
                               f"the child costs {child.rss_mb - inproc.rss_mb:.1f} MB"))
        print("[bench] callback time, in one process: no-op, Python, C ...", file=sys.stderr,
              flush=True)
        c_noop, noop, python, native = callback_in_session(sim)
        for cb in (c_noop, noop, python):
            rows.append(report.Row(f"time the runtime waits for the callback: {cb.label}",
                                   f"p50 {cb.p50_us:.1f} µs, p99 {cb.p99_us:.1f} µs, "
                                   f"max {cb.max_us:.0f} µs ({cb.tokens} tokens)", "—", "info"))
        rows.append(report.Row(f"time the runtime waits for the callback: {native.label}",
                               f"p50 {native.p50_us:.1f} µs, p99 {native.p99_us:.1f} µs, "
                               f"max {native.max_us:.0f} µs ({native.tokens} tokens)",
                               f"≤ {CALLBACK_BUDGET_US:.0f} µs p99",
                               report._verdict(native.p99_us <= CALLBACK_BUDGET_US),
                               f"+{native.p99_us - c_noop.p99_us:.1f} µs over the C no-op, "
                               f"{native.p99_us / noop.p99_us:.2f}× the no-op Python callback "
                               f"(p99); {native.p99_us / 60_000 * 100:.4f} % of a 60 ms token"))
        cpu = handoff_cpu(sim)
        rows.append(report.Row("CPU of one process during an RK3588-paced run (100 tokens at 60 ms)",
                               ", ".join(f"{name} {pct:.2f} %" for name, pct in cpu.items())
                               + " of one CPU", "—", "info"))
        for isolation in ("process", "thread"):
            print(f"[bench] callback time, whole daemon, {isolation} ...", file=sys.stderr,
                  flush=True)
            cb = callback_in_daemon(b, sim, isolation=isolation)
            default = isolation == "process"  # the default: judged; thread: for comparison
            rows.append(report.Row(f"time the runtime waits for the callback: {cb.label}",
                                   f"p50 {cb.p50_us:.1f} µs, p99 {cb.p99_us:.1f} µs, "
                                   f"max {cb.max_us:.0f} µs ({cb.tokens} tokens)",
                                   f"≤ {CALLBACK_BUDGET_US:.0f} µs p99" if default else "—",
                                   report._verdict(cb.p99_us <= CALLBACK_BUDGET_US) if default
                                   else "info",
                                   f"{cb.p99_us / 60_000 * 100:.4f} % of a 60 ms token"))
        print("[bench] per token, the transport alone (MqttClient -> Mosquitto -> paho) ...",
              file=sys.stderr, flush=True)
        floor = measures.transport_floor(b)
        rows.append(report.Row(f"per token, the transport alone: MqttClient → Mosquitto → paho "
                               f"subscriber, no daemon ({floor.tokens} at {floor.decode_tps:g}/s)",
                               f"p50 {floor.p50_ms:.2f} ms, p99 {floor.p99_ms:.2f} ms, "
                               f"max {floor.max_ms:.2f} ms", "—", "info"))
        for isolation in ("process", "thread"):
            print(f"[bench] per token, runtime callback -> subscriber, {isolation} ...",
                  file=sys.stderr, flush=True)
            tp = token_path(b, sim, isolation=isolation)
            added = tp.p99_ms - floor.p99_ms
            judged = isolation == "process"
            rows.append(report.Row(
                f"per token, the runtime's callback → the subscriber ({tp.label}, "
                f"{tp.tokens} tokens)",
                f"p50 {tp.p50_ms:.2f} ms, p99 {tp.p99_ms:.2f} ms, max {tp.max_ms:.2f} ms", "—",
                "info"))
            rows.append(report.Row(
                f"… added by the daemon beyond the transport ({isolation}; p99 − p99, one run)",
                f"{added:.2f} ms", f"≤ {TOKEN_BUDGET_MS:g} ms p99" if judged else "—",
                report._verdict(added <= TOKEN_BUDGET_MS) if judged else "info",
                f"{tp.p99_ms / 60 * 100:.1f} % of a 60 ms token, all of it"))
        print("[bench] end to end at RK3588 pace vs the runtime alone ...", file=sys.stderr,
              flush=True)
        e2e = end_to_end(b, sim)
        alone = e2e.runtime_ms
        rows.append(report.Row(
            "end to end: the runtime alone (our binding, no daemon, no MQTT), 5 rounds",
            f"best {alone:.0f} ms, spread {max(e2e.alone_ms) - alone:.1f} ms", "—", "info",
            f"the simulator's own noise: {(max(e2e.alone_ms) - alone) / alone * 100:.3f} %"))
        for isolation in e2e.daemon_ms:
            ms, inside = e2e.best(isolation), e2e.best_inside(isolation)
            rows.append(report.Row(
                f"end to end, 100 tokens at 60 ms + 378 ms prefill ({isolation})",
                f"{ms:.0f} ms vs runtime alone {alone:.0f} ms ({ms - alone:+.1f} ms)",
                f"goal ≤ {E2E_GOAL_PCT} %", "info", f"{(ms - alone) / alone * 100:+.3f} %"))
            rows.append(report.Row(
                f"… of which inside the daemon, receipt → final (`timing.total_ms`, {isolation})",
                f"{inside:.0f} ms ({inside - alone:+.1f} ms); MQTT in and out "
                f"{e2e.transport_ms(isolation):.1f} ms (median)", "—", "info",
                f"{(inside - alone) / alone * 100:+.3f} %"))
        print("[bench] soak, 10,000 hostile payloads ...", file=sys.stderr, flush=True)
        s = soak(b, sim)
        rows.append(report.Row("soak: RSS drift after 10,000 hostile payloads (from 1,000)",
                               f"{s.drift_mb:.2f} MB", f"≤ {SOAK_BUDGET_MB:.0f} MB",
                               report._verdict(s.drift_mb <= SOAK_BUDGET_MB)))
        notes.append("soak RSS curve, daemon + child (payloads: MB): "
                     + ", ".join(f"{n}: {mb:.1f}" for n, mb in s.curve_mb)
                     + "; the daemon's own share: "
                     + ", ".join(f"{mb:.1f}" for mb in s.daemon_mb))
    machine.finish()
    table = report.Table(machine, rows, notes)
    print(table.markdown_table())
    for line in notes:
        print(f"- {line}")
    print(f"\n{table.summary}")
    if not args.no_write:
        args.output.write_text(table.document().replace("# Benchmark results",
                                                        "# Reliability benchmark results", 1)
                               .replace("`python -m benchmarks` (`make bench`)",
                                        "`python -m benchmarks.reliability` (`make bench`)", 1))
    return 1 if table.failed else 0


if __name__ == "__main__":
    sys.exit(main())
