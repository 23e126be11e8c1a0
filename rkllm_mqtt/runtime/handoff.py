"""How a token leaves the runtime's callback for the session's token thread.

The runtime waits for the callback before it decodes the next token, so the callback only copies
the bytes, stamps them and hands them on; decoding, stop sequences, JSON and the pipe run on the
token thread. Two implementations of that hand-off, one interface:

- `NativeHandOff`: the callback is C (handoff.c, built with the package as
  `rkllm_mqtt.runtime._handoff`). It never takes the GIL, so no thread of ours can make the NPU
  wait, and it rarely even wakes the token thread: that one waits in `rkmq_handoff_read`, a
  ctypes call that releases the GIL, sleeps until the next token is due at the run's pace and
  then looks every 0.1 ms until it comes.
- `PythonHandOff`: a ctypes callback, used when the C part was not built (no C compiler when
  the package was installed). It must take the GIL first, which costs tens of microseconds
  whenever another thread holds it.

Both deliver `Entry` tuples in callback order: (LLMCallState, bytes, CLOCK_MONOTONIC seconds).
NORMAL and WAITING carry the token's bytes (a NULL or empty text is not delivered), FINISH the
raw RKLLMPerfStat of families that have one (else b""), ERROR nothing; the caller's own markers
(`END_OF_RUN`, `STOP`) are negative states pushed behind them.
"""

from __future__ import annotations

import ctypes
import functools
import importlib.machinery
import logging
import queue
import struct
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from rkllm_mqtt.runtime.common import (
    RKLLM_RUN_ERROR,
    RKLLM_RUN_FINISH,
    RKLLM_RUN_NORMAL,
    RKLLM_RUN_WAITING,
)

log = logging.getLogger(__name__)

Entry = tuple[int, bytes, float]
# The caller's markers (handoff.c has the same values); they always wake the reader. Between
# BEGIN_OF_RUN and the next marker the C reader follows the run's pace, so the callback wakes it
# only when a token comes before or long after it is due.
END_OF_RUN = -1  # pushed by the worker once rkllm_run returned
STOP = -2  # ends `entries()`
BEGIN_OF_RUN = -3  # pushed by the worker just before rkllm_run

_HEADER = struct.Struct("=iIq")  # entry_t in handoff.c: state, len, t_ns
_READ_BUFFER = 64 * 1024


@functools.cache
def native_library() -> ctypes.CDLL | None:
    """The C hand-off built next to this module, or None (then the Python callback is used)."""
    here = Path(__file__).parent
    for suffix in importlib.machinery.EXTENSION_SUFFIXES:
        path = here / f"_handoff{suffix}"
        if not path.exists():
            continue
        try:
            lib = ctypes.CDLL(str(path))
        except OSError as err:
            log.warning("the C token hand-off %s cannot be loaded (%s); using the Python callback",
                        path, err)
            return None
        lib.rkmq_handoff_open.argtypes = [ctypes.c_size_t, ctypes.c_size_t, ctypes.c_size_t]
        lib.rkmq_handoff_open.restype = ctypes.c_int
        lib.rkmq_handoff_callback.argtypes = [ctypes.c_int, ctypes.c_int]
        lib.rkmq_handoff_callback.restype = ctypes.c_void_p
        lib.rkmq_handoff_push.argtypes = [ctypes.c_int, ctypes.c_int32]
        lib.rkmq_handoff_push.restype = ctypes.c_int
        lib.rkmq_handoff_read.argtypes = [ctypes.c_int, ctypes.c_void_p, ctypes.c_size_t]
        lib.rkmq_handoff_read.restype = ctypes.c_long
        lib.rkmq_handoff_close.argtypes = [ctypes.c_int]
        lib.rkmq_handoff_close.restype = None
        return lib
    return None


def _perf_layout(module: Any) -> tuple[int, int]:
    """(offset, size) of RKLLMResult.perf in this ABI family; (0, 0) before 1.2.1."""
    result = module.RKLLMResult
    if not any(name == "perf" for name, *_ in result._fields_):
        return 0, 0
    return result.perf.offset, result.perf.size


