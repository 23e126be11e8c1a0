"""rkllm_init once, in a child process, and what the runtime logged while doing it.

A child because the runtime can die instead of failing (rknn-llm #518: "Illegal instruction" from
the SVE build of 1.3.0 on RK3588; #522: a segfault when NPU memory runs out): the parent still
prints its findings, and the runtime's own log lines (driver version, the model's
max_context_limit and target_platform) are read from the child's output instead of the terminal.

Run as `python -m rkllm_mqtt.board.initprobe` with the [runtime] settings as JSON on stdin.
"""

from __future__ import annotations

import json
import re
import signal
import subprocess
import sys
from dataclasses import dataclass

from rkllm_mqtt.config import RuntimeSettings

_RESULT = "rkllm-mqtt-initprobe: "
TIMEOUT_S = 600.0  # a large model takes minutes to reach NPU memory


@dataclass(frozen=True)
class InitReport:
    ok: bool
    error: str | None  # one line: the RuntimeInitError, the crash or the timeout
    output: str  # what the runtime printed
    max_context_len: int | None  # after rkllm_createDefaultParam() and the configured keys

    def logged(self, pattern: str) -> str | None:
        match = re.search(pattern, self.output)
        return match.group(1) if match else None

    @property
    def driver_version(self) -> str | None:
        """"I rkllm: rkllm-runtime version: 1.2.3, rknpu driver version: 0.9.8, platform: RK3588"."""
        return self.logged(r"rknpu driver version:?\s*v?(\d+\.\d+\.\d+)")

    @property
    def platform(self) -> str | None:
        """The model's target_platform, from "... target_platform: RK3588" at load."""
        return self.logged(r"target_platform:?\s*([A-Za-z0-9]+)")

    @property
    def toolkit_version(self) -> str | None:
        return self.logged(r"rkllm-toolkit version:?\s*v?([0-9][\w.]*)")

    @property
    def max_context_limit(self) -> int | None:
        """"max_context_limit: 4096" (load log) or "... max_context_limit[4096]" (the init error)."""
        value = self.logged(r"max_context_limit[:\[]\s*(\d+)")
        return int(value) if value else None


def probe(runtime: RuntimeSettings, *, timeout: float = TIMEOUT_S) -> InitReport:
    try:
        proc = subprocess.run(
            [sys.executable, "-m", "rkllm_mqtt.board.initprobe"],
            input=runtime.model_dump_json(), capture_output=True, text=True,
            errors="replace", timeout=timeout, check=False,
        )
    except subprocess.TimeoutExpired as err:
        output = "".join(x.decode(errors="replace") if isinstance(x, bytes) else (x or "")
                         for x in (err.stdout, err.stderr))
        return InitReport(False, f"rkllm_init did not return within {timeout:.0f} s", output, None)
    result: dict[str, object] = {}
    kept = []
    for line in proc.stdout.splitlines():
        if line.startswith(_RESULT):  # one line before rkllm_init, one after it
            result |= json.loads(line[len(_RESULT):])
        else:
            kept.append(line)
    output = "\n".join(kept) + "\n" + proc.stderr
    limit = result.get("max_context_len")
    context = limit if isinstance(limit, int) else None
    if proc.returncode < 0:
        sig = signal.Signals(-proc.returncode)
        reason = signal.strsignal(sig) or sig.name
        return InitReport(False, f"rkllm_init crashed with {sig.name} ({reason})", output, context)
    error = result.get("error")
    if "error" not in result or proc.returncode != 0:
        last = proc.stderr.strip().splitlines()[-1:] or ["no output"]
        return InitReport(False, f"the init probe exited with {proc.returncode}: {last[0]}",
                          output, context)
    return InitReport(error is None, str(error) if error else None, output, context)


def _child() -> int:
    from rkllm_mqtt.engine import runtime_options
    from rkllm_mqtt.errors import RkllmMqttError
    from rkllm_mqtt.runtime.library import open_library
    from rkllm_mqtt.runtime.params import build_param
    from rkllm_mqtt.runtime.session import Session

    def report(**values: object) -> None:
        sys.stdout.flush()
        print(_RESULT + json.dumps(values), flush=True)

    runtime = runtime_options(RuntimeSettings.model_validate_json(sys.stdin.read()))
    session = Session(runtime)
    try:
        loaded = open_library(runtime.library, runtime.abi)
        # Said before rkllm_init, so a crash inside it still leaves the context to compare.
        report(max_context_len=build_param(loaded.module, loaded.functions, runtime).max_context_len)
        session.open()
    except RkllmMqttError as err:
        report(error=str(err))
    else:
        report(error=None)
    finally:
        session.close()
    return 0


if __name__ == "__main__":
    sys.exit(_child())
