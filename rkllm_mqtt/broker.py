"""A private MQTT broker on a free port, for the tests and `rkllm-mqtt demo` only.

Demo-only: the daemon (`rkllm-mqtt run`) never imports this module (a test checks it); on a board
the daemon connects to the broker the user runs (Mosquitto, Home Assistant's add-on, ...), and the
embedded fallback (amqtt, the `demo` extra) is never installed there by default.

Mosquitto when it is installed (the broker users run, with password files, TLS and persistence);
otherwise amqtt, a pure-Python broker (MQTT 3.1.1 only, no TLS or passwords here), so the demo works
on a machine without Mosquitto. Either runs as a child process, so `restart()` is a real broker
restart on the same port, the way an upgrade or a crash looks to the daemon.
"""

from __future__ import annotations

import base64
import hashlib
import importlib.util
import logging
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from rkllm_mqtt.errors import RkllmMqttError

log = logging.getLogger(__name__)

MOSQUITTO_PATHS = ("/usr/sbin/mosquitto", "/usr/local/sbin/mosquitto", "/opt/homebrew/sbin/mosquitto")


class BrokerError(RkllmMqttError):
    """The broker could not be started."""


@dataclass(frozen=True)
class TlsFiles:
    """Server side of TLS: the CA clients trust, the broker's certificate and key."""

    ca: Path
    cert: Path
    key: Path
    require_certificate: bool = False


def find_mosquitto() -> str | None:
    """Mosquitto's binary; /usr/sbin is often not on a user's PATH."""
    found = shutil.which("mosquitto")
    if found:
        return found
    return next((p for p in MOSQUITTO_PATHS if os.access(p, os.X_OK)), None)


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        return sock.getsockname()[1]


def mosquitto_password_line(user: str, password: str, *, iterations: int = 101) -> str:
    """A `password_file` line in Mosquitto 2's PBKDF2-SHA512 format (what mosquitto_passwd writes)."""
    salt = os.urandom(12)
    digest = hashlib.pbkdf2_hmac("sha512", password.encode("utf-8"), salt, iterations)
    b64 = base64.b64encode
    return f"{user}:$7${iterations}${b64(salt).decode()}${b64(digest).decode()}"


_AMQTT_RUNNER = """
import asyncio, signal, sys
from amqtt.broker import Broker
config = {"listeners": {"default": {"type": "tcp", "bind": sys.argv[1]}},
          "plugins": {"amqtt.plugins.authentication.AnonymousAuthPlugin": {"allow_anonymous": True}}}
async def main():
    broker = Broker(config)
    await broker.start()
    stop = asyncio.Event()
    asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, stop.set)
    await stop.wait()
    try:  # amqtt waits for connected clients to leave; a broker going down does not
        await asyncio.wait_for(broker.shutdown(), 1)
    except asyncio.TimeoutError:
        pass
asyncio.run(main())
"""


