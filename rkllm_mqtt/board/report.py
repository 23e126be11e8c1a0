"""The body of `rkllm-mqtt check`: gather the facts once, then one finding per question, in the
order a user fixes them (config, board, runtime, model, speed, broker)."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import TextIO

from rkllm_mqtt.board import probes
from rkllm_mqtt.board.access import User, can_open, service_user
from rkllm_mqtt.board.findings import Finding, Status, as_json, as_text, exit_code
from rkllm_mqtt.board.initprobe import InitReport, probe
from rkllm_mqtt.board.modelfile import ModelFile, read_model
from rkllm_mqtt.board.system import Board
from rkllm_mqtt.config import Settings
from rkllm_mqtt.errors import RkllmMqttError
from rkllm_mqtt.exitcodes import EXIT_USAGE
from rkllm_mqtt.runtime.handoff import native_library
from rkllm_mqtt.runtime.library import LoadedLibrary, open_library


def _load(path: str, abi: str) -> tuple[LoadedLibrary | None, str | None]:
    try:
        return open_library(path, abi), None
    except RkllmMqttError as err:
        return None, str(err)


def _model_file(path: str | None, user: User) -> ModelFile | None:
    if not path or not can_open(user, Path(path)):
        return None
    try:
        return read_model(Path(path))
    except OSError:
        return None


def findings(settings: Settings, *, config_path: Path | None, board: Board,
             user: User) -> list[Finding]:
    runtime = settings.runtime
    loaded, load_error = _load(runtime.library, runtime.abi)
    model = _model_file(runtime.model, user)
    found = [probes.config_file(config_path)]
    library = probes.library(runtime.library, user, loaded, load_error)
    model_finding = probes.model(runtime.model, user, model, None)
    # rkllm_init only when it can get as far as the runtime: the other findings say why not.
    init: InitReport | None = None
    if Status.FAIL not in (library.status, model_finding.status):
        init = probe(runtime)
    platform = (init.platform if init else None) or (model.platform if model else None)
    found += [
        probes.soc(board, platform),
        probes.npu_driver(board, init),
        probes.npu_access(board, user),
        library,
        probes.callback(native_library() is not None),
        probes.cpu(board, loaded.runtime_version if loaded else None),
        probes.model(runtime.model, user, model, init) if init else model_finding,
    ]
    if init is not None:
        found += [probes.context(runtime.max_context_len, init), probes.rkllm_init(init)]
    return [*found, probes.cpu_governor(board), probes.npu_governor(board),
            probes.memory(board, model.size if model else None), probes.broker(settings.mqtt)]


def run_check(settings: Settings, *, config_path: Path | None, root: Path = Path("/"),
              user: str | None = None, json: bool = False, out: TextIO = sys.stdout) -> int:
    """Print every finding (text or JSON) and return 0, or 1/3 when one is FAIL."""
    try:
        who = service_user(user)
    except KeyError:
        print(f"rkllm-mqtt: no user {user!r} (--user)", file=sys.stderr)
        return EXIT_USAGE
    result = findings(settings, config_path=config_path, board=Board(root), user=who)
    out.write(as_json(result) if json else as_text(result))
    out.flush()
    return exit_code(result)
