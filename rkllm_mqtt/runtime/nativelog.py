"""Reading what the native runtime prints while it initialises, to explain an init failure.

rkllm_init only returns -1; the reason ("E rkllm: max_context[8192] must be less than the
model's max_context_limit[4096]", "invalid magic ...") goes to the process's stdout/stderr. We tee
file descriptors 1 and 2 through a pipe for the duration of the call: every byte still reaches the
original destination at once (so nothing is lost if init crashes), and a copy is kept to turn the
failure into one clear line.
"""

from __future__ import annotations

import contextlib
import os
import re
import sys
import threading
from collections.abc import Iterator
from contextlib import contextmanager

_MAX_KEPT = 256 * 1024


class _Tee:
    def __init__(self, fd: int) -> None:
        self.fd = fd
        self.saved = os.dup(fd)
        self.read_end, write_end = os.pipe()
        os.dup2(write_end, fd)
        os.close(write_end)
        self.chunks: list[bytes] = []
        self.kept = 0
        self.thread = threading.Thread(target=self._pump, name=f"rkllm-tee-{fd}", daemon=True)
        self.thread.start()

    def _pump(self) -> None:
        while data := os.read(self.read_end, 65536):
            # If the original destination went away, keep draining so the library never blocks.
            with contextlib.suppress(OSError):
                os.write(self.saved, data)
            if self.kept < _MAX_KEPT:
                self.chunks.append(data)
                self.kept += len(data)
        os.close(self.read_end)

    def stop(self) -> bytes:
        os.dup2(self.saved, self.fd)  # drops the pipe's last write end: the pump sees EOF
        # A child process could still hold the write end; then the pump stays a daemon thread.
        self.thread.join(timeout=2.0)
        os.close(self.saved)
        return b"".join(self.chunks)


@contextmanager
def capture_native_output() -> Iterator[list[str]]:
    """Tee fds 1 and 2 inside the block; the yielded list receives the text when it ends."""
    for stream in (sys.stdout, sys.stderr):
        if stream is not None:
            stream.flush()
    tees = []
    for fd in (1, 2):
        try:
            tees.append(_Tee(fd))
        except OSError:  # fd closed (detached daemon): nothing to read there anyway
            continue
    captured: list[str] = []
    try:
        yield captured
    finally:
        for stream in (sys.stdout, sys.stderr):
            if stream is not None:
                stream.flush()
        for tee in tees:
            captured.append(tee.stop().decode("utf-8", errors="replace"))


_MAX_CONTEXT = re.compile(r"max_context\[(\d+)\][^\n]*max_context_limit\[(\d+)\]")
_MISMATCH = re.compile(r"magic|version|platform|not match|mismatch|not support", re.IGNORECASE)
_VERSION = re.compile(r"rkllm-runtime version:?\s*v?(\d+\.\d+\.\d+\w*)")


def logged_runtime_version(output: str) -> str | None:
    """The version the runtime logs at init ("I rkllm: rkllm-runtime version: 1.2.3, ...")."""
    match = _VERSION.search(output)
    return match.group(1) if match else None


def explain_init_failure(
    status: int, model: str, max_context_len: int, output: str, *, abi: str, version: str | None
) -> str:
    """One line that says what to change, from the return code, the file and the runtime's log."""
    if not os.path.exists(model):
        return f"model file not found: {model} (check runtime.model)"
    if not os.access(model, os.R_OK):
        return f"model file is not readable by this user: {model} (check runtime.model)"
    errors = [
        line.strip()
        for line in output.splitlines()
        if line.lstrip().startswith("E ") or "error" in line.lower()
    ]
    said = f" (the runtime said: {errors[-1]})" if errors else ""
    match = _MAX_CONTEXT.search(output)
    if match:
        return (
            f"runtime.max_context_len = {match.group(1)} is above the model's limit of "
            f"{match.group(2)} tokens; set runtime.max_context_len to {match.group(2)} or less"
        )
    runtime = f"runtime {version}" if version else f"the {abi} runtime"
    if any(_MISMATCH.search(line) for line in errors):
        return (
            f"the model {model} does not fit {runtime}: convert it with the matching "
            f"rkllm-toolkit version and target platform{said}"
        )
    return (
        f"returned {status} for {model}{said}; check that runtime.max_context_len "
        f"({max_context_len}) is within the model's limit and that the model was converted for "
        f"{runtime} and this board"
    )
