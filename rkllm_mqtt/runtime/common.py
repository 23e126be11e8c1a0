"""What every RKLLM ABI family (rkllm.h 1.1.0 – 1.3.0) declares identically, and the binding helpers.

The family modules form a chain, each holding only what its release changed: `abi_1_1` mirrors the
whole 1.1 header (less what is here), `abi_1_2_0` builds on it, `abi_1_2` on `abi_1_2_0` and `abi_1_3`
on `abi_1_2`, taking every unchanged declaration from the previous family. So a family module *is*
the difference between its release and the one before. What is byte-for-byte the same in all four
headers lives here.
"""

from __future__ import annotations

import ctypes
from collections.abc import Sequence
from ctypes import POINTER, Structure, c_char_p, c_float, c_int, c_int32, c_size_t, c_void_p
from dataclasses import dataclass
from types import SimpleNamespace
from typing import TYPE_CHECKING, Any, cast

from rkllm_mqtt.errors import RuntimeLoadError

if TYPE_CHECKING:
    from rkllm_mqtt.runtime.api import BoundFunction, RkllmApi

# True on LP64 (aarch64, x86-64): the data model the size table of each family module was compiled for.
IS_64BIT = ctypes.sizeof(c_void_p) == 8

# typedef void* LLMHandle;
LLMHandle = c_void_p

# typedef enum {
#     RKLLM_RUN_NORMAL  = 0, /**< The LLM call is in a normal running state. */
#     RKLLM_RUN_WAITING = 1, /**< The LLM call is waiting for complete UTF-8 encoded character. */
#     RKLLM_RUN_FINISH  = 2, /**< The LLM call has finished execution. */
#     RKLLM_RUN_ERROR   = 3, /**< An error occurred during the LLM call. */
# } LLMCallState;                 (1.1.x adds RKLLM_RUN_GET_LAST_HIDDEN_LAYER = 4, see abi_1_1)
LLMCallState = c_int
RKLLM_RUN_NORMAL = 0
RKLLM_RUN_WAITING = 1
RKLLM_RUN_FINISH = 2
RKLLM_RUN_ERROR = 3

# typedef enum {
#     RKLLM_INPUT_PROMPT      = 0, /**< Input is a text prompt. */
#     RKLLM_INPUT_TOKEN       = 1, /**< Input is a sequence of tokens. */
#     RKLLM_INPUT_EMBED       = 2, /**< Input is an embedding vector. */
#     RKLLM_INPUT_MULTIMODAL  = 3, /**< Input is multimodal (e.g., text and image). */
# } RKLLMInputType;
RKLLMInputType = c_int
RKLLM_INPUT_PROMPT = 0
RKLLM_INPUT_TOKEN = 1
RKLLM_INPUT_EMBED = 2
RKLLM_INPUT_MULTIMODAL = 3

# typedef enum {
#     RKLLM_INFER_GENERATE                    = 0,
#     RKLLM_INFER_GET_LAST_HIDDEN_LAYER       = 1,
# } RKLLMInferMode;               (1.2.0+ adds RKLLM_INFER_GET_LOGITS = 2, see abi_1_2_0)
RKLLMInferMode = c_int
RKLLM_INFER_GENERATE = 0
RKLLM_INFER_GET_LAST_HIDDEN_LAYER = 1


# typedef struct {
#     const char* lora_adapter_path;
#     const char* lora_adapter_name;
#     float scale;
# } RKLLMLoraAdapter;
class RKLLMLoraAdapter(Structure):
    _fields_ = [
        ("lora_adapter_path", c_char_p),
        ("lora_adapter_name", c_char_p),
        ("scale", c_float),
    ]


# typedef struct {
#     float* embed;
#     size_t n_tokens;
# } RKLLMEmbedInput;
class RKLLMEmbedInput(Structure):
    _fields_ = [
        ("embed", POINTER(c_float)),
        ("n_tokens", c_size_t),
    ]


# typedef struct {
#     int32_t* input_ids;
#     size_t n_tokens;
# } RKLLMTokenInput;
class RKLLMTokenInput(Structure):
    _fields_ = [
        ("input_ids", POINTER(c_int32)),
        ("n_tokens", c_size_t),
    ]


# typedef struct {
#     const char* lora_adapter_name;
# } RKLLMLoraParam;
class RKLLMLoraParam(Structure):
    _fields_ = [
        ("lora_adapter_name", c_char_p),
    ]


