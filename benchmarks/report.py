"""The results table (stdout and benchmarks/results.md), with the machine and its load."""

from __future__ import annotations

import datetime as dt
import os
import platform
import subprocess
import time
from dataclasses import dataclass, field
from importlib.metadata import version
from pathlib import Path
from typing import Any

from benchmarks.harness import mosquitto_version

# Reference points: Rockchip's published RK3588 w8a8 figures (airockchip/rknn-llm, benchmark.md of
# release 1.3.0: 128 prompt tokens, 64 new tokens, maximum clocks).
NPU_TOKEN_MS = 60.0  # 16.7 tok/s, Qwen2.5-1.5B
NPU_MAX_TPS = 45.0  # the fastest decode in the table, rounded up (Qwen2 0.5B: 41.6)
NPU_TTFT_MS = 378.3  # Qwen2.5-1.5B, 128 prompt tokens
MODEL_MB = 1689.0  # Qwen2.5-1.5B, runtime memory

BUDGET_TPS = 5000.0
BUDGET_TOKEN_P99_MS = 1.0
BUDGET_TTFT_MS = 5.0
BUDGET_RSS_MB = 60.0

REPO = Path(__file__).resolve().parent.parent


def _cpu_jiffies() -> tuple[int, int]:
    """(busy, steal) jiffies of all CPUs since boot."""
    fields = [int(x) for x in Path("/proc/stat").read_text().splitlines()[0].split()[1:]]
    user, nice, system, _idle, _iowait, irq, softirq, steal = fields[:8]
    return user + nice + system + irq + softirq + steal, steal


def _own_cpu_s() -> float:
    t = os.times()
    return t.user + t.system + t.children_user + t.children_system


@dataclass
class Machine:
    started: dt.datetime
    cpus: int
    cpu_model: str
    kernel: str
    python: str
    mosquitto: str
    paho: str
    commit: str
    load_start: str
    load_end: str = ""
    wall_s: float = 0.0
    others_pct: float = 0.0  # CPU used by other processes, % of all CPUs, during the run
    steal_pct: float = 0.0
    _t0: float = 0.0
    _busy0: int = 0
    _steal0: int = 0
    _own0: float = 0.0

    @classmethod
    def start(cls) -> Machine:
        busy, steal = _cpu_jiffies()
        model = next((line.split(":", 1)[1].strip() for line in
                      Path("/proc/cpuinfo").read_text().splitlines()
                      if line.startswith("model name")), platform.processor() or "unknown")
        return cls(
            started=dt.datetime.now(dt.UTC).replace(microsecond=0), cpus=len(os.sched_getaffinity(0)),
            cpu_model=model, kernel=platform.release(), python=platform.python_version(),
            mosquitto=mosquitto_version(), paho=version("paho-mqtt"), commit=_commit(),
            load_start=_loadavg(), _t0=time.monotonic(), _busy0=busy, _steal0=steal,
            _own0=_own_cpu_s())

    def finish(self) -> None:
        busy, steal = _cpu_jiffies()
        self.wall_s = time.monotonic() - self._t0
        tck = os.sysconf("SC_CLK_TCK")
        capacity = max(self.wall_s, 1.0) * (os.cpu_count() or 1)
        others = (busy - self._busy0) / tck - (_own_cpu_s() - self._own0)
        self.others_pct = max(0.0, others / capacity * 100)
        self.steal_pct = (steal - self._steal0) / tck / capacity * 100
        self.load_end = _loadavg()


def _loadavg() -> str:
    return " ".join(Path("/proc/loadavg").read_text().split()[:3])


def _commit() -> str:
    try:
        head = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=REPO, capture_output=True,
                              text=True, timeout=5).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no", "rkllm_mqtt"],
                               cwd=REPO, capture_output=True, text=True, timeout=5).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return "unknown"
    return f"{head}{' + uncommitted changes in rkllm_mqtt/' if dirty else ''}" if head else "unknown"


# ----------------------------------------------------------------------------- the table


@dataclass
class Row:
    measure: str
    value: str
    budget: str = "—"
    result: str = "info"
    ratio: str = ""


