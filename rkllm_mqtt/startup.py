"""What `rkllm-mqtt run` settles before it touches the broker: which config file it read, and
whether the runtime library and the model can be used at all.

A new user's first mistakes are a missing config file and an unset or unreadable model; they must
be told that at once, not after a broker connection and a retry loop.
"""

from __future__ import annotations

import os
from pathlib import Path

from rkllm_mqtt.config import DEFAULT_CONFIG_PATH, RuntimeSettings
from rkllm_mqtt.errors import RuntimeInitError, RuntimeLoadError


def config_path(explicit: Path | None) -> Path | None:
    """`--config`; without it the default path when it exists; None: defaults + environment."""
    if explicit is None and DEFAULT_CONFIG_PATH.is_file():
        return DEFAULT_CONFIG_PATH
    return explicit


def config_line(path: Path | None) -> str:
    if path is not None:
        return f"config: read {path}"
    return (f"config: no config file ({DEFAULT_CONFIG_PATH} does not exist, no --config); using "
            "defaults and RKLLM_MQTT_* environment variables")


def preflight(runtime: RuntimeSettings) -> None:
    """Raise the error `run` would otherwise meet only after connecting: model and library first."""
    if not runtime.model:
        raise RuntimeInitError("runtime.model is not set (the path of the .rkllm model file)")
    if not os.path.isfile(runtime.model):
        raise RuntimeInitError(f"model file not found: {runtime.model} (check runtime.model)")
    if not os.access(runtime.model, os.R_OK):
        raise RuntimeInitError(
            f"model file is not readable by this user: {runtime.model} (check runtime.model)")
    library = runtime.library
    if os.sep in library and not os.path.isfile(library):
        raise RuntimeLoadError(f"runtime library not found: {library} (check runtime.library)")
    if os.sep in library and not os.access(library, os.R_OK):
        raise RuntimeLoadError(
            f"runtime library is not readable by this user: {library} (check runtime.library)")
    if runtime.isolation == "thread":  # the daemon loads it anyway; a child process would load its own
        from rkllm_mqtt.runtime.library import open_library

        open_library(library, runtime.abi)
