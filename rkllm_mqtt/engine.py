"""The runtime behind a boundary: commands in (`run`, `abort`), events out (job id + event).

Everything that crosses it is a plain, picklable value (`RunCommand`, the runtime's event
dataclasses), so the same service drives the runtime in its own process or in a child process;
both engines run jobs through the one `rkllm_mqtt.runtime.jobs.Jobs`:

- `InProcessEngine`: the Session on a thread of the daemon; the fastest path, but a native crash
  (a segfault inside librkllmrt.so) ends the daemon and the request is never answered.
- `ProcessEngine`: the Session in a child process (`rkllm_mqtt.runtime.child`). A crash, or a run
  that does not stop within a grace period after abort, costs that one request (`runtime_crashed`)
  and a model reload; the daemon, its queue and its MQTT session stay up.

Here the daemon's config model becomes the runtime's plain `RuntimeOptions` (`runtime_options`).
"""

from __future__ import annotations

import contextlib
import logging
import signal
import socket
import subprocess
import threading
from typing import Protocol

from tenacity import RetryCallState, Retrying, retry_if_exception_type

from rkllm_mqtt import errors
from rkllm_mqtt.config import RuntimeSettings
from rkllm_mqtt.errors import RkllmMqttError, RuntimeInitError, RuntimeRunError
from rkllm_mqtt.runtime import ErrorCode, ErrorEvent, FinalEvent, Session, TokenEvent, child
from rkllm_mqtt.runtime.child import Abort, Close, Emitted, Failed, FromChild, Opened, Run, Start
from rkllm_mqtt.runtime.contract import AbortReason
from rkllm_mqtt.runtime.jobs import EngineInfo, Jobs, JobSink, RunCommand
from rkllm_mqtt.runtime.options import RuntimeOptions
from rkllm_mqtt.runtime.wire import Channel

log = logging.getLogger(__name__)

# Wait before reloading after the n-th failure in a row (a crash, or a reload that failed): the
# first reload is at once, then backing off; the last delay repeats. After FAILURES_FOR_ERROR in a
# row `failure` holds the reason (state `error`) until a reload succeeds.
RESTART_DELAYS_S = (0.0, 0.5, 1, 2, 5, 10, 30)
FAILURES_FOR_ERROR = 3

EngineSink = JobSink


def runtime_options(settings: RuntimeSettings) -> RuntimeOptions:
    """The `[runtime]` keys the runtime reads, as its own plain value (already validated)."""
    names = RuntimeOptions.__dataclass_fields__
    return RuntimeOptions(**settings.model_dump(include=set(names)))


class Engine(Protocol):
    """What the service needs from a runtime; events arrive through the sink it was built with."""

    @property
    def ready(self) -> bool: ...  # False while a crashed runtime is being reloaded

    @property
    def failure(self) -> str | None: ...  # why the runtime is down after failures in a row

    @property
    def restarts(self) -> int: ...  # reloads after the runtime died

    def open(self) -> EngineInfo: ...

    def run(self, job_id: str, command: RunCommand) -> None: ...

    def abort(self, job_id: str, reason: AbortReason) -> None: ...

    def close(self) -> None: ...


class InProcessEngine:
    """The runtime Session in this process; events come from the runtime's threads."""

    ready = True
    failure = None
    restarts = 0

    def __init__(self, settings: RuntimeSettings, sink: EngineSink) -> None:
        self.session = Session(runtime_options(settings))
        self._jobs = Jobs(self.session, sink)

    def open(self) -> EngineInfo:
        self.session.open()
        return EngineInfo.of(self.session)

    def run(self, job_id: str, command: RunCommand) -> None:
        self._jobs.run(job_id, command)

    def abort(self, job_id: str, reason: AbortReason) -> None:
        self._jobs.abort(job_id, reason)

    def close(self) -> None:
        self.session.close()


# ----------------------------------------------------------------------------- child process


