"""The child process's side of the engine imports the runtime and nothing of the daemon."""

from __future__ import annotations

import json
import subprocess
import sys

ALLOWED = ("rkllm_mqtt", "rkllm_mqtt.errors")


def test_the_child_imports_only_the_standard_library_and_the_runtime():
    code = ("import json, sys, rkllm_mqtt.runtime.child; "
            "print(json.dumps(sorted(m for m in sys.modules if not m.startswith('_'))))")
    loaded = json.loads(subprocess.run([sys.executable, "-c", code], check=True,
                                       capture_output=True, text=True).stdout)
    ours = [m for m in loaded if m.split(".")[0] == "rkllm_mqtt"]
    assert [m for m in ours if m not in ALLOWED and not m.startswith("rkllm_mqtt.runtime")] == []
    assert [m for m in loaded if m.split(".")[0] in ("pydantic", "pydantic_core", "paho",
                                                     "tenacity", "pydantic_settings")] == []
