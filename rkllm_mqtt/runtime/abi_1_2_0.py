"""rkllm.h of rknn-llm release 1.2.0: what changed against 1.1, in header order.

Builds on `abi_1_1`: every declaration 1.2.0 left unchanged is taken from there (same ctypes
objects), and its place in the header is noted. A struct that embeds a changed struct is redeclared.
Declarations identical in every family come from `common`.
"""

from __future__ import annotations

import ctypes
from ctypes import (
    CFUNCTYPE,
    POINTER,
    Structure,
    c_bool,
    c_char_p,
    c_float,
    c_int,
    c_int8,
    c_int32,
    c_uint8,
    c_uint32,
    c_void_p,
)

from rkllm_mqtt.runtime import abi_1_1
from rkllm_mqtt.runtime.api import RkllmApi
from rkllm_mqtt.runtime.common import (
    CFunction,
    LLMCallState,
    LLMHandle,
    RKLLMInferMode,
    RKLLMLoraParam,
    RKLLMPromptCacheParam,
    RKLLMResultLastHiddenLayer,
    bind_all,
    check_layout,
    revise,
)

ABI = "1.2.0"
VERSIONS = ("1.2.0",)

# #define CPU0 (1 << 0) ... #define CPU7 (1 << 7)   (bits of enabled_cpus_mask)
CPU0, CPU1, CPU2, CPU3, CPU4, CPU5, CPU6, CPU7 = (1 << n for n in range(8))

# LLMHandle, LLMCallState (NORMAL/WAITING/FINISH/ERROR), RKLLMInputType, RKLLMInferMode: common.py
#     RKLLM_RUN_GET_LAST_HIDDEN_LAYER = 4        (LLMCallState): removed in 1.2.0
#     RKLLM_INFER_GET_LOGITS = 2                 (RKLLMInferMode, 1.2.0+)
RKLLM_INFER_GET_LOGITS = 2


# typedef struct {
#     int32_t      base_domain_id;
#     int8_t       embed_flash;
#     int8_t       enabled_cpus_num;
#     uint32_t     enabled_cpus_mask;
#     uint8_t      reserved[106];
# } RKLLMExtendParam;
class RKLLMExtendParam(Structure):
    _fields_ = [
        ("base_domain_id", c_int32),
        ("embed_flash", c_int8),
        ("enabled_cpus_num", c_int8),
        ("enabled_cpus_mask", c_uint32),
        ("reserved", c_uint8 * 106),
    ]


# typedef struct {
#     const char* model_path;
#     int32_t max_context_len;
#     int32_t max_new_tokens;
#     int32_t top_k;
#     int32_t n_keep;
#     float top_p;
#     float temperature;
#     float repeat_penalty;
#     float frequency_penalty;
#     float presence_penalty;
#     int32_t mirostat;
#     float mirostat_tau;
#     float mirostat_eta;
#     bool skip_special_token;
#     bool is_async;
#     const char* img_start;
#     const char* img_end;
#     const char* img_content;
#     RKLLMExtendParam extend_param;
# } RKLLMParam;
class RKLLMParam(Structure):
    _fields_ = [
        ("model_path", c_char_p),
        ("max_context_len", c_int32),
        ("max_new_tokens", c_int32),
        ("top_k", c_int32),
        ("n_keep", c_int32),
        ("top_p", c_float),
        ("temperature", c_float),
        ("repeat_penalty", c_float),
        ("frequency_penalty", c_float),
        ("presence_penalty", c_float),
        ("mirostat", c_int32),
        ("mirostat_tau", c_float),
        ("mirostat_eta", c_float),
        ("skip_special_token", c_bool),
        ("is_async", c_bool),
        ("img_start", c_char_p),
        ("img_end", c_char_p),
        ("img_content", c_char_p),
        ("extend_param", RKLLMExtendParam),
    ]


# RKLLMLoraAdapter, RKLLMEmbedInput, RKLLMTokenInput: common.py
# RKLLMMultiModelInput, RKLLMInput: unchanged since 1.1 (abi_1_1)
RKLLMMultiModelInput = abi_1_1.RKLLMMultiModelInput
RKLLMInput = abi_1_1.RKLLMInput

# RKLLMLoraParam, RKLLMPromptCacheParam: common.py