@dataclass
class Table:
    machine: Machine
    rows: list[Row] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    @property
    def failed(self) -> list[Row]:
        return [r for r in self.rows if r.result == "FAIL"]

    @property
    def summary(self) -> str:
        judged = [r for r in self.rows if r.result in ("PASS", "FAIL")]
        missing = [r for r in self.rows if r.result == "ERROR"]
        text = f"{len(judged) - len(self.failed)} of {len(judged)} budgets met"
        if self.failed:
            text += " (missed: " + "; ".join(r.measure for r in self.failed) + ")"
        if missing:
            text += f"; {len(missing)} measure(s) could not run"
        return text + "."

    def markdown_table(self) -> str:
        lines = ["| measure | value | budget | result | in NPU terms |", "|---|---|---|---|---|"]
        lines += [f"| {r.measure} | {r.value} | {r.budget} | {r.result} | {r.ratio} |" for r in self.rows]
        return "\n".join(lines)

    def document(self) -> str:
        m = self.machine
        head = [
            "# Benchmark results",
            "",
            "Written by `python -m benchmarks` (`make bench`); what each measure is: "
            "[README.md](README.md), with the budgets.",
            "",
            f"- date: {m.started.isoformat()} (run took {m.wall_s:.0f} s)",
            f"- machine: {m.cpus} CPUs (`nproc`), {m.cpu_model}, Linux {m.kernel}",
            f"- Python {m.python}, paho-mqtt {m.paho}, Mosquitto {m.mosquitto}; product at {m.commit}",
            f"- load average at start / end: {m.load_start} / {m.load_end}; other processes used "
            f"{m.others_pct:.0f} % of all CPUs during the run (steal {m.steal_pct:.1f} %)",
            "",
        ]
        body = [self.markdown_table(), "", f"**{self.summary}**", ""]
        notes = ["## Notes", ""] + [f"- {n}" for n in self.notes] + [""] if self.notes else []
        return "\n".join(head + body + notes)


def _verdict(ok: bool) -> str:
    return "PASS" if ok else "FAIL"


def _ms(x: float) -> str:
    return f"{x:.2f} ms"


