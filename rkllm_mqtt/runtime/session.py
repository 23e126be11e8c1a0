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
- the runtime waits for the callback's return before it goes on (from 1.2.1 a return of 1 even
  pauses inference), so the callback only copies the bytes and hands them to the session's token
  thread (runtime.handoff: in C when it was built, without the GIL); counting, decoding, stop
  sequences, max_new_tokens and the caller's sink (JSON, publish, the child's pipe) run there,
  never while the NPU waits;
- every buffer handed to rkllm_run stays referenced until it returns.
"""

from __future__ import annotations

import contextlib
import ctypes
import logging
import os
import queue
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import Future
from typing import Any, TypeVar

from rkllm_mqtt.runtime.api import RkllmApi
from rkllm_mqtt.runtime.common import (
    RKLLM_RUN_ERROR,
    RKLLM_RUN_FINISH,
    RKLLM_RUN_NORMAL,
    RKLLM_RUN_WAITING,
    LLMHandle,
)
from rkllm_mqtt.runtime.contract import AbortReason, ErrorCode, FinishReason, Message
from rkllm_mqtt.runtime.errors import RuntimeInitError, RuntimeRunError, one_line
from rkllm_mqtt.runtime.events import (
    NO_STATS,
    ErrorEvent,
    Event,
    FinalEvent,
    GenerationRequest,
    RunStats,
    TokenEvent,
)
from rkllm_mqtt.runtime.handoff import BEGIN_OF_RUN, END_OF_RUN, STOP, HandOff, open_handoff
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
from rkllm_mqtt.runtime.prefill import PrefillCount, PrefillState
from rkllm_mqtt.runtime.prompt import (
    PromptPlan,
    Template,
    TemplateConfig,
    plan_request,
)
from rkllm_mqtt.runtime.prompt_cache import Prefix, PromptCacheStore
from rkllm_mqtt.runtime.stream import TextStream
from rkllm_mqtt.runtime.templates import choose
from rkllm_mqtt.runtime.tools import TOOL_RESPONSE_TAG, ToolCallFilter, ToolSet

log = logging.getLogger(__name__)

Sink = Callable[[Event], None]
T = TypeVar("T")
TOKEN_THREAD_JOIN_S = 5.0

_QUEUED, _RUNNING, _DONE = "queued", "running", "done"


class _Run:
    """What the token thread makes of one generation's callbacks; read by the worker after
    rkllm_run, once `drained` is set."""

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
        self.drained = threading.Event()  # the token thread has handled every handed-off token


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


def _yield_to_the_runtime() -> None:
    """Make the calling thread SCHED_BATCH (Linux; allowed without privileges): waking it from
    the callback then never preempts the runtime's thread inside the callback; it runs as soon as
    a CPU is free instead, which at a token's pace is at once."""
    with contextlib.suppress(AttributeError, OSError):  # not Linux, or forbidden: only slower
        os.sched_setscheduler(0, os.SCHED_BATCH, os.sched_param(0))


