"""Bodies of `rkllm-mqtt check` and `rkllm-mqtt generate`: the runtime alone, no MQTT.

Both end a failure with one line naming what to change, and return an exit code:
0 ok, 1 the generation failed, 3 the library or model could not be loaded (as in cli.py).
"""

from __future__ import annotations

import os
import sys
from typing import TextIO

from rkllm_mqtt.config import Settings
from rkllm_mqtt.engine import runtime_options
from rkllm_mqtt.errors import RkllmMqttError
from rkllm_mqtt.exitcodes import EXIT_FAILURE, EXIT_OK, EXIT_RUNTIME
from rkllm_mqtt.runtime.events import ErrorEvent, FinalEvent, GenerationRequest, TokenEvent
from rkllm_mqtt.runtime.library import FAMILIES, open_library
from rkllm_mqtt.runtime.session import Session


def _fail(err: RkllmMqttError | str, stream: TextIO) -> int:
    print(f"rkllm-mqtt: {err}", file=stream)
    return EXIT_RUNTIME


def check(
    settings: Settings, *, init_model: bool = True, out: TextIO = sys.stdout,
    err: TextIO = sys.stderr,
) -> int:
    """Load the library, report ABI/version/symbols/model, then (by default) rkllm_init once."""
    runtime = settings.runtime
    try:
        loaded = open_library(runtime.library, runtime.abi)
    except RkllmMqttError as error:
        return _fail(error, err)
    how = "auto-detected" if runtime.abi == "auto" else "from runtime.abi"
    names = [fn.name for fn in FAMILIES[loaded.abi].FUNCTIONS]
    bound = [name for name in names if getattr(loaded.functions, name) is not None]
    print(f"library:         {loaded.path}", file=out)
    print(f"ABI family:      {loaded.abi} ({how})", file=out)
    print(f"runtime version: {loaded.runtime_version or 'not found in the library file'}",
          file=out)
    print(f"symbols:         {len(bound)} of {len(names)} exported: {', '.join(bound)}", file=out)
    model = runtime.model
    if not model:
        return _fail("runtime.model is not set (the path of the .rkllm model file)", err)
    size = f"{os.path.getsize(model) / 2**20:.1f} MiB" if os.path.isfile(model) else "missing"
    print(f"model:           {model} ({size})", file=out)
    if not init_model:
        return EXIT_OK
    session = Session(runtime_options(runtime))
    try:
        session.open()
    except RkllmMqttError as error:
        return _fail(error, err)
    finally:
        session.close()
    print("rkllm_init:      ok", file=out)
    return EXIT_OK


def generate(
    settings: Settings, text: str, *, out: TextIO = sys.stdout, err: TextIO = sys.stderr
) -> int:
    """One local generation: tokens to `out` as they arrive, statistics to `err`."""
    session = Session(runtime_options(settings.runtime))
    try:
        session.open()
    except RkllmMqttError as error:
        session.close()
        return _fail(error, err)
    try:
        generation = session.generate(GenerationRequest(prompt=text))
        try:
            for event in generation:
                if isinstance(event, TokenEvent):
                    out.write(event.text)
                    out.flush()
        except KeyboardInterrupt:
            generation.abort()
            generation.result()
            raise
        outcome = generation.result()
    finally:
        session.close()
    if out.isatty():
        out.write("\n")
        out.flush()
    if isinstance(outcome, ErrorEvent):
        print(f"rkllm-mqtt: {outcome.code}: {outcome.message}", file=err)
        return EXIT_FAILURE
    print(_summary(outcome), file=err)
    return EXIT_OK


def _summary(final: FinalEvent) -> str:
    stats = final.stats
    parts = [f"finish: {final.finish_reason}", f"{stats.completion_tokens} tokens"]
    if stats.prompt_tokens is not None:
        parts.append(f"prompt {stats.prompt_tokens} tokens")
    if stats.ttft_ms is not None:
        parts.append(f"first token {stats.ttft_ms:.0f} ms")
    if stats.tokens_per_s is not None:
        parts.append(f"{stats.tokens_per_s:.1f} tokens/s")
    parts.append(f"total {stats.total_ms:.0f} ms")
    if stats.memory_mb is not None:
        parts.append(f"memory {stats.memory_mb:.0f} MB")
    return "[" + ", ".join(parts) + "]"
