"""Everything that touches librkllmrt.so: the ctypes binding per ABI family and the Session.

Importing this package never loads the library; `Session.open()` (or `detect_abi`) does.
"""

from __future__ import annotations

from rkllm_mqtt.runtime.contract import ErrorCode, Message
from rkllm_mqtt.runtime.events import (
    ErrorEvent,
    Event,
    FinalEvent,
    GenerationRequest,
    RunStats,
    Sampling,
    TokenEvent,
)
from rkllm_mqtt.runtime.library import detect_abi, load_library
from rkllm_mqtt.runtime.options import RuntimeOptions
from rkllm_mqtt.runtime.prompt import render_messages
from rkllm_mqtt.runtime.session import Generation, Session

__all__ = [
    "ErrorCode",
    "ErrorEvent",
    "Event",
    "FinalEvent",
    "Generation",
    "GenerationRequest",
    "Message",
    "RunStats",
    "RuntimeOptions",
    "Sampling",
    "Session",
    "TokenEvent",
    "detect_abi",
    "load_library",
    "render_messages",
]
