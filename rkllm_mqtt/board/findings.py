"""A finding of `check`, how it prints, and the exit code a list of them gives."""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from enum import StrEnum

from rkllm_mqtt.exitcodes import EXIT_FAILURE, EXIT_OK, EXIT_RUNTIME


class Status(StrEnum):
    OK = "OK"
    WARN = "WARN"  # works, but slower or fragile: never changes the exit code
    FAIL = "FAIL"  # the daemon will not serve (or will crash) until this is fixed


# A FAIL here means the runtime library or the model cannot be used: exit 3, as for `run`.
RUNTIME_FINDINGS = frozenset({"library", "cpu", "model", "context", "rkllm_init"})


@dataclass(frozen=True)
class Finding:
    name: str
    status: Status
    message: str
    fix: str | None = None

    def line(self) -> str:
        fix = f"; fix: {self.fix}" if self.fix else ""
        return f"{self.status.value:<4} {self.name}: {self.message}{fix}"


def ok(name: str, message: str) -> Finding:
    return Finding(name, Status.OK, message)


def warn(name: str, message: str, fix: str | None = None) -> Finding:
    return Finding(name, Status.WARN, message, fix)


def fail(name: str, message: str, fix: str | None = None) -> Finding:
    return Finding(name, Status.FAIL, message, fix)


def exit_code(findings: Sequence[Finding]) -> int:
    """0 without a FAIL; 3 when the runtime or model cannot be used; 1 for any other FAIL."""
    failed = {f.name for f in findings if f.status is Status.FAIL}
    if not failed:
        return EXIT_OK
    return EXIT_RUNTIME if failed & RUNTIME_FINDINGS else EXIT_FAILURE


def as_text(findings: Sequence[Finding]) -> str:
    return "".join(f.line() + "\n" for f in findings)


def as_json(findings: Sequence[Finding]) -> str:
    code = exit_code(findings)
    items = [asdict(f) | {"status": f.status.value} for f in findings]
    return json.dumps({"ok": code == EXIT_OK, "exit_code": code, "findings": items}, indent=2) + "\n"
