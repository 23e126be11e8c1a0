"""The notify protocol against a datagram socket the test opens, as systemd would."""

from __future__ import annotations

import os
import socket
from pathlib import Path

from rkllm_mqtt.sdnotify import Notifier


def _listen(path: Path) -> socket.socket:
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(str(path))
    sock.settimeout(5)
    return sock


def test_messages_arrive_as_datagrams(tmp_path):
    with _listen(tmp_path / "notify") as sock:
        n = Notifier({"NOTIFY_SOCKET": str(tmp_path / "notify"), "WATCHDOG_USEC": "3000000",
                      "WATCHDOG_PID": str(os.getpid())})
        assert n.enabled and n.watchdog_interval_s == 1.5
        assert n.ready("serving model.rkllm")
        assert sock.recv(4096) == b"READY=1\nSTATUS=serving model.rkllm"
        assert n.watchdog() and sock.recv(4096) == b"WATCHDOG=1"
        assert n.stopping() and sock.recv(4096) == b"STOPPING=1"


def test_abstract_socket():
    name = f"rkllm-test-{os.getpid()}"
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
        sock.bind("\0" + name)
        sock.settimeout(5)
        assert Notifier({"NOTIFY_SOCKET": "@" + name}).ready()
        assert sock.recv(100) == b"READY=1"


def test_disabled_outside_systemd_and_watchdog_for_another_pid(tmp_path):
    n = Notifier({})
    assert not n.enabled and n.watchdog_interval_s is None and n.ready() is False
    other = Notifier({"NOTIFY_SOCKET": str(tmp_path / "x"), "WATCHDOG_USEC": "1000000",
                      "WATCHDOG_PID": "1"})
    assert other.watchdog_interval_s is None
    assert other.notify("READY=1") is False  # nobody listening: reported, not raised