class ProcessEngine:
    """The runtime Session in a child process, restarted when it dies."""

    def __init__(self, settings: RuntimeSettings, sink: EngineSink, *,
                 abort_grace_s: float = 10.0,
                 restart_delays_s: tuple[float, ...] = RESTART_DELAYS_S) -> None:
        self._options = runtime_options(settings)
        self._sink = sink
        self.abort_grace_s = abort_grace_s
        self.restart_delays_s = restart_delays_s
        self.restarts = 0  # successful reloads after a death
        self.failures_in_a_row = 0  # deaths and failed reloads since the last completed run
        self.failure: str | None = None
        self._lock = threading.Lock()  # _conn, _proc, _current
        self._conn: Channel | None = None
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

    def _spawn(self, *, restart: bool = False) -> EngineInfo:
        # A fresh interpreter (not fork: this process has threads; not multiprocessing's spawn:
        # it re-imports the caller's main module), talking over an inherited socket.
        parent_sock, child_sock = socket.socketpair()
        with child_sock:
            proc = subprocess.Popen(child.command(child_sock.fileno()),
                                    pass_fds=(child_sock.fileno(),), stdin=subprocess.DEVNULL)
        parent = Channel(parent_sock.detach())
        try:
            parent.send(Start(self._options, logging.getLogger().level))
            message: FromChild = parent.recv()
        except (EOFError, OSError):
            parent.close()
            code = _reap(proc)
            if code < 0:  # killed by a signal: the native library died inside rkllm_init
                raise RuntimeInitError(
                    "librkllmrt.so crashed in rkllm_init: check runtime.abi (configured "
                    f"{self._options.abi}); the runtime process was {_describe_exit(code)}"
                ) from None
            raise RuntimeInitError("the runtime process died while loading the model "
                                   f"({_describe_exit(code)})") from None
        if not isinstance(message, Opened):
            parent.close()
            _reap(proc)
            if isinstance(message, Failed):
                raise _rebuild_error(message.error, message.message)
            raise RuntimeInitError(f"the runtime process answered {message!r} instead of loading")
        with self._lock:
            self._conn, self._proc = parent, proc
            if restart:  # counted before anyone can see the engine ready again
                self.restarts += 1
                self.failure = None
        threading.Thread(target=self._read, args=(parent, proc), name="rkllm-engine-reader",
                         daemon=True).start()
        self._ready.set()
        return message.info

    def run(self, job_id: str, command: RunCommand) -> None:
        with self._lock:
            if self._conn is None or not self._ready.is_set():
                raise RuntimeRunError("the runtime is restarting")
            self._current = job_id
            try:
                self._conn.send(Run(job_id, command))
            except OSError as err:
                self._current = None
                raise RuntimeRunError(f"the runtime process is gone: {err}") from err

    def abort(self, job_id: str, reason: AbortReason) -> None:
        with self._lock:
            if self._current != job_id or self._conn is None:
                return
            try:
                self._conn.send(Abort(job_id, reason))
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

    def _read(self, conn: Channel, proc: subprocess.Popen[bytes]) -> None:
        """Reader thread: forward events; when the child dies, answer its job and restart it."""
        while True:
            try:
                message: FromChild = conn.recv()
            except (EOFError, OSError):
                break
            if not isinstance(message, Emitted):
                log.warning("unexpected message from the runtime process: %r", message)
                continue
            if not isinstance(message.event, TokenEvent):
                with self._lock:
                    if self._current == message.job_id:
                        self._current = None
                if isinstance(message.event, FinalEvent):  # the failures are no longer in a row
                    self.failures_in_a_row = 0
            self._sink(message.job_id, message.event)
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
        self._restart(reason)

    def _failed(self, reason: str) -> float:
        """Count one failure in a row; the wait before the next reload."""
        self.failures_in_a_row += 1
        if self.failures_in_a_row >= FAILURES_FOR_ERROR:
            self.failure = f"{self.failures_in_a_row} failures in a row, the last: {reason}"
        delays = self.restart_delays_s
        return delays[min(self.failures_in_a_row, len(delays)) - 1]

    def _wait_after(self, state: RetryCallState) -> float:
        error = state.outcome.exception() if state.outcome is not None else None
        return self._failed(str(error))

    def _restart(self, reason: str) -> None:
        """Reload until it works or the engine closes, waiting longer after each failure in a row
        (a library that crashes on every run backs off too, not only one that fails to load)."""
        if self._closing.wait(self._failed(reason)):
            return
        retrying = Retrying(
            retry=retry_if_exception_type(RkllmMqttError),
            wait=self._wait_after,
            sleep=self._wait_to_restart,
            before_sleep=_log_failed_reload,
            reraise=True,
        )
        for attempt in retrying:
            if self._closing.is_set():
                return
            with attempt:
                self._spawn(restart=True)
        if not self._closing.is_set():
            log.info("the runtime process was restarted")

    def _wait_to_restart(self, seconds: float) -> None:
        self._closing.wait(seconds)  # close() cuts the wait short

    def close(self) -> None:
        self._closing.set()
        with self._lock:
            conn, proc = self._conn, self._proc
            self._conn = None
            self._ready.clear()
        if conn is not None:
            with contextlib.suppress(OSError):  # already gone
                conn.send(Close())
        if proc is not None:
            _reap(proc, timeout=15)


def _log_failed_reload(state: RetryCallState) -> None:
    error = state.outcome.exception() if state.outcome is not None else None
    delay = state.next_action.sleep if state.next_action is not None else 0.0
    log.error("reloading the runtime failed (attempt %d): %s; retrying in %g s",
              state.attempt_number, error, delay)


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
