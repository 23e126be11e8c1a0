"""A bug inside the runtime path (not an RkllmMqttError or ValueError) still answers the request.

The failing step is a real internal step made to raise (monkeypatched), over MQTT with the real
broker and simulator: the request gets exactly one `runtime_error` final with a one-line message,
at once rather than at its timeout, and the next request is served.
"""

from __future__ import annotations

from typing import Any

import pytest

from rkllm_mqtt.runtime import prefill, session
from rkllm_mqtt.simulator import expected_answer

pytestmark = pytest.mark.timeout(60)


def _fail_on_boom(original: Any) -> Any:
    """`original`, except that a run whose prompt says "boom" raises a bug-like error."""
    def step(*args: Any, **kwargs: Any) -> Any:
        if any("boom" in str(a) for a in (*args, *kwargs.values())):
            raise RuntimeError("lost\nits way")
        return original(*args, **kwargs)
    return step


@pytest.mark.parametrize("where", ["plan", "run"])
def test_an_unexpected_exception_ends_the_request_with_one_runtime_error(
    where, broker, daemon, probe_factory, monkeypatch
):
    if where == "plan":  # inside Session.generate, before the run is queued
        monkeypatch.setattr(session, "plan_request", _fail_on_boom(session.plan_request))
    else:  # on the worker thread, inside the run path
        monkeypatch.setattr(prefill.PrefillState, "before_run",
                            _fail_on_boom(prefill.PrefillState.before_run))
    svc = daemon(broker, runtime={"isolation": "thread"})  # the patch lives in this process
    probe = probe_factory(broker, topics=(svc.topics["response"],))
    probe.publish(svc.topics["prompt"], {"id": "bad", "prompt": "boom", "conversation": "c"})
    final = probe.final("bad")
    assert final["status"] == "error" and final["error"]["code"] == "runtime_error"
    message = final["error"]["message"]
    assert "\n" not in message and "RuntimeError" in message and "lost its way" in message
    probe.publish(svc.topics["prompt"], {"id": "next", "prompt": "hello", "conversation": "c"})
    assert probe.final("next")["text"] == expected_answer("hello")
    assert len(probe.replies("bad", "final")) == 1
