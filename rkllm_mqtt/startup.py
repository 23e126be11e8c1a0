"""What `rkllm-mqtt run` settles before it touches the broker: which config file it read, and
whether the runtime library and the model can be used at all.

A new user's first mistakes are a missing config file and an unset or unreadable model; they must
be told that at once, not after a broker connection and a retry loop.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
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
    if runtime.isolation == "thread":  # the daemon loads it anyway
        from rkllm_mqtt.runtime.library import open_library

        open_library(library, runtime.abi)
    else:  # loaded where it will run: a crash or a foreign file must not take the daemon along
        _probe_library(library, runtime.abi)


# Runs in a throwaway interpreter: only the runtime package, as in the runtime's child process.
_PROBE = """
import sys
from rkllm_mqtt.runtime.errors import RkllmMqttError
from rkllm_mqtt.runtime.library import open_library
try:
    open_library(sys.argv[1], sys.argv[2])
except RkllmMqttError as err:
    print(err, file=sys.stderr)
    sys.exit(3)
"""


def _probe_library(library: str, abi: str) -> None:
    """open_library (load + ABI) in a short-lived process, so the daemon itself never maps it."""
    try:
        proc = subprocess.run([sys.executable, "-c", _PROBE, library, abi], capture_output=True,
                              text=True, timeout=60, check=False)
    except subprocess.TimeoutExpired as err:
        raise RuntimeLoadError(f"loading {library} did not finish in 60 s (check runtime.library)"
                               ) from err
    if proc.returncode == 0:
        return
    last = (proc.stderr.strip().splitlines() or [""])[-1]
    if proc.returncode < 0:
        name = signal.Signals(-proc.returncode).name
        raise RuntimeLoadError(f"{library} crashed while loading ({name}; check runtime.library "
                               f"and runtime.abi)")
    raise RuntimeLoadError(last or f"cannot load {library} (check runtime.library)")
