/*
 * rkllm_sim.c — a stand-in for Rockchip's librkllmrt.so, one ABI family per build.
 *
 * Why: the daemon's ctypes binding must match the real library byte for byte, and the real library
 * needs an RK3588/RK3576 NPU. This file exports exactly the functions of the real library of one
 * family, with struct definitions that mirror each release's rkllm.h field by field (written from
 * the headers of the rknn-llm releases, not from the Python binding), so a binding that works here
 * reads and writes the same offsets on a board. It also reports back everything it received.
 *
 * Build (rkllm_mqtt/simulator/build.py does this):
 *   cc -std=gnu11 -DRKLLM_SIM_ABI=11|120|12|13 -fPIC -shared -O2 -pthread -Wall -Wextra \
 *      rkllm_sim.c -o librkllmrt-sim.so
 *   RKLLM_SIM_ABI  11 = 1.1.0–1.1.4 (reports 1.1.4)   120 = 1.2.0 (reports 1.2.0)
 *                  12 = 1.2.1–1.2.3 (reports 1.2.3)  13 = 1.3.0 (reports 1.3.0)
 *   -DRKLLM_SIM_NO_VERSION leaves the "rkllm-runtime version: X.Y.Z" string out of the binary.
 *   -DRKLLM_SIM_VERSION_STRING='"1.2.1b1"' puts another version into that string (the layout stays
 *   the family's), to stand in for a pre-release or a mislabelled build.
 *   -DRKLLM_SIM_MINIMAL exports only the entry points a server needs (createDefaultParam, init,
 *   run, abort, destroy; clear_kv_cache and set_chat_template from 1.2.0), like a trimmed build.
 *
 * Defaults (rkllm_createDefaultParam): model_path NULL, max_context_len 512, max_new_tokens -1
 * (<= 0: unlimited up to the context), top_k 40, n_keep -1 (1.2.0+), top_p 0.9, temperature 0.8,
 * repeat_penalty 1.1, frequency_penalty 0, presence_penalty 0, mirostat 0, mirostat_tau 5.0,
 * mirostat_eta 0.1, skip_special_token true, ignore_eos_token false (1.3), is_async false,
 * img_start/img_end/img_content NULL (1.1–1.2), extend_param: base_domain_id 0, embed_flash 0,
 * enabled_cpus_num 4, enabled_cpus_mask 0xF0 (1.2.0+), n_batch 1, use_cross_attn 0 (1.2.1+),
 * reserved all zero.
 *
 * The answer (default settings, no directive) for a prompt P (the text in RKLLMInput.prompt_input,
 * or multimodal_input.prompt) is
 *     "You said: " + the first 60 code points of P + " — ünïcödé 你好 🙂 done."
 * Python: rkllm_mqtt.simulator.expected_answer(). It is streamed as NORMAL callbacks of 3-byte
 * chunks: "You said: " + echo is cut every 3 bytes, then the tail is cut every 3 bytes from its own
 * start, so the tail always splits a 3-byte (—, 你), a 2-byte (ü) and a 4-byte (🙂) character
 * across callbacks. Each chunk is one token. On 1.1 a chunk that leaves a character incomplete is
 * followed by a WAITING callback with text NULL. The text pointer is only valid during the
 * callback (the buffer is wiped afterwards, like the real library's borrowed pointers).
 *
 * Generated tokens stop at max_new_tokens (init value; on 1.3 RKLLMInferParam.max_new_tokens when
 * > 0) and at max_context_len - prompt tokens. Prompt tokens are estimated as ceil(bytes / 4).
 *
 * Environment (read at each call, so a test can change it between calls):
 *   RKLLM_SIM_FAIL=init|run|crash|init_crash
 *                                   init: rkllm_init fails; run: every run fails like [sim:error];
 *                                   crash: every run crashes like [sim:crash];
 *                                   init_crash: rkllm_init raises SIGSEGV (a wrong ABI, or the
 *                                   out-of-NPU-memory segfault of rknn-llm #522)
 *   RKLLM_SIM_MODEL_MAX_CONTEXT=N   the model's max_context_limit (default 4096)
 *   RKLLM_SIM_CALLBACK_THREAD=1     rkllm_run does the callbacks from a thread it spawns and joins
 *   RKLLM_SIM_WAITING_TEXT=1        1.1: a chunk ending inside a character is sent with the WAITING
 *                                   state and its bytes (instead of NORMAL + an empty WAITING)
 *   RKLLM_SIM_PREFILL_TPS=X         prefill speed in tokens/s (0 = no delay, the default)
 *   RKLLM_SIM_DECODE_TPS=X          decode speed in tokens/s (0 = no delay, the default)
 *   RKLLM_SIM_CALLBACK_TIMES=FILE   append, for each NORMAL callback, when it was made and how long
 *                                   it took to return: "<CLOCK_MONOTONIC ns> <duration ns>", one a
 *                                   line (the time the runtime waits for its caller per token)
 *   RKLLM_SIM_SPEED=rk3588          preset: Qwen2.5-1.5B w8a8 on RK3588 (v1.3.0 benchmark: 128-token
 *                                   prefill in 378.31 ms = 338.3 tok/s, decode 16.69 tok/s);
 *                                   the two *_TPS variables override it
 *
 * Prompt directives (anywhere in the prompt text):
 *   [sim:tokens=N]      answer "tok0 tok1 … tok<N-1>", one word per NORMAL callback
 *   [sim:error]         ERROR callback (text NULL), "E rkllm: ..." on stderr, rkllm_run returns -1
 *   [sim:error_after=N] N tokens, then as [sim:error]
 *   [sim:crash]         2 tokens, then raise(SIGSEGV) (abort() if that returns)
 *   [sim:hang]          1 token, then 10 ms sleeps until rkllm_abort
 *   [sim:hang_hard]     1 token, then sleeps for ever, ignoring rkllm_abort (a run stuck inside
 *                       the inference function, rknn-llm #315)
 *   [sim:delay_ms=N]    sleep N ms before each token
 *   [sim:tool_xml]      a tool call (see "Function calling" below) in the XML-like form
 *   [sim:echo]          the echo answer even when the prompt asks for a tool (so a test can
 *                       make the "model" write any markup: it is in the echoed prompt)
 *   [sim:chunk=N]       tokens of N bytes (1 to 32) instead of 3, cut the same way
 *
 * Function calling: with tools set (rkllm_set_function_tools on 1.2.1+; a "<tools>" block in the
 * text before 1.2.1) and a prompt that asks for one of them, the answer is a Qwen-style
 * <tool_call> instead of the echo; a tool result (role "tool", or text ending in
 * "</tool_response>") is answered with the echo. Details above sim_tools_answer.
 *
 * Abort: rkllm_abort sets the handle's flag (only while a run is inside the library; otherwise it
 * only counts the call and returns 0; the flag is cleared when the last run leaves). The run stops
 * at the next token boundary or sleep slice (also when the abort came from inside a callback,
 * even the last token's) and rkllm_run returns 0 without a FINISH callback. Pause (1.2.1+): a callback returning 1 stops
 * the run; rkllm_run returns 0 without FINISH. Normal end: FINISH callback with text NULL (perf
 * filled on 1.2.1+), then 0. The simulator never serializes runs: concurrent rkllm_run calls on one
 * handle overlap, and "max_concurrent_runs" in rkllm_sim_inspect() shows the most seen at once.
 *
 * keep_history (1.2.0+): 1 keeps the run's prompt and (possibly partial) answer in the "history"
 * list; 0 empties it after the run. rkllm_clear_kv_cache empties it.
 *
 * KV cache and prefill (section "Simulated KV cache and prompt cache"): a run's context is the
 * system segment (set_function_tools' system prompt and tools, else set_chat_template's system
 * prompt), the turns kept by keep_history, and its own turn; only what the KV cache (or a loaded
 * prompt cache) does not already hold is prefilled, charged at the prefill rate, and reported as
 * RKLLMPerfStat.prefill_tokens and in the run record (context/cached/prompt_cache/prefill_tokens).
 * Prompt tokens, as everywhere here, are ceil(bytes / 4); the context check counts the whole
 * context ("prompt tokens(N) is greater than max context(M)").
 *
 * Extra export: const char* rkllm_sim_inspect(LLMHandle) — a JSON document of everything the
 * library read (see sim_inspect_json below); the buffer is owned by the handle and valid until the
 * next rkllm_sim_inspect or rkllm_destroy on that handle. Floats use "%.9g" (float32 round trip),
 * non-finite floats are null, bools are read as raw bytes (0 false, 1 true, anything else the
 * number), strings are JSON-escaped (invalid UTF-8 becomes U+FFFD), NULL pointers are null.
 * Keys (those marked with a version only in that family and later):
 *   abi, version,
 *   init: model_path, max_context_len, max_new_tokens, top_k, n_keep (1.2.0), top_p, temperature,
 *         repeat_penalty, frequency_penalty, presence_penalty, mirostat, mirostat_tau,
 *         mirostat_eta, skip_special_token, ignore_eos_token (1.3 only), is_async,
 *         img_start/img_end/img_content (not 1.3),
 *         extend_param {base_domain_id, embed_flash, enabled_cpus_num, enabled_cpus_mask (1.2.0),
 *                       n_batch, use_cross_attn (1.2.1), reserved_all_zero},
 *         callback {result_callback; 1.3 also result_userdata, tokenizer_callback, embed_callback}
 *   run: {"count": 0} before the first run, then also input_type, prompt, role, enable_thinking
 *        (1.2.1), infer_params, mode, lora_params, lora_adapter_name, prompt_cache_params,
 *        keep_history (1.2.0), sampling (null or the 9 fields), max_new_tokens (1.3 only),
 *        userdata, callback_thread, generated_tokens, aborted, paused, finished, ret,
 *        tool_call (the function the simulated model called, or null)
 *   chat_template (null or system_prompt/prompt_prefix/prompt_postfix/calls, calls = how many
 *                  times rkllm_set_chat_template was called),
 *   function_tools (1.2.1; null or system_prompt/tools/tool_response_str/calls, calls = how many
 *                   times rkllm_set_function_tools was called),
 *   clear_kv_cache {count, keep_system_prompt, start_pos/end_pos (1.2.1; null for NULL pointers)},
 *   aborts, lora_loaded, prompt_cache_loaded, cross_attn_params (1.2.1), history,
 *   kv_cache {system, system_tokens, turn_tokens, tokens, system_dropped_by_clear},
 *   prompt_cache {loaded (path or null), tokens, saves, last_saved},
 *   max_concurrent_runs, running
 *   run also has save_prompt_cache (-1 without RKLLMPromptCacheParam), prompt_cache_path,
 *   context_tokens, cached_tokens, prompt_cache_tokens, prefill_tokens
 */

#define _GNU_SOURCE
#include <errno.h>
#include <math.h>
#include <pthread.h>
#include <signal.h>
#include <stdarg.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

/* ------------------------------------------------------------------------------------------ */
/* ABI family                                                                                  */
/* ------------------------------------------------------------------------------------------ */

/* SIM_FAMILY orders the families (the RKLLM_SIM_ABI numbers 11 < 12 < 13 < 120 do not). */
#if !defined(RKLLM_SIM_ABI)
#error "define RKLLM_SIM_ABI as 11 (1.1.x), 120 (1.2.0), 12 (1.2.1-1.2.3) or 13 (1.3.0)"
#elif RKLLM_SIM_ABI == 11
#define SIM_FAMILY 1
#define SIM_ABI_NAME "1.1"
#define SIM_VERSION "1.1.4"
#elif RKLLM_SIM_ABI == 120
#define SIM_FAMILY 2
#define SIM_ABI_NAME "1.2.0"
#define SIM_VERSION "1.2.0"
#elif RKLLM_SIM_ABI == 12
#define SIM_FAMILY 3
#define SIM_ABI_NAME "1.2"
#define SIM_VERSION "1.2.3"
#elif RKLLM_SIM_ABI == 13
#define SIM_FAMILY 4
#define SIM_ABI_NAME "1.3"
#define SIM_VERSION "1.3.0"
#else
#error "RKLLM_SIM_ABI must be 11, 120, 12 or 13"
#endif
#ifdef RKLLM_SIM_VERSION_STRING
#undef SIM_VERSION
#define SIM_VERSION RKLLM_SIM_VERSION_STRING
#endif

#define SIM_HAS_1_2_0 (SIM_FAMILY >= 2) /* n_keep, keep_history, chat template, kv cache */
#define SIM_HAS_1_2_1 (SIM_FAMILY >= 3) /* role, perf, int callback, function tools */
#define SIM_HAS_1_3_0 (SIM_FAMILY >= 4) /* RKLLMCallback, sampling, per-run max_new_tokens */

#define SIM_EXPORT __attribute__((visibility("default")))

