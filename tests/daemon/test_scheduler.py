"""Queue policy: bound, priority, FIFO, deadlines, cancel; and the duplicate-id window."""

from __future__ import annotations

import pytest

from rkllm_mqtt.protocol import Priority
from rkllm_mqtt.scheduler import QueueFull, RecentIds, Scheduler

HI, LO = Priority.INTERACTIVE, Priority.BACKGROUND


def test_interactive_before_background_fifo_within():
    s: Scheduler[str] = Scheduler(max_pending=10)
    for key, prio in (("b1", LO), ("i1", HI), ("b2", LO), ("i2", HI)):
        s.submit(key, key, priority=prio, deadline=None)
    assert list(s) == ["i1", "i2", "b1", "b2"]
    assert [s.pop() for _ in range(5)] == ["i1", "i2", "b1", "b2", None]
    assert len(s) == 0


def test_bounded_and_duplicate_key():
    s: Scheduler[str] = Scheduler(max_pending=2)
    s.submit("a", "a", priority=HI, deadline=None)
    s.submit("b", "b", priority=LO, deadline=None)
    with pytest.raises(QueueFull, match="max_pending = 2"):
        s.submit("c", "c", priority=HI, deadline=None)
    s.pop()
    with pytest.raises(ValueError):
        s.submit("b", "b2", priority=HI, deadline=None)
    s.submit("c", "c", priority=HI, deadline=None)
    assert len(s) == 2 and "c" in s


def test_zero_waiting_room_still_admits_work_for_an_idle_npu():
    s: Scheduler[str] = Scheduler(max_pending=0)
    with pytest.raises(QueueFull):
        s.submit("a", "a", priority=HI, deadline=None)
    s.submit("a", "a", priority=HI, deadline=None, runs_now=True)
    with pytest.raises(QueueFull):
        s.submit("b", "b", priority=HI, deadline=None, runs_now=True)  # something already waits


def test_cancel_and_expire():
    s: Scheduler[str] = Scheduler(max_pending=5)
    s.submit("a", "A", priority=HI, deadline=10.0)
    s.submit("b", "B", priority=HI, deadline=5.0)
    s.submit("c", "C", priority=LO, deadline=None)
    assert s.next_deadline() == 5.0
    assert s.cancel("a") == "A" and s.cancel("a") is None
    assert s.expire(4.9) == []
    assert s.expire(5.0) == ["B"]
    assert s.next_deadline() is None
    assert s.drain() == ["C"] and len(s) == 0


def test_equal_items_are_distinct_entries():
    s: Scheduler[str] = Scheduler(max_pending=5)
    s.submit("k1", "same", priority=HI, deadline=None)
    s.submit("k2", "same", priority=HI, deadline=None)
    assert s.cancel("k2") == "same"
    assert "k1" in s and "k2" not in s and s.pop() == "same" and s.pop() is None


def test_recent_ids_window_and_bound():
    r = RecentIds(window_s=10)
    assert not r.seen("x", now=0)
    r.add("x", now=0)
    assert r.seen("x", now=9.9)
    assert not r.seen("x", now=10.1)  # window passed: new again
    small = RecentIds(window_s=100, max_entries=2)
    for key in ("a", "b", "c"):
        small.add(key, now=1)
    assert not small.seen("a", now=2)  # evicted by the count bound
    assert small.seen("b", now=2) and small.seen("c", now=2)
    off = RecentIds(window_s=0)
    off.add("x", now=0)
    assert not off.seen("x", now=0)