# typedef struct {
#     RKLLMInferMode mode;
#     RKLLMLoraParam* lora_params;
#     RKLLMPromptCacheParam* prompt_cache_params;
#     int keep_history;
# } RKLLMInferParam;
class RKLLMInferParam(Structure):
    _fields_ = [
        ("mode", RKLLMInferMode),
        ("lora_params", POINTER(RKLLMLoraParam)),
        ("prompt_cache_params", POINTER(RKLLMPromptCacheParam)),
        ("keep_history", c_int),
    ]


# RKLLMResultLastHiddenLayer: common.py


# typedef struct {
#     const float* logits;
#     int vocab_size;
#     int num_tokens;
# } RKLLMResultLogits;
class RKLLMResultLogits(Structure):
    _fields_ = [
        ("logits", POINTER(c_float)),
        ("vocab_size", c_int),
        ("num_tokens", c_int),
    ]


# typedef struct {
#     const char* text;
#     int32_t token_id;
#     RKLLMResultLastHiddenLayer last_hidden_layer;
#     RKLLMResultLogits logits;
# } RKLLMResult;
class RKLLMResult(Structure):
    _fields_ = [
        ("text", c_char_p),
        ("token_id", c_int32),
        ("last_hidden_layer", RKLLMResultLastHiddenLayer),
        ("logits", RKLLMResultLogits),
    ]


# typedef void(*LLMResultCallback)(RKLLMResult* result, void* userdata, LLMCallState state);
#     (same text as 1.1, but over this family's RKLLMResult)
LLMResultCallback = CFUNCTYPE(None, POINTER(RKLLMResult), c_void_p, LLMCallState)

# 1.1's table (abi_1_1) with the entries whose types changed re-bound and two functions added.
FUNCTIONS = revise(
    abi_1_1.FUNCTIONS,
    # RKLLMParam rkllm_createDefaultParam();                       (this family's RKLLMParam)
    CFunction("rkllm_createDefaultParam", [], RKLLMParam),
    # int rkllm_init(LLMHandle* handle, RKLLMParam* param, LLMResultCallback callback);
    CFunction("rkllm_init", [POINTER(LLMHandle), POINTER(RKLLMParam), LLMResultCallback], c_int),
    # rkllm_load_lora, rkllm_load_prompt_cache, rkllm_release_prompt_cache, rkllm_destroy:
    #     unchanged since 1.1 (abi_1_1)
    # int rkllm_run(LLMHandle handle, RKLLMInput* rkllm_input,
    #               RKLLMInferParam* rkllm_infer_params, void* userdata);   (this family's InferParam)
    CFunction(
        "rkllm_run",
        [LLMHandle, POINTER(RKLLMInput), POINTER(RKLLMInferParam), c_void_p],
        c_int,
    ),
    # int rkllm_run_async(LLMHandle handle, RKLLMInput* rkllm_input,
    #                     RKLLMInferParam* rkllm_infer_params, void* userdata);
    CFunction(
        "rkllm_run_async",
        [LLMHandle, POINTER(RKLLMInput), POINTER(RKLLMInferParam), c_void_p],
        c_int,
    ),
    # rkllm_abort, rkllm_is_running: unchanged since 1.1 (abi_1_1)
    "rkllm_is_running",
    # int rkllm_clear_kv_cache(LLMHandle handle, int keep_system_prompt);
    CFunction("rkllm_clear_kv_cache", [LLMHandle, c_int], c_int),
    # int rkllm_set_chat_template(LLMHandle handle, const char* system_prompt,
    #                             const char* prompt_prefix, const char* prompt_postfix);
    CFunction("rkllm_set_chat_template", [LLMHandle, c_char_p, c_char_p, c_char_p], c_int),
)


def bind(lib: ctypes.CDLL, path: str) -> RkllmApi:
    """Every function of this header, with argtypes/restype set; attributes carry the C names."""
    return bind_all(lib, FUNCTIONS, abi=ABI, path=path)


check_layout(
    ABI,
    sizes={
        RKLLMExtendParam: 120,
        RKLLMParam: 208,
        RKLLMInput: 32,
        RKLLMInferParam: 32,
        RKLLMResult: 48,
        RKLLMMultiModelInput: 24,
    },
    offsets={
        (RKLLMExtendParam, "enabled_cpus_mask"): 8,
        (RKLLMParam, "extend_param"): 88,
        (RKLLMInput, "_input"): 8,
    },
)
