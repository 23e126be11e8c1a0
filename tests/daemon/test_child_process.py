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
from rkllm_mqtt.runtime import FinalEvent, GenerationRequest
from rkllm_mqtt.runtime.jobs import RunCommand
from rkllm_mqtt.simulator import expected_answer

pytestmark = pytest.mark.timeout(60)

# Imported by every Python started with this directory first on PYTHONPATH: at exit it writes
# the process's sys.modules, minus what the interpreter had loaded before any of our code ran.
SITECUSTOMIZE = '''
import atexit, json, os, sys
_at_start = set(sys.modules)
def _dump():
    with open(os.environ["RKLLM_TEST_MODULES_OUT"], "w") as f:
        json.dump({"all": sorted(sys.modules), "ours": sorted(set(sys.modules) - _at_start)}, f)
atexit.register(_dump)
'''


def test_the_child_holds_only_the_standard_library_and_the_runtime(daemon_settings, broker,
                                                                   tmp_path, monkeypatch):
    site = tmp_path / "site"
    site.mkdir()
    (site / "sitecustomize.py").write_text(SITECUSTOMIZE)
    out = tmp_path / "modules.json"
    monkeypatch.setenv("PYTHONPATH", str(site))
    monkeypatch.setenv("RKLLM_TEST_MODULES_OUT", str(out))

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
    foreign = [m for m in loaded["ours"]
               if m.split(".")[0] not in stdlib and m != "__mp_main__"
               and m != "rkllm_mqtt" and not m.startswith("rkllm_mqtt.runtime.")
               and m != "rkllm_mqtt.runtime"]
    assert foreign == []
    assert "rkllm_mqtt.runtime.session" in loaded["ours"]  # the dump did see the child's work
    heavy = ("pydantic", "pydantic_core", "pydantic_settings", "paho", "tenacity")
    assert [m for m in loaded["all"] if m.split(".")[0] in heavy] == []
