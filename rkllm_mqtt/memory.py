"""Freed heap memory back to the system after large payloads, so the daemon's RSS stays flat.

A hostile or flaky client can send payloads up to `limits.max_payload_bytes` (and the broker's own
limit) all day. Python frees them at once, but glibc keeps the freed pages in its heaps (one per
thread that allocated: paho's network thread reads every payload), so RSS only ever grows with
the high-water mark. `malloc_trim(0)` hands the free pages back; it runs only when the daemon is
idle and at least `every_bytes` of payloads arrived since the last trim.
"""

from __future__ import annotations

import ctypes
import logging
from collections.abc import Callable

log = logging.getLogger(__name__)


def _malloc_trim() -> Callable[[int], int] | None:
    """glibc's malloc_trim, or None (musl, macOS)."""
    try:
        fn = ctypes.CDLL(None).malloc_trim
    except (OSError, AttributeError):
        return None
    fn.argtypes = [ctypes.c_size_t]
    fn.restype = ctypes.c_int
    return fn


class HeapTrimmer:
    """Counts payload bytes (any thread); `maybe_trim()` (the service loop, when idle) trims."""

    def __init__(self, every_bytes: int = 1 << 20) -> None:
        self.every_bytes = every_bytes
        self.received = 0  # a plain int: a lost update only delays a trim
        self.trims = 0
        self._trim = _malloc_trim()

    def maybe_trim(self) -> None:
        if self.received >= self.every_bytes:
            self.trim()

    def trim(self) -> None:
        """Now, whatever came in: once after start-up, whose imports and model load leave about
        1 MB of freed pages behind (the budget for daemon plus child is 60 MB)."""
        if self._trim is None:
            return
        self.received = 0
        self._trim(0)
        self.trims += 1
