"""The bound functions of librkllmrt.so as Python sees them: a typed stub of every rkllm.h entry point.

`common.bind_all` returns a namespace whose attributes are the ctypes function objects, prototypes
set from the family module's table; this Protocol states what calling each one takes and returns,
so the type checker follows every call into the library. One stub covers all four families: where a
release changed a prototype, the comment gives both and the stub accepts both. Functions a family
does not declare, or a trimmed library does not export, are absent or None (see
`common.REQUIRED_FUNCTIONS`); the Session calls only the required ones, for the families that have
them.

Arguments are what ctypes accepts for the C type: a structure passed with `ctypes.byref`, the
handle as the `LLMHandle` (`c_void_p`) returned through `rkllm_init`, `bytes` for `const char*`,
None for a NULL pointer.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from ctypes import c_void_p
from typing import Any, Protocol

# typedef void* LLMHandle;  (common.LLMHandle; named here again so this stub imports nothing of ours)
LLMHandle = c_void_p

# What ctypes takes for a `T*` argument: ctypes.byref(x), ctypes.pointer(x), a CFUNCTYPE object for a
# callback, or None for NULL. ctypes' own stubs spell these as private classes.
CPointer = Any


class BoundFunction(Protocol):
    """A ctypes function with `argtypes`/`restype` set by `common.bind`."""

    argtypes: Sequence[type]
    restype: type | None

    def __call__(self, *args: Any) -> Any: ...


class RkllmApi(Protocol):
    # RKLLMParam rkllm_createDefaultParam();
    # (returns the family's RKLLMParam structure by value)
    def rkllm_createDefaultParam(self) -> Any: ...

    # int rkllm_init(LLMHandle* handle, RKLLMParam* param, LLMResultCallback callback);
    # 1.3.0: int rkllm_init(LLMHandle* handle, RKLLMParam* param, RKLLMCallback* callback);
    def rkllm_init(self, handle: CPointer, param: CPointer, callback: CPointer, /) -> int: ...

    # int rkllm_run(LLMHandle handle, RKLLMInput* rkllm_input,
    #               RKLLMInferParam* rkllm_infer_params, void* userdata);
    def rkllm_run(self, handle: LLMHandle, rkllm_input: CPointer, rkllm_infer_params: CPointer,
                  userdata: CPointer, /) -> int: ...

    # int rkllm_abort(LLMHandle handle);
    def rkllm_abort(self, handle: LLMHandle, /) -> int: ...

    # int rkllm_destroy(LLMHandle handle);
    def rkllm_destroy(self, handle: LLMHandle, /) -> int: ...

    # 1.2.0:  int rkllm_clear_kv_cache(LLMHandle handle, int keep_system_prompt);
    # 1.2.1+: int rkllm_clear_kv_cache(LLMHandle handle, int keep_system_prompt,
    #                                  int* start_pos, int* end_pos);
    # (not in 1.1)
    @property
    def rkllm_clear_kv_cache(self) -> BoundFunction: ...

    # int rkllm_set_chat_template(LLMHandle handle, const char* system_prompt,
    #                             const char* prompt_prefix, const char* prompt_postfix);
    # (1.2.0+)
    def rkllm_set_chat_template(self, handle: LLMHandle, system_prompt: bytes,
                                prompt_prefix: bytes, prompt_postfix: bytes, /) -> int: ...

    # int rkllm_set_function_tools(LLMHandle handle, const char* system_prompt,
    #                              const char* tools, const char* tool_response_str);
    # (1.2.1+; absent or None where the family or a trimmed library lacks it)
    @property
    def rkllm_set_function_tools(self) -> Callable[[LLMHandle, bytes, bytes, bytes], int] | None: ...
