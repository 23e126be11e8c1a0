"""The runtime in a child process: the messages on its socket, and its main loop.

`rkllm_mqtt.engine.ProcessEngine` starts the interpreter `command()` gives and talks to it over an
inherited socket (`runtime.wire`: length-framed pickled values). Each direction
has its own small set of message types, so neither side matches on tagged tuples. The child
imports only the standard library and `rkllm_mqtt.runtime` (no pydantic, no paho, no config model):
it starts fast, and nothing of the daemon can break it.
"""

from __future__ import annotations

import logging
import os
import signal
import sys
import threading
import time
from dataclasses import dataclass

from rkllm_mqtt.runtime.contract import AbortReason
from rkllm_mqtt.runtime.errors import RkllmMqttError
from rkllm_mqtt.runtime.events import Event
from rkllm_mqtt.runtime.jobs import EngineInfo, Jobs, RunCommand
from rkllm_mqtt.runtime.options import RuntimeOptions
from rkllm_mqtt.runtime.session import Session
from rkllm_mqtt.runtime.wire import Channel

# ---------------------------------------------------------------- parent -> child


@dataclass(frozen=True, slots=True)
class Start:
    """The first message: what to load, and the daemon's log level."""

    options: RuntimeOptions
    log_level: int


@dataclass(frozen=True, slots=True)
class Run:
    job_id: str
    command: RunCommand


@dataclass(frozen=True, slots=True)
class Abort:
    job_id: str
    reason: AbortReason


@dataclass(frozen=True, slots=True)
class Close:
    """Finish: destroy the handle and exit."""


ToChild = Start | Run | Abort | Close

# ---------------------------------------------------------------- child -> parent


@dataclass(frozen=True, slots=True)
class Opened:
    info: EngineInfo


@dataclass(frozen=True, slots=True)
class Failed:
    """The model did not load; `error` names the RkllmMqttError subclass, rebuilt by the parent."""

    error: str
    message: str


@dataclass(frozen=True, slots=True)
class Emitted:
    job_id: str
    event: Event


FromChild = Opened | Failed | Emitted


ORPHAN_CHECK_S = 1.0


def _die_with_the_daemon() -> None:
    """Exit as soon as the daemon is gone. A run stuck inside the library never reads the
    socket's EOF, and an orphan would hold the NPU and the model's memory for ever; this thread
    still runs then, because ctypes releases the GIL around every call into the library.
    (Polling, not PR_SET_PDEATHSIG: that fires when the parent *thread* ends, and the daemon
    starts a reloaded child from a thread that ends right after.)"""
    parent = os.getppid()

    def watch() -> None:
        while os.getppid() == parent:
            time.sleep(ORPHAN_CHECK_S)
        os._exit(1)

    threading.Thread(target=watch, name="rkllm-orphan-watch", daemon=True).start()


def main(fd: int) -> None:
    """One Session, commands from the socket, events back through it, until Close or EOF."""
    # The parent decides when we stop: a SIGTERM/SIGINT for the whole process group must not
    # end a request the daemon is finishing.
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    _die_with_the_daemon()
    conn = Channel(fd)
    start: Start = conn.recv()
    logging.basicConfig(level=start.log_level or logging.WARNING,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    lock = threading.Lock()  # runtime threads and this one both send

    def send(message: FromChild) -> None:
        with lock:
            conn.send(message)

    session = Session(start.options)
    try:
        session.open()
    except RkllmMqttError as err:
        send(Failed(type(err).__name__, str(err)))
        return
    send(Opened(EngineInfo.of(session)))
    jobs = Jobs(session, lambda job_id, event: send(Emitted(job_id, event)))
    while True:
        try:
            message: ToChild = conn.recv()
        except (EOFError, OSError):  # the daemon is gone
            break
        if isinstance(message, Run):
            jobs.run(message.job_id, message.command)
        elif isinstance(message, Abort):
            jobs.abort(message.job_id, message.reason)
        elif isinstance(message, Close):
            break
    session.close()


def command(fd: int) -> list[str]:
    """The child's command line: this Python, isolated (-I) and without `site` (-S), so neither
    the environment nor site-packages' .pth files load anything into it (1.5 MB less RSS than
    `python -m`); only the directory that holds this package goes on its path. It imports
    `rkllm_mqtt.runtime.child` by name, so the classes it pickles resolve in the parent."""
    root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    boot = (f"import sys; sys.path.insert(0, {root!r}); "
            "from rkllm_mqtt.runtime.child import main; main(int(sys.argv[1]))")
    return [sys.executable, "-I", "-S", "-c", boot, str(fd)]
