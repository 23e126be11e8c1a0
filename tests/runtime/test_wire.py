"""The daemon ↔ child channel: whole messages either way, EOFError once the other end is gone."""

from __future__ import annotations

import socket
import threading

import pytest

from rkllm_mqtt.runtime.events import TokenEvent
from rkllm_mqtt.runtime.wire import Channel


def _pair() -> tuple[Channel, Channel]:
    a, b = socket.socketpair()
    return Channel(a.detach()), Channel(b.detach())


def test_messages_arrive_whole_and_in_order():
    left, right = _pair()
    big = "é" * 300_000  # larger than one socket buffer: sent while the other end reads
    sender = threading.Thread(target=lambda: [left.send(m) for m in (TokenEvent("a"), big, None)])
    sender.start()
    assert [right.recv(), right.recv(), right.recv()] == [TokenEvent("a"), big, None]
    sender.join()
    left.close()
    right.close()


def test_a_closed_end_is_eof():
    left, right = _pair()
    left.send("last")
    left.close()
    assert right.recv() == "last"
    with pytest.raises(EOFError):
        right.recv()
    right.close()
