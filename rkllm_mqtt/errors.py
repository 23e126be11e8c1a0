"""One exception family, so the CLI can turn any expected failure into one clear line."""

from __future__ import annotations


class RkllmMqttError(Exception):
    """Base of every error this package raises on purpose."""


class ConfigError(RkllmMqttError):
    """Invalid configuration; names the offending key so the user can fix it."""

    def __init__(self, key: str, reason: str) -> None:
        super().__init__(f"config error: {key}: {reason}")
        self.key = key
        self.reason = reason


class RuntimeLoadError(RkllmMqttError):
    """The runtime library could not be loaded (missing file, wrong architecture, missing symbol)."""


class AbiDetectionError(RkllmMqttError):
    """`runtime.abi = "auto"` could not tell the ABI family; the user must set the key."""


class RuntimeInitError(RkllmMqttError):
    """rkllm_init failed: missing model, model/runtime mismatch, context above the model's limit."""


class RuntimeRunError(RkllmMqttError):
    """A call into the runtime failed outside of a generation (clear, template, closed session)."""


class SimulatorBuildError(RkllmMqttError):
    """The simulator library could not be compiled (no C compiler, compile error)."""


def one_line(err: BaseException) -> str:
    """An unexpected exception as the one-line message of an error reply: what it is, not where.

    Our own errors already read as a sentence; anything else is a bug, named by its type.
    """
    text = " ".join(str(err).split())
    if isinstance(err, RkllmMqttError | ValueError):
        return text or type(err).__name__
    return f"internal error ({type(err).__name__}): {text}" if text else (
        f"internal error ({type(err).__name__})")