def _partial_text(generation: Generation) -> str:
    """What a failed run had streamed, if even that can still be read."""
    try:
        return generation._run.text
    except Exception:  # the failure may be in the stream itself
        return ""


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
        self._prefix: Prefix | None = None  # what precedes the turn (system prompt, tools)

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
        chat, self._template_reason = choose(settings.chat_template, self.model_name)
        self._templates = TemplateConfig(
            settings.system_prompt, settings.prompt_prefix, settings.prompt_postfix, chat
        )
        self._open_lock = threading.Lock()  # one open() at a time
        self._lock = threading.Lock()  # states of generations, open/closed
        self._run_lock = threading.Lock()  # which run is inside rkllm_run (for rkllm_abort)
        self._jobs: queue.SimpleQueue[Callable[[], None] | Generation | None] = (
            queue.SimpleQueue()
        )
        self._thread: threading.Thread | None = None
        self._handoff: HandOff | None = None  # the callback's entries, for the token thread
        self._draining: _Run | None = None  # the run the next BEGIN_OF_RUN marker opens
        self._token_thread: threading.Thread | None = None
        self._closed = False
        self._lib: LoadedLibrary | None = None
        self._param: Any = None
        self._handle: LLMHandle | None = None
        self._current: _Run | None = None  # the run inside rkllm_run; guarded by _run_lock
        self._running: Generation | None = None
        self._template_now: Template | None = None  # what the library currently has
        self._prefill = PrefillState(None, kv_history=False)  # replaced once the handle exists
        self._tools_now: tuple[str, str] | None = None  # last rkllm_set_function_tools arguments
        # Held for the handle's whole life: the library keeps its pointer (the callback itself
        # lives in self._handoff).
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
        self._handoff = handoff = open_handoff(loaded.module)
        if hasattr(loaded.module, "RKLLMCallback"):  # 1.3.0: rkllm_init takes a struct of callbacks
            self._callback_struct = loaded.module.RKLLMCallback()
            self._callback_struct.result_callback = handoff.callback

        thread = threading.Thread(target=self._work, name="rkllm-worker", daemon=True)
        tokens = threading.Thread(target=self._hand_on, name="rkllm-tokens", daemon=True)
        with self._lock:
            self._thread, self._token_thread = thread, tokens
        thread.start()
        tokens.start()
        try:
            self._call(self._init)
        except BaseException:
            self._jobs.put(None)
            thread.join()
            self._end_token_thread(tokens)
            with self._lock:
                self._thread = self._token_thread = None
            raise
        log.info(
            "RKLLM %s ABI (runtime %s) from %s; model %s; token hand-off in %s",
            self.abi, self.runtime_version or "version unknown", self.library_path, self.model_name,
            handoff.kind,
        )

    def close(self) -> None:
        """Abort what runs, drop what waits, rkllm_destroy, stop the thread; idempotent."""
        with self._lock:
            if self._closed:
                return
            self._closed = True
            running, thread, tokens = self._running, self._thread, self._token_thread
        if running is not None:
            self._abort(running, "abort")
        if thread is None or tokens is None:
            return
        self._jobs.put(self._destroy)
        self._jobs.put(None)
        if thread is not threading.current_thread():
            thread.join()
        self._end_token_thread(tokens)  # after the worker: its last run has drained

    def _end_token_thread(self, tokens: threading.Thread) -> None:
        """Stop the token thread and wait for it, so the hand-off (one of a fixed number of C
        slots) is free again when close returns; a sink stuck in the caller's code cannot make
        close hang."""
        assert self._handoff is not None
        self._handoff.push(STOP)
        if tokens is threading.current_thread():  # a sink closed its own session
            return
        tokens.join(TOKEN_THREAD_JOIN_S)
        if tokens.is_alive():
            log.warning("the token thread did not end within %g s (a sink is still busy); "
                        "its hand-off is freed when it does", TOKEN_THREAD_JOIN_S)

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
            generation._prefix = self._prefix_of(plan, messages, request)
            self._jobs.put(generation)
        return generation

    @property
    def handoff_kind(self) -> str | None:
        """How tokens leave the callback: "C" (without the GIL) or "Python"; None until open."""
        return self._handoff.kind if self._handoff is not None else None

    @property
    def native_tools(self) -> bool:
        """1.2.1+: the library takes the tools itself (rkllm_set_function_tools, role "tool")."""
        return (self._lib is not None
                and getattr(self._api, "rkllm_set_function_tools", None) is not None)

    def _prefix_of(self, plan: PromptPlan, messages: Sequence[Message],
                   request: GenerationRequest) -> Prefix | None:
        """The part of this run's context that other conversations can share."""
        if plan.function_tools is not None:  # 1.2.1+: rkllm_set_function_tools holds it
            return Prefix(plan.function_tools[0], tools=plan.function_tools[1])
        template = plan.template or (self._templates.native() if self.abi != "1.1" else None)
        if template is not None:
            return Prefix(template.system_prompt, template.prompt_prefix, template.prompt_postfix)
        parts = [request.system or ""] + [m.content for m in messages if m.role == "system"]
        system = "\n\n".join(p for p in parts if p) or self._templates.system_prompt
        if (request.continues_history and request.keep_history) or not system:
            return None
        # It travels at the start of the prompt text: only a prompt cache file can spare it.
        return Prefix(system, tools=request.tools_json, in_prompt=True)

    def clear(self, keep_system_prompt: bool = True) -> None:
        """rkllm_clear_kv_cache after everything queued before it (no-op on 1.1, no KV API).

        The system prompt stays by default: the next conversation with the same system prompt
        and tools then prefills only its own turns.
        """
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
        assert self._lib is not None and self._handoff is not None
        handle = LLMHandle()
        callback = (
            ctypes.byref(self._callback_struct)
            if self._callback_struct is not None
            else self._handoff.callback
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
        self._prefill = PrefillState(self._prompt_cache_store(), kv_history=self.abi != "1.1")
        if self.abi != "1.1":
            self._log_template()
        # A template with a system prompt (or the user's own markup) is set now, so a bad one
        # fails the start; the table's alone waits for the first run, which may bring its own.
        templates = self._templates
        configured = (templates.native() if self.abi != "1.1"
                      and (templates.system_prompt or templates.configured()) else None)
        if configured is not None:
            status = self._set_template(configured)
            if status != 0:
                self._destroy()
                raise RuntimeInitError(
                    f"rkllm_set_chat_template failed ({status}) for runtime.system_prompt/"
                    "prompt_prefix/prompt_postfix"
                )
        self._warm_start()

    def _log_template(self) -> None:
        """One line at start: which markup the system prompt and turns travel in, and why."""
        templates = self._templates
        if templates.configured() is not None:
            log.info("chat template: runtime.prompt_prefix/prompt_postfix as configured "
                     "(the system prompt goes to rkllm_set_chat_template as it is)")
        elif templates.chat is None:
            log.info("chat template: the model's own (%s); the system prompt travels in the "
                     "prompt and every new conversation prefills it again", self._template_reason)
        else:
            log.info("chat template: %s (%s)", templates.chat.name, self._template_reason)

    def _prompt_cache_store(self) -> PromptCacheStore | None:
        directory = self.settings.prompt_cache_dir
        if not directory or not self.settings.model:
            return None
        store = PromptCacheStore(
            directory, model=self.settings.model,
            runtime_version=self.runtime_version or f"abi-{self.abi}",
            max_files=self.settings.prompt_cache_max_files,
            max_bytes=self.settings.prompt_cache_max_mb * 1024 * 1024,
        )
        return store if store.ensure_directory() else None

    def _warm_start(self) -> None:
        """Before the first request: load the last-used prefix's prompt cache, or prefill it.

        Only the files of this model and runtime version count; with `runtime.prefill_at_start`
        a prefix without a usable file (or the configured system prompt) is prefilled now, with
        a one-token run that also saves its file. A failure here costs the warm start, never the
        start.
        """
        store = self._prefill.store
        if store is None:
            return
        try:
            prefix = store.last_used()
            if prefix is None and self.settings.prefill_at_start and self._templates.system_prompt:
                configured = self._templates.native() if self.abi != "1.1" else None
                prefix = (Prefix(configured.system_prompt, configured.prompt_prefix,
                                 configured.prompt_postfix) if configured is not None
                          else Prefix(self._templates.system_prompt, in_prompt=True))
            if prefix is None:
                return
            path = store.valid(prefix)
            if path is not None and self._prefill._load(self._api, self._live, path):
                self._prefill.loaded = prefix
                log.info("warm start: prompt cache %s loaded", path.name)
                return
            if path is not None:
                store.forget(prefix)
            if self.settings.prefill_at_start:
                self._prime(prefix)
        except (OSError, RuntimeRunError) as err:
            log.warning("warm start skipped: %s", err)

    def _prime(self, prefix: Prefix) -> None:
        """A one-token run with nothing after the prefix, set up as a request with it would be."""
        if prefix.in_prompt or self.abi == "1.1":
            plan = PromptPlan(f"{prefix.system}\n\n", None)
        elif prefix.tools is not None and self.native_tools:
            plan = PromptPlan("", None, function_tools=(prefix.system, prefix.tools))
        else:
            plan = PromptPlan("", Template(prefix.system, prefix.prompt_prefix or "",
                                           prefix.prompt_postfix or ""))
        generation = Generation(self, GenerationRequest(prompt="", max_new_tokens=1), plan, None)
        generation._prefix = prefix
        generation._state = _RUNNING
        outcome = self._run_generation(generation)
        if isinstance(outcome, ErrorEvent):
            log.warning("warm start: prefilling the prefix failed: %s", outcome.message)
        else:
            log.info("warm start: prefix of about %d tokens prefilled",
                     outcome.stats.prefill_tokens or 0)

    def _destroy(self) -> None:
        if self._handle is not None:
            status = self._api.rkllm_destroy(self._handle)
            if status != 0:
                log.warning("rkllm_destroy returned %d", status)
            self._handle = None

    def _clear(self, keep_system_prompt: bool) -> None:
        self._prefill.cleared(keep_system_prompt)
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
        if self._template_now is None or template.system_prompt != self._template_now.system_prompt:
            self._prefill.system_changed()
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
        self._prefill.system_changed()  # the system prompt the KV cache holds is another now
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
            log.error("RKLLM generation failed: %s", one_line(err), exc_info=True)
            outcome = ErrorEvent(ErrorCode.RUNTIME_ERROR, one_line(err), _partial_text(generation))
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
        # 1.2.1+ with tools: rkllm_set_function_tools holds the system prompt, the template stays.
        if wanted != self._template_now and wanted is not None and plan.function_tools is None:
            status = self._set_template(wanted)
            if status != 0:
                return ErrorEvent(ErrorCode.RUNTIME_ERROR, f"rkllm_set_chat_template failed ({status})")
        if self.native_tools:
            status = self._set_function_tools(plan.function_tools)
            if status != 0:
                return ErrorEvent(ErrorCode.RUNTIME_ERROR, f"rkllm_set_function_tools failed ({status})")

        # The template stays set after the run: putting another one back would make the next
        # run with this system prompt recompute it (and drop the turns the cache holds).
        cache = self._prefill.before_run(self._api, self._live, module, generation._prefix,
                                         plan.text)
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
            prompt_cache=cache.save_param,
        )
        init_cap = self._param.max_new_tokens if self._param.max_new_tokens > 0 else None
        request_cap = request.max_new_tokens if (request.max_new_tokens or 0) > 0 else None
        if native_sampling:
            run.length_cap = request_cap or init_cap
        else:
            run.limit = request_cap
            run.length_cap = min((c for c in (request_cap, init_cap) if c), default=None)

        self._draining = run  # read by the token thread when it takes the marker below
        assert self._handoff is not None
        self._handoff.push(BEGIN_OF_RUN)
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
            self._handoff.push(END_OF_RUN)
            run.drained.wait()  # every token of the run is decoded and emitted before its end
        ended = time.monotonic()
        del rkllm_input, infer, sampling, prompt, role  # referenced until here, on purpose

        failed = status != 0 or run.error_seen
        count = self._prefill.after_run(
            self._api, self._live, cache,
            ok=not failed and run.stop_reason in (None, "length", "stop_sequence"),
            keep_history=request.keep_history,
            perf_prefill=run.perf[1] if run.perf is not None else None,
            generated=run.tokens,
        )
        capped = bool(run.length_cap and run.tokens >= run.length_cap)
        tail = run.finish(complete=run.stop_reason is None and not failed and not capped)
        if tail:
            generation._emit(TokenEvent(tail))
        text = run.text
        calls = tuple(run.tools.calls) if run.tools is not None else ()
        invalid = tuple(run.tools.invalid) if run.tools is not None else ()
        if run.stop_reason in (None, "stop_sequence") and not failed and calls:
            return FinalEvent(text, "tool_calls", self._stats(run, ended, count), calls, invalid)
        if run.stop_reason is not None:
            return FinalEvent(text, run.stop_reason, self._stats(run, ended, count), (), invalid)
        if failed:
            return self._run_error(self._prefill.context_estimate(cache), status, text)
        return FinalEvent(text, "length" if capped else "stop", self._stats(run, ended, count), (),
                          invalid)

    def _run_error(self, estimate: int, status: int, text: str) -> ErrorEvent:
        """A failed run; `estimate` is the whole context it needed (prefix, history, turn)."""
        limit = self._param.max_context_len
        if limit > 0 and estimate > limit:
            return ErrorEvent(
                ErrorCode.CONTEXT_TOO_LONG,
                f"the prompt needs about {estimate} tokens with the system prompt and history, "
                f"{estimate - limit} more than runtime.max_context_len ({limit}); "
                "shorten the history or the system prompt",
                text,
            )
        detail = f"rkllm_run returned {status}" if status != 0 else "error callback"
        return ErrorEvent(ErrorCode.RUNTIME_ERROR, f"the runtime failed during generation ({detail})", text)

    @staticmethod
    def _stats(run: _Run, ended: float, count: PrefillCount) -> RunStats:
        measured_tps = None
        if run.tokens >= 2 and run.first_token is not None and run.last_token is not None:
            span = run.last_token - run.first_token
            measured_tps = (run.tokens - 1) / span if span > 0 else None
        ttft = (run.first_token - run.started) * 1000 if run.first_token is not None else None
        total = (ended - run.started) * 1000
        if run.perf is None:
            return RunStats(count.prompt_tokens, run.tokens, ttft, total, measured_tps, None, None,
                            None, count.prefill_tokens, count.cached_tokens, count.source)
        prefill_ms, _, generate_ms, generate_tokens, memory_mb = run.perf
        tps = generate_tokens / (generate_ms / 1000) if generate_ms > 0 else measured_tps
        # Cut at max_new_tokens by us: the runtime may have made a token or two more before the
        # abort landed; the answer holds only the first N.
        completion = min(generate_tokens, run.tokens) if run.limit is not None else generate_tokens
        return RunStats(count.prompt_tokens, completion, ttft, total, tps or measured_tps,
                        prefill_ms, generate_ms, memory_mb, count.prefill_tokens,
                        count.cached_tokens, count.source)

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
        self._abort_native(run)  # never from inside the callback: it calls no Python code

    def _abort_native(self, run: _Run) -> None:
        with self._run_lock:
            if self._current is not run or self._handle is None:
                return  # not inside rkllm_run (yet/anymore): the worker checks stop_reason
            if run.callbacks == 0:
                run.abort_before_callback = True
            status = self._api.rkllm_abort(self._handle)
        if status != 0:
            log.warning("rkllm_abort returned %d", status)

    # -- the token thread ------------------------------------------------------------------------

    def _hand_on(self) -> None:
        """What the callback handed off becomes counts, text, stop sequences and events, in order."""
        _yield_to_the_runtime()
        assert self._handoff is not None and self._lib is not None
        perf_struct = getattr(self._lib.module, "RKLLMPerfStat", None)
        run: _Run | None = None  # between BEGIN_OF_RUN and END_OF_RUN; what comes outside is dropped
        try:
            for state, data, at in self._handoff.entries():
                if state == BEGIN_OF_RUN:
                    run = self._draining  # set by the worker before it pushed the marker
                elif state == END_OF_RUN:
                    if run is not None:
                        run.drained.set()
                    run = None
                elif run is not None:
                    try:
                        self._take(run, state, data, at, perf_struct)
                    except Exception:  # one bad token must not end the thread every run needs
                        log.exception("error handling an RKLLM token (ignored)")
        finally:
            self._handoff.close()

    def _take(self, run: _Run, state: int, data: bytes, at: float, perf_struct: Any) -> None:
        run.callbacks += 1
        if run.abort_before_callback:  # our abort may have come before the run began: repeat it
            run.abort_before_callback = False
            self._abort_native(run)
        # WAITING (1.1.x): "the decoded character is not complete UTF-8"; whatever bytes it
        # carries belong to the text (Rockchip's own 1.1 servers join them with the next token),
        # and the incremental decoder holds them until the character is whole.
        if state in (RKLLM_RUN_NORMAL, RKLLM_RUN_WAITING):
            if run.stop_reason is not None:  # stopped: what the runtime still sends is dropped
                return
            run.tokens += 1
            run.last_token = at
            if run.first_token is None:
                run.first_token = at
            piece = run.feed(data)  # UTF-8, then the tool-call markup filter
            if piece:
                run.emit(TokenEvent(piece))
            if run.stream.stopped:
                self._stop(run, "stop_sequence")
            elif run.limit is not None and run.tokens >= run.limit:
                self._stop(run, "length")
        elif state == RKLLM_RUN_FINISH:
            if data and perf_struct is not None:
                perf = perf_struct.from_buffer_copy(data)
                run.perf = (perf.prefill_time_ms, perf.prefill_tokens, perf.generate_time_ms,
                            perf.generate_tokens, perf.memory_usage_mb)
        elif state == RKLLM_RUN_ERROR:
            run.error_seen = True
