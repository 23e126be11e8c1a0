"""What the KV cache of one handle holds, the prompt cache around it, and what a run prefilled.

Used only from the Session's worker thread (every call that touches the handle runs there).

The mechanisms by family (rkllm.h of each release; RKLLM SDK manual of release-v1.3.0):
- 1.2.0+: `RKLLMInferParam.keep_history = 1` keeps the context between runs (documented: "set to 1
  for multi-turn"); `rkllm_clear_kv_cache(handle, keep_system_prompt, ...)` with 1 keeps the system
  prompt "if present" and clears the rest (documented). The system prompt is the one given to
  rkllm_set_chat_template (1.2.0+) or rkllm_set_function_tools (1.2.1+). So a new conversation
  with the same system prompt and tools only needs clear_kv_cache(1) and its own turns; the daemon
  never clears with 0 on these families. `n_keep` (RKLLMParam, 1.2.0+) is how many KV entries
  stay at the start when the context window shifts; the manual says it must be at least the
  system prompt's length in multi-turn use.
- every family (1.1.0+): the prompt cache, a file a run saves with RKLLMPromptCacheParam and
  rkllm_load_prompt_cache loads; the runtime reuses the part of an input that matches it from the
  start (documented). On 1.1, which keeps nothing between runs, this is the only way to spare the
  prefix; on 1.2.0+ it is the warm start after a restart.
- Our inference, not documented: that the system prompt's KV survives keep_history = 0 runs and
  clear_kv_cache(1) without being recomputed, that changing it through set_chat_template /
  set_function_tools recomputes it (the cached turns no longer fit it), and that a loaded prompt
  cache is used only by a run that starts with an empty cache.

Counting: RKLLMPerfStat.prefill_tokens (1.2.1+) is the runtime's count of what it prefilled;
rkllm_get_kv_cache_size (1.2.1+) the positions it holds, so after a keep_history run
`prompt = size - generated` and `cached = prompt - prefilled`. Without those (1.1, 1.2.0) the
daemon estimates one token per 4 bytes of UTF-8 and says so (`tokens_source: "estimate"`); a run
without keep_history that reused a prompt cache file has the runtime's prefill count and an
estimated cache count (`"mixed"`).
"""

from __future__ import annotations

import ctypes
import logging
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from rkllm_mqtt.runtime.common import LLMHandle, RKLLMPromptCacheParam
from rkllm_mqtt.runtime.prompt_cache import Prefix, PromptCacheStore

log = logging.getLogger(__name__)

# A prefix shorter than this is prefilled in well under half a second on an RK3588 (~340 tokens/s)
# and gets no prompt cache file: a file holds the prefix's whole KV state (tens of MB per thousand
# tokens for a 1.5B model), not worth the disk for a short system prompt or a one-off.
MIN_FILE_TOKENS = 128


def estimate_tokens(text: str | None) -> int:
    """One token per 4 bytes of UTF-8: rough, and the same rule the simulator counts with."""
    return math.ceil(len(text.encode("utf-8", "replace")) / 4) if text else 0


def _prefix_tokens(prefix: Prefix | None) -> int:
    if prefix is None:
        return 0
    return estimate_tokens(prefix.system) + estimate_tokens(prefix.tools)


@dataclass(frozen=True)
class PrefillCount:
    """How one run's context was made: from the caches or computed by the NPU."""

    prompt_tokens: int | None
    prefill_tokens: int | None
    cached_tokens: int | None
    source: str  # "runtime" | "estimate" | "mixed" (runtime prefill, estimated cache)


@dataclass
class RunCache:
    """What a run needs from the prompt cache: the save parameters it carries, if any."""

    prefix: Prefix | None
    save_param: Any = None  # RKLLMPromptCacheParam, referenced until rkllm_run returns
    kv_before: int | None = None
    estimate_cached: int = 0
    estimate_prefill: int = 0