class HandOff:
    """One session's hand-off: `callback` goes to rkllm_init, `entries()` runs on the token thread."""

    kind = ""
    callback: Any  # the family's LLMResultCallback object, kept alive as long as the handle

    def entries(self) -> Iterator[Entry]:
        """Blocks for the next entries; ends after a `STOP` pushed by `push`."""
        raise NotImplementedError

    def push(self, state: int) -> None:
        """A marker behind everything the callback delivered so far."""
        raise NotImplementedError

    def close(self) -> None:
        """Once neither the callback nor `entries()` can run any more (after rkllm_destroy)."""


class NativeHandOff(HandOff):
    kind = "C"

    def __init__(self, lib: ctypes.CDLL, slot: int, module: Any) -> None:
        self._lib, self._slot = lib, slot
        returns_int = module.LLMResultCallback._restype_ is ctypes.c_int  # as its rkllm.h says
        self.callback = module.LLMResultCallback(lib.rkmq_handoff_callback(slot, returns_int))

    @classmethod
    def open(cls, module: Any) -> NativeHandOff | None:
        lib = native_library()
        if lib is None:
            return None
        slot = lib.rkmq_handoff_open(module.RKLLMResult.text.offset, *_perf_layout(module))
        if slot < 0:
            log.info("every C token hand-off slot is taken; this session uses the Python callback")
            return None
        return cls(lib, slot, module)

    def entries(self) -> Iterator[Entry]:
        size = _READ_BUFFER
        buffer = ctypes.create_string_buffer(size)
        while True:
            got = self._lib.rkmq_handoff_read(self._slot, buffer, size)
            if got == -1:
                return
            if got < 0:  # one entry larger than the buffer (a very long token)
                size = -got
                buffer = ctypes.create_string_buffer(size)
                continue
            raw = ctypes.string_at(buffer, got)
            offset = 0
            while offset < got:
                state, length, t_ns = _HEADER.unpack_from(raw, offset)
                offset += _HEADER.size
                if state == STOP:
                    return
                yield state, raw[offset:offset + length], t_ns / 1e9
                offset += (length + 7) & ~7

    def push(self, state: int) -> None:
        if self._lib.rkmq_handoff_push(self._slot, state) != 0:
            raise RuntimeError(f"the C token hand-off refused a marker (slot {self._slot})")

    def close(self) -> None:
        self._lib.rkmq_handoff_close(self._slot)


class PythonHandOff(HandOff):
    kind = "Python"

    def __init__(self, module: Any) -> None:
        self._queue: queue.SimpleQueue[Entry] = queue.SimpleQueue()
        has_perf = _perf_layout(module)[1] > 0
        put, clock = self._queue.put, time.monotonic

        def on_result(result: Any, userdata: Any, state: int) -> None:
            try:
                if state in (RKLLM_RUN_NORMAL, RKLLM_RUN_WAITING):
                    data = result.contents.text if result else None  # freed once we return
                    if data:
                        put((state, data, clock()))
                elif state == RKLLM_RUN_FINISH:
                    perf = bytes(result.contents.perf) if result and has_perf else b""
                    put((state, perf, clock()))
                elif state == RKLLM_RUN_ERROR:
                    put((state, b"", clock()))
            except Exception:  # an exception must never unwind into the C library
                log.exception("error in the RKLLM result callback (ignored)")

        if module.LLMResultCallback._restype_ is ctypes.c_int:
            def returns_int(result: Any, userdata: Any, state: int) -> int:
                on_result(result, userdata, state)
                return 0  # continue

            self.callback = module.LLMResultCallback(returns_int)
        else:
            self.callback = module.LLMResultCallback(on_result)

    def entries(self) -> Iterator[Entry]:
        while (entry := self._queue.get())[0] != STOP:
            yield entry

    def push(self, state: int) -> None:
        self._queue.put((state, b"", time.monotonic()))


def open_handoff(module: Any) -> HandOff:
    """The C hand-off when it was built and a slot is free, else the Python callback."""
    return NativeHandOff.open(module) or PythonHandOff(module)
