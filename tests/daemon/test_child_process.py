"""The runtime's child process as the engine starts it: after a real generation its sys.modules
holds the standard library and rkllm_mqtt.runtime, nothing of the daemon (no pydantic, no paho,
no config, no service): that is what keeps daemon plus child within the memory budget."""

from __future__ import annotations

import json
import sys
import threading
from pathlib import Path

import pytest

from rkllm_mqtt.engine import ProcessEngine
from rkllm_mqtt.runtime import FinalEvent, GenerationRequest, child
from rkllm_mqtt.runtime.jobs import RunCommand
from rkllm_mqtt.simulator import expected_answer

pytestmark = pytest.mark.timeout(60)

# Appended to the child's own boot code: once main() has returned (the engine closed it), write
# the process's sys.modules. The interpreter flags and the boot are the engine's, unchanged.
DUMP = ("; import json, os; json.dump(sorted(sys.modules), "
        "open(os.environ['RKLLM_TEST_MODULES_OUT'], 'w'))")


def test_the_child_starts_isolated_without_site() -> None:
    """-I -S: no PYTHONPATH, no user site, no site-packages .pth files load anything into it."""
    argv = child.command(7)
    assert argv[:4] == [sys.executable, "-I", "-S", "-c"] and argv[-1] == "7"


def test_the_child_holds_only_the_standard_library_and_the_runtime(daemon_settings, broker,
                                                                   tmp_path, monkeypatch):
    out = tmp_path / "modules.json"
    monkeypatch.setenv("RKLLM_TEST_MODULES_OUT", str(out))
    real = child.command

    def dumping(fd: int) -> list[str]:
        argv = real(fd)
        return [*argv[:4], argv[4] + DUMP, *argv[5:]]

    monkeypatch.setattr(child, "command", dumping)
    settings = daemon_settings(broker, runtime={"isolation": "process"})
    done = threading.Event()
    events = []

    def sink(job_id, event):
        events.append(event)
        if isinstance(event, FinalEvent):
            done.set()

    engine = ProcessEngine(settings.runtime, sink)
    engine.open()
    try:
        engine.run("j1", RunCommand(GenerationRequest(prompt="in the child", stop=("zz",))))
        assert done.wait(30)
    finally:
        engine.close()
    assert events[-1].text == expected_answer("in the child")

    loaded = json.loads(Path(out).read_text())
    stdlib = sys.stdlib_module_names
    foreign = [m for m in loaded
               if m.split(".")[0] not in stdlib and m != "__main__"
               and m != "rkllm_mqtt" and not m.startswith("rkllm_mqtt.runtime.")
               and m != "rkllm_mqtt.runtime"]
    assert foreign == []
    assert "rkllm_mqtt.runtime.session" in loaded  # the dump did see the child's work
    heavy = ("pydantic", "pydantic_core", "pydantic_settings", "paho", "tenacity")
    assert [m for m in loaded if m.split(".")[0] in heavy] == []
    assert "site" not in loaded