class PrefillState:
    """The KV cache's contents as the daemon knows them, and the prompt-cache files behind it."""

    def __init__(self, store: PromptCacheStore | None, *, kv_history: bool) -> None:
        self.store = store
        self.kv_history = kv_history  # 1.2.0+: the KV cache outlives a run
        self.kv_prefix: Prefix | None = None  # system segment the KV cache holds (1.2.0+)
        self.kv_tokens = 0  # estimate of what it holds
        self.loaded: Prefix | None = None  # prompt cache file loaded into the runtime

    # -- what changes the KV cache -----------------------------------------------------------------

    def system_changed(self) -> None:
        """set_chat_template / set_function_tools with another system prompt: all is recomputed."""
        self.kv_prefix, self.kv_tokens = None, 0

    def cleared(self, keep_system_prompt: bool) -> None:
        if keep_system_prompt and self.kv_prefix is not None:
            self.kv_tokens = _prefix_tokens(self.kv_prefix)
        else:
            self.kv_prefix, self.kv_tokens = None, 0

    # -- one run -----------------------------------------------------------------------------------

    def before_run(self, fn: Any, handle: LLMHandle, module: Any, prefix: Prefix | None,
                   prompt_text: str) -> RunCache:
        """Load or arrange to save the prompt cache of `prefix`; note what the cache holds."""
        held = self.kv_history and prefix is not None and prefix == self.kv_prefix
        run = RunCache(prefix)
        run.kv_before = self._kv_size(fn, handle)
        cached = self.kv_tokens if held or prefix is None else 0
        if prefix is not None and not held and self.store is not None:
            self._use_file(fn, handle, module, prefix, run)
            if self.loaded == prefix:
                cached = _prefix_tokens(prefix)
        run.estimate_cached = cached
        sent_prefix = 0 if held or prefix is None or prefix.in_prompt else _prefix_tokens(prefix)
        run.estimate_prefill = max(1, estimate_tokens(prompt_text) + sent_prefix
                                   - (cached if not held and prefix is not None else 0))
        return run

    def _use_file(self, fn: Any, handle: LLMHandle, module: Any, prefix: Prefix,
                  run: RunCache) -> None:
        assert self.store is not None
        if self.loaded == prefix or _prefix_tokens(prefix) < MIN_FILE_TOKENS:
            return
        path = self.store.valid(prefix)
        if path is not None and self._load(fn, handle, path):
            self.loaded = prefix
            log.info("prompt cache loaded from %s", path)
            return
        if path is not None:
            self.store.forget(prefix)
        if getattr(fn, "rkllm_load_prompt_cache", None) is None:
            return
        param = RKLLMPromptCacheParam()  # the same struct in every family since 1.1.0
        param.save_prompt_cache = 1
        param.prompt_cache_path = str(self.store.temporary_path(prefix)).encode()
        run.save_param = param

    def _load(self, fn: Any, handle: LLMHandle, path: Path) -> bool:
        if getattr(fn, "rkllm_load_prompt_cache", None) is None:
            return False
        if self.loaded is not None:
            self._release(fn, handle)
        status = fn.rkllm_load_prompt_cache(handle, str(path).encode())
        if status != 0:
            log.warning("rkllm_load_prompt_cache(%s) returned %d; the file is dropped", path, status)
            return False
        return True

    def _release(self, fn: Any, handle: LLMHandle) -> None:
        if getattr(fn, "rkllm_release_prompt_cache", None) is not None:
            status = fn.rkllm_release_prompt_cache(handle)
            if status != 0:
                log.warning("rkllm_release_prompt_cache returned %d", status)
        self.loaded = None

    def after_run(self, fn: Any, handle: LLMHandle, run: RunCache, *, ok: bool,
                  keep_history: bool, perf_prefill: int | None, generated: int) -> PrefillCount:
        """Keep a saved file when the run succeeded; count what it prefilled."""
        # A saved file is kept for later, not loaded now: the KV cache holds the prefix (1.2.0+),
        # and a run that starts without it loads the file first (before_run).
        store, prefix = self.store, run.prefix
        if (run.save_param is not None and store is not None and prefix is not None
                and (not ok or store.commit(prefix) is None)):
            store.discard(prefix)
        if run.prefix is not None and not run.prefix.in_prompt and self.kv_history:
            self.kv_prefix = run.prefix
        kv_after = self._kv_size(fn, handle)
        count = self._count(run, keep_history, perf_prefill, generated, kv_after)
        if keep_history and self.kv_history:
            self.kv_tokens = (kv_after if kv_after is not None else
                              (count.prompt_tokens or 0) + generated)
        else:
            self.kv_tokens = _prefix_tokens(self.kv_prefix)
        return count

    def _count(self, run: RunCache, keep_history: bool, perf_prefill: int | None, generated: int,
               kv_after: int | None) -> PrefillCount:
        if perf_prefill is not None and kv_after is not None and keep_history:
            prompt = max(kv_after - generated, perf_prefill)
            return PrefillCount(prompt, perf_prefill, prompt - perf_prefill, "runtime")
        if perf_prefill is not None and run.kv_before is not None:
            if run.kv_before == 0 and run.estimate_cached > 0:  # from the prompt cache file
                return PrefillCount(run.estimate_cached + perf_prefill, perf_prefill,
                                    run.estimate_cached, "mixed")
            return PrefillCount(run.kv_before + perf_prefill, perf_prefill, run.kv_before,
                                "runtime")
        prompt = run.estimate_cached + run.estimate_prefill
        return PrefillCount(prompt, run.estimate_prefill, run.estimate_cached, "estimate")

    @staticmethod
    def _kv_size(fn: Any, handle: LLMHandle) -> int | None:
        if getattr(fn, "rkllm_get_kv_cache_size", None) is None:
            return None
        sizes = (ctypes.c_int * 8)()  # room for n_batch entries; the daemon runs n_batch = 1
        if fn.rkllm_get_kv_cache_size(handle, sizes) != 0:
            return None
        return int(sizes[0])

    def context_estimate(self, run: RunCache) -> int:
        """The whole context the run needed, as estimated before it (for context_too_long)."""
        return run.estimate_cached + run.estimate_prefill