/* ------------------------------------------------------------------------------------------ */
/* rkllm.h of the selected family                                                              */
/* ------------------------------------------------------------------------------------------ */

typedef void *LLMHandle;

#if SIM_FAMILY == 1
typedef enum {
    RKLLM_RUN_NORMAL = 0,
    RKLLM_RUN_WAITING = 1,
    RKLLM_RUN_FINISH = 2,
    RKLLM_RUN_ERROR = 3,
    RKLLM_RUN_GET_LAST_HIDDEN_LAYER = 4
} LLMCallState;
#else
typedef enum {
    RKLLM_RUN_NORMAL = 0,
    RKLLM_RUN_WAITING = 1,
    RKLLM_RUN_FINISH = 2,
    RKLLM_RUN_ERROR = 3
} LLMCallState;
#endif

typedef enum {
    RKLLM_INPUT_PROMPT = 0,
    RKLLM_INPUT_TOKEN = 1,
    RKLLM_INPUT_EMBED = 2,
    RKLLM_INPUT_MULTIMODAL = 3
} RKLLMInputType;

#if SIM_FAMILY == 1
typedef enum { RKLLM_INFER_GENERATE = 0, RKLLM_INFER_GET_LAST_HIDDEN_LAYER = 1 } RKLLMInferMode;
#else
typedef enum {
    RKLLM_INFER_GENERATE = 0,
    RKLLM_INFER_GET_LAST_HIDDEN_LAYER = 1,
    RKLLM_INFER_GET_LOGITS = 2
} RKLLMInferMode;
#endif

#if SIM_FAMILY == 1
typedef struct {
    int32_t base_domain_id;
    uint8_t reserved[112];
} RKLLMExtendParam;
#elif SIM_FAMILY == 2
typedef struct {
    int32_t base_domain_id;
    int8_t embed_flash;
    int8_t enabled_cpus_num;
    uint32_t enabled_cpus_mask;
    uint8_t reserved[106];
} RKLLMExtendParam;
#else
typedef struct {
    int32_t base_domain_id;
    int8_t embed_flash;
    int8_t enabled_cpus_num;
    uint32_t enabled_cpus_mask;
    uint8_t n_batch;
    int8_t use_cross_attn;
    uint8_t reserved[104];
} RKLLMExtendParam;
#endif

typedef struct {
    const char *model_path;
    int32_t max_context_len;
    int32_t max_new_tokens;
    int32_t top_k;
#if SIM_HAS_1_2_0
    int32_t n_keep;
#endif
    float top_p;
    float temperature;
    float repeat_penalty;
    float frequency_penalty;
    float presence_penalty;
    int32_t mirostat;
    float mirostat_tau;
    float mirostat_eta;
    bool skip_special_token;
#if SIM_HAS_1_3_0
    bool ignore_eos_token;
#endif
    bool is_async;
#if !SIM_HAS_1_3_0
    const char *img_start;
    const char *img_end;
    const char *img_content;
#endif
    RKLLMExtendParam extend_param;
} RKLLMParam;

typedef struct {
    const char *lora_adapter_path;
    const char *lora_adapter_name;
    float scale;
} RKLLMLoraAdapter;

typedef struct {
    float *embed;
    size_t n_tokens;
} RKLLMEmbedInput;

typedef struct {
    int32_t *input_ids;
    size_t n_tokens;
} RKLLMTokenInput;

#if SIM_FAMILY <= 2
typedef struct {
    char *prompt;
    float *image_embed;
    size_t n_image_tokens;
} RKLLMMultiModelInput;
#define SIM_MULTIMODAL_T RKLLMMultiModelInput
#elif SIM_FAMILY == 3
typedef struct { /* named RKLLMMultiModelInput before 1.2.3; same layout */
    char *prompt;
    float *image_embed;
    size_t n_image_tokens;
    size_t n_image;
    size_t image_width;
    size_t image_height;
} RKLLMMultiModalInput;
#define SIM_MULTIMODAL_T RKLLMMultiModalInput
#else
typedef struct {
    char *prompt;
    struct {
        float *image_embed;
        size_t n_image_tokens;
        size_t n_image;
        const char *image_start;
        const char *image_end;
        const char *image_content;
        size_t image_width;
        size_t image_height;
    } image;
    struct {
        float *video_embed;
        size_t n_frame_tokens;
        size_t n_frame_per_video;
        size_t n_video;
        const char *video_start;
        const char *video_end;
        const char *video_content;
        size_t frame_width;
        size_t frame_height;
    } video;
} RKLLMMultiModalInput;
#define SIM_MULTIMODAL_T RKLLMMultiModalInput
#endif

typedef struct {
#if SIM_HAS_1_2_1
    const char *role;
    bool enable_thinking;
#endif
    RKLLMInputType input_type;
    union {
        const char *prompt_input;
        RKLLMEmbedInput embed_input;
        RKLLMTokenInput token_input;
        SIM_MULTIMODAL_T multimodal_input;
    };
} RKLLMInput;

typedef struct {
    const char *lora_adapter_name;
} RKLLMLoraParam;

typedef struct {
    int save_prompt_cache;
    const char *prompt_cache_path;
} RKLLMPromptCacheParam;

#if SIM_HAS_1_3_0
typedef struct {
    int32_t top_k;
    float top_p;
    float temperature;
    float repeat_penalty;
    float frequency_penalty;
    float presence_penalty;
    int32_t mirostat;
    float mirostat_tau;
    float mirostat_eta;
} RKLLMSamplingParam;
#endif

typedef struct {
    RKLLMInferMode mode;
    RKLLMLoraParam *lora_params;
    RKLLMPromptCacheParam *prompt_cache_params;
#if SIM_HAS_1_3_0
    RKLLMSamplingParam *sampling_params;
#endif
#if SIM_HAS_1_2_0
    int keep_history;
#endif
#if SIM_HAS_1_3_0
    int32_t max_new_tokens;
#endif
} RKLLMInferParam;

typedef struct {
    const float *hidden_states;
    int embd_size;
    int num_tokens;
} RKLLMResultLastHiddenLayer;

#if SIM_HAS_1_2_0
typedef struct {
    const float *logits;
    int vocab_size;
    int num_tokens;
} RKLLMResultLogits;
#endif

#if SIM_HAS_1_2_1
typedef struct {
    float prefill_time_ms;
    int prefill_tokens;
    float generate_time_ms;
    int generate_tokens;
    float memory_usage_mb;
} RKLLMPerfStat;

typedef struct {
    float *encoder_k_cache;
    float *encoder_v_cache;
    float *encoder_mask;
    int32_t *encoder_pos;
    int num_tokens;
} RKLLMCrossAttnParam;
#endif

typedef struct {
    const char *text;
    int32_t token_id;
    RKLLMResultLastHiddenLayer last_hidden_layer;
#if SIM_HAS_1_2_0
    RKLLMResultLogits logits;
#endif
#if SIM_HAS_1_2_1
    RKLLMPerfStat perf;
#endif
} RKLLMResult;

#if SIM_HAS_1_2_1
typedef int (*LLMResultCallback)(RKLLMResult *result, void *userdata, LLMCallState state);
#else
typedef void (*LLMResultCallback)(RKLLMResult *result, void *userdata, LLMCallState state);
#endif

#if SIM_HAS_1_3_0
typedef int (*LLMGetEmbedCallback)(void *userdata, int32_t *tokens, uint64_t num_tokens, void *embed,
                                   uint64_t len);
typedef int (*LLMTokenizerCallback)(void *userdata, const char *text, int32_t text_len,
                                    int32_t *tokens, int32_t n_tokens_max);
typedef struct {
    LLMResultCallback result_callback;
    void *result_userdata;
    LLMTokenizerCallback tokenizer_callback;
    void *tokenizer_userdata;
    LLMGetEmbedCallback embed_callback;
    void *embed_userdata;
} RKLLMCallback;
#endif

