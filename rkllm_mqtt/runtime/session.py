"""One RKLLM handle, owned by one worker thread, serving generations one at a time in FIFO order.

Rules from rkllm.h (rknn-llm releases 1.1.0 - 1.3.0) and the library's observed behaviour that shape
this class:
- every call that touches the handle (init, run, clear_kv_cache, set_chat_template, destroy) runs
  on the session's own thread, so at most one is ever inside the library; rkllm_abort is the only
  call made from other threads, because it must interrupt a running rkllm_run;
- rkllm_run (never rkllm_run_async, is_async always false) streams through the callback, and the
  run ends when rkllm_run returns, whatever the callback saw (an abort ends without FINISH);
- the callback copies the text at once, never raises, and may run on any thread; the CFUNCTYPE
  object (and the 1.3 RKLLMCallback struct) live as long as the session;
- every buffer handed to rkllm_run stays referenced until it returns.
"""

from __future__ import annotations

import ctypes
import logging
import math
import os
import queue
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import Future
from typing import Any, TypeVar

from rkllm_mqtt.errors import RuntimeInitError, RuntimeRunError
from rkllm_mqtt.runtime.api import RkllmApi
from rkllm_mqtt.runtime.common import (
    RKLLM_RUN_ERROR,
    RKLLM_RUN_FINISH,
    RKLLM_RUN_NORMAL,
    RKLLM_RUN_WAITING,
    LLMHandle,
)
from rkllm_mqtt.runtime.contract import AbortReason, ErrorCode, FinishReason, Message
from rkllm_mqtt.runtime.events import (
    NO_STATS,
    ErrorEvent,
    Event,
    FinalEvent,
    GenerationRequest,
    RunStats,
    TokenEvent,
)
from rkllm_mqtt.runtime.library import LoadedLibrary, family_of_version, open_library
from rkllm_mqtt.runtime.nativelog import (
    capture_native_output,
    explain_init_failure,
    logged_runtime_version,
)
from rkllm_mqtt.runtime.options import RuntimeOptions
from rkllm_mqtt.runtime.params import (
    build_infer_param,
    build_input,
    build_param,
    build_sampling,
    c_string,
    has_field,
)
from rkllm_mqtt.runtime.prompt import (
    PromptPlan,
    Template,
    TemplateConfig,
    plan_request,
)
from rkllm_mqtt.runtime.stream import TextStream
from rkllm_mqtt.runtime.tools import TOOL_RESPONSE_TAG, ToolCallFilter, ToolSet

log = logging.getLogger(__name__)

Sink = Callable[[Event], None]
T = TypeVar("T")

_QUEUED, _RUNNING, _DONE = "queued", "running", "done"
_ABORT_FROM_CALLBACK_WAIT_S = 1.0


class _Run:
    """What the callback of one generation accumulates; read by the worker after rkllm_run."""

    def __init__(self, stop: tuple[str, ...], emit: Callable[[Event], None],
                 tools_json: str | None = None) -> None:
        self.stream = TextStream(stop)
        # With tools, text passes the markup filter after the stop sequences: tool calls are
        # taken out before anything reaches a token event.
        self.tools = ToolCallFilter(ToolSet.from_json(tools_json)) if tools_json else None
        self.emit = emit
        self.limit: int | None = None  # tokens after which we abort (families without native cap)
        self.length_cap: int | None = None  # reaching it means finish_reason "length"
        self.tokens = 0
        self.callbacks = 0
        self.started = 0.0
        self.first_token: float | None = None
        self.last_token: float | None = None
        self.perf: tuple[float, int, float, int, float] | None = None
        self.error_seen = False
        self.stop_reason: FinishReason | None = None
        self.abort_before_callback = False
        self.lock = threading.Lock()

    @property
    def text(self) -> str:
        return self.tools.text if self.tools is not None else self.stream.text

    def feed(self, data: bytes) -> str:
        piece = self.stream.feed(data)
        return self.tools.feed(piece) if self.tools is not None and piece else piece

    def finish(self, *, complete: bool) -> str:
        tail = self.stream.finish(complete=complete)
        if self.tools is None:
            return tail
        return self.tools.feed(tail) + self.tools.finish()


