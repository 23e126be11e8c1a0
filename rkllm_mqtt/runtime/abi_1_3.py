"""rkllm.h of rknn-llm release 1.3.0: what changed against 1.2.1 – 1.2.3, in header order.

The ABI break against 1.2.x: rkllm_init takes an RKLLMCallback*, RKLLMParam loses the img_* tags
and gains ignore_eos_token, RKLLMInferParam gains per-run sampling and max_new_tokens, and the
multimodal input gains image/video sub-structs.

Builds on `abi_1_2`: every declaration 1.3.0 left unchanged is taken from there (same ctypes
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
    c_int32,
    c_size_t,
    c_uint64,
    c_void_p,
)

from rkllm_mqtt.runtime import abi_1_2
from rkllm_mqtt.runtime.api import RkllmApi
from rkllm_mqtt.runtime.common import (
    CFunction,
    LLMHandle,
    RKLLMEmbedInput,
    RKLLMInferMode,
    RKLLMInputType,
    RKLLMLoraParam,
    RKLLMPromptCacheParam,
    RKLLMTokenInput,
    bind_all,
    check_layout,
    revise,
)

ABI = "1.3"
VERSIONS = ("1.3.0",)

# #define CPU0 ... CPU7, RKLLM_INFER_GET_LOGITS: unchanged since 1.2.0 (via abi_1_2)
CPU0, CPU1, CPU2, CPU3 = abi_1_2.CPU0, abi_1_2.CPU1, abi_1_2.CPU2, abi_1_2.CPU3
CPU4, CPU5, CPU6, CPU7 = abi_1_2.CPU4, abi_1_2.CPU5, abi_1_2.CPU6, abi_1_2.CPU7
RKLLM_INFER_GET_LOGITS = abi_1_2.RKLLM_INFER_GET_LOGITS

# typedef int (*LLMGetEmbedCallback)(void* userdata, int32_t* tokens, uint64_t num_tokens,
#                                    void* embed, uint64_t len);
LLMGetEmbedCallback = CFUNCTYPE(c_int, c_void_p, POINTER(c_int32), c_uint64, c_void_p, c_uint64)

# typedef int (*LLMTokenizerCallback)(void* userdata, const char* text, int32_t text_len,
#                                     int32_t* tokens, int32_t n_tokens_max);
LLMTokenizerCallback = CFUNCTYPE(c_int, c_void_p, c_char_p, c_int32, POINTER(c_int32), c_int32)


# RKLLMExtendParam: unchanged since 1.2.1 (abi_1_2)
RKLLMExtendParam = abi_1_2.RKLLMExtendParam


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
#     bool ignore_eos_token;
#     bool is_async;
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
        ("ignore_eos_token", c_bool),
        ("is_async", c_bool),
        ("extend_param", RKLLMExtendParam),
    ]


# RKLLMLoraAdapter, RKLLMEmbedInput, RKLLMTokenInput: common.py


# typedef struct {
#     char* prompt;
#     struct {
#         float* image_embed;
#         size_t n_image_tokens;
#         size_t n_image;
#         const char* image_start;
#         const char* image_end;
#         const char* image_content;
#         size_t image_width;
#         size_t image_height;
#     } image;
#     struct {
#         float* video_embed;
#         size_t n_frame_tokens;
#         size_t n_frame_per_video;
#         size_t n_video;
#         const char* video_start;
#         const char* video_end;
#         const char* video_content;
#         size_t frame_width;
#         size_t frame_height;
#     } video;
# } RKLLMMultiModalInput;
class _RKLLMImageInput(Structure):
    _fields_ = [
        ("image_embed", POINTER(c_float)),
        ("n_image_tokens", c_size_t),
        ("n_image", c_size_t),
        ("image_start", c_char_p),
        ("image_end", c_char_p),
        ("image_content", c_char_p),
        ("image_width", c_size_t),
        ("image_height", c_size_t),
    ]


class _RKLLMVideoInput(Structure):
    _fields_ = [
        ("video_embed", POINTER(c_float)),
        ("n_frame_tokens", c_size_t),
        ("n_frame_per_video", c_size_t),
        ("n_video", c_size_t),
        ("video_start", c_char_p),
        ("video_end", c_char_p),
        ("video_content", c_char_p),
        ("frame_width", c_size_t),
        ("frame_height", c_size_t),
    ]


class RKLLMMultiModalInput(Structure):
    _fields_ = [
        ("prompt", c_char_p),
        ("image", _RKLLMImageInput),
        ("video", _RKLLMVideoInput),
    ]


# typedef struct {
#     const char* role;
#     bool enable_thinking;
#     RKLLMInputType input_type;
#     union {
#         const char* prompt_input;
#         RKLLMEmbedInput embed_input;
#         RKLLMTokenInput token_input;
#         RKLLMMultiModalInput multimodal_input;
#     };
# } RKLLMInput;
class _RKLLMInputUnion(Union):
    _fields_ = [
        ("prompt_input", c_char_p),
        ("embed_input", RKLLMEmbedInput),
        ("token_input", RKLLMTokenInput),
        ("multimodal_input", RKLLMMultiModalInput),
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
# RKLLMCrossAttnParam: unchanged since 1.2.1 (abi_1_2)
RKLLMCrossAttnParam = abi_1_2.RKLLMCrossAttnParam


# typedef struct {
#   int32_t top_k;
#   float top_p;
#   float temperature;
#   float repeat_penalty;
#   float frequency_penalty;
#   float presence_penalty;
#   int32_t mirostat;
#   float mirostat_tau;
#   float mirostat_eta;
# } RKLLMSamplingParam;
class RKLLMSamplingParam(Structure):
    _fields_ = [
        ("top_k", c_int32),
        ("top_p", c_float),
        ("temperature", c_float),
        ("repeat_penalty", c_float),
        ("frequency_penalty", c_float),
        ("presence_penalty", c_float),
        ("mirostat", c_int32),
        ("mirostat_tau", c_float),
        ("mirostat_eta", c_float),
    ]


# typedef struct {
#     RKLLMInferMode mode;
#     RKLLMLoraParam* lora_params;
#     RKLLMPromptCacheParam* prompt_cache_params;
#     RKLLMSamplingParam* sampling_params;
#     int keep_history;
#     int32_t max_new_tokens;               (<= 0: the value given to rkllm_init)
# } RKLLMInferParam;
class RKLLMInferParam(Structure):
    _fields_ = [
        ("mode", RKLLMInferMode),
        ("lora_params", POINTER(RKLLMLoraParam)),
        ("prompt_cache_params", POINTER(RKLLMPromptCacheParam)),
        ("sampling_params", POINTER(RKLLMSamplingParam)),
        ("keep_history", c_int),
        ("max_new_tokens", c_int32),
    ]


# RKLLMResultLastHiddenLayer: common.py
# RKLLMResultLogits: unchanged since 1.2.0 (via abi_1_2)
RKLLMResultLogits = abi_1_2.RKLLMResultLogits
# RKLLMPerfStat, RKLLMResult: unchanged since 1.2.1 (abi_1_2)
RKLLMPerfStat = abi_1_2.RKLLMPerfStat
RKLLMResult = abi_1_2.RKLLMResult
# LLMResultCallback: unchanged since 1.2.1 (abi_1_2); 1.3 adds the return value 2: release buffer
LLMResultCallback = abi_1_2.LLMResultCallback


# typedef struct
# {
#     LLMResultCallback result_callback;
#     void*             result_userdata;
#     LLMTokenizerCallback tokenizer_callback;
#     void*                tokenizer_userdata;
#     LLMGetEmbedCallback embed_callback;
#     void*               embed_userdata;
# } RKLLMCallback;
class RKLLMCallback(Structure):
    _fields_ = [
        ("result_callback", LLMResultCallback),
        ("result_userdata", c_void_p),
        ("tokenizer_callback", LLMTokenizerCallback),
        ("tokenizer_userdata", c_void_p),
        ("embed_callback", LLMGetEmbedCallback),
        ("embed_userdata", c_void_p),
    ]


# 1.2's table (abi_1_2) with rkllm_init changed and the entries whose types changed re-bound.
FUNCTIONS = revise(
    abi_1_2.FUNCTIONS,
    # RKLLMParam rkllm_createDefaultParam();                       (this family's RKLLMParam)
    CFunction("rkllm_createDefaultParam", [], RKLLMParam),
    # int rkllm_init(LLMHandle* handle, RKLLMParam* param, RKLLMCallback* callback);
    CFunction(
        "rkllm_init", [POINTER(LLMHandle), POINTER(RKLLMParam), POINTER(RKLLMCallback)], c_int
    ),
    # rkllm_load_lora, rkllm_load_prompt_cache, rkllm_release_prompt_cache, rkllm_destroy:
    #     unchanged since 1.1 (via abi_1_2)
    # int rkllm_run(LLMHandle handle, RKLLMInput* rkllm_input,
    #               RKLLMInferParam* rkllm_infer_params, void* userdata);   (this family's structs)
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
    # rkllm_abort, rkllm_is_running (since 1.1), rkllm_clear_kv_cache, rkllm_get_kv_cache_size
    # (since 1.2.1), rkllm_set_chat_template (since 1.2.0), rkllm_set_function_tools,
    # rkllm_set_cross_attn_params (since 1.2.1): unchanged (abi_1_2)
)


def bind(lib: ctypes.CDLL, path: str) -> RkllmApi:
    """Every function of this header, with argtypes/restype set; attributes carry the C names."""
    return bind_all(lib, FUNCTIONS, abi=ABI, path=path)


check_layout(
    ABI,
    sizes={
        RKLLMExtendParam: 120,
        RKLLMParam: 184,
        RKLLMInput: 160,
        RKLLMInferParam: 40,
        RKLLMResult: 72,
        RKLLMMultiModalInput: 144,
        RKLLMCallback: 48,
        RKLLMSamplingParam: 36,
    },
    offsets={
        (RKLLMExtendParam, "enabled_cpus_mask"): 8,
        (RKLLMParam, "extend_param"): 60,
        (RKLLMInput, "input_type"): 12,
        (RKLLMInput, "_input"): 16,
        (RKLLMResult, "perf"): 48,
    },
)
