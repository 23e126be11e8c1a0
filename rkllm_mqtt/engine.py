"""The runtime behind a boundary: commands in (`run`, `abort`), events out (job id + event).

Everything that crosses it is a plain, picklable value (RunCommand, the runtime's event
dataclasses), so the same service drives the runtime in its own process or in a child process:

- `InProcessEngine`: the Session on a thread of the daemon; the fastest path, but a native crash
  (a segfault inside librkllmrt.so) ends the daemon and the request is never answered.
- `ProcessEngine`: the Session in a child process. A crash, or a run that does not stop within a
  grace period after abort, costs that one request (`runtime_crashed`) and a model reload; the
  daemon, its queue and its MQTT session stay up.
"""

from __future__ import annotations

import contextlib
import itertools
import logging
import signal
import socket
import subprocess
import sys
import threading
from collections.abc import Callable
from dataclasses import dataclass
from functools import partial
from multiprocessing.connection import Connection
from typing import Any, Protocol

from rkllm_mqtt import errors
from rkllm_mqtt.config import RuntimeSettings
from rkllm_mqtt.errors import RkllmMqttError, RuntimeInitError, RuntimeRunError
from rkllm_mqtt.runtime import ErrorCode, ErrorEvent, Event, GenerationRequest, Session, TokenEvent

log = logging.getLogger(__name__)

RESTART_DELAYS_S = (0.5, 1, 2, 5, 10, 30)


@dataclass(frozen=True)
class EngineInfo:
    model: str
    abi: str
    runtime_version: str | None
    supports_history: bool


@dataclass(frozen=True)
class RunCommand:
    """One run: clear the KV cache first when the conversation plan says so, then generate."""

    request: GenerationRequest
    clear_kv: bool = False


EngineSink = Callable[[str, Event], None]


class Engine(Protocol):
    """What the service needs from a runtime; events arrive through the sink it was built with."""

    @property
    def ready(self) -> bool: ...  # False while a crashed runtime is being reloaded

    def open(self) -> EngineInfo: ...

    def run(self, job_id: str, command: RunCommand) -> None: ...

    def abort(self, job_id: str, reason: str) -> None: ...

    def close(self) -> None: ...


def _info(session: Session) -> EngineInfo:
    return EngineInfo(session.model_name, session.abi, session.runtime_version,
                      session.supports_history)


class InProcessEngine:
    """The runtime Session in this process; events come from the runtime's threads."""

    ready = True

    def __init__(self, settings: RuntimeSettings, sink: EngineSink) -> None:
        self.session = Session(settings)
        self._sink = sink
        self._generations: dict[str, Any] = {}

    def open(self) -> EngineInfo:
        self.session.open()
        return _info(self.session)

    def run(self, job_id: str, command: RunCommand) -> None:
        if command.clear_kv:
            self.session.clear()
        self._generations[job_id] = self.session.generate(
            command.request, partial(self._forward, job_id))

    def _forward(self, job_id: str, event: Event) -> None:
        if not isinstance(event, TokenEvent):
            self._generations.pop(job_id, None)
        self._sink(job_id, event)

    def abort(self, job_id: str, reason: str) -> None:
        generation = self._generations.get(job_id)
        if generation is not None:
            generation.abort(reason)

    def close(self) -> None:
        self.session.close()


# ----------------------------------------------------------------------------- child process


