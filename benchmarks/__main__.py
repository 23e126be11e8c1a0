"""`python -m benchmarks` (what `make bench` runs): every budget of benchmarks/README.md, one table.

Prints the table and writes it, with the machine it ran on, to benchmarks/results.md. Loopback
only, a private Mosquitto on a free port, bounded (a hard stop at HARD_LIMIT_S). Exit code 0 when
the run completed (budgets met or not; `--strict` makes a missed budget exit 1), 2 when a measure
could not run.
"""

from __future__ import annotations

import argparse
import signal
import sys
import time
import traceback
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

from benchmarks import harness, measures, report

HARD_LIMIT_S = 115
T = TypeVar("T")


class _OutOfTime(Exception):
    pass


def _on_alarm(signum: int, frame: object) -> None:
    raise _OutOfTime(f"the benchmark run exceeded {HARD_LIMIT_S} s")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks", description=__doc__.splitlines()[0])
    parser.add_argument("--output", type=Path, default=Path(__file__).with_name("results.md"),
                        help="where to write the Markdown results (default: benchmarks/results.md)")
    parser.add_argument("--no-write", action="store_true", help="print only")
    parser.add_argument("--strict", action="store_true", help="exit 1 when a budget is missed")
    args = parser.parse_args(argv)

    signal.signal(signal.SIGALRM, _on_alarm)
    signal.alarm(HARD_LIMIT_S)
    machine = report.Machine.start()
    results: dict[str, Any] = {}
    errors: dict[str, str] = {}

    def step(name: str, what: str, fn: Callable[[], T]) -> None:
        print(f"[bench] {what} ...", file=sys.stderr, flush=True)
        t0 = time.monotonic()
        try:
            results[name] = fn()
        except _OutOfTime:
            raise
        except Exception as err:  # one broken measure must not hide the others
            errors[name] = f"{type(err).__name__}: {err}"
            traceback.print_exc()
        print(f"[bench]   {time.monotonic() - t0:.1f} s", file=sys.stderr, flush=True)

    try:
        sim = harness.simulator()
        with harness.broker() as b:
            step("tp_c", "throughput, 20,000 tokens, counted by mosquitto_sub",
                 lambda: measures.throughput(b, sim, counter="c") if measures.MOSQUITTO_SUB
                 else None)
            step("tp_py", "throughput, 20,000 tokens, counted by a paho subscriber process",
                 lambda: measures.throughput(b, sim, counter="python"))
            step("tp_py_q0", "throughput with tokens at QoS 0 (comparison)",
                 lambda: measures.throughput(b, sim, counter="python", qos=0))
            step("tp_child", "throughput, child-process engine (comparison)",
                 lambda: measures.throughput(b, sim, counter="python", engine="child process"))
            step("latency", "added latency per token, 300 tokens at 50 tok/s",
                 lambda: measures.token_latency(b, sim))
            step("floor", "transport floor: MqttClient -> Mosquitto -> subscriber, no daemon",
                 lambda: measures.transport_floor(b))
            step("raw_floor", "Mosquitto floor: raw sockets, no paho, no daemon",
                 lambda: measures.mosquitto_floor(b))
            step("wakeup", "host: thread wake-up latency", measures.host_wakeup)
            step("ttft", "TTFT overhead, 100 requests, TCP_NODELAY on",
                 lambda: measures.ttft(b, sim, nodelay=True, requests=100))
            step("ttft_nagle", "TTFT overhead, 60 requests, TCP_NODELAY off",
                 lambda: measures.ttft(b, sim, nodelay=False))
            step("ttft_child", "TTFT overhead, child-process engine",
                 lambda: measures.ttft(b, sim, engine="child process"))
            step("rss", "daemon RSS (python -m rkllm_mqtt run, a child process)",
                 lambda: measures.rss(b, sim))
    except _OutOfTime as err:
        errors["run"] = str(err)
    finally:
        signal.alarm(0)
    machine.finish()

    table = report.build(results, errors, machine)
    print(table.markdown_table())
    for line in table.notes:
        print(f"- {line}")
    print(f"\n{table.summary}")
    if not args.no_write:
        args.output.write_text(table.document())
        print(f"written to {args.output}", file=sys.stderr)
    if errors:
        return 2
    return 1 if args.strict and table.failed else 0


if __name__ == "__main__":
    sys.exit(main())
