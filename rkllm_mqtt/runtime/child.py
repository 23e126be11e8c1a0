"""The runtime in a child process: the messages on its socket, and its main loop.

`rkllm_mqtt.engine.ProcessEngine` starts `python -m rkllm_mqtt.runtime.child <fd>` and talks to
it over an inherited socket with `multiprocessing.connection` (pickled values). Each direction
has its own small set of message types, so neither side matches on tagged tuples. The child
imports only the standard library and `rkllm_mqtt.runtime` (no pydantic, no paho, no config model):
it starts fast, and nothing of the daemon can break it.
"""

from __future__ import annotations

import logging
import signal
import sys
import threading
from dataclasses import dataclass
from multiprocessing.connection import Connection

from rkllm_mqtt.errors import RkllmMqttError
from rkllm_mqtt.runtime.contract import AbortReason
from rkllm_mqtt.runtime.events import Event
from rkllm_mqtt.runtime.jobs import EngineInfo, Jobs, RunCommand
from rkllm_mqtt.runtime.options import RuntimeOptions
from rkllm_mqtt.runtime.session import Session

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


def main(fd: int) -> None:
    """One Session, commands from the socket, events back through it, until Close or EOF."""
    # The parent decides when we stop: a SIGTERM/SIGINT for the whole process group must not
    # end a request the daemon is finishing.
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    conn = Connection(fd)
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


if __name__ == "__main__":
    # Through the importable module, so the classes the child pickles resolve in the parent.
    from rkllm_mqtt.runtime import child

    child.main(int(sys.argv[1]))