class ProcessEngine:
    """The runtime Session in a child process, restarted when it dies."""

    def __init__(self, settings: RuntimeSettings, sink: EngineSink, *,
                 abort_grace_s: float = 10.0) -> None:
        self._settings = settings
        self._sink = sink
        self.abort_grace_s = abort_grace_s
        self._lock = threading.Lock()  # _conn, _proc, _current
        self._conn: Connection | None = None
        self._proc: subprocess.Popen[bytes] | None = None
        self._current: str | None = None  # the job the child is running
        self._ready = threading.Event()
        self._closing = threading.Event()

    @property
    def ready(self) -> bool:
        return self._ready.is_set()

    @property
    def pid(self) -> int | None:
        return self._proc.pid if self._proc is not None else None

    def open(self) -> EngineInfo:
        return self._spawn()

    def _spawn(self) -> EngineInfo:
        # A fresh interpreter (not fork: this process has threads; not multiprocessing's spawn:
        # it re-imports the caller's main module), talking over an inherited socket.
        parent_sock, child_sock = socket.socketpair()
        with child_sock:
            proc = subprocess.Popen(
                [sys.executable, "-m", "rkllm_mqtt.engine", str(child_sock.fileno())],
                pass_fds=(child_sock.fileno(),), stdin=subprocess.DEVNULL)
        parent = Connection(parent_sock.detach())
        try:
            parent.send((self._settings, logging.getLogger().level))
            message = parent.recv()
        except (EOFError, OSError):
            parent.close()
            raise RuntimeInitError("the runtime process died while loading the model "
                                   f"({_describe_exit(_reap(proc))})") from None
        if message[0] == "failed":
            parent.close()
            _reap(proc)
            raise _rebuild_error(message[1], message[2])
        with self._lock:
            self._conn, self._proc = parent, proc
        threading.Thread(target=self._read, args=(parent, proc), name="rkllm-engine-reader",
                         daemon=True).start()
        self._ready.set()
        return message[1]

    def run(self, job_id: str, command: RunCommand) -> None:
        with self._lock:
            if self._conn is None or not self._ready.is_set():
                raise RuntimeRunError("the runtime is restarting")
            self._current = job_id
            try:
                self._conn.send(("run", job_id, command))
            except OSError as err:
                self._current = None
                raise RuntimeRunError(f"the runtime process is gone: {err}") from err

    def abort(self, job_id: str, reason: str) -> None:
        with self._lock:
            if self._current != job_id or self._conn is None:
                return
            try:
                self._conn.send(("abort", job_id, reason))
            except OSError:
                return  # the reader sees the death and answers the job
            proc = self._proc
        timer = threading.Timer(self.abort_grace_s, self._kill_if_still_running, (job_id, proc))
        timer.daemon = True
        timer.start()

    def _kill_if_still_running(self, job_id: str, proc: subprocess.Popen[bytes]) -> None:
        with self._lock:
            if self._current != job_id or self._proc is not proc:
                return
        log.error("the runtime did not stop within %.0f s of the abort; killing it",
                  self.abort_grace_s)
        proc.kill()

    def _read(self, conn: Connection, proc: subprocess.Popen[bytes]) -> None:
        """Reader thread: forward events; when the child dies, answer its job and restart it."""
        while True:
            try:
                _, job_id, event = conn.recv()
            except (EOFError, OSError):
                break
            if not isinstance(event, TokenEvent):
                with self._lock:
                    if self._current == job_id:
                        self._current = None
            self._sink(job_id, event)
        conn.close()
        if self._closing.is_set():
            return
        code = _reap(proc)
        with self._lock:
            job, self._current = self._current, None
            self._conn = None
            self._ready.clear()
        reason = f"the runtime process died ({_describe_exit(code)})"
        log.error("%s; reloading the model", reason)
        if job is not None:
            self._sink(job, ErrorEvent(ErrorCode.RUNTIME_CRASHED, reason))
        self._restart()

    def _restart(self) -> None:
        for attempt in itertools.count(1):
            if self._closing.is_set():
                return
            try:
                self._spawn()
            except RkllmMqttError as err:
                delay = RESTART_DELAYS_S[min(attempt, len(RESTART_DELAYS_S)) - 1]
                log.error("reloading the runtime failed (attempt %d): %s; retrying in %g s",
                          attempt, err, delay)
                self._closing.wait(delay)
                continue
            log.info("the runtime process was restarted")
            return

    def close(self) -> None:
        self._closing.set()
        with self._lock:
            conn, proc = self._conn, self._proc
            self._conn = None
            self._ready.clear()
        if conn is not None:
            with contextlib.suppress(OSError):  # already gone
                conn.send(("close",))
        if proc is not None:
            _reap(proc, timeout=15)


def _reap(proc: subprocess.Popen[bytes], timeout: float = 5.0) -> int:
    """Wait for the child to exit (killing it after `timeout`); its return code."""
    try:
        return proc.wait(timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        return proc.wait()


def _describe_exit(code: int | None) -> str:
    if code is None:
        return "still running"
    if code < 0:
        try:
            return f"killed by {signal.Signals(-code).name}"
        except ValueError:
            return f"killed by signal {-code}"
    return f"exit code {code}"


def _rebuild_error(name: str, message: str) -> RkllmMqttError:
    """The child's load error as the same class here, so the CLI reports it the same way."""
    cls = getattr(errors, name, None)
    if isinstance(cls, type) and issubclass(cls, RkllmMqttError) and cls is not errors.ConfigError:
        return cls(message)
    return RkllmMqttError(message)


def _child_main(fd: int) -> None:
    """The child: one Session, commands from the socket, events back through it."""
    # The parent decides when we stop: a SIGTERM/SIGINT for the whole process group must not
    # end a request the daemon is finishing.
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    conn = Connection(fd)
    settings, log_level = conn.recv()
    logging.basicConfig(level=log_level or logging.WARNING,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    lock = threading.Lock()

    def send(message: tuple[Any, ...]) -> None:
        with lock:
            conn.send(message)

    session = Session(settings)
    try:
        session.open()
    except RkllmMqttError as err:
        send(("failed", type(err).__name__, str(err)))
        return
    send(("opened", _info(session)))
    generations: dict[str, Any] = {}

    def forward(job_id: str, event: Event) -> None:
        if not isinstance(event, TokenEvent):
            generations.pop(job_id, None)
        send(("event", job_id, event))

    while True:
        try:
            message = conn.recv()
        except (EOFError, OSError):  # the daemon is gone
            break
        if message[0] == "run":
            _, job_id, command = message
            try:
                if command.clear_kv:
                    session.clear()
                generations[job_id] = session.generate(command.request, partial(forward, job_id))
            except (RkllmMqttError, ValueError) as err:
                send(("event", job_id, ErrorEvent(ErrorCode.RUNTIME_ERROR, str(err))))
        elif message[0] == "abort":
            generation = generations.get(message[1])
            if generation is not None:
                generation.abort(message[2])
        elif message[0] == "close":
            break
    session.close()


if __name__ == "__main__":
    # Through the importable module, so what the child pickles resolves in the parent.
    from rkllm_mqtt import engine

    engine._child_main(int(sys.argv[1]))