class Generation:
    """A queued or running request; iterate it for events or wait for `result()`."""

    def __init__(self, session: Session, request: GenerationRequest, plan: PromptPlan,
                 sink: Sink | None) -> None:
        self.request = request
        self._session = session
        self._plan = plan
        self._sink = sink
        self._run = _Run(request.stop, self._emit, request.tools_json)
        self._state = _QUEUED  # guarded by session._lock
        self._events: queue.SimpleQueue[Event] = queue.SimpleQueue()
        self._done = threading.Event()
        self._outcome: FinalEvent | ErrorEvent | None = None

    def __iter__(self) -> Iterator[Event]:
        """TokenEvents, then exactly one FinalEvent or ErrorEvent (with a sink: only the last)."""
        while True:
            event = self._events.get()
            yield event
            if not isinstance(event, TokenEvent):
                return

    def abort(self, reason: AbortReason = "abort") -> None:
        """Queued: it never runs. Running: rkllm_abort; the FinalEvent carries `reason`."""
        self._session._abort(self, reason)

    def result(self, timeout: float | None = None) -> FinalEvent | ErrorEvent:
        if not self._done.wait(timeout):
            raise TimeoutError("the generation has not finished yet")
        assert self._outcome is not None
        return self._outcome

    @property
    def done(self) -> bool:
        return self._done.is_set()

    def _emit(self, event: Event) -> None:
        if self._sink is not None:
            try:
                self._sink(event)
            except Exception:  # the sink is the caller's code; a native callback must survive it
                log.exception("event sink raised; event dropped")
            if isinstance(event, TokenEvent):
                return
        self._events.put(event)

    def _finish(self, outcome: FinalEvent | ErrorEvent) -> None:
        self._outcome = outcome
        self._emit(outcome)
        self._done.set()