# typedef struct {
#     int save_prompt_cache;
#     const char* prompt_cache_path;
# } RKLLMPromptCacheParam;
class RKLLMPromptCacheParam(Structure):
    _fields_ = [
        ("save_prompt_cache", c_int),
        ("prompt_cache_path", c_char_p),
    ]


# typedef struct {
#     const float* hidden_states;
#     int embd_size;
#     int num_tokens;
# } RKLLMResultLastHiddenLayer;
class RKLLMResultLastHiddenLayer(Structure):
    _fields_ = [
        ("hidden_states", POINTER(c_float)),
        ("embd_size", c_int),
        ("num_tokens", c_int),
    ]


@dataclass(frozen=True)
class CFunction:
    """One exported function: its name, argtypes and restype, declared next to its C prototype."""

    name: str
    argtypes: Sequence[Any]
    restype: Any


def revise(functions: Sequence[CFunction], *entries: CFunction | str) -> tuple[CFunction, ...]:
    """A family's function table: the previous family's `functions` with `entries` applied in order.

    A CFunction replaces the entry of the same name where it stands; a new name is inserted right
    after the entry given before it (appended if it comes first). A bare name changes nothing: it
    only marks the place of an unchanged entry, so the table keeps the header's order.
    """
    table = list(functions)
    at = len(table) - 1
    for entry in entries:
        name = entry if isinstance(entry, str) else entry.name
        names = [fn.name for fn in table]
        if name in names:
            at = names.index(name)
            if isinstance(entry, CFunction):
                table[at] = entry
        elif isinstance(entry, CFunction):
            at += 1
            table.insert(at, entry)
        else:
            raise ValueError(f"{name} is not in the previous family's table")
    return tuple(table)


def bind(lib: ctypes.CDLL, fn: CFunction, *, abi: str, path: str) -> BoundFunction:
    """Look up one symbol and set argtypes/restype, so no call can go out without them.

    `lib[name]` returns a fresh function object each time, so two families bound against the same
    CDLL (detection, then the real binding) can never share or overwrite each other's prototypes.
    """
    try:
        func = lib[fn.name]
    except AttributeError as err:
        raise RuntimeLoadError(
            f"{path} does not export {fn.name}, which the RKLLM {abi} ABI requires; "
            f"check runtime.library (and runtime.abi)"
        ) from err
    func.argtypes = list(fn.argtypes)
    func.restype = fn.restype
    return cast("BoundFunction", func)


# The entry points the Session calls. The rest of a family's table (LoRA, prompt cache, function
# tools, cross-attention, run_async) is bound when the library exports it and is None otherwise, so a
# trimmed or vendor-patched library that leaves out something we never call still loads.
REQUIRED_FUNCTIONS = frozenset({
    "rkllm_createDefaultParam", "rkllm_init", "rkllm_run", "rkllm_abort", "rkllm_destroy",
    "rkllm_clear_kv_cache", "rkllm_set_chat_template",
})


def bind_all(lib: ctypes.CDLL, functions: Sequence[CFunction], *, abi: str, path: str) -> RkllmApi:
    """Bind a family's whole function table; attribute names are the C names."""
    bound: dict[str, BoundFunction | None] = {}
    for fn in functions:
        if fn.name in REQUIRED_FUNCTIONS or hasattr(lib, fn.name):
            bound[fn.name] = bind(lib, fn, abi=abi, path=path)
        else:
            bound[fn.name] = None
    return cast("RkllmApi", SimpleNamespace(**bound))


def check_layout(
    abi: str,
    sizes: dict[type[ctypes.Structure] | type[ctypes.Union], int],
    offsets: dict[tuple[type[ctypes.Structure], str], int],
) -> None:
    """Compare our mirror with the sizes/offsets g++ gives for the release's own rkllm.h (LP64).

    A wrong layout is a segfault or silently wrong sampling on a user's board, so a mismatch stops
    the import. The table is for LP64 only; 32-bit ARM has other sizes and is not checked.
    """
    if not IS_64BIT:
        return
    problems = [
        f"sizeof({cls.__name__}) = {ctypes.sizeof(cls)}, header says {size}"
        for cls, size in sizes.items()
        if ctypes.sizeof(cls) != size
    ]
    problems += [
        f"offsetof({cls.__name__}, {field}) = {getattr(cls, field).offset}, header says {offset}"
        for (cls, field), offset in offsets.items()
        if getattr(cls, field).offset != offset
    ]
    if problems:
        raise ImportError(f"RKLLM {abi} ctypes layout is wrong: " + "; ".join(problems))
