"""rkllm.h of rknn-llm releases 1.1.0 – 1.1.4, mirrored in header order.

Declarations identical in every family come from `common`; their place in the header is noted.
This is the base of the family chain: `abi_1_2_0` takes from here what 1.2.0 left unchanged.
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
    c_uint8,
    c_void_p,
)

from rkllm_mqtt.runtime.api import RkllmApi
from rkllm_mqtt.runtime.common import (
    CFunction,
    LLMCallState,
    LLMHandle,
    RKLLMEmbedInput,
    RKLLMInferMode,
    RKLLMInputType,
    RKLLMLoraAdapter,
    RKLLMLoraParam,
    RKLLMPromptCacheParam,
    RKLLMResultLastHiddenLayer,
    RKLLMTokenInput,
    bind_all,
    check_layout,
)

ABI = "1.1"
VERSIONS = ("1.1.0", "1.1.1", "1.1.2", "1.1.3", "1.1.4")

# LLMHandle, LLMCallState (NORMAL/WAITING/FINISH/ERROR), RKLLMInputType, RKLLMInferMode: common.py
#     RKLLM_RUN_GET_LAST_HIDDEN_LAYER = 4        (LLMCallState, 1.1.x only)
RKLLM_RUN_GET_LAST_HIDDEN_LAYER = 4


# typedef struct {
#     int32_t base_domain_id;
#     uint8_t reserved[112];
# } RKLLMExtendParam;
class RKLLMExtendParam(Structure):
    _fields_ = [
        ("base_domain_id", c_int32),
        ("reserved", c_uint8 * 112),
    ]


# typedef struct {
#     const char* model_path;
#     int32_t max_context_len;
#     int32_t max_new_tokens;
#     int32_t top_k;
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
# } RKLLMMultiModelInput;
class RKLLMMultiModelInput(Structure):
    _fields_ = [
        ("prompt", c_char_p),
        ("image_embed", POINTER(c_float)),
        ("n_image_tokens", c_size_t),
    ]


# typedef struct {
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
        ("input_type", RKLLMInputType),
        ("_input", _RKLLMInputUnion),
    ]


# RKLLMLoraParam, RKLLMPromptCacheParam: common.py


# typedef struct {
#     RKLLMInferMode mode;
#     RKLLMLoraParam* lora_params;
#     RKLLMPromptCacheParam* prompt_cache_params;
# } RKLLMInferParam;
class RKLLMInferParam(Structure):
    _fields_ = [
        ("mode", RKLLMInferMode),
        ("lora_params", POINTER(RKLLMLoraParam)),
        ("prompt_cache_params", POINTER(RKLLMPromptCacheParam)),
    ]


# RKLLMResultLastHiddenLayer: common.py


# typedef struct {
#     const char* text;
#     int32_t token_id;
#     RKLLMResultLastHiddenLayer last_hidden_layer;
# } RKLLMResult;
class RKLLMResult(Structure):
    _fields_ = [
        ("text", c_char_p),
        ("token_id", c_int32),
        ("last_hidden_layer", RKLLMResultLastHiddenLayer),
    ]


# typedef void(*LLMResultCallback)(RKLLMResult* result, void* userdata, LLMCallState state);
LLMResultCallback = CFUNCTYPE(None, POINTER(RKLLMResult), c_void_p, LLMCallState)

FUNCTIONS = (
    # RKLLMParam rkllm_createDefaultParam();
    CFunction("rkllm_createDefaultParam", [], RKLLMParam),
    # int rkllm_init(LLMHandle* handle, RKLLMParam* param, LLMResultCallback callback);
    CFunction("rkllm_init", [POINTER(LLMHandle), POINTER(RKLLMParam), LLMResultCallback], c_int),
    # int rkllm_load_lora(LLMHandle handle, RKLLMLoraAdapter* lora_adapter);
    CFunction("rkllm_load_lora", [LLMHandle, POINTER(RKLLMLoraAdapter)], c_int),
    # int rkllm_load_prompt_cache(LLMHandle handle, const char* prompt_cache_path);
    CFunction("rkllm_load_prompt_cache", [LLMHandle, c_char_p], c_int),
    # int rkllm_release_prompt_cache(LLMHandle handle);
    CFunction("rkllm_release_prompt_cache", [LLMHandle], c_int),
    # int rkllm_destroy(LLMHandle handle);
    CFunction("rkllm_destroy", [LLMHandle], c_int),
    # int rkllm_run(LLMHandle handle, RKLLMInput* rkllm_input,
    #               RKLLMInferParam* rkllm_infer_params, void* userdata);
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
    # int rkllm_abort(LLMHandle handle);
    CFunction("rkllm_abort", [LLMHandle], c_int),
    # int rkllm_is_running(LLMHandle handle);
    CFunction("rkllm_is_running", [LLMHandle], c_int),
)


def bind(lib: ctypes.CDLL, path: str) -> RkllmApi:
    """Every function of this header, with argtypes/restype set; attributes carry the C names."""
    return bind_all(lib, FUNCTIONS, abi=ABI, path=path)


check_layout(
    ABI,
    sizes={
        RKLLMExtendParam: 116,
        RKLLMParam: 200,
        RKLLMInput: 32,
        RKLLMInferParam: 24,
        RKLLMResult: 32,
        RKLLMMultiModelInput: 24,
    },
    offsets={(RKLLMParam, "extend_param"): 80, (RKLLMInput, "_input"): 8},
)