/* Layout check: sizes from compiling each release's rkllm.h with g++ (LP64: aarch64, x86-64). */
#if defined(__LP64__) && (defined(__x86_64__) || defined(__aarch64__))
#define SIM_ASSERT_SIZE(T, n) _Static_assert(sizeof(T) == (n), "sizeof(" #T ") != " #n)
#define SIM_ASSERT_OFF(T, f, n) \
    _Static_assert(offsetof(T, f) == (n), "offsetof(" #T ", " #f ") != " #n)
_Static_assert(sizeof(bool) == 1, "bool must be 1 byte");
_Static_assert(sizeof(LLMCallState) == 4 && sizeof(RKLLMInputType) == 4, "enums must be int");
SIM_ASSERT_SIZE(RKLLMLoraAdapter, 24);
SIM_ASSERT_SIZE(RKLLMPromptCacheParam, 16);
SIM_ASSERT_SIZE(RKLLMResultLastHiddenLayer, 16);
#if SIM_FAMILY == 1
SIM_ASSERT_SIZE(RKLLMExtendParam, 116);
SIM_ASSERT_SIZE(RKLLMParam, 200);
SIM_ASSERT_OFF(RKLLMParam, skip_special_token, 52);
SIM_ASSERT_OFF(RKLLMParam, img_start, 56);
SIM_ASSERT_OFF(RKLLMParam, extend_param, 80);
SIM_ASSERT_SIZE(RKLLMMultiModelInput, 24);
SIM_ASSERT_SIZE(RKLLMInput, 32);
SIM_ASSERT_OFF(RKLLMInput, prompt_input, 8);
SIM_ASSERT_SIZE(RKLLMInferParam, 24);
SIM_ASSERT_SIZE(RKLLMResult, 32);
#elif SIM_FAMILY == 2
SIM_ASSERT_SIZE(RKLLMExtendParam, 120);
SIM_ASSERT_OFF(RKLLMExtendParam, enabled_cpus_mask, 8);
SIM_ASSERT_SIZE(RKLLMParam, 208);
SIM_ASSERT_OFF(RKLLMParam, n_keep, 20);
SIM_ASSERT_OFF(RKLLMParam, skip_special_token, 56);
SIM_ASSERT_OFF(RKLLMParam, img_start, 64);
SIM_ASSERT_OFF(RKLLMParam, extend_param, 88);
SIM_ASSERT_SIZE(RKLLMMultiModelInput, 24);
SIM_ASSERT_SIZE(RKLLMInput, 32);
SIM_ASSERT_OFF(RKLLMInput, prompt_input, 8);
SIM_ASSERT_SIZE(RKLLMInferParam, 32);
SIM_ASSERT_OFF(RKLLMInferParam, keep_history, 24);
SIM_ASSERT_SIZE(RKLLMResult, 48);
#elif SIM_FAMILY == 3
SIM_ASSERT_SIZE(RKLLMExtendParam, 120);
SIM_ASSERT_OFF(RKLLMExtendParam, enabled_cpus_mask, 8);
SIM_ASSERT_OFF(RKLLMExtendParam, n_batch, 12);
SIM_ASSERT_SIZE(RKLLMParam, 208);
SIM_ASSERT_OFF(RKLLMParam, n_keep, 20);
SIM_ASSERT_OFF(RKLLMParam, extend_param, 88);
SIM_ASSERT_SIZE(RKLLMMultiModalInput, 48);
SIM_ASSERT_SIZE(RKLLMInput, 64);
SIM_ASSERT_OFF(RKLLMInput, enable_thinking, 8);
SIM_ASSERT_OFF(RKLLMInput, input_type, 12);
SIM_ASSERT_OFF(RKLLMInput, prompt_input, 16);
SIM_ASSERT_SIZE(RKLLMInferParam, 32);
SIM_ASSERT_OFF(RKLLMInferParam, keep_history, 24);
SIM_ASSERT_SIZE(RKLLMResult, 72);
SIM_ASSERT_OFF(RKLLMResult, perf, 48);
SIM_ASSERT_SIZE(RKLLMPerfStat, 20);
#else
SIM_ASSERT_SIZE(RKLLMExtendParam, 120);
SIM_ASSERT_OFF(RKLLMExtendParam, enabled_cpus_mask, 8);
SIM_ASSERT_OFF(RKLLMExtendParam, n_batch, 12);
SIM_ASSERT_SIZE(RKLLMParam, 184);
SIM_ASSERT_OFF(RKLLMParam, n_keep, 20);
SIM_ASSERT_OFF(RKLLMParam, skip_special_token, 56);
SIM_ASSERT_OFF(RKLLMParam, ignore_eos_token, 57);
SIM_ASSERT_OFF(RKLLMParam, is_async, 58);
SIM_ASSERT_OFF(RKLLMParam, extend_param, 60);
SIM_ASSERT_SIZE(RKLLMMultiModalInput, 144);
SIM_ASSERT_SIZE(RKLLMInput, 160);
SIM_ASSERT_OFF(RKLLMInput, input_type, 12);
SIM_ASSERT_OFF(RKLLMInput, prompt_input, 16);
SIM_ASSERT_SIZE(RKLLMInferParam, 40);
SIM_ASSERT_OFF(RKLLMInferParam, sampling_params, 24);
SIM_ASSERT_OFF(RKLLMInferParam, keep_history, 32);
SIM_ASSERT_OFF(RKLLMInferParam, max_new_tokens, 36);
SIM_ASSERT_SIZE(RKLLMResult, 72);
SIM_ASSERT_OFF(RKLLMResult, perf, 48);
SIM_ASSERT_SIZE(RKLLMCallback, 48);
SIM_ASSERT_SIZE(RKLLMSamplingParam, 36);
#endif
#endif

/* ------------------------------------------------------------------------------------------ */
/* Simulator state                                                                             */
/* ------------------------------------------------------------------------------------------ */

#ifndef RKLLM_SIM_NO_VERSION
/* What `runtime.abi = "auto"` looks for in the file; printed at init like the real library. */
__attribute__((used)) static const char sim_version_banner[] = "rkllm-runtime version: " SIM_VERSION;
#endif

#define SIM_MAGIC 0x524b4c4c4d53494dULL /* "RKLLMSIM" */
#define SIM_ECHO_CHARS 60
#define SIM_CHUNK_BYTES 3
#define SIM_MAX_CHUNK_BYTES 32
#define SIM_CRASH_AFTER 2
#define SIM_SLICE_MS 10
#define SIM_DEFAULT_MODEL_MAX_CONTEXT 4096
/* " — ünïcödé 你好 🙂 done." spelled as bytes, so the split points are visible. */
#define SIM_ANSWER_PREFIX "You said: "
#define SIM_ANSWER_TAIL                                                                      \
    " \xe2\x80\x94 \xc3\xbcn\xc3\xaf" "c\xc3\xb6" "d\xc3\xa9 \xe4\xbd\xa0\xe5\xa5\xbd "      \
    "\xf0\x9f\x99\x82 done."

typedef struct {
    long count;
    int input_type;
    char *prompt;
    char *role;
    uint8_t enable_thinking;
    int mode;
    bool infer_params;
    bool lora_params;
    char *lora_adapter_name;
    bool prompt_cache_params;
    int keep_history;
    bool has_sampling;
#if SIM_HAS_1_3_0
    RKLLMSamplingParam sampling;
#endif
    int32_t max_new_tokens;
    int save_prompt_cache;     /* RKLLMPromptCacheParam as received (-1: no struct) */
    char *prompt_cache_path;
    bool userdata;
    bool callback_thread;
    long context_tokens;       /* the run's whole context: system + kept turns + this turn */
    long cached_tokens;        /* of those, reused from the KV cache or the loaded prompt cache */
    long prompt_cache_tokens;  /* of the cached ones, from the loaded prompt cache */
    long prefill_tokens;       /* computed by this run's prefill (charged at the prefill rate) */
    int generated_tokens;
    bool aborted;
    bool paused;
    bool finished;
    int ret;
    char *tool_call; /* the function the simulated model called, or NULL (sim_tools_answer) */
} SimRunRecord;

typedef struct {
    uint64_t magic;
    pthread_mutex_t mu; /* guards the recorded state below, never held across a callback */

    RKLLMParam param; /* as received; its pointers are replaced by the copies below */
    char *model_path;
#if !SIM_HAS_1_3_0
    char *img_start, *img_end, *img_content;
#endif
#if SIM_HAS_1_3_0
    RKLLMCallback callbacks;
#else
    LLMResultCallback callback;
#endif
    int model_max_context;

    atomic_int abort_flag;
    atomic_int running;
    atomic_int max_running;
    atomic_long aborts;

    SimRunRecord run;

    bool has_template;
    char *tpl_system, *tpl_prefix, *tpl_postfix;
    long tpl_calls; /* rkllm_set_chat_template calls since init */
    bool has_tools;
    char *tools_system, *tools_json, *tools_response;
    long tools_calls; /* rkllm_set_function_tools calls since init */
    long clear_count;
    int clear_keep_system_prompt;
    bool clear_has_range;
    bool clear_start_set, clear_end_set;
    int clear_start, clear_end;
    long lora_loaded;
    bool prompt_cache_loaded;
    bool cross_attn_set;

    char **history;
    size_t history_len, history_cap;

    /* The simulated KV cache and prompt cache (see "Simulated KV cache" below). */
    char *kv_system;          /* system segment whose KV is held; NULL = none */
    long kv_system_tokens;
    long kv_turn_tokens;      /* kept turns: their prompts and the generated tokens */
    long clear_dropped_system; /* clear_kv_cache calls that dropped the system prompt */
    char *pc_text;            /* loaded prompt cache: the input it was saved from */
    size_t pc_len;
    char *pc_path;
    long pc_saves;
    char *pc_last_saved;

    char *inspect;
} SimHandle;

/* One run as the worker sees it (copied out of the caller's structs at entry). */
typedef struct {
    SimHandle *h;
    const char *prompt; /* never NULL */
    void *userdata;
    int mode;
    int keep_history;
    int32_t max_new_tokens; /* effective cap, <= 0 = none */
    int save_prompt_cache;
    char *prompt_cache_path; /* owned copy */
    bool prefilled;           /* got past its prefill: its turn may stay in the KV cache */
    long turn_tokens;
    int ret;
} SimJob;

static char *sim_strdup(const char *s) { return s ? strdup(s) : NULL; }

#if SIM_HAS_1_2_0
/* Keep copies of the three strings a template/tools call hands over (the caller owns its own). */
static void sim_keep3(SimHandle *h, bool *flag, char **a, char **b, char **c, const char *x,
                      const char *y, const char *z) {
    pthread_mutex_lock(&h->mu);
    free(*a);
    free(*b);
    free(*c);
    *flag = true;
    *a = sim_strdup(x);
    *b = sim_strdup(y);
    *c = sim_strdup(z);
    pthread_mutex_unlock(&h->mu);
}
#endif

static void sim_log(const char *fmt, ...) __attribute__((format(printf, 1, 2)));
static void sim_log(const char *fmt, ...) {
    va_list ap;
    va_start(ap, fmt);
    vfprintf(stderr, fmt, ap);
    va_end(ap);
    fputc('\n', stderr);
    fflush(stderr);
}

static SimHandle *sim_handle(LLMHandle handle) {
    SimHandle *h = (SimHandle *)handle;
    return (h && h->magic == SIM_MAGIC) ? h : NULL;
}

static bool sim_env_is(const char *name, const char *value) {
    const char *v = getenv(name);
    return v && strcmp(v, value) == 0;
}

static double sim_env_double(const char *name, double fallback) {
    const char *v = getenv(name);
    if (!v || !*v) return fallback;
    char *end = NULL;
    double d = strtod(v, &end);
    if (end == v || d < 0 || !isfinite(d)) {
        sim_log("W rkllm-sim: ignoring %s=%s (not a number >= 0)", name, v);
        return fallback;
    }
    return d;
}

static double sim_now_ms(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec * 1000.0 + (double)ts.tv_nsec / 1e6;
}

static void sim_sleep_slice(double ms) {
    if (ms <= 0) return;
    struct timespec ts;
    ts.tv_sec = (time_t)(ms / 1000.0);
    ts.tv_nsec = (long)((ms - (double)ts.tv_sec * 1000.0) * 1e6);
    while (nanosleep(&ts, &ts) != 0 && errno == EINTR) {
    }
}

/* Sleep ms, in slices, returning early (false) when the handle is aborted. */
static bool sim_sleep(SimHandle *h, double ms) {
    double end = sim_now_ms() + ms;
    for (;;) {
        if (atomic_load(&h->abort_flag)) return false;
        double left = end - sim_now_ms();
        if (left <= 0) return true;
        sim_sleep_slice(left < SIM_SLICE_MS ? left : SIM_SLICE_MS);
    }
}

/* Returns the value of "[sim:<name>=N]" in s, or -1 when absent or malformed. */
static long sim_directive_value(const char *s, const char *name) {
    char key[48];
    snprintf(key, sizeof key, "[sim:%s=", name);
    const char *p = strstr(s, key);
    if (!p) return -1;
    p += strlen(key);
    char *end = NULL;
    long v = strtol(p, &end, 10);
    if (end == p || *end != ']' || v < 0) return -1;
    return v;
}

static bool sim_directive(const char *s, const char *name) {
    char key[48];
    snprintf(key, sizeof key, "[sim:%s]", name);
    return strstr(s, key) != NULL;
}

#if SIM_HAS_1_2_1
/* Peak resident memory, like RKLLMPerfStat.memory_usage_mb (VmHWM of the process). */
static float sim_memory_mb(void) {
    FILE *f = fopen("/proc/self/status", "r");
    if (!f) return 0.0f;
    char line[256];
    float mb = 0.0f;
    while (fgets(line, sizeof line, f)) {
        long kb;
        if (sscanf(line, "VmHWM: %ld kB", &kb) == 1) {
            mb = (float)kb / 1024.0f;
            break;
        }
    }
    fclose(f);
    return mb;
}
#endif

/* ------------------------------------------------------------------------------------------ */
/* Growable byte buffer + JSON writer                                                          */
/* ------------------------------------------------------------------------------------------ */

typedef struct {
    char *data;
    size_t len, cap;
} SimBuf;

static void buf_reserve(SimBuf *b, size_t extra) {
    if (b->len + extra + 1 <= b->cap) return;
    size_t cap = b->cap ? b->cap : 256;
    while (cap < b->len + extra + 1) cap *= 2;
    char *p = realloc(b->data, cap);
    if (!p) {
        sim_log("E rkllm-sim: out of memory");
        abort();
    }
    b->data = p;
    b->cap = cap;
}

static void buf_add(SimBuf *b, const char *s, size_t n) {
    buf_reserve(b, n);
    memcpy(b->data + b->len, s, n);
    b->len += n;
    b->data[b->len] = '\0';
}

static void buf_puts(SimBuf *b, const char *s) { buf_add(b, s, strlen(s)); }

static void buf_printf(SimBuf *b, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
static void buf_printf(SimBuf *b, const char *fmt, ...) {
    va_list ap;
    va_start(ap, fmt);
    int n = vsnprintf(NULL, 0, fmt, ap);
    va_end(ap);
    if (n < 0) return;
    buf_reserve(b, (size_t)n);
    va_start(ap, fmt);
    vsnprintf(b->data + b->len, (size_t)n + 1, fmt, ap);
    va_end(ap);
    b->len += (size_t)n;
}

/* Length of the valid UTF-8 sequence at s (n bytes available), 0 when invalid. */
static size_t utf8_seq_len(const unsigned char *s, size_t n) {
    unsigned char c = s[0];
    size_t len;
    unsigned char lo = 0x80, hi = 0xBF;
    if (c < 0x80) return 1;
    if (c >= 0xC2 && c <= 0xDF) {
        len = 2;
    } else if (c >= 0xE0 && c <= 0xEF) {
        len = 3;
        if (c == 0xE0) lo = 0xA0;
        if (c == 0xED) hi = 0x9F;
    } else if (c >= 0xF0 && c <= 0xF4) {
        len = 4;
        if (c == 0xF0) lo = 0x90;
        if (c == 0xF4) hi = 0x8F;
    } else {
        return 0;
    }
    if (n < len) return 0;
    if (s[1] < lo || s[1] > hi) return 0;
    for (size_t i = 2; i < len; i++)
        if (s[i] < 0x80 || s[i] > 0xBF) return 0;
    return len;
}

static void json_str(SimBuf *b, const char *s) {
    if (!s) {
        buf_puts(b, "null");
        return;
    }
    const unsigned char *p = (const unsigned char *)s;
    size_t n = strlen(s);
    buf_puts(b, "\"");
    for (size_t i = 0; i < n;) {
        unsigned char c = p[i];
        if (c == '"') {
            buf_puts(b, "\\\"");
        } else if (c == '\\') {
            buf_puts(b, "\\\\");
        } else if (c == '\n') {
            buf_puts(b, "\\n");
        } else if (c == '\r') {
            buf_puts(b, "\\r");
        } else if (c == '\t') {
            buf_puts(b, "\\t");
        } else if (c < 0x20 || c == 0x7F) {
            buf_printf(b, "\\u%04x", c);
        } else if (c >= 0x80) {
            size_t len = utf8_seq_len(p + i, n - i);
            if (len == 0) {
                buf_puts(b, "\\ufffd");
                i++;
                continue;
            }
            buf_add(b, (const char *)p + i, len);
            i += len;
            continue;
        } else {
            buf_add(b, (const char *)&c, 1);
        }
        i++;
    }
    buf_puts(b, "\"");
}

static void json_key(SimBuf *b, bool *first, const char *key) {
    if (!*first) buf_puts(b, ", ");
    *first = false;
    json_str(b, key);
    buf_puts(b, ": ");
}

static void json_kstr(SimBuf *b, bool *first, const char *key, const char *v) {
    json_key(b, first, key);
    json_str(b, v);
}

static void json_kint(SimBuf *b, bool *first, const char *key, long long v) {
    json_key(b, first, key);
    buf_printf(b, "%lld", v);
}

static void json_kfloat(SimBuf *b, bool *first, const char *key, float v) {
    json_key(b, first, key);
    if (isfinite(v))
        buf_printf(b, "%.9g", (double)v);
    else
        buf_puts(b, "null");
}

static void json_kbool(SimBuf *b, bool *first, const char *key, bool v) {
    json_key(b, first, key);
    buf_puts(b, v ? "true" : "false");
}

/* A C bool as the byte the caller wrote: 0 false, 1 true, anything else that number. */
static void json_kbool_raw(SimBuf *b, bool *first, const char *key, const bool *v) {
    unsigned char raw;
    memcpy(&raw, v, 1);
    json_key(b, first, key);
    if (raw <= 1)
        buf_puts(b, raw ? "true" : "false");
    else
        buf_printf(b, "%u", raw);
}

/* ------------------------------------------------------------------------------------------ */
/* The answer                                                                                  */
/* ------------------------------------------------------------------------------------------ */

typedef struct {
    SimBuf text;
    size_t *ends; /* end offset of each token in text */
    size_t n, cap;
    size_t chunk; /* bytes per token: SIM_CHUNK_BYTES, or [sim:chunk=N] */
} SimAnswer;

static void answer_token_end(SimAnswer *a) {
    if (a->n == a->cap) {
        a->cap = a->cap ? a->cap * 2 : 64;
        size_t *p = realloc(a->ends, a->cap * sizeof *p);
        if (!p) {
            sim_log("E rkllm-sim: out of memory");
            abort();
        }
        a->ends = p;
    }
    a->ends[a->n++] = a->text.len;
}

/* Appends s cut into a->chunk-byte tokens, counted from the start of s. */
static void answer_add_chunked(SimAnswer *a, const char *s, size_t n) {
    for (size_t i = 0; i < n; i += a->chunk) {
        size_t k = n - i < a->chunk ? n - i : a->chunk;
        buf_add(&a->text, s + i, k);
        answer_token_end(a);
    }
}

static void answer_build(SimAnswer *a, const char *prompt, long n_words) {
    buf_reserve(&a->text, 0);
    if (n_words >= 0) {
        for (long i = 0; i < n_words; i++) {
            buf_printf(&a->text, "%stok%ld", i ? " " : "", i);
            answer_token_end(a);
        }
        return;
    }
    /* "You said: " + the first SIM_ECHO_CHARS code points (lead bytes) of the prompt. */
    size_t n = strlen(prompt), end = 0, chars = 0;
    while (end < n) {
        if (((unsigned char)prompt[end] & 0xC0) != 0x80) {
            if (chars == SIM_ECHO_CHARS) break;
            chars++;
        }
        end++;
    }
    SimBuf head = {0};
    buf_puts(&head, SIM_ANSWER_PREFIX);
    buf_add(&head, prompt, end);
    answer_add_chunked(a, head.data, head.len);
    free(head.data);
    answer_add_chunked(a, SIM_ANSWER_TAIL, strlen(SIM_ANSWER_TAIL));
}

static void answer_free(SimAnswer *a) {
    free(a->text.data);
    free(a->ends);
}

/* True when text[0..end) ends in the middle of a UTF-8 character. */
static bool ends_mid_char(const char *text, size_t len, size_t end) {
    return end < len && ((unsigned char)text[end] & 0xC0) == 0x80;
}

/* ------------------------------------------------------------------------------------------ */
/* Function calling: the simulated model's side                                                */
/* ------------------------------------------------------------------------------------------ */

/*
 * The model sees tools where each family puts them: on 1.2.1+ only what rkllm_set_function_tools
 * received (an empty list "[]" means none); on 1.1 / 1.2.0 only a "<tools>...</tools>" block in
 * the text it was given (the prompt, the chat template's system prompt, or an earlier turn still
 * in the KV cache), i.e. Qwen's template rendered by the caller. So a caller that puts the tools
 * in the wrong place gets no tool call.
 *
 * The request is the text after the last "</tools>" and the last "</tool_response>" of the
 * prompt, up to a client's context after it ("\n\n(" ...); a run with role "tool" (1.2.1+)
 * or a prompt that ends in a tool result asks nothing.
 * It asks for a tool when it names one (its name appears in it), or says "turn on" / "turn off"
 * and some tool takes a "name" parameter (a tool whose name contains TurnOn / TurnOff, ignoring
 * case and "_", is preferred). The answer is a Qwen-style call, cut into SIM_CHUNK_BYTES tokens
 * like every answer, so its markup is split across callbacks:
 *     <tool_call>\n{"name": "NAME", "arguments": {"name": "THING"}}\n</tool_call>
 * or, with [sim:tool_xml] in the prompt, the XML-like form of Rockchip's 1.3.0 demo:
 *     <tool_call>\n<function=NAME>\n<parameter=name>\nTHING\n</parameter>\n</function>\n</tool_call>
 * THING is what follows "turn on"/"turn off" (without "the", up to . , ? ! [ < " or a
 * newline); without it the arguments are empty. run.tool_call in rkllm_sim_inspect() names
 * the function called.
 */

#define SIM_MAX_TOOLS 64

typedef struct {
    const char *name; /* points into the tools text */
    size_t len;
    bool takes_name;
} SimTool;

/* Position after `"key"\s*:\s*` at p, or NULL. */
static const char *sim_json_key_value(const char *p, const char *key) {
    size_t n = strlen(key);
    if (*p != '"' || strncmp(p + 1, key, n) != 0 || p[n + 1] != '"') return NULL;
    p += n + 2;
    while (*p == ' ' || *p == '\n' || *p == '\t' || *p == '\r') p++;
    if (*p != ':') return NULL;
    p++;
    while (*p == ' ' || *p == '\n' || *p == '\t' || *p == '\r') p++;
    return p;
}

/* The functions in a tools text: every "name": "<string>" is a function name; a "name": {...}
 * after it (before the next function) is a parameter called name. */
static size_t sim_tools_list(const char *text, SimTool *out, size_t max) {
    size_t n = 0;
    for (const char *p = text; (p = strstr(p, "\"name\"")) != NULL; p++) {
        const char *v = sim_json_key_value(p, "name");
        if (!v) continue;
        if (*v == '"' && n < max) {
            const char *end = strchr(v + 1, '"');
            if (!end) break;
            out[n++] = (SimTool){.name = v + 1, .len = (size_t)(end - v - 1), .takes_name = false};
        } else if (*v == '{' && n > 0) {
            out[n - 1].takes_name = true;
        }
    }
    return n;
}

static const char *sim_last(const char *s, const char *needle) {
    const char *last = NULL;
    for (const char *p = s; (p = strstr(p, needle)) != NULL; p++) last = p;
    return last;
}

#if !SIM_HAS_1_2_1
/* The last complete "<tools>...</tools>" block of s (a malloc'd copy), or NULL. */
static char *sim_tools_block(const char *s) {
    const char *start = s ? sim_last(s, "<tools>") : NULL;
    const char *end = start ? strstr(start, "</tools>") : NULL;
    return end ? strndup(start, (size_t)(end - start)) : NULL;
}
#endif

/* The tools the model sees (a malloc'd copy), or NULL. */
static char *sim_tools_text(SimHandle *h, const char *prompt) {
    char *text = NULL;
    pthread_mutex_lock(&h->mu);
#if SIM_HAS_1_2_1
    (void)prompt;
    if (h->has_tools && h->tools_json && strcmp(h->tools_json, "[]") != 0)
        text = strdup(h->tools_json);
#else
    text = sim_tools_block(prompt);
#if SIM_HAS_1_2_0
    if (!text && h->has_template) text = sim_tools_block(h->tpl_system);
    for (size_t i = h->history_len; !text && i > 0; i--) text = sim_tools_block(h->history[i - 1]);
#endif
#endif
    pthread_mutex_unlock(&h->mu);
    return text;
}

static bool sim_is_tool_role(SimHandle *h) {
    bool tool = false;
#if SIM_HAS_1_2_1
    pthread_mutex_lock(&h->mu);
    tool = h->run.role && strcmp(h->run.role, "tool") == 0;
    pthread_mutex_unlock(&h->mu);
#else
    (void)h;
#endif
    return tool;
}

/* "turn on" / "turn off" in s (any case): what follows it, or NULL; *on tells which. */
static const char *sim_switch_phrase(const char *s, bool *on) {
    const char *on_at = strcasestr(s, "turn on"), *off_at = strcasestr(s, "turn off");
    if (!on_at && !off_at) return NULL;
    *on = on_at && (!off_at || on_at < off_at);
    const char *p = *on ? on_at + 7 : off_at + 8;
    while (*p == ' ') p++;
    if (strncasecmp(p, "the ", 4) == 0) p += 4;
    return p;
}

/* Whether the tool name contains "turnon"/"turnoff" (any case, '_' ignored). */
static bool sim_tool_switches(const SimTool *t, bool on) {
    char flat[128];
    size_t k = 0;
    for (size_t i = 0; i < t->len && k + 1 < sizeof flat; i++)
        if (t->name[i] != '_') flat[k++] = t->name[i];
    flat[k] = '\0';
    return strcasestr(flat, on ? "turnon" : "turnoff") != NULL;
}

/* A tool call for the prompt, if it asks for one; records the function in run.tool_call. */
static bool sim_tools_answer(SimAnswer *a, SimHandle *h, const char *prompt) {
    if (sim_is_tool_role(h) || sim_directive(prompt, "echo")) return false;
    char *tools = sim_tools_text(h, prompt);
    if (!tools) return false;
    const char *ask = prompt, *cut;
    if ((cut = sim_last(ask, "</tools>")) != NULL) ask = cut + 8;
    if ((cut = sim_last(ask, "</tool_response>")) != NULL) ask = cut + 16;
    /* A client's context for the turn, "(...)" after a blank line (the Home Assistant integration
     * moves Assist's per-device lines there), is not what the user asks. */
    char *asked = (cut = sim_last(ask, "\n\n(")) != NULL ? strndup(ask, (size_t)(cut - ask))
                                                         : strdup(ask);
    if (!asked) {
        free(tools);
        return false;
    }
    ask = asked;

    SimTool list[SIM_MAX_TOOLS];
    size_t n = sim_tools_list(tools, list, SIM_MAX_TOOLS);
    bool on = false;
    const char *thing = sim_switch_phrase(ask, &on);
    const SimTool *pick = NULL;
    for (size_t i = 0; i < n && !pick; i++) {
        char name[128];
        snprintf(name, sizeof name, "%.*s", (int)list[i].len, list[i].name);
        if (list[i].len && strstr(ask, name)) pick = &list[i];
    }
    for (size_t i = 0; i < n && !pick && thing; i++)
        if (list[i].takes_name && sim_tool_switches(&list[i], on)) pick = &list[i];
    for (size_t i = 0; i < n && !pick && thing; i++)
        if (list[i].takes_name) pick = &list[i];
    if (!pick) {
        free(asked);
        free(tools);
        return false;
    }

    char *value = NULL;
    if (thing && pick->takes_name) {
        size_t len = strcspn(thing, ".,?!\n[<\"");
        while (len && thing[len - 1] == ' ') len--;
        value = strndup(thing, len);
    }
    char *name = strndup(pick->name, pick->len);
    SimBuf out = {0};
    if (sim_directive(prompt, "tool_xml")) {
        buf_printf(&out, "<tool_call>\n<function=%s>\n", name);
        if (value) buf_printf(&out, "<parameter=name>\n%s\n</parameter>\n", value);
        buf_puts(&out, "</function>\n</tool_call>");
    } else {
        buf_puts(&out, "<tool_call>\n{\"name\": ");
        json_str(&out, name);
        buf_puts(&out, ", \"arguments\": {");
        if (value) {
            buf_puts(&out, "\"name\": ");
            json_str(&out, value);
        }
        buf_puts(&out, "}}\n</tool_call>");
    }
    buf_reserve(&a->text, 0);
    answer_add_chunked(a, out.data, out.len);
    free(out.data);
    free(value);
    free(asked);
    free(tools);

    pthread_mutex_lock(&h->mu);
    free(h->run.tool_call);
    h->run.tool_call = name;
    pthread_mutex_unlock(&h->mu);
    return true;
}

/* ------------------------------------------------------------------------------------------ */
/* Runs                                                                                        */
/* ------------------------------------------------------------------------------------------ */

static void history_clear(SimHandle *h) {
    for (size_t i = 0; i < h->history_len; i++) free(h->history[i]);
    h->history_len = 0;
}

static void history_add(SimHandle *h, const char *s, size_t n) {
    if (h->history_len == h->history_cap) {
        size_t cap = h->history_cap ? h->history_cap * 2 : 8;
        char **p = realloc(h->history, cap * sizeof *p);
        if (!p) return;
        h->history = p;
        h->history_cap = cap;
    }
    char *copy = strndup(s, n);
    if (copy) h->history[h->history_len++] = copy;
}

/* ------------------------------------------------------------------------------------------ */
/* Simulated KV cache and prompt cache                                                         */
/* ------------------------------------------------------------------------------------------ */
/*
 * What the runtime documents (rkllm.h and the RKLLM SDK manual of release-v1.3.0, §3.2.9-3.2.12):
 *   keep_history = 1 keeps the context between runs (multi-turn), 0 discards it; clear_kv_cache
 *   with keep_system_prompt = 1 keeps the system prompt "if present", 0 clears everything; a run
 *   with RKLLMPromptCacheParam.save_prompt_cache = 1 writes its prefill to prompt_cache_path
 *   (default "./prompt_cache.bin"); rkllm_load_prompt_cache loads such a file and the runtime
 *   "detects from the start the part of the input that is the same as the prompt cache" and
 *   reuses it; rkllm_release_prompt_cache drops it.
 * Our reading where it says nothing (the simulator behaves so, the daemon does not rely on more):
 *   - the system segment is the system prompt of rkllm_set_function_tools plus its tools (1.2.1+,
 *     unless the tools are "[]") or else that of rkllm_set_chat_template (1.2.0+); 1.1 has none
 *     (the prompt text is all);
 *   - it is prefilled once and stays in the KV cache until it changes (the next run then drops
 *     the whole cache and prefills the new one) or clear_kv_cache(keep_system_prompt = 0);
 *   - keep_history = 0 drops the run's turn afterwards but keeps the system segment;
 *   - a loaded prompt cache is consulted by a run that starts with nothing of its own context in
 *     the KV cache; the common prefix of the saved input and the run's input is not prefilled
 *     (the last token of the input always is: it yields the first output token);
 *   - the file holds a header naming the format and ABI, then the saved input; another header
 *     (another runtime, a corrupt file) makes rkllm_load_prompt_cache fail with -1.
 * Tokens are ceil(bytes / 4) per segment; a common prefix of n bytes is n / 4 tokens.
 */

#define SIM_PC_MAGIC "RKLLMSIM-PROMPT-CACHE 1 abi=" SIM_ABI_NAME "\n"
#define SIM_PC_DEFAULT_PATH "./prompt_cache.bin"

static long sim_tokens(size_t bytes) { return (long)((bytes + 3) / 4); }

/* The text the model sees for the system segment (under mu). */
static void kv_system_text(const SimHandle *h, SimBuf *out) {
    buf_add(out, "", 0); /* allocated and terminated even when empty */
#if SIM_HAS_1_2_1
    /* An empty list ("[]", how a server takes the tools back) leaves the template's system prompt. */
    if (h->has_tools && h->tools_json && strcmp(h->tools_json, "[]") != 0) {
        if (h->tools_system) buf_puts(out, h->tools_system);
        if (h->tools_json && *h->tools_json) {
            buf_puts(out, "\n# Tools\n");
            buf_puts(out, h->tools_json);
        }
        return;
    }
#endif
#if SIM_HAS_1_2_0
    if (h->has_template && h->tpl_system) buf_puts(out, h->tpl_system);
#else
    (void)h;
#endif
}

/* The text of this run's turn: the template's prefix and postfix around the prompt (under mu). */
static void kv_turn_text(const SimHandle *h, const char *prompt, SimBuf *out) {
    buf_add(out, "", 0);
#if SIM_HAS_1_2_0
    if (h->has_template && h->tpl_prefix) buf_puts(out, h->tpl_prefix);
#endif
    buf_puts(out, prompt);
#if SIM_HAS_1_2_0
    if (h->has_template && h->tpl_postfix) buf_puts(out, h->tpl_postfix);
#else
    (void)h;
#endif
}

static void kv_drop_turns(SimHandle *h) {
    history_clear(h);
    h->kv_turn_tokens = 0;
}

static void kv_drop_all(SimHandle *h) {
    kv_drop_turns(h);
    free(h->kv_system);
    h->kv_system = NULL;
    h->kv_system_tokens = 0;
}

/* What a run's prefill must compute. Under mu; fills the record; returns the text a save writes. */
typedef struct {
    long context, cached, from_prompt_cache, prefill;
    char *system; /* the run's system segment (owned) */
    long system_tokens;
    long turn_tokens;
    SimBuf input; /* system + kept turns + this turn: what a prompt cache of this run holds */
} SimPrefill;

static void kv_plan_prefill(SimHandle *h, const char *prompt, SimPrefill *p) {
    SimBuf sys = {0}, turn = {0};
    kv_system_text(h, &sys);
    kv_turn_text(h, prompt, &turn);
    bool held = h->kv_system && strcmp(h->kv_system, sys.data) == 0;
    if (!held && (h->kv_system || h->history_len)) kv_drop_all(h);
    p->system = sys.data;
    p->system_tokens = sim_tokens(sys.len);
    p->turn_tokens = sim_tokens(turn.len);
    p->context = p->system_tokens + h->kv_turn_tokens + p->turn_tokens;
    p->cached = (held ? p->system_tokens : 0) + h->kv_turn_tokens;
    p->from_prompt_cache = 0;

    memset(&p->input, 0, sizeof p->input);
    buf_add(&p->input, sys.data, sys.len);
    for (size_t i = 0; i < h->history_len; i++) buf_puts(&p->input, h->history[i]);
    buf_add(&p->input, turn.data, turn.len);
    if (p->cached == 0 && h->pc_text) {
        size_t n = 0;
        while (n < h->pc_len && n < p->input.len && h->pc_text[n] == p->input.data[n]) n++;
        long reuse = (long)(n / 4);
        if (reuse > p->context - 1) reuse = p->context - 1;
        p->from_prompt_cache = reuse > 0 ? reuse : 0;
        p->cached = p->from_prompt_cache;
    }
    p->prefill = p->context - p->cached;
    free(turn.data);

    h->run.context_tokens = p->context;
    h->run.cached_tokens = p->cached;
    h->run.prompt_cache_tokens = p->from_prompt_cache;
    h->run.prefill_tokens = p->prefill;
}

/* After the prefill: the system segment is in the KV cache; a save writes the run's input. */
static void kv_after_prefill(SimHandle *h, SimPrefill *p, const SimJob *job) {
    pthread_mutex_lock(&h->mu);
    if (!h->kv_system) {
        h->kv_system = p->system;
        h->kv_system_tokens = p->system_tokens;
        p->system = NULL;
    }
    pthread_mutex_unlock(&h->mu);
    if (job->save_prompt_cache != 1) return;
    const char *path = job->prompt_cache_path ? job->prompt_cache_path : SIM_PC_DEFAULT_PATH;
    FILE *f = fopen(path, "wb");
    bool ok = f && fputs(SIM_PC_MAGIC, f) >= 0 &&
              fwrite(p->input.data, 1, p->input.len, f) == p->input.len;
    if (f && fclose(f) != 0) ok = false;
    if (!ok) {
        sim_log("W rkllm: failed to save the prompt cache to %s: %s", path, strerror(errno));
        return;
    }
    pthread_mutex_lock(&h->mu);
    h->pc_saves++;
    free(h->pc_last_saved);
    h->pc_last_saved = sim_strdup(path);
    pthread_mutex_unlock(&h->mu);
}

static void kv_prefill_free(SimPrefill *p) {
    free(p->system);
    free(p->input.data);
}

#if SIM_HAS_1_2_0
/* rkllm_clear_kv_cache (under mu). */
static void kv_clear(SimHandle *h, int keep_system_prompt) {
    if (keep_system_prompt) {
        kv_drop_turns(h);
    } else {
        if (h->kv_system) h->clear_dropped_system++;
        kv_drop_all(h);
    }
}
#endif

#ifndef RKLLM_SIM_MINIMAL
/* rkllm_load_prompt_cache: 0, or -1 for a file that is missing or not a prompt cache of ours. */
static int pc_load(SimHandle *h, const char *path) {
    FILE *f = fopen(path, "rb");
    if (!f) {
        sim_log("E rkllm: failed to open prompt cache %s: %s", path, strerror(errno));
        return -1;
    }
    SimBuf b = {0};
    char chunk[4096];
    size_t n;
    while ((n = fread(chunk, 1, sizeof chunk, f)) > 0) buf_add(&b, chunk, n);
    fclose(f);
    size_t magic = strlen(SIM_PC_MAGIC);
    if (b.len < magic || memcmp(b.data, SIM_PC_MAGIC, magic) != 0) {
        sim_log("E rkllm: invalid prompt cache file %s", path);
        free(b.data);
        return -1;
    }
    pthread_mutex_lock(&h->mu);
    free(h->pc_text);
    free(h->pc_path);
    h->pc_len = b.len - magic;
    h->pc_text = malloc(h->pc_len + 1);
    if (h->pc_text) {
        memcpy(h->pc_text, b.data + magic, h->pc_len);
        h->pc_text[h->pc_len] = '\0';
    }
    h->pc_path = sim_strdup(path);
    pthread_mutex_unlock(&h->mu);
    free(b.data);
    return h->pc_text ? 0 : -1;
}
#endif

static void pc_release(SimHandle *h) {
    free(h->pc_text);
    free(h->pc_path);
    h->pc_text = h->pc_path = NULL;
    h->pc_len = 0;
}

static void kv_inspect(SimBuf *b, bool *f, const SimHandle *h) {
    json_key(b, f, "kv_cache");
    bool g = true;
    buf_puts(b, "{");
    json_kstr(b, &g, "system", h->kv_system);
    json_kint(b, &g, "system_tokens", h->kv_system ? h->kv_system_tokens : 0);
    json_kint(b, &g, "turn_tokens", h->kv_turn_tokens);
    json_kint(b, &g, "tokens", (h->kv_system ? h->kv_system_tokens : 0) + h->kv_turn_tokens);
    json_kint(b, &g, "system_dropped_by_clear", h->clear_dropped_system);
    buf_puts(b, "}");
    json_key(b, f, "prompt_cache");
    g = true;
    buf_puts(b, "{");
    json_kstr(b, &g, "loaded", h->pc_path);
    json_kint(b, &g, "tokens", h->pc_text ? (long)(h->pc_len / 4) : 0);
    json_kint(b, &g, "saves", h->pc_saves);
    json_kstr(b, &g, "last_saved", h->pc_last_saved);
    buf_puts(b, "}");
}

static void kv_free(SimHandle *h) {
    kv_drop_all(h);
    pc_release(h);
    free(h->pc_last_saved);
}

/* RKLLM_SIM_CALLBACK_TIMES: one line per timed callback, written after the callback returned. */
static void sim_record_callback_ns(long long start, long long ns) {
    static pthread_mutex_t mu = PTHREAD_MUTEX_INITIALIZER;
    const char *path = getenv("RKLLM_SIM_CALLBACK_TIMES");
    if (!path || !*path) return;
    pthread_mutex_lock(&mu);
    FILE *f = fopen(path, "a");
    if (f) {
        fprintf(f, "%lld %lld\n", start, ns);
        fclose(f);
    }
    pthread_mutex_unlock(&mu);
}

static long long sim_now_ns(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (long long)ts.tv_sec * 1000000000LL + ts.tv_nsec;
}

static int sim_call_back(LLMResultCallback cb, RKLLMResult *r, void *userdata, LLMCallState state);

/* Calls the user's callback; returns what it returned (always 0 before 1.2.1). */
static int sim_emit(SimHandle *h, void *userdata, const char *text, int32_t token_id,
                    LLMCallState state, const void *perf) {
    RKLLMResult r;
    memset(&r, 0, sizeof r);
    r.text = text;
    r.token_id = token_id;
#if SIM_HAS_1_2_1
    if (perf) r.perf = *(const RKLLMPerfStat *)perf;
#else
    (void)perf;
#endif
#if SIM_HAS_1_3_0
    LLMResultCallback cb = h->callbacks.result_callback;
#else
    LLMResultCallback cb = h->callback;
#endif
    if (!cb) return 0;
    if (state != RKLLM_RUN_NORMAL || !getenv("RKLLM_SIM_CALLBACK_TIMES"))
        return sim_call_back(cb, &r, userdata, state);
    long long t0 = sim_now_ns();
    int rc = sim_call_back(cb, &r, userdata, state);
    sim_record_callback_ns(t0, sim_now_ns() - t0);
    return rc;
}

static int sim_call_back(LLMResultCallback cb, RKLLMResult *r, void *userdata, LLMCallState state) {
#if SIM_HAS_1_2_1
    return cb(r, userdata, state);
#else
    cb(r, userdata, state);
    return 0;
#endif
}

static int sim_fail_run(SimHandle *h, void *userdata, const char *why) {
    sim_log("E rkllm: %s", why);
    sim_emit(h, userdata, NULL, -1, RKLLM_RUN_ERROR, NULL);
    return -1;
}

static void sim_crash(void) {
    sim_log("E rkllm-sim: simulated crash, raising SIGSEGV");
    raise(SIGSEGV);
    abort();
}

/* [sim:hang_hard]: never returns and never looks at the abort flag, like a run stuck in the NPU. */
static void sim_hang_forever(void) {
    sim_log("W rkllm-sim: hanging for ever, ignoring rkllm_abort");
    for (;;) sim_sleep_slice(1000);
}

/* RKLLM_SIM_FAIL=init_crash: rkllm_init dies before it returns. */
static void sim_init_crash_if_asked(void) {
    if (!sim_env_is("RKLLM_SIM_FAIL", "init_crash")) return;
    sim_log("E rkllm-sim: simulated crash in rkllm_init (RKLLM_SIM_FAIL=init_crash)");
    sim_crash();
}

/* How a run ended, into the record and the simulated KV cache ("history"). */
static void sim_record_end(SimJob *job, int generated, bool aborted, bool paused, bool errored,
                           const char *answer, size_t answer_len) {
    SimHandle *h = job->h;
    pthread_mutex_lock(&h->mu);
    h->run.generated_tokens = generated;
    h->run.aborted = aborted;
    h->run.paused = paused;
    h->run.finished = !aborted && !paused && !errored;
    if (SIM_HAS_1_2_0 && job->keep_history == 1) {
        if (!errored) {
            history_add(h, job->prompt, strlen(job->prompt));
            history_add(h, answer ? answer : "", answer_len);
            if (job->prefilled) h->kv_turn_tokens += job->turn_tokens + generated;
        }
    } else {
        kv_drop_turns(h);
    }
    pthread_mutex_unlock(&h->mu);
}

/* A run that fails before its first token: ERROR callback, -1. */
static int sim_reject(SimJob *job, const char *why) {
    int ret = sim_fail_run(job->h, job->userdata, why);
    sim_record_end(job, 0, false, false, true, NULL, 0);
    return ret;
}

/* Everything between prefill and the return value of rkllm_run. */
static int sim_stream(SimJob *job) {
    SimHandle *h = job->h;
    const char *prompt = job->prompt;
    const char *fail = getenv("RKLLM_SIM_FAIL");
    bool crash = sim_directive(prompt, "crash") || (fail && strcmp(fail, "crash") == 0);
    bool hang = sim_directive(prompt, "hang");
    bool hang_hard = sim_directive(prompt, "hang_hard");
    long error_after = sim_directive_value(prompt, "error_after");
    long delay_ms = sim_directive_value(prompt, "delay_ms");

    if (job->mode != RKLLM_INFER_GENERATE)
        return sim_reject(job, "the simulator only implements RKLLM_INFER_GENERATE");
    if (sim_directive(prompt, "error") || (fail && strcmp(fail, "run") == 0))
        return sim_reject(job, "simulated run error");

    int context = h->param.max_context_len > 0 ? h->param.max_context_len : h->model_max_context;
    SimPrefill pre = {0};
    pthread_mutex_lock(&h->mu);
    kv_plan_prefill(h, prompt, &pre);
    pthread_mutex_unlock(&h->mu);
    long prompt_tokens = pre.context;
    if (prompt_tokens > context) {
        char why[128];
        snprintf(why, sizeof why, "prompt tokens(%ld) is greater than max context(%d)",
                 prompt_tokens, context);
        kv_prefill_free(&pre);
        return sim_reject(job, why);
    }

    double prefill_tps = 0, decode_tps = 0;
    const char *speed = getenv("RKLLM_SIM_SPEED");
    if (speed && strcmp(speed, "rk3588") == 0) {
        prefill_tps = 128.0 / 0.37831;
        decode_tps = 16.69;
    } else if (speed && *speed) {
        sim_log("W rkllm-sim: unknown RKLLM_SIM_SPEED=%s (known: rk3588)", speed);
    }
    prefill_tps = sim_env_double("RKLLM_SIM_PREFILL_TPS", prefill_tps);
    decode_tps = sim_env_double("RKLLM_SIM_DECODE_TPS", decode_tps);

    long chunk = sim_directive_value(prompt, "chunk");
    SimAnswer ans = {.chunk = chunk >= 1 && chunk <= SIM_MAX_CHUNK_BYTES ? (size_t)chunk
                                                                        : SIM_CHUNK_BYTES};
    if (!sim_tools_answer(&ans, h, prompt))
        answer_build(&ans, prompt, sim_directive_value(prompt, "tokens"));
    long limit = context - prompt_tokens;
    if (job->max_new_tokens > 0 && job->max_new_tokens < limit) limit = job->max_new_tokens;

    double t0 = sim_now_ms();
    bool aborted = false, paused = false;
    if (prefill_tps > 0) aborted = !sim_sleep(h, (double)pre.prefill * 1000.0 / prefill_tps);
    double t1 = sim_now_ms();
    if (!aborted) {
        kv_after_prefill(h, &pre, job);
        job->prefilled = true;
        job->turn_tokens = pre.turn_tokens;
    }

    size_t emitted = 0; /* bytes of ans.text streamed so far */
    int generated = 0;
    const bool waiting_text = sim_env_is("RKLLM_SIM_WAITING_TEXT", "1");
    for (size_t i = 0; !aborted && i < ans.n && (long)i < limit; i++) {
        if (crash && generated == SIM_CRASH_AFTER) sim_crash();
        if (error_after >= 0 && generated >= error_after) break;
        if (decode_tps > 0 && !sim_sleep(h, 1000.0 / decode_tps)) aborted = true;
        if (!aborted && delay_ms > 0 && !sim_sleep(h, (double)delay_ms)) aborted = true;
        if (aborted || atomic_load(&h->abort_flag)) {
            aborted = true;
            break;
        }
        char chunk[64];
        size_t start = i ? ans.ends[i - 1] : 0, len = ans.ends[i] - start;
        if (len >= sizeof chunk) len = sizeof chunk - 1;
        memcpy(chunk, ans.text.data + start, len);
        chunk[len] = '\0';
        /* 1.1 with RKLLM_SIM_WAITING_TEXT=1: a chunk that ends inside a character comes with the
         * WAITING state and its bytes, the reading of Rockchip's 1.1 demos (they keep those bytes). */
        bool partial = SIM_FAMILY == 1 && ends_mid_char(ans.text.data, ans.text.len, ans.ends[i]);
        int state = partial && waiting_text ? RKLLM_RUN_WAITING : RKLLM_RUN_NORMAL;
        int rc = sim_emit(h, job->userdata, chunk, (int32_t)i, state, NULL);
        explicit_bzero(chunk, sizeof chunk); /* the pointer was only valid during the callback */
        generated++;
        emitted = ans.ends[i];
        if (SIM_HAS_1_2_1 && rc == 1) {
            paused = true;
            break;
        }
        if (partial && !waiting_text) sim_emit(h, job->userdata, NULL, -1, RKLLM_RUN_WAITING, NULL);
        if (hang_hard) sim_hang_forever();
        if (hang) {
            while (!atomic_load(&h->abort_flag)) sim_sleep_slice(SIM_SLICE_MS);
            aborted = true;
        }
    }
    /* An abort asked for during the last token's callback still ends the run without FINISH. */
    if (!paused && atomic_load(&h->abort_flag)) aborted = true;
    if (!aborted && crash) sim_crash(); /* answer shorter than SIM_CRASH_AFTER tokens */
    bool errored = !aborted && !paused && error_after >= 0;
    double t2 = sim_now_ms();

    int ret = 0;
    if (errored) {
        ret = sim_fail_run(h, job->userdata, "simulated run error after tokens");
    } else if (!aborted && !paused) {
#if SIM_HAS_1_2_1
        RKLLMPerfStat perf = {
            .prefill_time_ms = (float)(t1 - t0),
            .prefill_tokens = (int)pre.prefill,
            .generate_time_ms = (float)(t2 - t1),
            .generate_tokens = generated,
            .memory_usage_mb = sim_memory_mb(),
        };
        sim_emit(h, job->userdata, NULL, -1, RKLLM_RUN_FINISH, &perf);
#else
        (void)t0;
        (void)t1;
        (void)t2;
        sim_emit(h, job->userdata, NULL, -1, RKLLM_RUN_FINISH, NULL);
#endif
    }

    sim_record_end(job, generated, aborted, paused, errored, ans.text.data, emitted);
    answer_free(&ans);
    kv_prefill_free(&pre);
    return ret;
}

static void *sim_stream_thread(void *arg) {
    SimJob *job = arg;
    job->ret = sim_stream(job);
    return NULL;
}

/* A run enters the library: count it (and the most seen at once). Under mu, so that rkllm_abort
 * sees a consistent (running, abort_flag) pair and an abort is never lost or left stale. */
static void sim_run_enter(SimHandle *h) {
    pthread_mutex_lock(&h->mu);
    int now = atomic_fetch_add(&h->running, 1) + 1;
    if (now > atomic_load(&h->max_running)) atomic_store(&h->max_running, now);
    pthread_mutex_unlock(&h->mu);
}

/* A run leaves the library; the last one out clears the abort flag for the next run. */
static void sim_run_leave(SimHandle *h) {
    pthread_mutex_lock(&h->mu);
    if (atomic_fetch_sub(&h->running, 1) == 1) atomic_store(&h->abort_flag, 0);
    pthread_mutex_unlock(&h->mu);
}

/* rkllm_abort: only a run inside the library can be aborted; otherwise the call is just counted. */
static void sim_abort(SimHandle *h) {
    pthread_mutex_lock(&h->mu);
    atomic_fetch_add(&h->aborts, 1);
    if (atomic_load(&h->running) > 0) atomic_store(&h->abort_flag, 1);
    pthread_mutex_unlock(&h->mu);
}

/* The body of rkllm_run; the caller has counted the run with sim_run_enter. */
static int sim_run(SimHandle *h, RKLLMInput *input, RKLLMInferParam *infer, void *userdata) {
    bool on_thread = sim_env_is("RKLLM_SIM_CALLBACK_THREAD", "1");

    const char *prompt = NULL;
    if (input && input->input_type == RKLLM_INPUT_PROMPT) prompt = input->prompt_input;
    if (input && input->input_type == RKLLM_INPUT_MULTIMODAL)
        prompt = input->multimodal_input.prompt;

    SimJob job = {.h = h, .userdata = userdata, .max_new_tokens = h->param.max_new_tokens};
#if SIM_HAS_1_3_0
    if (!job.userdata) job.userdata = h->callbacks.result_userdata;
#endif

    pthread_mutex_lock(&h->mu);
    SimRunRecord *r = &h->run;
    free(r->prompt);
    free(r->role);
    free(r->lora_adapter_name);
    free(r->prompt_cache_path);
    free(r->tool_call);
    long count = r->count + 1;
    memset(r, 0, sizeof *r);
    r->count = count;
    r->input_type = input ? (int)input->input_type : -1;
    r->prompt = sim_strdup(prompt);
#if SIM_HAS_1_2_1
    if (input) {
        r->role = sim_strdup(input->role);
        memcpy(&r->enable_thinking, &input->enable_thinking, 1);
    }
#endif
    r->infer_params = infer != NULL;
    if (infer) {
        r->mode = (int)infer->mode;
        r->lora_params = infer->lora_params != NULL;
        if (infer->lora_params) r->lora_adapter_name = sim_strdup(infer->lora_params->lora_adapter_name);
        r->prompt_cache_params = infer->prompt_cache_params != NULL;
        r->save_prompt_cache = -1;
        if (infer->prompt_cache_params) {
            r->save_prompt_cache = infer->prompt_cache_params->save_prompt_cache;
            r->prompt_cache_path = sim_strdup(infer->prompt_cache_params->prompt_cache_path);
            job.save_prompt_cache = r->save_prompt_cache;
            job.prompt_cache_path = sim_strdup(r->prompt_cache_path);
        }
#if SIM_HAS_1_2_0
        r->keep_history = infer->keep_history;
#endif
#if SIM_HAS_1_3_0
        r->has_sampling = infer->sampling_params != NULL;
        if (infer->sampling_params) r->sampling = *infer->sampling_params;
        r->max_new_tokens = infer->max_new_tokens;
        if (infer->max_new_tokens > 0) job.max_new_tokens = infer->max_new_tokens;
#endif
        job.mode = r->mode;
        job.keep_history = r->keep_history;
    }
    r->userdata = userdata != NULL;
    r->callback_thread = on_thread;
    pthread_mutex_unlock(&h->mu);

    /* Token and embedding input carry no text; they are answered as an empty prompt. */
    bool has_text = input && (input->input_type == RKLLM_INPUT_PROMPT ||
                              input->input_type == RKLLM_INPUT_MULTIMODAL);
    job.prompt = has_text ? prompt : "";
    int ret;
    pthread_t t;
    if (!input) {
        sim_log("E rkllm: rkllm_input is NULL");
        ret = -1;
    } else if (!job.prompt) {
        ret = sim_reject(&job, "prompt is NULL");
    } else if (!on_thread) {
        ret = sim_stream(&job);
    } else if (pthread_create(&t, NULL, sim_stream_thread, &job) != 0) {
        ret = sim_reject(&job, "failed to start the callback thread");
    } else {
        pthread_join(t, NULL);
        ret = job.ret;
    }
    pthread_mutex_lock(&h->mu);
    h->run.ret = ret;
    pthread_mutex_unlock(&h->mu);
    free(job.prompt_cache_path);
    return ret;
}

/* ------------------------------------------------------------------------------------------ */
/* Exported API                                                                                */
/* ------------------------------------------------------------------------------------------ */

SIM_EXPORT RKLLMParam rkllm_createDefaultParam(void) {
    RKLLMParam p;
    memset(&p, 0, sizeof p);
    p.model_path = NULL;
    p.max_context_len = 512;
    p.max_new_tokens = -1;
    p.top_k = 40;
#if SIM_HAS_1_2_0
    p.n_keep = -1;
#endif
    p.top_p = 0.9f;
    p.temperature = 0.8f;
    p.repeat_penalty = 1.1f;
    p.frequency_penalty = 0.0f;
    p.presence_penalty = 0.0f;
    p.mirostat = 0;
    p.mirostat_tau = 5.0f;
    p.mirostat_eta = 0.1f;
    p.skip_special_token = true;
#if SIM_HAS_1_3_0
    p.ignore_eos_token = false;
#endif
    p.is_async = false;
    p.extend_param.base_domain_id = 0;
#if SIM_HAS_1_2_0
    p.extend_param.embed_flash = 0;
    p.extend_param.enabled_cpus_num = 4;
    p.extend_param.enabled_cpus_mask = 0xF0;
#endif
#if SIM_HAS_1_2_1
    p.extend_param.n_batch = 1;
    p.extend_param.use_cross_attn = 0;
#endif
    return p;
}

#if SIM_HAS_1_3_0
SIM_EXPORT int rkllm_init(LLMHandle *handle, RKLLMParam *param, RKLLMCallback *callback)
#else
SIM_EXPORT int rkllm_init(LLMHandle *handle, RKLLMParam *param, LLMResultCallback callback)
#endif
{
#ifdef RKLLM_SIM_NO_VERSION
    sim_log("I rkllm: rkllm-runtime simulator (version string left out), rknpu driver version: 0.9.8, "
            "platform: RK3588");
#else
    sim_log("I rkllm: %s, rknpu driver version: 0.9.8, platform: RK3588", sim_version_banner);
#endif
    if (!handle) {
        sim_log("E rkllm: handle pointer is NULL");
        return -1;
    }
    *handle = NULL;
    if (!param) {
        sim_log("E rkllm: param is NULL");
        return -1;
    }
    sim_init_crash_if_asked();
    if (sim_env_is("RKLLM_SIM_FAIL", "init")) {
        sim_log("E rkllm: simulated init failure (RKLLM_SIM_FAIL=init)");
        return -1;
    }
    if (!param->model_path) {
        sim_log("E rkllm: model_path is NULL");
        return -1;
    }
    FILE *f = fopen(param->model_path, "rb");
    if (!f) {
        sim_log("E rkllm: failed to open model file %s: %s", param->model_path, strerror(errno));
        return -1;
    }
    int first = fgetc(f);
    fclose(f);
    if (first == EOF) {
        sim_log("E rkllm: invalid model file %s (empty or unreadable)", param->model_path);
        return -1;
    }
    double limit = sim_env_double("RKLLM_SIM_MODEL_MAX_CONTEXT", SIM_DEFAULT_MODEL_MAX_CONTEXT);
    int model_max_context = (int)limit;
    sim_log("I rkllm: rkllm-toolkit version: simulator, max_context_limit: %d, npu_core_num: 3, "
            "target_platform: RK3588",
            model_max_context);
    if (param->max_context_len > model_max_context) {
        sim_log("E rkllm: max_context[%d] must be less than the model's max_context_limit[%d]",
                param->max_context_len, model_max_context);
        return -1;
    }
#if SIM_HAS_1_3_0
    if (!callback) {
        sim_log("E rkllm: callback is NULL");
        return -1;
    }
#endif

    SimHandle *h = calloc(1, sizeof *h);
    if (!h) {
        sim_log("E rkllm: out of memory");
        return -1;
    }
    h->magic = SIM_MAGIC;
    pthread_mutex_init(&h->mu, NULL);
    h->param = *param;
    h->model_path = sim_strdup(param->model_path);
    h->param.model_path = h->model_path;
#if !SIM_HAS_1_3_0
    h->img_start = sim_strdup(param->img_start);
    h->img_end = sim_strdup(param->img_end);
    h->img_content = sim_strdup(param->img_content);
    h->param.img_start = h->img_start;
    h->param.img_end = h->img_end;
    h->param.img_content = h->img_content;
    h->callback = callback;
#else
    h->callbacks = *callback;
#endif
    h->model_max_context = model_max_context;
    *handle = h;
    return 0;
}

#ifndef RKLLM_SIM_MINIMAL
SIM_EXPORT int rkllm_load_lora(LLMHandle handle, RKLLMLoraAdapter *lora_adapter) {
    SimHandle *h = sim_handle(handle);
    if (!h || !lora_adapter || !lora_adapter->lora_adapter_path) return -1;
    pthread_mutex_lock(&h->mu);
    h->lora_loaded++;
    pthread_mutex_unlock(&h->mu);
    return 0;
}
#endif

#ifndef RKLLM_SIM_MINIMAL
SIM_EXPORT int rkllm_load_prompt_cache(LLMHandle handle, const char *prompt_cache_path) {
    SimHandle *h = sim_handle(handle);
    if (!h || !prompt_cache_path) return -1;
    if (pc_load(h, prompt_cache_path) != 0) return -1;
    pthread_mutex_lock(&h->mu);
    h->prompt_cache_loaded = true;
    pthread_mutex_unlock(&h->mu);
    return 0;
}
#endif

#ifndef RKLLM_SIM_MINIMAL
SIM_EXPORT int rkllm_release_prompt_cache(LLMHandle handle) {
    SimHandle *h = sim_handle(handle);
    if (!h) return -1;
    pthread_mutex_lock(&h->mu);
    h->prompt_cache_loaded = false;
    pc_release(h);
    pthread_mutex_unlock(&h->mu);
    return 0;
}
#endif

SIM_EXPORT int rkllm_destroy(LLMHandle handle) {
    SimHandle *h = sim_handle(handle);
    if (!h) return -1;
    /* Misuse (destroy during a run) is survivable here: stop the runs and wait for them. */
    while (atomic_load(&h->running) > 0) {
        sim_abort(h);
        sim_sleep_slice(1);
    }
    h->magic = 0;
    free(h->model_path);
#if !SIM_HAS_1_3_0
    free(h->img_start);
    free(h->img_end);
    free(h->img_content);
#endif
    free(h->run.prompt);
    free(h->run.role);
    free(h->run.lora_adapter_name);
    free(h->run.tool_call);
    free(h->tpl_system);
    free(h->tpl_prefix);
    free(h->tpl_postfix);
    free(h->tools_system);
    free(h->tools_json);
    free(h->tools_response);
    free(h->run.prompt_cache_path);
    kv_free(h);
    free(h->history);
    free(h->inspect);
    pthread_mutex_destroy(&h->mu);
    free(h);
    return 0;
}

SIM_EXPORT int rkllm_run(LLMHandle handle, RKLLMInput *rkllm_input, RKLLMInferParam *rkllm_infer_params,
                         void *userdata) {
    SimHandle *h = sim_handle(handle);
    if (!h) {
        sim_log("E rkllm: invalid handle");
        return -1;
    }
    sim_run_enter(h);
    int ret = sim_run(h, rkllm_input, rkllm_infer_params, userdata);
    sim_run_leave(h);
    return ret;
}

/* rkllm_run_async: the caller's structs are copied, then a detached thread runs them. */
typedef struct {
    SimHandle *h;
    RKLLMInput input;
    RKLLMInferParam infer;
    bool has_infer;
    RKLLMLoraParam lora;
    RKLLMPromptCacheParam cache;
#if SIM_HAS_1_3_0
    RKLLMSamplingParam sampling;
#endif
    char *prompt, *role, *lora_name, *cache_path;
    void *userdata;
} SimAsyncJob;

static void *sim_async_thread(void *arg) {
    SimAsyncJob *a = arg;
    sim_run(a->h, &a->input, a->has_infer ? &a->infer : NULL, a->userdata);
    sim_run_leave(a->h);
    free(a->prompt);
    free(a->role);
    free(a->lora_name);
    free(a->cache_path);
    free(a);
    return NULL;
}

#ifndef RKLLM_SIM_MINIMAL
SIM_EXPORT int rkllm_run_async(LLMHandle handle, RKLLMInput *rkllm_input,
                               RKLLMInferParam *rkllm_infer_params, void *userdata) {
    SimHandle *h = sim_handle(handle);
    if (!h || !rkllm_input) return -1;
    SimAsyncJob *a = calloc(1, sizeof *a);
    if (!a) return -1;
    a->h = h;
    a->userdata = userdata;
    a->input = *rkllm_input;
    if (rkllm_input->input_type == RKLLM_INPUT_PROMPT) {
        a->prompt = sim_strdup(rkllm_input->prompt_input);
        a->input.prompt_input = a->prompt;
    } else if (rkllm_input->input_type == RKLLM_INPUT_MULTIMODAL) {
        a->prompt = sim_strdup(rkllm_input->multimodal_input.prompt);
        a->input.multimodal_input.prompt = a->prompt;
    }
#if SIM_HAS_1_2_1
    a->role = sim_strdup(rkllm_input->role);
    a->input.role = a->role;
#endif
    if (rkllm_infer_params) {
        a->has_infer = true;
        a->infer = *rkllm_infer_params;
        if (rkllm_infer_params->lora_params) {
            a->lora_name = sim_strdup(rkllm_infer_params->lora_params->lora_adapter_name);
            a->lora.lora_adapter_name = a->lora_name;
            a->infer.lora_params = &a->lora;
        }
        if (rkllm_infer_params->prompt_cache_params) {
            a->cache = *rkllm_infer_params->prompt_cache_params;
            a->cache_path = sim_strdup(a->cache.prompt_cache_path);
            a->cache.prompt_cache_path = a->cache_path;
            a->infer.prompt_cache_params = &a->cache;
        }
#if SIM_HAS_1_3_0
        if (rkllm_infer_params->sampling_params) {
            a->sampling = *rkllm_infer_params->sampling_params;
            a->infer.sampling_params = &a->sampling;
        }
#endif
    }
    sim_run_enter(h);
    pthread_t t;
    pthread_attr_t attr;
    pthread_attr_init(&attr);
    pthread_attr_setdetachstate(&attr, PTHREAD_CREATE_DETACHED);
    int rc = pthread_create(&t, &attr, sim_async_thread, a);
    pthread_attr_destroy(&attr);
    if (rc != 0) {
        sim_run_leave(h);
        free(a->prompt);
        free(a->role);
        free(a->lora_name);
        free(a->cache_path);
        free(a);
        return -1;
    }
    return 0;
}
#endif

SIM_EXPORT int rkllm_abort(LLMHandle handle) {
    SimHandle *h = sim_handle(handle);
    if (!h) return -1;
    sim_abort(h);
    return 0;
}

#ifndef RKLLM_SIM_MINIMAL
SIM_EXPORT int rkllm_is_running(LLMHandle handle) {
    SimHandle *h = sim_handle(handle);
    if (!h) return -1;
    bool running = atomic_load(&h->running) > 0;
#if SIM_HAS_1_3_0
    return running ? 1 : 0; /* 1.3.0 header: "1 if a task is running" */
#else
    return running ? 0 : 1; /* 1.1.0-1.2.3 header: "0 if a task is running, non-zero otherwise" */
#endif
}
#endif

#if SIM_HAS_1_2_0
#if SIM_HAS_1_2_1
SIM_EXPORT int rkllm_clear_kv_cache(LLMHandle handle, int keep_system_prompt, int *start_pos,
                                    int *end_pos)
#else
SIM_EXPORT int rkllm_clear_kv_cache(LLMHandle handle, int keep_system_prompt)
#endif
{
    SimHandle *h = sim_handle(handle);
    if (!h) return -1;
    pthread_mutex_lock(&h->mu);
    h->clear_count++;
    h->clear_keep_system_prompt = keep_system_prompt;
#if SIM_HAS_1_2_1
    h->clear_has_range = true;
    h->clear_start_set = start_pos != NULL;
    h->clear_end_set = end_pos != NULL;
    h->clear_start = start_pos ? *start_pos : 0;
    h->clear_end = end_pos ? *end_pos : 0;
#endif
    kv_clear(h, keep_system_prompt);
    pthread_mutex_unlock(&h->mu);
    return 0;
}

SIM_EXPORT int rkllm_set_chat_template(LLMHandle handle, const char *system_prompt,
                                       const char *prompt_prefix, const char *prompt_postfix) {
    SimHandle *h = sim_handle(handle);
    if (!h) return -1;
    sim_keep3(h, &h->has_template, &h->tpl_system, &h->tpl_prefix, &h->tpl_postfix, system_prompt,
              prompt_prefix, prompt_postfix);
    pthread_mutex_lock(&h->mu);
    h->tpl_calls++;
    pthread_mutex_unlock(&h->mu);
    return 0;
}
#endif

#if SIM_HAS_1_2_1
#ifndef RKLLM_SIM_MINIMAL
SIM_EXPORT int rkllm_get_kv_cache_size(LLMHandle handle, int *cache_sizes) {
    SimHandle *h = sim_handle(handle);
    if (!h || !cache_sizes) return -1;
    pthread_mutex_lock(&h->mu);
    long tokens = (h->kv_system ? h->kv_system_tokens : 0) + h->kv_turn_tokens;
    int batches = h->param.extend_param.n_batch > 0 ? h->param.extend_param.n_batch : 1;
    pthread_mutex_unlock(&h->mu);
    for (int i = 0; i < batches; i++) cache_sizes[i] = (int)tokens;
    return 0;
}
#endif

#ifndef RKLLM_SIM_MINIMAL
SIM_EXPORT int rkllm_set_function_tools(LLMHandle handle, const char *system_prompt, const char *tools,
                                        const char *tool_response_str) {
    SimHandle *h = sim_handle(handle);
    if (!h) return -1;
    sim_keep3(h, &h->has_tools, &h->tools_system, &h->tools_json, &h->tools_response,
              system_prompt, tools, tool_response_str);
    pthread_mutex_lock(&h->mu);
    h->tools_calls++;
    pthread_mutex_unlock(&h->mu);
    return 0;
}
#endif

#ifndef RKLLM_SIM_MINIMAL
SIM_EXPORT int rkllm_set_cross_attn_params(LLMHandle handle, RKLLMCrossAttnParam *cross_attn_params) {
    SimHandle *h = sim_handle(handle);
    if (!h) return -1;
    pthread_mutex_lock(&h->mu);
    h->cross_attn_set = cross_attn_params != NULL;
    pthread_mutex_unlock(&h->mu);
    return 0;
}
#endif
#endif

/* ------------------------------------------------------------------------------------------ */
/* Inspection (simulator only)                                                                 */
/* ------------------------------------------------------------------------------------------ */

static void sim_inspect_init(SimBuf *b, const SimHandle *h) {
    const RKLLMParam *p = &h->param;
    bool f = true;
    buf_puts(b, "{");
    json_kstr(b, &f, "model_path", h->model_path);
    json_kint(b, &f, "max_context_len", p->max_context_len);
    json_kint(b, &f, "max_new_tokens", p->max_new_tokens);
    json_kint(b, &f, "top_k", p->top_k);
#if SIM_HAS_1_2_0
    json_kint(b, &f, "n_keep", p->n_keep);
#endif
    json_kfloat(b, &f, "top_p", p->top_p);
    json_kfloat(b, &f, "temperature", p->temperature);
    json_kfloat(b, &f, "repeat_penalty", p->repeat_penalty);
    json_kfloat(b, &f, "frequency_penalty", p->frequency_penalty);
    json_kfloat(b, &f, "presence_penalty", p->presence_penalty);
    json_kint(b, &f, "mirostat", p->mirostat);
    json_kfloat(b, &f, "mirostat_tau", p->mirostat_tau);
    json_kfloat(b, &f, "mirostat_eta", p->mirostat_eta);
    json_kbool_raw(b, &f, "skip_special_token", &p->skip_special_token);
#if SIM_HAS_1_3_0
    json_kbool_raw(b, &f, "ignore_eos_token", &p->ignore_eos_token);
#endif
    json_kbool_raw(b, &f, "is_async", &p->is_async);
#if !SIM_HAS_1_3_0
    json_kstr(b, &f, "img_start", h->img_start);
    json_kstr(b, &f, "img_end", h->img_end);
    json_kstr(b, &f, "img_content", h->img_content);
#endif
    const RKLLMExtendParam *e = &p->extend_param;
    json_key(b, &f, "extend_param");
    bool g = true;
    buf_puts(b, "{");
    json_kint(b, &g, "base_domain_id", e->base_domain_id);
#if SIM_HAS_1_2_0
    json_kint(b, &g, "embed_flash", e->embed_flash);
    json_kint(b, &g, "enabled_cpus_num", e->enabled_cpus_num);
    json_kint(b, &g, "enabled_cpus_mask", e->enabled_cpus_mask);
#endif
#if SIM_HAS_1_2_1
    json_kint(b, &g, "n_batch", e->n_batch);
    json_kint(b, &g, "use_cross_attn", e->use_cross_attn);
#endif
    bool reserved_zero = true;
    for (size_t i = 0; i < sizeof e->reserved; i++) reserved_zero = reserved_zero && !e->reserved[i];
    json_kbool(b, &g, "reserved_all_zero", reserved_zero);
    buf_puts(b, "}");
    json_key(b, &f, "callback");
    g = true;
    buf_puts(b, "{");
#if SIM_HAS_1_3_0
    json_kbool(b, &g, "result_callback", h->callbacks.result_callback != NULL);
    json_kbool(b, &g, "result_userdata", h->callbacks.result_userdata != NULL);
    json_kbool(b, &g, "tokenizer_callback", h->callbacks.tokenizer_callback != NULL);
    json_kbool(b, &g, "embed_callback", h->callbacks.embed_callback != NULL);
#else
    json_kbool(b, &g, "result_callback", h->callback != NULL);
#endif
    buf_puts(b, "}}");
}

static void sim_inspect_run(SimBuf *b, const SimHandle *h) {
    const SimRunRecord *r = &h->run;
    bool f = true;
    buf_puts(b, "{");
    json_kint(b, &f, "count", r->count);
    if (r->count == 0) {
        buf_puts(b, "}");
        return;
    }
    json_kint(b, &f, "input_type", r->input_type);
    json_kstr(b, &f, "prompt", r->prompt);
#if SIM_HAS_1_2_1
    json_kstr(b, &f, "role", r->role);
    json_key(b, &f, "enable_thinking");
    if (r->enable_thinking <= 1)
        buf_puts(b, r->enable_thinking ? "true" : "false");
    else
        buf_printf(b, "%u", r->enable_thinking);
#endif
    json_kbool(b, &f, "infer_params", r->infer_params);
    json_kint(b, &f, "mode", r->mode);
    json_kbool(b, &f, "lora_params", r->lora_params);
    json_kstr(b, &f, "lora_adapter_name", r->lora_adapter_name);
    json_kbool(b, &f, "prompt_cache_params", r->prompt_cache_params);
#if SIM_HAS_1_2_0
    json_kint(b, &f, "keep_history", r->keep_history);
#endif
#if SIM_HAS_1_3_0
    json_key(b, &f, "sampling");
    if (!r->has_sampling) {
        buf_puts(b, "null");
    } else {
        const RKLLMSamplingParam *s = &r->sampling;
        bool g = true;
        buf_puts(b, "{");
        json_kint(b, &g, "top_k", s->top_k);
        json_kfloat(b, &g, "top_p", s->top_p);
        json_kfloat(b, &g, "temperature", s->temperature);
        json_kfloat(b, &g, "repeat_penalty", s->repeat_penalty);
        json_kfloat(b, &g, "frequency_penalty", s->frequency_penalty);
        json_kfloat(b, &g, "presence_penalty", s->presence_penalty);
        json_kint(b, &g, "mirostat", s->mirostat);
        json_kfloat(b, &g, "mirostat_tau", s->mirostat_tau);
        json_kfloat(b, &g, "mirostat_eta", s->mirostat_eta);
        buf_puts(b, "}");
    }
    json_kint(b, &f, "max_new_tokens", r->max_new_tokens);
#endif
    json_kint(b, &f, "save_prompt_cache", r->save_prompt_cache);
    json_kstr(b, &f, "prompt_cache_path", r->prompt_cache_path);
    json_kbool(b, &f, "userdata", r->userdata);
    json_kbool(b, &f, "callback_thread", r->callback_thread);
    json_kint(b, &f, "context_tokens", r->context_tokens);
    json_kint(b, &f, "cached_tokens", r->cached_tokens);
    json_kint(b, &f, "prompt_cache_tokens", r->prompt_cache_tokens);
    json_kint(b, &f, "prefill_tokens", r->prefill_tokens);
    json_kint(b, &f, "generated_tokens", r->generated_tokens);
    json_kbool(b, &f, "aborted", r->aborted);
    json_kbool(b, &f, "paused", r->paused);
    json_kbool(b, &f, "finished", r->finished);
    json_kint(b, &f, "ret", r->ret);
    json_kstr(b, &f, "tool_call", r->tool_call);
    buf_puts(b, "}");
}

static void sim_inspect_json(SimBuf *b, const SimHandle *h) {
    bool f = true;
    buf_puts(b, "{");
    json_kstr(b, &f, "abi", SIM_ABI_NAME);
    json_kstr(b, &f, "version", SIM_VERSION);
    json_key(b, &f, "init");
    sim_inspect_init(b, h);
    json_key(b, &f, "run");
    sim_inspect_run(b, h);
    json_key(b, &f, "chat_template");
    if (h->has_template) {
        bool g = true;
        buf_puts(b, "{");
        json_kstr(b, &g, "system_prompt", h->tpl_system);
        json_kstr(b, &g, "prompt_prefix", h->tpl_prefix);
        json_kstr(b, &g, "prompt_postfix", h->tpl_postfix);
        json_kint(b, &g, "calls", h->tpl_calls);
        buf_puts(b, "}");
    } else {
        buf_puts(b, "null");
    }
#if SIM_HAS_1_2_1
    json_key(b, &f, "function_tools");
    if (h->has_tools) {
        bool g = true;
        buf_puts(b, "{");
        json_kstr(b, &g, "system_prompt", h->tools_system);
        json_kstr(b, &g, "tools", h->tools_json);
        json_kstr(b, &g, "tool_response_str", h->tools_response);
        json_kint(b, &g, "calls", h->tools_calls);
        buf_puts(b, "}");
    } else {
        buf_puts(b, "null");
    }
#endif
    json_key(b, &f, "clear_kv_cache");
    {
        bool g = true;
        buf_puts(b, "{");
        json_kint(b, &g, "count", h->clear_count);
        json_kint(b, &g, "keep_system_prompt", h->clear_keep_system_prompt);
#if SIM_HAS_1_2_1
        json_key(b, &g, "start_pos");
        if (h->clear_has_range && h->clear_start_set)
            buf_printf(b, "%d", h->clear_start);
        else
            buf_puts(b, "null");
        json_key(b, &g, "end_pos");
        if (h->clear_has_range && h->clear_end_set)
            buf_printf(b, "%d", h->clear_end);
        else
            buf_puts(b, "null");
#endif
        buf_puts(b, "}");
    }
    json_kint(b, &f, "aborts", atomic_load(&h->aborts));
    json_kint(b, &f, "lora_loaded", h->lora_loaded);
    json_kbool(b, &f, "prompt_cache_loaded", h->prompt_cache_loaded);
#if SIM_HAS_1_2_1
    json_kbool(b, &f, "cross_attn_params", h->cross_attn_set);
#endif
    json_key(b, &f, "history");
    buf_puts(b, "[");
    for (size_t i = 0; i < h->history_len; i++) {
        if (i) buf_puts(b, ", ");
        json_str(b, h->history[i]);
    }
    buf_puts(b, "]");
    kv_inspect(b, &f, h);
    json_kint(b, &f, "max_concurrent_runs", atomic_load(&h->max_running));
    json_kint(b, &f, "running", atomic_load(&h->running));
    buf_puts(b, "}");
}

SIM_EXPORT const char *rkllm_sim_inspect(LLMHandle handle) {
    SimHandle *h = sim_handle(handle);
    if (!h) return NULL;
    SimBuf b = {0};
    pthread_mutex_lock(&h->mu);
    sim_inspect_json(&b, h);
    free(h->inspect);
    h->inspect = b.data;
    pthread_mutex_unlock(&h->mu);
    return h->inspect;
}
