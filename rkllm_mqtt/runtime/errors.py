"""The errors the runtime raises, at the root of the package's one exception family.

They live below the daemon so the child process that hosts the runtime imports nothing but the
standard library and this package; `rkllm_mqtt.errors` re-exports them with the daemon's own.
"""

from __future__ import annotations


class RkllmMqttError(Exception):
    """Base of every error this package raises on purpose."""


class RuntimeLoadError(RkllmMqttError):
    """The runtime library could not be loaded (missing file, wrong architecture, missing symbol)."""


class AbiDetectionError(RkllmMqttError):
    """`runtime.abi = "auto"` could not tell the ABI family, or the library contradicts it."""


class RuntimeInitError(RkllmMqttError):
    """rkllm_init failed: missing model, model/runtime mismatch, context above the model's limit."""


class RuntimeRunError(RkllmMqttError):
    """A call into the runtime failed outside of a generation (clear, template, closed session)."""


def one_line(err: BaseException) -> str:
    """An unexpected exception as the one-line message of an error reply: what it is, not where.

    Our own errors already read as a sentence; anything else is a bug, named by its type.
    """
    text = " ".join(str(err).split())
    if isinstance(err, RkllmMqttError | ValueError):
        return text or type(err).__name__
    return f"internal error ({type(err).__name__}): {text}" if text else (
        f"internal error ({type(err).__name__})")

