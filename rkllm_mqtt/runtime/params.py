"""Filling the family's C structs from configuration and requests.

One code path for all families: a field is written only when the family's struct has it, so the
family modules stay pure header mirrors. Init starts from rkllm_createDefaultParam() and changes
exactly the keys that are configured; a key the family lacks is reported, not guessed at.
"""

from __future__ import annotations

import ctypes
import logging
import os
from types import ModuleType
from typing import Any

from rkllm_mqtt.runtime.api import RkllmApi
from rkllm_mqtt.runtime.common import RKLLM_INFER_GENERATE, RKLLM_INPUT_PROMPT
from rkllm_mqtt.runtime.events import Sampling
from rkllm_mqtt.runtime.options import RuntimeOptions

log = logging.getLogger(__name__)

# RuntimeOptions keys that are RKLLMParam fields of the same name and type.
PARAM_KEYS = (
    "max_context_len",
    "max_new_tokens",
    "top_k",
    "n_keep",
    "top_p",
    "temperature",
    "repeat_penalty",
    "frequency_penalty",
    "presence_penalty",
    "mirostat",
    "mirostat_tau",
    "mirostat_eta",
    "skip_special_token",
)
# RKLLMSamplingParam (1.3.0) fields; the same names exist in RKLLMParam and Sampling.
SAMPLING_KEYS = (
    "top_k",
    "top_p",
    "temperature",
    "repeat_penalty",
    "frequency_penalty",
    "presence_penalty",
    "mirostat",
    "mirostat_tau",
    "mirostat_eta",
)


def c_string(text: str) -> bytes:
    """UTF-8 for a `const char*`: a NUL would silently cut the C string, a lone surrogate
    (possible in JSON) cannot be encoded; neither may reach the library."""
    return text.replace("\x00", "").encode("utf-8", errors="replace")


def has_field(struct: type[ctypes.Structure] | ctypes.Structure, name: str) -> bool:
    return any(field[0] == name for field in struct._fields_)


def _unsupported(abi: str, key: str) -> None:
    log.warning("runtime.%s is not part of the RKLLM %s ABI; ignored", key, abi)


def build_param(module: ModuleType, functions: RkllmApi, settings: RuntimeOptions) -> Any:
    """rkllm_createDefaultParam() with every configured key applied; is_async is always false."""
    param = functions.rkllm_createDefaultParam()
    param.model_path = os.fsencode(settings.model or "")
    for key in PARAM_KEYS:
        value = getattr(settings, key)
        if value is None:
            continue
        if not has_field(param, key):
            _unsupported(module.ABI, key)
            continue
        setattr(param, key, value)
    param.is_async = False  # rkllm_run streams through the callback; the async path is buggy

    ext = param.extend_param
    if settings.base_domain_id is not None:
        ext.base_domain_id = settings.base_domain_id
    if settings.embed_flash is not None:
        if has_field(ext, "embed_flash"):
            ext.embed_flash = int(settings.embed_flash)
        else:
            _unsupported(module.ABI, "embed_flash")
    if settings.enabled_cpus_mask is not None:
        if has_field(ext, "enabled_cpus_mask"):
            ext.enabled_cpus_mask = settings.enabled_cpus_mask
            ext.enabled_cpus_num = settings.enabled_cpus_mask.bit_count()
        else:
            _unsupported(module.ABI, "enabled_cpus_mask")
    if has_field(ext, "n_batch"):
        ext.n_batch = 1  # the callback then gets one RKLLMResult, not an array
        ext.use_cross_attn = 0
    return param


def build_input(module: ModuleType, prompt: bytes, role: bytes, enable_thinking: bool) -> Any:
    """A text-prompt RKLLMInput; `prompt`/`role` must stay referenced until rkllm_run returns."""
    rkllm_input = module.RKLLMInput()
    rkllm_input.input_type = RKLLM_INPUT_PROMPT
    rkllm_input.prompt_input = prompt
    if has_field(rkllm_input, "role"):
        rkllm_input.role = role
        rkllm_input.enable_thinking = enable_thinking
    return rkllm_input


def build_sampling(module: ModuleType, param: Any, sampling: Sampling) -> Any:
    """RKLLMSamplingParam (1.3.0): the values given to rkllm_init, overridden by the request."""
    values = {key: getattr(param, key) for key in SAMPLING_KEYS}
    values.update(sampling.overrides())
    return module.RKLLMSamplingParam(**values)


def build_infer_param(
    module: ModuleType,
    *,
    keep_history: bool,
    sampling: Any | None,
    max_new_tokens: int | None,
) -> Any:
    """RKLLMInferParam for plain generation; `sampling` must outlive the run (1.3.0)."""
    infer = module.RKLLMInferParam()
    infer.mode = RKLLM_INFER_GENERATE
    infer.lora_params = None
    infer.prompt_cache_params = None
    if has_field(infer, "keep_history"):
        infer.keep_history = int(keep_history)
    if has_field(infer, "sampling_params"):
        infer.sampling_params = ctypes.pointer(sampling) if sampling is not None else None
        infer.max_new_tokens = max_new_tokens if max_new_tokens and max_new_tokens > 0 else 0
    return infer
