"""One exception family, so the CLI can turn any expected failure into one clear line."""

from __future__ import annotations

from rkllm_mqtt.runtime.errors import (
    AbiDetectionError,
    RkllmMqttError,
    RuntimeInitError,
    RuntimeLoadError,
    RuntimeRunError,
    one_line,
)

__all__ = [
    "AbiDetectionError",
    "ConfigError",
    "RkllmMqttError",
    "RuntimeInitError",
    "RuntimeLoadError",
    "RuntimeRunError",
    "SimulatorBuildError",
    "one_line",
]


class ConfigError(RkllmMqttError):
    """Invalid configuration; names the offending key so the user can fix it."""

    def __init__(self, key: str, reason: str) -> None:
        super().__init__(f"config error: {key}: {reason}")
        self.key = key
        self.reason = reason


class SimulatorBuildError(RkllmMqttError):
    """The simulator library could not be compiled (no C compiler, compile error)."""
