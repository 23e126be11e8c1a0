"""rkllm.h of rknn-llm releases 1.2.1 – 1.2.3: what changed against 1.2.0, in header order.

1.2.2 changes only an include line; 1.2.3 renames RKLLMMultiModelInput to RKLLMMultiModalInput
(same layout; both names are exported).

Builds on `abi_1_2_0`: every declaration 1.2.1 left unchanged is taken from there (same ctypes
objects), and its place in the header is noted. A struct that embeds a changed struct is redeclared.
Declarations identical in every family come from `common`.
"""

from __future__ import annotations

import ctypes
from ctypes import (
    CFUNCTYPE,
    POINTER,
    Structure,
    Union,
    c_bool,
    c_char_p,
    c_float,
    c_int,
    c_int8,
    c_int32,
    c_size_t,
    c_uint8,
    c_uint32,
    c_void_p,
)

from rkllm_mqtt.runtime import abi_1_2_0
from rkllm_mqtt.runtime.api import RkllmApi
from rkllm_mqtt.runtime.common import (
    CFunction,
    LLMCallState,
    LLMHandle,
    RKLLMEmbedInput,
    RKLLMInputType,
    RKLLMResultLastHiddenLayer,
    RKLLMTokenInput,
    bind_all,
    check_layout,
    revise,
)

ABI = "1.2"
VERSIONS = ("1.2.1", "1.2.2", "1.2.3")

# #define CPU0 ... CPU7, RKLLM_INFER_GET_LOGITS: unchanged since 1.2.0 (abi_1_2_0)
CPU0, CPU1, CPU2, CPU3 = abi_1_2_0.CPU0, abi_1_2_0.CPU1, abi_1_2_0.CPU2, abi_1_2_0.CPU3
CPU4, CPU5, CPU6, CPU7 = abi_1_2_0.CPU4, abi_1_2_0.CPU5, abi_1_2_0.CPU6, abi_1_2_0.CPU7
RKLLM_INFER_GET_LOGITS = abi_1_2_0.RKLLM_INFER_GET_LOGITS