class Session:
    """The RKLLM handle of one model: `open()`, `generate()` any number of times, `close()`."""

    def __init__(self, settings: RuntimeOptions) -> None:
        self.settings = settings
        self.abi: str = settings.abi
        self.runtime_version: str | None = None
        self.library_path: str = settings.library
        self.model_name: str = os.path.basename(settings.model or "")
        self.supports_history = False
        self._templates = TemplateConfig(
            settings.system_prompt, settings.prompt_prefix, settings.prompt_postfix
        )
        self._open_lock = threading.Lock()  # one open() at a time
        self._lock = threading.Lock()  # states of generations, open/closed
        self._run_lock = threading.Lock()  # which run is inside rkllm_run (for rkllm_abort)
        self._jobs: queue.SimpleQueue[Callable[[], None] | Generation | None] = (
            queue.SimpleQueue()
        )
        self._thread: threading.Thread | None = None
        self._closed = False
        self._in_callback = threading.local()
        self._lib: LoadedLibrary | None = None
        self._param: Any = None
        self._handle: LLMHandle | None = None
        self._current: _Run | None = None  # the run inside rkllm_run; guarded by _run_lock
        self._running: Generation | None = None
        self._template_now: Template | None = None  # what the library currently has
        self._tools_now: tuple[str, str] | None = None  # last rkllm_set_function_tools arguments
        # Held for the handle's whole life: the library keeps these pointers.
        self._callback: Any = None
        self._callback_struct: Any = None

    @property
    def _api(self) -> RkllmApi:
        """The bound functions; only reached once `open()` loaded the library."""
        if self._lib is None:
            raise RuntimeRunError("the RKLLM session is not open")
        return self._lib.functions

    @property
    def _live(self) -> LLMHandle:
        """The handle rkllm_init returned; calls that need one come only after it."""
        if self._handle is None:
            raise RuntimeRunError("the RKLLM handle is not initialised")
        return self._handle

    # -- lifecycle -------------------------------------------------------------------------

    def open(self) -> None:
        """Load the library, choose the ABI, rkllm_init on the worker thread; raises on failure."""
        with self._open_lock:
            self._open()

    def _open(self) -> None:
        with self._lock:
            if self._closed:
                raise RuntimeRunError("the RKLLM session is closed")
            if self._thread is not None:
                return
        if not self.settings.model:
            raise RuntimeInitError("runtime.model is not set (the path of the .rkllm model file)")
        loaded = open_library(self.settings.library, self.settings.abi)
        self._lib = loaded
        self.abi, self.library_path = loaded.abi, loaded.path
        self.runtime_version = loaded.runtime_version
        self.supports_history = self.abi != "1.1"
        self._param = build_param(loaded.module, loaded.functions, self.settings)
        self._make_callback(loaded.module)

        thread = threading.Thread(target=self._work, name="rkllm-worker", daemon=True)
        with self._lock:
            self._thread = thread
        thread.start()
        try:
            self._call(self._init)
        except BaseException:
            self._jobs.put(None)
            thread.join()
            with self._lock:
                self._thread = None
            raise
        log.info(
            "RKLLM %s ABI (runtime %s) from %s; model %s",
            self.abi, self.runtime_version or "version unknown", self.library_path, self.model_name,
        )

    def close(self) -> None:
        """Abort what runs, drop what waits, rkllm_destroy, stop the thread; idempotent."""
        with self._lock:
            if self._closed:
                return
            self._closed = True
            running, thread = self._running, self._thread
        if running is not None:
            self._abort(running, "abort")
        if thread is None:
            return
        self._jobs.put(self._destroy)
        self._jobs.put(None)
        if thread is not threading.current_thread():
            thread.join()

    def __enter__(self) -> Session:
        self.open()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    # -- public operations -------------------------------------------------------------------

    def generate(self, request: GenerationRequest, sink: Sink | None = None) -> Generation:
        """Queue a generation and return at once; runs execute one at a time, in order."""
        messages = request.messages
        if request.prompt is not None:
            messages = (*messages, Message("user", request.prompt))
        plan = plan_request(
            self._templates, messages, request.system,
            native_template=self.abi != "1.1",
            native_tools=self.native_tools,
            tools_json=request.tools_json,
            continues=request.continues_history and request.keep_history,
        )
        with self._lock:
            if self._closed:
                raise RuntimeRunError("the RKLLM session is closed")
            if self._thread is None:
                raise RuntimeRunError("the RKLLM session is not open")
            generation = Generation(self, request, plan, sink)
            self._jobs.put(generation)
        return generation

    @property
    def native_tools(self) -> bool:
        """1.2.1+: the library takes the tools itself (rkllm_set_function_tools, role "tool")."""
        return (self._lib is not None
                and getattr(self._api, "rkllm_set_function_tools", None) is not None)

    def clear(self, keep_system_prompt: bool = False) -> None:
        """rkllm_clear_kv_cache after everything queued before it (no-op on 1.1, no KV API)."""
        if not self.supports_history:
            return
        self._call(lambda: self._clear(keep_system_prompt))

    def call_native(self, fn: Callable[[ctypes.CDLL, LLMHandle], T]) -> T:
        """Run `fn(library, handle)` on the worker thread, after everything queued before it.

        For diagnostics and tests (e.g. the simulator's rkllm_sim_inspect): the handle is only
        ever touched from the worker thread, never while a run is inside the library.
        """

        def call() -> T:
            assert self._lib is not None and self._handle is not None
            return fn(self._lib.lib, self._handle)

        return self._call(call)

    # -- worker thread -------------------------------------------------------------------------

    def _work(self) -> None:
        while True:
            job = self._jobs.get()
            if job is None:
                return
            try:
                if isinstance(job, Generation):
                    self._execute(job)
                else:
                    job()
            except Exception:  # the worker must outlive any single job
                log.exception("RKLLM worker: unexpected error")

    def _call(self, fn: Callable[[], T]) -> T:
        """Run `fn` on the worker thread after everything queued so far; re-raise its error."""
        future: Future[T] = Future()

        def job() -> None:
            try:
                future.set_result(fn())
            except BaseException as err:  # handed to the waiting caller
                future.set_exception(err)

        with self._lock:
            if self._closed or self._thread is None:
                raise RuntimeRunError("the RKLLM session is not open")
            self._jobs.put(job)
        return future.result()

    def _init(self) -> None:
        assert self._lib is not None
        handle = LLMHandle()
        callback = (
            ctypes.byref(self._callback_struct)
            if self._callback_struct is not None
            else self._callback
        )
        with capture_native_output() as output:
            status = self._api.rkllm_init(ctypes.byref(handle), ctypes.byref(self._param), callback)
        logged = logged_runtime_version("".join(output))
        if status != 0 or not handle.value:
            raise RuntimeInitError(
                "rkllm_init failed: "
                + explain_init_failure(
                    status, self.settings.model or "", self._param.max_context_len,
                    "".join(output), abi=self.abi, version=self.runtime_version or logged,
                )
            )
        self._handle = handle
        if logged and family_of_version(logged) not in (None, self.abi):
            self._destroy()
            raise RuntimeInitError(
                f'the runtime reports version {logged}, but runtime.abi is "{self.abi}"; '
                f'set runtime.abi to "{family_of_version(logged)}" or "auto"'
            )
        self.runtime_version = self.runtime_version or logged
        configured = self._templates.native() if self.abi != "1.1" else None
        if configured is not None:
            status = self._set_template(configured)
            if status != 0:
                self._destroy()
                raise RuntimeInitError(
                    f"rkllm_set_chat_template failed ({status}) for runtime.system_prompt/"
                    "prompt_prefix/prompt_postfix"
                )

    def _destroy(self) -> None:
        if self._handle is not None:
            status = self._api.rkllm_destroy(self._handle)
            if status != 0:
                log.warning("rkllm_destroy returned %d", status)
            self._handle = None

    def _clear(self, keep_system_prompt: bool) -> None:
        if len(self._api.rkllm_clear_kv_cache.argtypes) == 4:  # 1.2.1+: start_pos, end_pos
            status = self._api.rkllm_clear_kv_cache(self._live, int(keep_system_prompt), None, None)
        else:
            status = self._api.rkllm_clear_kv_cache(self._live, int(keep_system_prompt))
        if status != 0:
            raise RuntimeRunError(f"rkllm_clear_kv_cache failed ({status})")

    def _set_template(self, template: Template) -> int:
        status = self._api.rkllm_set_chat_template(
            self._live,
            c_string(template.system_prompt),
            c_string(template.prompt_prefix),
            c_string(template.prompt_postfix),
        )
        self._template_now = template if status == 0 else None
        return status

    def _set_function_tools(self, tools: tuple[str, str] | None) -> int:
        """rkllm_set_function_tools, only when the system text or the tools changed (the KV cache
        holds them). A run without tools after one with tools sets an empty list ("[]"), so the
        model is not offered functions the request did not give."""
        if tools is None:
            if self._tools_now is None:
                return 0
            tools = ("", "[]")
        if tools == self._tools_now:
            return 0
        system_prompt, tools_json = tools
        set_function_tools = self._api.rkllm_set_function_tools
        assert set_function_tools is not None  # only called when native_tools
        status = set_function_tools(self._live, c_string(system_prompt), c_string(tools_json),
                                    c_string(TOOL_RESPONSE_TAG))
        self._tools_now = (None if tools_json == "[]" else tools) if status == 0 else None
        return status

    def _execute(self, generation: Generation) -> None:
        with self._lock:
            if generation._state != _QUEUED:  # aborted while it waited
                return
            generation._state = _RUNNING
            self._running = generation
        try:
            outcome = (
                self._run_generation(generation)
                if not self._closed
                else FinalEvent("", "abort", NO_STATS)
            )
        except Exception as err:  # turn a bug into an error reply, keep serving
            log.exception("RKLLM generation failed")
            outcome = ErrorEvent(ErrorCode.RUNTIME_ERROR, f"internal error: {err}",
                                 generation._run.text)
        with self._lock:
            generation._state = _DONE
            self._running = None
        generation._finish(outcome)

    def _run_generation(self, generation: Generation) -> FinalEvent | ErrorEvent:
        assert self._lib is not None
        module, request = self._lib.module, generation.request
        plan, run = generation._plan, generation._run
        configured = self._templates.native() if self.abi != "1.1" else None
        wanted = plan.template or configured
        if wanted != self._template_now and wanted is not None:
            status = self._set_template(wanted)
            if status != 0:
                return ErrorEvent(ErrorCode.RUNTIME_ERROR, f"rkllm_set_chat_template failed ({status})")
        if self.native_tools:
            status = self._set_function_tools(plan.function_tools)
            if status != 0:
                return ErrorEvent(ErrorCode.RUNTIME_ERROR, f"rkllm_set_function_tools failed ({status})")

        prompt = c_string(plan.text)
        role = c_string(plan.role if plan.role != "user" else request.role)
        rkllm_input = build_input(module, prompt, role, request.enable_thinking)
        native_sampling = has_field(module.RKLLMInferParam, "sampling_params")
        sampling = (
            build_sampling(module, self._param, request.sampling) if native_sampling else None
        )
        if not native_sampling and request.sampling.overrides():
            log.debug("the %s ABI has no per-run sampling; ignored %s", self.abi,
                      request.sampling.overrides())
        infer = build_infer_param(
            module,
            keep_history=request.keep_history,
            sampling=sampling,
            max_new_tokens=request.max_new_tokens,
        )
        init_cap = self._param.max_new_tokens if self._param.max_new_tokens > 0 else None
        request_cap = request.max_new_tokens if (request.max_new_tokens or 0) > 0 else None
        if native_sampling:
            run.length_cap = request_cap or init_cap
        else:
            run.limit = request_cap
            run.length_cap = min((c for c in (request_cap, init_cap) if c), default=None)

        with self._run_lock:
            self._current = run
            skip = run.stop_reason is not None  # aborted between dequeue and here
        run.started = time.monotonic()
        status = 0
        try:
            if not skip:
                status = self._api.rkllm_run(
                    self._live, ctypes.byref(rkllm_input), ctypes.byref(infer), None
                )
        finally:
            with self._run_lock:
                self._current = None
        ended = time.monotonic()
        del rkllm_input, infer, sampling, prompt, role  # referenced until here, on purpose

        if configured is not None and self._template_now != configured:
            status_restore = self._set_template(configured)
            if status_restore != 0:
                log.error("could not restore the configured chat template (%d)", status_restore)

        failed = status != 0 or run.error_seen
        capped = bool(run.length_cap and run.tokens >= run.length_cap)
        tail = run.finish(complete=run.stop_reason is None and not failed and not capped)
        if tail:
            generation._emit(TokenEvent(tail))
        text = run.text
        calls = tuple(run.tools.calls) if run.tools is not None else ()
        if run.stop_reason in (None, "stop_sequence") and not failed and calls:
            return FinalEvent(text, "tool_calls", self._stats(run, ended), calls)
        if run.stop_reason is not None:
            return FinalEvent(text, run.stop_reason, self._stats(run, ended))
        if failed:
            return self._run_error(plan.text, status, text)
        return FinalEvent(text, "length" if capped else "stop", self._stats(run, ended))

    def _run_error(self, prompt: str, status: int, text: str) -> ErrorEvent:
        limit = self._param.max_context_len
        estimate = math.ceil(len(c_string(prompt)) / 4)  # bytes/4: rough, like the simulator
        if estimate > limit:
            return ErrorEvent(
                ErrorCode.CONTEXT_TOO_LONG,
                f"the prompt is about {estimate} tokens, more than runtime.max_context_len "
                f"({limit})",
                text,
            )
        detail = f"rkllm_run returned {status}" if status != 0 else "error callback"
        return ErrorEvent(ErrorCode.RUNTIME_ERROR, f"the runtime failed during generation ({detail})", text)

    @staticmethod
    def _stats(run: _Run, ended: float) -> RunStats:
        measured_tps = None
        if run.tokens >= 2 and run.first_token is not None and run.last_token is not None:
            span = run.last_token - run.first_token
            measured_tps = (run.tokens - 1) / span if span > 0 else None
        ttft = (run.first_token - run.started) * 1000 if run.first_token is not None else None
        total = (ended - run.started) * 1000
        if run.perf is None:
            return RunStats(None, run.tokens, ttft, total, measured_tps, None, None, None)
        prefill_ms, prefill_tokens, generate_ms, generate_tokens, memory_mb = run.perf
        tps = generate_tokens / (generate_ms / 1000) if generate_ms > 0 else measured_tps
        return RunStats(prefill_tokens, generate_tokens, ttft, total, tps or measured_tps,
                        prefill_ms, generate_ms, memory_mb)

    # -- aborting (any thread) -------------------------------------------------------------------

    def _abort(self, generation: Generation, reason: AbortReason) -> None:
        with self._lock:
            state = generation._state
            if state == _QUEUED:
                generation._state = _DONE
        if state == _QUEUED:
            generation._finish(FinalEvent("", reason, NO_STATS))
        elif state == _RUNNING:
            self._stop(generation._run, reason)

    def _stop(self, run: _Run, reason: FinishReason) -> None:
        """Mark why the run ends (first reason wins) and interrupt the library."""
        with run.lock:
            if run.stop_reason is not None:
                return
            run.stop_reason = reason
        if getattr(self._in_callback, "active", False):
            self._abort_from_callback(run)
        else:
            self._abort_native(run)

    def _abort_from_callback(self, run: _Run) -> None:
        """rkllm_abort on a helper thread, waiting briefly so the run stops at this token.

        Calling into the library from inside its own callback could deadlock on a lock it holds
        around the callback; from another thread the worst case is that the abort lands once the
        callback has returned. The bounded wait makes the usual case exact: the flag is set
        before the library looks at it for the next token.
        """
        done = threading.Event()

        def abort() -> None:
            self._abort_native(run)
            done.set()

        threading.Thread(target=abort, name="rkllm-abort", daemon=True).start()
        done.wait(_ABORT_FROM_CALLBACK_WAIT_S)

    def _abort_native(self, run: _Run) -> None:
        with self._run_lock:
            if self._current is not run or self._handle is None:
                return  # not inside rkllm_run (yet/anymore): the worker checks stop_reason
            if run.callbacks == 0:
                run.abort_before_callback = True
            status = self._api.rkllm_abort(self._handle)
        if status != 0:
            log.warning("rkllm_abort returned %d", status)

    # -- the native callback (any thread) ---------------------------------------------------------

    def _make_callback(self, module: Any) -> None:
        returns_int = module.LLMResultCallback._restype_ is ctypes.c_int

        def on_result_int(result: Any, userdata: Any, state: int) -> int:
            self._on_result(result, state)
            return 0

        def on_result_void(result: Any, userdata: Any, state: int) -> None:
            self._on_result(result, state)

        self._callback = module.LLMResultCallback(on_result_int if returns_int else on_result_void)
        if hasattr(module, "RKLLMCallback"):  # 1.3.0: rkllm_init takes a struct of callbacks
            self._callback_struct = module.RKLLMCallback()
            self._callback_struct.result_callback = self._callback

    def _on_result(self, result: Any, state: int) -> None:
        try:
            run = self._current
            if run is None:
                return
            self._in_callback.active = True
            try:
                self._handle_result(run, result, state)
            finally:
                self._in_callback.active = False
        except Exception:  # an exception must never unwind into the C library
            log.exception("error in the RKLLM result callback (ignored)")

    def _handle_result(self, run: _Run, result: Any, state: int) -> None:
        run.callbacks += 1
        if run.abort_before_callback:  # our abort may have come before the run began: repeat it
            run.abort_before_callback = False
            self._abort_from_callback(run)
        # WAITING (1.1.x): "the decoded character is not complete UTF-8"; whatever bytes it
        # carries belong to the text (Rockchip's own 1.1 servers join them with the next token),
        # and the incremental decoder holds them until the character is whole.
        if state in (RKLLM_RUN_NORMAL, RKLLM_RUN_WAITING):
            data = result.contents.text if result else None  # copied now: freed after we return
            if not data or run.stop_reason is not None:
                return
            now = time.monotonic()
            run.tokens += 1
            run.last_token = now
            if run.first_token is None:
                run.first_token = now
            piece = run.feed(data)
            if piece:
                run.emit(TokenEvent(piece))
            if run.stream.stopped:
                self._stop(run, "stop_sequence")
            elif run.limit is not None and run.tokens >= run.limit:
                self._stop(run, "length")
        elif state == RKLLM_RUN_FINISH:
            if result and has_field(result.contents, "perf"):
                perf = result.contents.perf
                run.perf = (perf.prefill_time_ms, perf.prefill_tokens, perf.generate_time_ms,
                            perf.generate_tokens, perf.memory_usage_mb)
        elif state == RKLLM_RUN_ERROR:
            run.error_seen = True

