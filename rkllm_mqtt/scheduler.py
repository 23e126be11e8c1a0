"""The waiting room in front of the NPU: bounded, two priorities, deadlines, cancel by key.

The NPU runs one generation at a time, so order and admission are the whole policy: interactive
requests (a voice pipeline waiting) go before background ones (an automation summarising), FIFO
within a priority, and nothing waits past its deadline. The structures are not thread-safe on
purpose: only the service loop touches them, which keeps every decision in one place.
"""

from __future__ import annotations

import time
from collections import OrderedDict, deque
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Generic, TypeVar

from rkllm_mqtt.protocol import Priority

T = TypeVar("T")


class QueueFull(Exception):
    """The queue already holds `max_pending` requests."""


@dataclass(slots=True, eq=False)  # identity: two equal items are still two entries
class _Entry(Generic[T]):
    key: str
    item: T
    deadline: float | None


class Scheduler(Generic[T]):
    """Pending work; `pop()` gives the next item to run."""

    def __init__(self, max_pending: int) -> None:
        self.max_pending = max_pending
        self._queues: dict[Priority, deque[_Entry[T]]] = {p: deque() for p in Priority}
        self._by_key: dict[str, _Entry[T]] = {}

    def __len__(self) -> int:
        return len(self._by_key)

    def __contains__(self, key: str) -> bool:
        return key in self._by_key

    def submit(self, key: str, item: T, *, priority: Priority, deadline: float | None,
               runs_now: bool = False, force: bool = False) -> None:
        """Queue `item`; raises QueueFull when full, ValueError when `key` is already queued.

        `runs_now` (the NPU is idle and nothing waits) admits it even with `max_pending = 0`,
        which then means "no waiting room", not "refuse everything". `force` admits it over the
        bound: a request another member of a pool already accepted must not become `queue_full`.
        """
        if key in self._by_key:
            raise ValueError(f"{key!r} is already queued")
        if len(self._by_key) >= self.max_pending and not force \
                and not (runs_now and not self._by_key):
            raise QueueFull(f"{len(self._by_key)} requests already waiting "
                            f"(queue.max_pending = {self.max_pending})")
        entry = _Entry(key, item, deadline)
        self._queues[priority].append(entry)
        self._by_key[key] = entry

    def pop(self) -> T | None:
        """The oldest interactive item, else the oldest background one, else None."""
        for priority in Priority:  # declaration order: interactive first
            queue = self._queues[priority]
            if queue:
                entry = queue.popleft()
                del self._by_key[entry.key]
                return entry.item
        return None

    def cancel(self, key: str) -> T | None:
        """Remove a queued item by key; None when it is not queued."""
        entry = self._by_key.pop(key, None)
        if entry is None:
            return None
        for queue in self._queues.values():
            if entry in queue:
                queue.remove(entry)
                break
        return entry.item

    def expire(self, now: float) -> list[T]:
        """Remove and return every item whose deadline is at or before `now`."""
        expired = [e for e in self._by_key.values() if e.deadline is not None and e.deadline <= now]
        for entry in expired:
            self.cancel(entry.key)
        return [e.item for e in expired]

    def next_deadline(self) -> float | None:
        deadlines = [e.deadline for e in self._by_key.values() if e.deadline is not None]
        return min(deadlines, default=None)

    def drain(self) -> list[T]:
        """Remove everything, in the order it would have run (used at shutdown)."""
        items = []
        while (item := self.pop()) is not None:
            items.append(item)
        return items

    def __iter__(self) -> Iterator[T]:
        for priority in Priority:
            for entry in self._queues[priority]:
                yield entry.item


class RecentIds:
    """Client ids seen within a window, so a QoS 1 redelivery is not answered twice.

    Bounded in count as well as time: a client spraying fresh ids cannot grow it without limit.
    """

    def __init__(self, window_s: float, max_entries: int = 10_000) -> None:
        self.window_s = window_s
        self.max_entries = max_entries
        self._seen: OrderedDict[str, float] = OrderedDict()

    def seen(self, key: str, now: float | None = None) -> bool:
        """True if `key` was added within the window."""
        now = time.monotonic() if now is None else now
        self._forget_before(now - self.window_s)
        return key in self._seen

    def add(self, key: str, now: float | None = None) -> None:
        """Remember `key` (only accepted requests are added: a refused one may be retried)."""
        if self.window_s <= 0:
            return
        self._seen[key] = time.monotonic() if now is None else now
        self._seen.move_to_end(key)
        while len(self._seen) > self.max_entries:
            self._seen.popitem(last=False)

    def _forget_before(self, cutoff: float) -> None:
        while self._seen:
            key, seen_at = next(iter(self._seen.items()))
            if seen_at > cutoff:
                break
            del self._seen[key]
