"""The runtime in a child process: a native crash or a hung run costs one request, not the daemon."""

from __future__ import annotations

import os
import signal
from functools import partial

import pytest

from rkllm_mqtt.engine import InProcessEngine, ProcessEngine
from rkllm_mqtt.errors import RuntimeInitError
from rkllm_mqtt.service import Service
from rkllm_mqtt.simulator import expected_answer

pytestmark = pytest.mark.timeout(90)


@pytest.fixture
def process_daemon(daemon_settings):
    started: list[Service] = []

    def make(address, *, abort_grace_s: float = 10.0, **sections) -> Service:
        svc = Service(daemon_settings(address, **sections),
                      engine_factory=partial(ProcessEngine, abort_grace_s=abort_grace_s))
        svc.start(connect_attempts=3)
        started.append(svc)
        return svc

    yield make
    for svc in started:
        svc.stop()


def test_streams_through_the_child_and_survives_a_native_crash(broker, process_daemon,
                                                                 probe_factory):
    svc = process_daemon(broker)
    probe = probe_factory(broker, topics=(svc.topics["response"],))
    probe.publish(svc.topics["prompt"], {"id": "p1", "prompt": "through a pipe"})
    final = probe.final("p1")
    assert final["text"] == expected_answer("through a pipe")
    tokens = probe.replies("p1", "token")
    assert "".join(r["text"] for r in sorted(tokens, key=lambda r: r["seq"])) == final["text"]
    first_pid = svc.engine.pid

    probe.publish(svc.topics["prompt"], {"id": "crash", "prompt": "[sim:crash]"})
    probe.publish(svc.topics["prompt"], {"id": "after", "prompt": "still here"})
    crashed = probe.final("crash", timeout=30)
    assert crashed["status"] == "error" and crashed["error"]["code"] == "runtime_crashed"
    assert "SIGSEGV" in crashed["error"]["message"] or "SIGABRT" in crashed["error"]["message"]
    assert probe.final("after", timeout=30)["text"] == expected_answer("still here")
    assert svc.engine.pid != first_pid
    assert svc.state_payload()["state"] == "idle"


def test_a_run_that_ignores_abort_is_killed_after_the_grace_period(broker, process_daemon,
                                                                   probe_factory):
    svc = process_daemon(broker, abort_grace_s=0.5)
    probe = probe_factory(broker, topics=(svc.topics["response"],))
    probe.publish(svc.topics["prompt"], {"id": "frozen", "prompt": "[sim:hang]"})
    probe.wait_for(lambda m: m.payload.startswith(b'{"id":"frozen","type":"token"'))
    os.kill(svc.engine.pid, signal.SIGSTOP)  # a runtime stuck inside the library
    probe.publish(svc.topics["abort"], "frozen")
    final = probe.final("frozen", timeout=30)
    assert final["error"]["code"] == "aborted" and final["finish_reason"] == "abort"
    assert "restarted" in final["error"]["message"]
    probe.publish(svc.topics["prompt"], {"id": "next", "prompt": "fresh runtime"})
    assert probe.final("next", timeout=30)["text"] == expected_answer("fresh runtime")


def test_load_errors_come_back_from_the_child(broker, daemon_settings, tmp_path):
    settings = daemon_settings(broker, runtime={"model": str(tmp_path / "nope.rkllm")})
    with pytest.raises(RuntimeInitError, match=r"nope\.rkllm"):
        Service(settings, engine_factory=ProcessEngine).start(connect_attempts=3)


def test_runtime_isolation_key_selects_the_engine(broker, daemon_settings):
    assert isinstance(Service(daemon_settings(broker)).engine, ProcessEngine)  # the default
    assert isinstance(Service(daemon_settings(broker, runtime={"isolation": "thread"})).engine,
                      InProcessEngine)
    isolated = Service(daemon_settings(broker, runtime={"isolation": "process"}))
    assert isinstance(isolated.engine, ProcessEngine)