class Broker:
    """A running broker child process; a context manager that stops it on exit."""

    def __init__(self, kind: Literal["mosquitto", "amqtt"], host: str, port: int, workdir: Path,
                 argv: list[str], *, tls: bool, owns_workdir: bool) -> None:
        self.kind = kind
        self.host = host
        self.port = port
        self.tls = tls
        self.workdir = workdir
        self.protocols: tuple[str, ...] = ("5", "3.1.1") if kind == "mosquitto" else ("3.1.1",)
        self._argv = argv
        self._owns_workdir = owns_workdir
        self._proc: subprocess.Popen[bytes] | None = None
        self._log_path = workdir / f"{kind}.log"

    def __enter__(self) -> Broker:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    @property
    def running(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

    def log_text(self) -> str:
        """The broker's log so far (tests print it when something goes wrong)."""
        try:
            return self._log_path.read_text(errors="replace")
        except OSError:
            return ""

    def start(self, timeout: float = 10.0) -> None:
        if self.running:
            return
        with open(self._log_path, "ab") as out:
            self._proc = subprocess.Popen(self._argv, stdout=out, stderr=subprocess.STDOUT,
                                          stdin=subprocess.DEVNULL, cwd=self.workdir)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self._proc.poll() is not None:
                raise BrokerError(f"{self.kind} exited with {self._proc.returncode} at start:\n"
                                  f"{self.log_text()[-2000:]}")
            try:
                socket.create_connection((self.host, self.port), timeout=0.5).close()
            except OSError:
                time.sleep(0.02)
                continue
            log.debug("%s listening on %s:%d", self.kind, self.host, self.port)
            return
        self.stop()
        raise BrokerError(f"{self.kind} did not listen on {self.host}:{self.port} within {timeout:g} s")

    def stop(self, timeout: float = 10.0) -> None:
        """Stop the broker cleanly (Mosquitto saves its persistence file on the way out)."""
        proc, self._proc = self._proc, None
        if proc is None or proc.poll() is not None:
            return
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()

    def restart(self) -> None:
        self.stop()
        self.start()

    def close(self) -> None:
        self.stop()
        if self._owns_workdir:
            shutil.rmtree(self.workdir, ignore_errors=True)


def start_broker(
    *,
    host: str = "127.0.0.1",
    port: int | None = None,
    users: Mapping[str, str] | None = None,
    tls: TlsFiles | None = None,
    workdir: Path | None = None,
    prefer: Literal["auto", "mosquitto", "amqtt"] = "auto",
) -> Broker:
    """Start a broker and wait until it accepts connections.

    `users` turns anonymous access off; `tls` makes the one listener a TLS listener. Mosquitto keeps
    sessions and retained messages across `restart()` (persistence in `workdir`).
    """
    mosquitto = find_mosquitto() if prefer in ("auto", "mosquitto") else None
    if mosquitto is None and prefer == "mosquitto":
        raise BrokerError("mosquitto not found (install the 'mosquitto' package)")
    if mosquitto is None and (users or tls):
        raise BrokerError("passwords and TLS need Mosquitto (install the 'mosquitto' package)")
    if mosquitto is None and importlib.util.find_spec("amqtt") is None:
        raise BrokerError("no broker available: install Mosquitto, or amqtt "
                          "(pip install 'rkllm-mqtt[demo]')")
    owns = workdir is None
    workdir = Path(tempfile.mkdtemp(prefix="rkllm-broker-")) if workdir is None else workdir
    port = free_port(host) if port is None else port
    if mosquitto is not None:
        argv = [mosquitto, "-c", str(_mosquitto_config(workdir, host, port, users, tls))]
        broker = Broker("mosquitto", host, port, workdir, argv, tls=tls is not None, owns_workdir=owns)
    else:
        argv = [sys.executable, "-c", _AMQTT_RUNNER, f"{host}:{port}"]
        broker = Broker("amqtt", host, port, workdir, argv, tls=False, owns_workdir=owns)
    try:
        broker.start()
    except BrokerError:
        broker.close()
        raise
    return broker


def _mosquitto_config(workdir: Path, host: str, port: int, users: Mapping[str, str] | None,
                      tls: TlsFiles | None) -> Path:
    lines = [
        f"listener {port} {host}",
        "set_tcp_nodelay true",
        "persistence true",
        f"persistence_location {workdir}/",
        "autosave_interval 3600",
        "log_dest stdout",
        "log_type error",
        "log_type warning",
        "log_type notice",
        "log_type information",
        "max_queued_messages 100000",
    ]
    if os.geteuid() == 0:
        lines.append("user root")  # Mosquitto otherwise drops to 'mosquitto', who cannot read workdir
    if users:
        password_file = workdir / "passwords"
        password_file.write_text("".join(mosquitto_password_line(u, p) + "\n"
                                         for u, p in users.items()))
        password_file.chmod(0o600)
        lines += ["allow_anonymous false", f"password_file {password_file}"]
    else:
        lines.append("allow_anonymous true")
    if tls is not None:
        lines += [f"cafile {tls.ca}", f"certfile {tls.cert}", f"keyfile {tls.key}",
                  f"require_certificate {'true' if tls.require_certificate else 'false'}"]
    path = workdir / "mosquitto.conf"
    path.write_text("\n".join(lines) + "\n")
    return path