# typedef struct {
#     int32_t      base_domain_id;
#     int8_t       embed_flash;
#     int8_t       enabled_cpus_num;
#     uint32_t     enabled_cpus_mask;
#     uint8_t      n_batch;
#     int8_t       use_cross_attn;
#     uint8_t      reserved[104];
# } RKLLMExtendParam;
class RKLLMExtendParam(Structure):
    _fields_ = [
        ("base_domain_id", c_int32),
        ("embed_flash", c_int8),
        ("enabled_cpus_num", c_int8),
        ("enabled_cpus_mask", c_uint32),
        ("n_batch", c_uint8),
        ("use_cross_attn", c_int8),
        ("reserved", c_uint8 * 104),
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
# } RKLLMParam;                  (same text as 1.2.0, but embeds this family's RKLLMExtendParam)
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


# typedef struct {
#     char* prompt;
#     float* image_embed;
#     size_t n_image_tokens;
#     size_t n_image;
#     size_t image_width;
#     size_t image_height;
# } RKLLMMultiModelInput;                  (1.2.3: RKLLMMultiModalInput)
class RKLLMMultiModelInput(Structure):
    _fields_ = [
        ("prompt", c_char_p),
        ("image_embed", POINTER(c_float)),
        ("n_image_tokens", c_size_t),
        ("n_image", c_size_t),
        ("image_width", c_size_t),
        ("image_height", c_size_t),
    ]


RKLLMMultiModalInput = RKLLMMultiModelInput


# typedef struct {
#     const char* role;
#     bool enable_thinking;
#     RKLLMInputType input_type;
#     union {
#         const char* prompt_input;
#         RKLLMEmbedInput embed_input;
#         RKLLMTokenInput token_input;
#         RKLLMMultiModelInput multimodal_input;
#     };
# } RKLLMInput;
class _RKLLMInputUnion(Union):
    _fields_ = [
        ("prompt_input", c_char_p),
        ("embed_input", RKLLMEmbedInput),
        ("token_input", RKLLMTokenInput),
        ("multimodal_input", RKLLMMultiModelInput),
    ]


class RKLLMInput(Structure):
    _anonymous_ = ("_input",)
    _fields_ = [
        ("role", c_char_p),
        ("enable_thinking", c_bool),
        ("input_type", RKLLMInputType),
        ("_input", _RKLLMInputUnion),
    ]


# RKLLMLoraParam, RKLLMPromptCacheParam: common.py


# typedef struct {
#     float* encoder_k_cache;
#     float* encoder_v_cache;
#     float* encoder_mask;
#     int32_t* encoder_pos;
#     int num_tokens;
# } RKLLMCrossAttnParam;
class RKLLMCrossAttnParam(Structure):
    _fields_ = [
        ("encoder_k_cache", POINTER(c_float)),
        ("encoder_v_cache", POINTER(c_float)),
        ("encoder_mask", POINTER(c_float)),
        ("encoder_pos", POINTER(c_int32)),
        ("num_tokens", c_int),
    ]


# RKLLMInferParam: unchanged since 1.2.0 (abi_1_2_0)
RKLLMInferParam = abi_1_2_0.RKLLMInferParam

# RKLLMResultLastHiddenLayer: common.py
# RKLLMResultLogits: unchanged since 1.2.0 (abi_1_2_0)
RKLLMResultLogits = abi_1_2_0.RKLLMResultLogits


# typedef struct {
#     float prefill_time_ms;
#     int prefill_tokens;
#     float generate_time_ms;
#     int generate_tokens;
#     float memory_usage_mb;
# } RKLLMPerfStat;
class RKLLMPerfStat(Structure):
    _fields_ = [
        ("prefill_time_ms", c_float),
        ("prefill_tokens", c_int),
        ("generate_time_ms", c_float),
        ("generate_tokens", c_int),
        ("memory_usage_mb", c_float),
    ]


# typedef struct {
#     const char* text;
#     int32_t token_id;
#     RKLLMResultLastHiddenLayer last_hidden_layer;
#     RKLLMResultLogits logits;
#     RKLLMPerfStat perf;
# } RKLLMResult;
class RKLLMResult(Structure):
    _fields_ = [
        ("text", c_char_p),
        ("token_id", c_int32),
        ("last_hidden_layer", RKLLMResultLastHiddenLayer),
        ("logits", RKLLMResultLogits),
        ("perf", RKLLMPerfStat),
    ]


# typedef int(*LLMResultCallback)(RKLLMResult* result, void* userdata, LLMCallState state);
#     return 0: continue; 1: pause (the run returns, the KV cache is kept)
LLMResultCallback = CFUNCTYPE(c_int, POINTER(RKLLMResult), c_void_p, LLMCallState)

# 1.2.0's table (abi_1_2_0) with the entries whose types changed re-bound, rkllm_clear_kv_cache
# changed and four functions added.
FUNCTIONS = revise(
    abi_1_2_0.FUNCTIONS,
    # RKLLMParam rkllm_createDefaultParam();                       (this family's RKLLMParam)
    CFunction("rkllm_createDefaultParam", [], RKLLMParam),
    # int rkllm_init(LLMHandle* handle, RKLLMParam* param, LLMResultCallback callback);
    CFunction("rkllm_init", [POINTER(LLMHandle), POINTER(RKLLMParam), LLMResultCallback], c_int),
    # rkllm_load_lora, rkllm_load_prompt_cache, rkllm_release_prompt_cache, rkllm_destroy:
    #     unchanged since 1.1 (via abi_1_2_0)
    # int rkllm_run(LLMHandle handle, RKLLMInput* rkllm_input,
    #               RKLLMInferParam* rkllm_infer_params, void* userdata);   (this family's RKLLMInput)
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
    # rkllm_abort, rkllm_is_running: unchanged since 1.1 (via abi_1_2_0)
    # int rkllm_clear_kv_cache(LLMHandle handle, int keep_system_prompt,
    #                          int* start_pos, int* end_pos);
    CFunction(
        "rkllm_clear_kv_cache", [LLMHandle, c_int, POINTER(c_int), POINTER(c_int)], c_int
    ),
    # int rkllm_get_kv_cache_size(LLMHandle handle, int* cache_sizes);
    CFunction("rkllm_get_kv_cache_size", [LLMHandle, POINTER(c_int)], c_int),
    # rkllm_set_chat_template: unchanged since 1.2.0 (abi_1_2_0)
    "rkllm_set_chat_template",
    # int rkllm_set_function_tools(LLMHandle handle, const char* system_prompt,
    #                              const char* tools, const char* tool_response_str);
    CFunction("rkllm_set_function_tools", [LLMHandle, c_char_p, c_char_p, c_char_p], c_int),
    # int rkllm_set_cross_attn_params(LLMHandle handle, RKLLMCrossAttnParam* cross_attn_params);
    CFunction("rkllm_set_cross_attn_params", [LLMHandle, POINTER(RKLLMCrossAttnParam)], c_int),
)


def bind(lib: ctypes.CDLL, path: str) -> RkllmApi:
    """Every function of this header, with argtypes/restype set; attributes carry the C names."""
    return bind_all(lib, FUNCTIONS, abi=ABI, path=path)


check_layout(
    ABI,
    sizes={
        RKLLMExtendParam: 120,
        RKLLMParam: 208,
        RKLLMInput: 64,
        RKLLMInferParam: 32,
        RKLLMResult: 72,
        RKLLMMultiModelInput: 48,
    },
    offsets={
        (RKLLMExtendParam, "enabled_cpus_mask"): 8,
        (RKLLMParam, "extend_param"): 88,
        (RKLLMInput, "input_type"): 12,
        (RKLLMInput, "_input"): 16,
        (RKLLMResult, "perf"): 48,
    },
)