def build(results: dict[str, Any], errors: dict[str, str], machine: Machine) -> Table:
    t = Table(machine)
    rows, notes = t.rows, t.notes

    def error_row(key: str, measure: str, budget: str = "—") -> bool:
        if key in errors:
            rows.append(Row(measure, f"could not run: {errors[key]}", budget, "ERROR"))
            return True
        return key not in results

    # -- throughput: judged on the mosquitto_sub count (a client that costs ~nothing, so the rate is
    # the daemon's and the broker's); the paho subscriber process is the Home Assistant-like view.
    judge_py = results.get("tp_c") is None and "tp_c" not in errors
    for key, label, judged in (
            ("tp_c", "throughput, callback → subscriber (mosquitto_sub counts)", True),
            ("tp_py", "throughput, callback → subscriber (paho subscriber process)", judge_py)):
        budget = f"≥ {BUDGET_TPS:,.0f} tok/s" if judged else "—"
        if error_row(key, label, budget):
            continue
        r = results[key]
        if r is None:
            rows.append(Row(label, "not run: mosquitto_sub not installed (`make broker`)", "—", "info"))
            continue
        lost = f", {r.tokens - r.received} lost" if r.received != r.tokens else ""
        ok = r.subscriber_tps >= BUDGET_TPS and r.received == r.tokens
        rows.append(Row(label, f"{r.subscriber_tps:,.0f} tok/s ({r.received:,}/{r.tokens:,} tokens{lost})",
                        budget, _verdict(ok) if judged else "info",
                        f"{r.subscriber_tps / NPU_MAX_TPS:,.0f}× the NPU's fastest decode "
                        f"({NPU_MAX_TPS:g} tok/s)"))
    if "tp_py" in results:
        r = results["tp_py"]
        share = r.daemon_us * NPU_MAX_TPS / 1e6 * 100
        threads = ", ".join(f"{name} {us:.0f}" for name, us in
                            sorted(r.threads_us.items(), key=lambda kv: -kv[1]) if us >= 1)
        rows.append(Row("CPU per token, QoS 1: daemon / Mosquitto / paho subscriber",
                        f"{r.daemon_us:.0f} / {r.broker_us:.0f} / {r.subscriber_us:.0f} µs",
                        ratio=f"daemon at {NPU_MAX_TPS:g} tok/s: {share:.2f} % of one CPU"))
        notes.append(f"Daemon CPU per token by thread (µs): {threads}. The runtime emitted "
                     f"{r.runtime_tps:,.0f} tok/s (callback + JSON + paho `publish()` call); the "
                     f"rest of the stream reached the subscriber {r.drain_ms:,.0f} ms after the "
                     "last token left the runtime.")
    # The child-process engine is the default (`runtime.isolation = "process"`), so it is judged
    # too, with the paho subscriber (what Home Assistant is) as the counter.
    for key, label, judged in (
            ("tp_py_q0", "throughput with tokens at QoS 0 (paho subscriber, comparison)", False),
            ("tp_child", "throughput, child-process engine, the default (paho subscriber)", True)):
        budget = f"≥ {BUDGET_TPS:,.0f} tok/s" if judged else "—"
        if error_row(key, label, budget):
            continue
        r = results[key]
        child = " (incl. the runtime child)" if r.engine != "in-process" else ""
        ok = r.subscriber_tps >= BUDGET_TPS and r.received == r.tokens
        rows.append(Row(label, f"{r.subscriber_tps:,.0f} tok/s; CPU per token: daemon{child} "
                               f"{r.daemon_us:.0f}, Mosquitto {r.broker_us:.0f}, subscriber "
                               f"{r.subscriber_us:.0f} µs",
                        budget, _verdict(ok) if judged else "info"))

    # -- per-token latency
    if not error_row("latency", "added latency per token (p99)", f"≤ {BUDGET_TOKEN_P99_MS:g} ms p99"):
        r, own, rest = results["latency"]
        floor = results.get("floor")
        rows.append(Row(f"latency per token, {r.tokens} tokens at {r.decode_tps:g} tok/s "
                        "(runtime → subscriber)",
                        f"p50 {_ms(r.p50_ms)}, p99 {_ms(r.p99_ms)}, max {_ms(r.max_ms)}",
                        ratio=f"p99 = {r.p99_ms / NPU_TOKEN_MS * 100:.1f} % of a {NPU_TOKEN_MS:g} ms "
                              "NPU token"))
        if floor is not None:
            # Judged like benchmarks/reliability.py: what the daemon adds to the MQTT transport
            # itself (the floor row below, same messages at the same rate, same run); on this
            # kind of virtual machine the transport alone can exceed 1 ms p99.
            added = r.p99_ms - floor.p99_ms
            rows.append(Row("… added by the daemon beyond the transport (p99 − the floor's p99, "
                            "one run)",
                            _ms(added) if added >= 0 else f"{_ms(added)} (below the floor: noise)",
                            f"≤ {BUDGET_TOKEN_P99_MS:g} ms p99",
                            _verdict(added <= BUDGET_TOKEN_P99_MS),
                            f"{added / NPU_TOKEN_MS * 100:.1f} % of an NPU token"))
        rows.append(Row("… of which the daemon: runtime → its socket write",
                        f"p50 {_ms(own.p50_ms)}, p99 {_ms(own.p99_ms)}, max {_ms(own.max_ms)}",
                        ratio=f"p99 = {own.p99_ms / NPU_TOKEN_MS * 100:.1f} % of an NPU token"))
        rows.append(Row("… of which Mosquitto + subscriber: socket write → subscriber",
                        f"p50 {_ms(rest.p50_ms)}, p99 {_ms(rest.p99_ms)}, max {_ms(rest.max_ms)}"))
    for key, label in (("floor", "floor: MqttClient → Mosquitto → paho subscriber, no daemon"),
                       ("raw_floor", "floor: Mosquitto between two raw-socket clients (no paho)"),
                       ("wakeup", "floor: one thread waking another (socketpair, no network)")):
        if error_row(key, label):
            continue
        r = results[key]
        rows.append(Row(f"{label}, {r.tokens} at {r.decode_tps:g}/s",
                        f"p50 {_ms(r.p50_ms)}, p99 {_ms(r.p99_ms)}, max {_ms(r.max_ms)}"))
    if "latency" in results:
        r, own, rest = results["latency"]
        verdict = "within" if own.p99_ms <= BUDGET_TOKEN_P99_MS else "over"
        floors = "; ".join(f"{label} p99 {_ms(results[key].p99_ms)}" for key, label in
                           (("floor", "MqttClient → Mosquitto → paho"),
                            ("raw_floor", "Mosquitto with raw sockets"),
                            ("wakeup", "a thread wake-up")) if key in results)
        notes.append(f"Per token, the daemon's own part (token leaves the runtime → paho writes it "
                     f"to the socket: a hand-off to paho's network thread) has p99 {_ms(own.p99_ms)}, "
                     f"{verdict} the {BUDGET_TOKEN_P99_MS:g} ms budget; Mosquitto + the subscriber add "
                     f"p99 {_ms(rest.p99_ms)}. Without the daemon, in the same run: {floors}.")

    # -- TTFT
    if not error_row("ttft", "TTFT overhead", f"≤ {BUDGET_TTFT_MS:g} ms p99"):
        r = results["ttft"]
        rows.append(Row(f"TTFT overhead, {r.requests} requests (TCP_NODELAY on)",
                        f"p50 {_ms(r.p50_ms)}, p99 {_ms(r.p99_ms)}, max {_ms(r.max_ms)}",
                        f"≤ {BUDGET_TTFT_MS:g} ms p99", _verdict(r.p99_ms <= BUDGET_TTFT_MS),
                        f"p99 = {r.p99_ms / NPU_TTFT_MS * 100:.1f} % of a {NPU_TTFT_MS:g} ms NPU TTFT"))
        notes.append(f"TTFT overhead splits into inbound (publish → engine.run) p50 "
                     f"{_ms(r.inbound_p50_ms)}, p99 {_ms(r.inbound_p99_ms)}, and outbound (first "
                     f"token leaves the runtime → subscriber) p50 {_ms(r.outbound_p50_ms)}, p99 "
                     f"{_ms(r.outbound_p99_ms)}; with timing.ttft_ms of the final reply as the "
                     f"runtime's ttft instead of the engine stamps: p50 {_ms(r.reported_p50_ms)}.")
    if not error_row("ttft_nagle", "TTFT overhead, TCP_NODELAY off"):
        r = results["ttft_nagle"]
        ratio = ""
        if "ttft" in results:
            ratio = f"{r.p50_ms / results['ttft'].p50_ms:.0f}× the p50 with TCP_NODELAY"
        rows.append(Row(f"TTFT overhead, {r.requests} requests, TCP_NODELAY off (comparison)",
                        f"p50 {_ms(r.p50_ms)}, p99 {_ms(r.p99_ms)}", ratio=ratio))
    if not error_row("ttft_child", "TTFT overhead, child-process engine",
                     f"≤ {BUDGET_TTFT_MS:g} ms p99"):
        r = results["ttft_child"]
        rows.append(Row(f"TTFT overhead, {r.requests} requests, child-process engine (the default)",
                        f"p50 {_ms(r.p50_ms)}, p99 {_ms(r.p99_ms)}", f"≤ {BUDGET_TTFT_MS:g} ms p99",
                        _verdict(r.p99_ms <= BUDGET_TTFT_MS),
                        f"p99 = {r.p99_ms / NPU_TTFT_MS * 100:.1f} % of a {NPU_TTFT_MS:g} ms NPU TTFT"))

    # -- RSS
    if not error_row("rss", "daemon RSS", f"≤ {BUDGET_RSS_MB:g} MB"):
        r = results["rss"]
        procs = f" ({r.processes} processes)" if r.processes > 1 else ""
        rows.append(Row(f"daemon RSS after one {r.tokens}-token request{procs}",
                        f"VmRSS {r.rss_mb:.1f} MB, VmHWM {r.hwm_mb:.1f} MB (idle {r.idle_rss_mb:.1f} MB)",
                        f"≤ {BUDGET_RSS_MB:g} MB", _verdict(max(r.rss_mb, r.hwm_mb) <= BUDGET_RSS_MB),
                        f"{r.hwm_mb / MODEL_MB * 100:.1f} % of a Qwen2.5-1.5B runtime "
                        f"({MODEL_MB:,.0f} MB)"))
    if "run" in errors:
        notes.append(f"The run was cut short: {errors['run']}.")
    notes.append(f"Machine load during the run: other processes used {machine.others_pct:.0f} % of "
                 f"all {machine.cpus} CPUs (load average {machine.load_start} → {machine.load_end}); "
                 "throughput and tail latencies move with it.")
    return t
