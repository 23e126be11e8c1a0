"""`rkllm-mqtt run` as a real process: systemd notify, SIGTERM, and `offline` left retained."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
import uuid
from pathlib import Path

import pytest

pytestmark = pytest.mark.timeout(60)


def _recv_until(sock: socket.socket, wanted: bytes, timeout: float = 15.0) -> list[bytes]:
    """Datagrams received until one equal to (or starting with) `wanted`."""
    got: list[bytes] = []
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        sock.settimeout(max(deadline - time.monotonic(), 0.01))
        try:
            data = sock.recv(4096)
        except TimeoutError:
            break
        got.append(data)
        if data.startswith(wanted):
            return got
    raise AssertionError(f"no {wanted!r} datagram; got {got}")


def test_run_notify_sigterm_finishes_and_leaves_offline(broker, probe_factory, sim_library,
                                                        sim_model, tmp_path):
    node = f"p{uuid.uuid4().hex[:8]}"
    config = tmp_path / "config.toml"
    config.write_text(f"""
[mqtt]
host = "{broker.host}"
port = {broker.port}
node_id = "{node}"

[runtime]
library = "{sim_library}"
abi = "1.2"
model = "{sim_model}"

[queue]
on_shutdown = "finish"

[homeassistant]
discovery = false
""")
    prefix = f"rkllm/{node}"
    probe = probe_factory(broker, topics=(f"{prefix}/#",))
    notify_path = tmp_path / "notify.sock"
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(str(notify_path))
    env = {**os.environ, "NOTIFY_SOCKET": str(notify_path), "WATCHDOG_USEC": "400000"}
    env.pop("WATCHDOG_PID", None)
    proc = subprocess.Popen([sys.executable, "-m", "rkllm_mqtt", "run", "--config", str(config)],
                            env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            cwd=Path(__file__).resolve().parents[2])
    try:
        ready = _recv_until(sock, b"READY=1")
        assert b"READY=1" in ready[-1]
        probe.wait_for(lambda m: m.topic == f"{prefix}/status" and m.payload == b"online")
        _recv_until(sock, b"WATCHDOG=1")
        _recv_until(sock, b"WATCHDOG=1")  # pinged repeatedly from the daemon's loop

        probe.publish(f"{prefix}/prompt", {"id": "last", "prompt": "[sim:tokens=5][sim:delay_ms=100]"})
        probe.wait_for(lambda m: m.payload.startswith(b'{"id":"last","type":"token"'))
        probe.publish(f"{prefix}/prompt", {"id": "queued", "prompt": "x"})
        probe.wait_for(lambda m: m.topic == f"{prefix}/state" and m.json["queue"] == 1)
        proc.send_signal(signal.SIGTERM)
        _recv_until(sock, b"STOPPING=1")
        assert proc.wait(20) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
        output = proc.communicate()[0].decode(errors="replace")
        sock.close()
    assert "SIGTERM received" in output, output
    assert probe.final("last")["status"] == "ok"  # finished (queue.on_shutdown = "finish")
    assert probe.final("queued")["error"]["code"] == "aborted"
    late = probe_factory(broker, topics=(f"{prefix}/status",))
    status = late.wait_for(lambda m: m.topic == f"{prefix}/status")
    assert status.retain and status.payload == b"offline"
