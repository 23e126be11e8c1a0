"""Every fault answered, every time: the runtime in its child process under crashes, hangs, outages,
bursts, SIGTERM and hostile payloads. Each test checks that every accepted request got exactly one
final reply and that a good request is served afterwards.

The faults come from the simulator (`[sim:crash]`, `[sim:hang_hard]`, RKLLM_SIM_FAIL=init_crash),
standing in for what rknn-llm's issues report from boards: a crash during a run (#129), a run stuck
inside the inference function (#315), a segfault in a second rkllm_init (#522).
"""

from __future__ import annotations

import json
import logging
import os
import signal
import subprocess
import sys
import threading
import time
import uuid
from collections import Counter
from functools import partial
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from rkllm_mqtt.engine import ProcessEngine
from rkllm_mqtt.errors import RuntimeInitError
from rkllm_mqtt.service import Service
from rkllm_mqtt.simulator import build_simulator, expected_answer

pytestmark = pytest.mark.timeout(180)

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture
def fault_daemon(daemon_settings):
    """A daemon whose runtime runs in a child process, with a short abort grace for the tests."""
    started: list[Service] = []

    def make(address, *, abort_grace_s: float = 1.0, restart_delays_s=None, **sections) -> Service:
        sections.setdefault("runtime", {})["isolation"] = "process"
        kwargs = {"abort_grace_s": abort_grace_s}
        if restart_delays_s is not None:
            kwargs["restart_delays_s"] = restart_delays_s
        svc = Service(daemon_settings(address, **sections),
                      engine_factory=partial(ProcessEngine, **kwargs))
        svc.start(connect_attempts=5)
        started.append(svc)
        return svc

    yield make
    for svc in started:
        svc.stop()


def finals(probe, request_id) -> list[dict]:
    return probe.replies(request_id, "final")


def assert_served_after(probe, svc, marker: str = "still serving") -> None:
    request_id = f"after-{uuid.uuid4().hex[:6]}"
    probe.publish(svc.topics["prompt"], {"id": request_id, "prompt": marker})
    assert probe.final(request_id, timeout=30)["text"] == expected_answer(marker)


def states(probe, svc) -> list[dict]:
    return [m.json for m in probe.matching(lambda m: m.topic == svc.topics["state"])]


# ----------------------------------------------------------------------------- native crashes


def test_native_crash_mid_run_is_answered_and_the_child_restarted(broker, fault_daemon,
                                                                  probe_factory):
    svc = fault_daemon(broker)
    probe = probe_factory(broker, topics=(svc.topics["response"], svc.topics["state"]))
    first_pid = svc.engine.pid
    probe.publish(svc.topics["prompt"], {"id": "boom", "prompt": "[sim:tokens=20][sim:crash]"})
    probe.publish(svc.topics["prompt"], {"id": "queued", "prompt": "behind the crash"})
    crashed = probe.final("boom", timeout=30)
    assert crashed["error"]["code"] == "runtime_crashed" and crashed["finish_reason"] == "error"
    assert "SIGSEGV" in crashed["error"]["message"]
    assert probe.final("queued", timeout=30)["text"] == expected_answer("behind the crash")
    assert_served_after(probe, svc)
    assert len(finals(probe, "boom")) == 1 and len(finals(probe, "queued")) == 1
    assert svc.engine.pid != first_pid
    seen = states(probe, svc)
    assert any(s["state"] == "loading" for s in seen)  # the reload showed
    last = probe.wait_for(lambda m: m.topic == svc.topics["state"] and m.json["state"] == "idle"
                          and m.json.get("runtime_restarts") == 1).json
    assert "error" not in last


def test_crash_in_rkllm_init_without_a_version_string_names_runtime_abi(broker, daemon_settings,
                                                                         sim_cache, monkeypatch):
    bare = build_simulator("1.2", cache_dir=sim_cache, defines=("RKLLM_SIM_NO_VERSION",))
    monkeypatch.setenv("RKLLM_SIM_FAIL", "init_crash")
    settings_ = daemon_settings(broker, runtime={"library": str(bare), "isolation": "process"})
    svc = Service(settings_)
    with pytest.raises(RuntimeInitError) as raised:
        svc.start(connect_attempts=3)
    message = str(raised.value)
    assert message.startswith(
        "librkllmrt.so crashed in rkllm_init: check runtime.abi (configured 1.2)"), message
    assert "SIGSEGV" in message


def test_crash_in_rkllm_init_stops_run_with_exit_code_3_and_one_line(broker, sim_model,
                                                                      sim_cache, tmp_path):
    bare = build_simulator("1.2", cache_dir=sim_cache, defines=("RKLLM_SIM_NO_VERSION",))
    config = tmp_path / "config.toml"
    config.write_text(f"""
[mqtt]
host = "{broker.host}"
port = {broker.port}
node_id = "init{uuid.uuid4().hex[:6]}"

[runtime]
library = "{bare}"
abi = "1.2"
model = "{sim_model}"
isolation = "process"

[homeassistant]
discovery = false
""")
    env = {**os.environ, "RKLLM_SIM_FAIL": "init_crash"}
    proc = subprocess.run([sys.executable, "-m", "rkllm_mqtt", "run", "--config", str(config)],
                          env=env, capture_output=True, text=True, timeout=60, cwd=REPO)
    assert proc.returncode == 3, proc.stderr
    lines = [line for line in proc.stderr.splitlines()
             if "librkllmrt.so crashed in rkllm_init" in line]
    assert len(lines) == 1 and "check runtime.abi (configured 1.2)" in lines[0], proc.stderr


def test_repeated_crashes_back_off_then_state_error_then_recover_by_themselves(
        broker, fault_daemon, probe_factory, monkeypatch, caplog):
    caplog.set_level(logging.ERROR, logger="rkllm_mqtt.engine")
    svc = fault_daemon(broker, restart_delays_s=(0.0, 0.3, 0.6, 1.0, 1.5))
    probe = probe_factory(broker, topics=(svc.topics["response"], svc.topics["state"]))
    monkeypatch.setenv("RKLLM_SIM_FAIL", "init_crash")  # every reload dies in rkllm_init
    probe.publish(svc.topics["prompt"], {"id": "first", "prompt": "[sim:crash]"})
    assert probe.final("first", timeout=30)["error"]["code"] == "runtime_crashed"
    error_message = probe.wait_for(lambda m: m.topic == svc.topics["state"]
                                   and m.json["state"] == "error", timeout=30)
    error = error_message.json
    assert "failures in a row" in error["error"] and "rkllm_init" in error["error"]
    # while it keeps failing, a request is answered at once rather than left waiting
    probe.publish(svc.topics["prompt"], {"id": "meanwhile", "prompt": "anyone there?"})
    meanwhile = probe.final("meanwhile", timeout=10)
    assert meanwhile["error"]["code"] == "runtime_error"
    assert "unavailable" in meanwhile["error"]["message"]
    monkeypatch.delenv("RKLLM_SIM_FAIL")  # the fault goes away: the next reload succeeds
    recovered = probe.wait_for(lambda m: m.topic == svc.topics["state"]
                               and m.at > error_message.at and m.json["state"] == "idle",
                               timeout=30).json
    assert "error" not in recovered and recovered["runtime_restarts"] == 1
    assert_served_after(probe, svc)
    assert len(finals(probe, "first")) == 1 and len(finals(probe, "meanwhile")) == 1
    waits = [float(r.getMessage().rsplit("retrying in ", 1)[1].split()[0])
             for r in caplog.records if "retrying in" in r.getMessage()]
    assert len(waits) >= 2 and waits == sorted(waits) and waits[-1] > waits[0]  # backing off


# ----------------------------------------------------------------------------- hangs


def test_hang_that_ignores_abort_hits_its_deadline_then_the_child_is_killed(broker, fault_daemon,
                                                                            probe_factory):
    svc = fault_daemon(broker, abort_grace_s=1.0)
    probe = probe_factory(broker, topics=(svc.topics["response"],))
    first_pid = svc.engine.pid
    probe.publish(svc.topics["prompt"], {"id": "stuck", "prompt": "[sim:hang_hard]", "ttl_s": 1})
    probe.publish(svc.topics["prompt"], {"id": "waiting", "prompt": "behind the hang"})
    stuck = probe.final("stuck", timeout=30)
    assert stuck["error"]["code"] == "deadline_exceeded" and stuck["finish_reason"] == "deadline"
    assert "restarted" in stuck["error"]["message"]
    assert probe.final("waiting", timeout=30)["text"] == expected_answer("behind the hang")
    assert svc.engine.pid != first_pid
    # and an explicit abort of a run that ignores it
    probe.publish(svc.topics["prompt"], {"id": "stuck2", "prompt": "[sim:hang_hard]"})
    probe.wait_for(lambda m: m.payload.startswith(b'{"id":"stuck2","type":"token"'))
    probe.publish(svc.topics["abort"], "stuck2")
    assert probe.final("stuck2", timeout=30)["error"]["code"] == "aborted"
    assert_served_after(probe, svc)
    for request_id in ("stuck", "waiting", "stuck2"):
        assert len(finals(probe, request_id)) == 1


# ----------------------------------------------------------------------------- the broker


def test_broker_gone_longer_than_the_keepalive_mid_generation(private_broker, fault_daemon,
                                                              probe_factory):
    b = private_broker()
    svc = fault_daemon(b, mqtt={"keepalive": 5})
    probe = probe_factory(b, topics=(svc.topics["response"],), client_id=f"out-{uuid.uuid4().hex}",
                          persistent=True)
    probe.publish(svc.topics["prompt"],
                  {"id": "outage", "prompt": "[sim:tokens=60][sim:delay_ms=100] through it"})
    probe.wait_for(lambda m: m.payload.startswith(b'{"id":"outage","type":"token"'))
    b.stop()
    time.sleep(7)  # longer than the keepalive
    assert not svc.mqtt.connected
    b.start()
    final = probe.final("outage", timeout=60)
    assert final["status"] == "ok" and final["usage"]["completion_tokens"] == 60
    assert_served_after(probe, svc)
    assert len(finals(probe, "outage")) == 1


# ----------------------------------------------------------------------------- load


def test_a_thousand_requests_from_twenty_clients_each_answered_once(broker, fault_daemon,
                                                                    probe_factory):
    svc = fault_daemon(broker, queue={"max_pending": 1000})
    reply_base = f"rkllm/reply/burst-{uuid.uuid4().hex[:6]}"
    clients = [probe_factory(broker, topics=(f"{reply_base}/{c}",)) for c in range(20)]
    ids = {c: [f"c{c}-r{r}" for r in range(50)] for c in range(20)}

    def send(c: int) -> None:
        for request_id in ids[c]:
            clients[c].client.publish(svc.topics["prompt"], json.dumps(
                {"id": request_id, "prompt": f"burst {request_id}", "stream": c % 2 == 0,
                 "response_topic": f"{reply_base}/{c}"}), qos=1)

    senders = [threading.Thread(target=send, args=(c,)) for c in range(20)]
    for t in senders:
        t.start()
    for t in senders:
        t.join()
    for c, probe in enumerate(clients):
        for request_id in ids[c]:
            final = probe.final(request_id, timeout=120)
            assert final["text"] == expected_answer(f"burst {request_id}")
    for c, probe in enumerate(clients):
        counts = Counter(m.json["id"] for m in probe.matching(lambda m: _is_final(m.payload)))
        assert set(counts) == set(ids[c]) and set(counts.values()) == {1}
    assert_served_after(probe_factory(broker, topics=(svc.topics["response"],)), svc)


# ----------------------------------------------------------------------------- SIGTERM


def _start_daemon_process(config: Path) -> subprocess.Popen[str]:
    return subprocess.Popen([sys.executable, "-m", "rkllm_mqtt", "run", "--config", str(config)],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, cwd=REPO)


def test_sigterm_with_a_full_queue_answers_everything_once(broker, probe_factory, sim_library,
                                                           sim_model, tmp_path):
    node = f"term{uuid.uuid4().hex[:6]}"
    config = tmp_path / "config.toml"
    config.write_text(f"""
[mqtt]
host = "{broker.host}"
port = {broker.port}
node_id = "{node}"

[runtime]
library = "{sim_library}"
abi = "1.2"
model = "{sim_model}"
isolation = "process"

[queue]
max_pending = 8
on_shutdown = "finish"

[homeassistant]
discovery = false
""")
    prefix = f"rkllm/{node}"
    probe = probe_factory(broker, topics=(f"{prefix}/#",))
    proc = _start_daemon_process(config)
    try:
        probe.wait_for(lambda m: m.topic == f"{prefix}/state" and m.json["state"] == "idle",
                       timeout=30)
        probe.publish(f"{prefix}/prompt", {"id": "running",
                                           "prompt": "[sim:tokens=10][sim:delay_ms=100]"})
        probe.wait_for(lambda m: m.payload.startswith(b'{"id":"running","type":"token"'))
        queued = [f"q{i}" for i in range(9)]  # 8 fill the queue, the 9th is refused
        for request_id in queued:
            probe.publish(f"{prefix}/prompt", {"id": request_id, "prompt": request_id})
        probe.final("q8")
        probe.wait_for(lambda m: m.topic == f"{prefix}/state" and m.json["queue"] == 8)
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(30) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
        output = proc.communicate()[0]
    assert probe.final("running")["status"] == "ok", output
    assert probe.final("q8")["error"]["code"] == "queue_full"
    for request_id in queued[:8]:
        assert probe.final(request_id)["error"]["code"] == "aborted"
    for request_id in ["running", *queued]:
        assert len(finals(probe, request_id)) == 1
    # no runtime process left behind, and a new daemon serves
    leftover = subprocess.run(["pgrep", "-f", f"rkllm_mqtt.engine.*{config}"], capture_output=True)
    assert leftover.returncode != 0
    restarted_at = time.monotonic()
    proc = _start_daemon_process(config)
    try:
        probe.wait_for(lambda m: m.topic == f"{prefix}/state" and m.at > restarted_at
                       and m.json["state"] == "idle", timeout=30)
        probe.publish(f"{prefix}/prompt", {"id": "again", "prompt": "after the restart"})
        assert probe.final("again", timeout=30)["text"] == expected_answer("after the restart")
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(30)
        proc.communicate()


def test_a_child_stuck_in_the_library_does_not_outlive_a_killed_daemon(broker, probe_factory,
                                                                      sim_library, sim_model,
                                                                      tmp_path):
    node = f"orph{uuid.uuid4().hex[:6]}"
    config = tmp_path / "config.toml"
    config.write_text(f"""
[mqtt]
host = "{broker.host}"
port = {broker.port}
node_id = "{node}"

[runtime]
library = "{sim_library}"
model = "{sim_model}"

[homeassistant]
discovery = false
""")
    prefix = f"rkllm/{node}"
    probe = probe_factory(broker, topics=(f"{prefix}/#",))
    proc = _start_daemon_process(config)
    try:
        probe.wait_for(lambda m: m.topic == f"{prefix}/state" and m.json["state"] == "idle",
                       timeout=30)
        probe.publish(f"{prefix}/prompt", {"id": "stuck", "prompt": "[sim:hang_hard]"})
        probe.wait_for(lambda m: m.payload.startswith(b'{"id":"stuck","type":"token"'))
        children = Path(f"/proc/{proc.pid}/task/{proc.pid}/children").read_text().split()
        assert len(children) == 1
        child = int(children[0])
        proc.kill()  # no goodbye: the child never gets its Close, nor reads EOF while stuck
        proc.wait(10)
    finally:
        if proc.poll() is None:
            proc.kill()
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline and _alive(child):
        time.sleep(0.1)
    alive = _alive(child)
    if alive:
        os.kill(child, signal.SIGKILL)
    proc.communicate()  # the child held the output pipe too
    assert not alive


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except FileNotFoundError:
        return False
    return state != "Z"  # a zombie has exited (its parent, init here, reaps it)


# ----------------------------------------------------------------------------- fuzz

_json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=True) | st.text(max_size=40),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=12), inner,
                                                                max_size=4),
    max_leaves=12,
)
_request_like = st.fixed_dictionaries({}, optional={
    "prompt": _json_values, "messages": _json_values, "system": _json_values,
    "conversation": _json_values, "stream": _json_values, "response_topic": _json_values,
    "max_new_tokens": _json_values, "temperature": _json_values, "top_p": _json_values,
    "top_k": _json_values, "priority": _json_values, "ttl_s": _json_values, "stop": _json_values,
})
_payloads = st.one_of(
    st.binary(max_size=300),
    st.text(max_size=200).map(str.encode),
    _json_values.map(lambda v: json.dumps(v).encode()),
    _request_like.map(lambda v: json.dumps(v).encode()),
)


@pytest.fixture(scope="module")
def fuzz_target(broker, sim_library, sim_model):
    from rkllm_mqtt.config import load_config

    from .conftest import Probe

    node = f"fuzz{uuid.uuid4().hex[:6]}"
    svc = Service(load_config(None, mqtt={"host": broker.host, "port": broker.port,
                                          "node_id": node},
                              runtime={"library": str(sim_library), "abi": "1.2",
                                       "model": str(sim_model), "isolation": "process"},
                              queue={"dedupe_window_s": 0},
                              homeassistant={"discovery": True,
                                             "status_topic": f"ha-{node}/status"}),
                  engine_factory=partial(ProcessEngine, abort_grace_s=1.0))
    svc.start(connect_attempts=5)
    probe = Probe(broker.host, broker.port, topics=(f"rkllm/{node}/#", "rkllm/reply/#"))
    yield svc, probe
    probe.close()
    svc.stop()


@settings(max_examples=150, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
@given(topic=st.sampled_from(["prompt", "abort", "ha_status"]), payload=_payloads,
       # Mosquitto disconnects a publisher whose Response Topic has wildcards or control
       # characters (the broker's rule, not the daemon's), so those are left out here
       v5_response_topic=st.none() | st.text(st.characters(categories=("L", "N", "P", "S", "Zs"),
                                                           exclude_characters="#+"),
                                             max_size=30))
def test_fuzz_every_subscribed_topic(fuzz_target, topic, payload, v5_response_topic):
    svc, probe = fuzz_target
    target = {"prompt": svc.topics["prompt"], "abort": svc.topics["abort"],
              "ha_status": svc.settings.homeassistant.status_topic}[topic]
    correlation = uuid.uuid4().bytes
    if topic == "prompt":
        payload = _unique_id(payload)
    probe.publish(target, payload, response_topic=v5_response_topic or None,
                  correlation_data=correlation)
    if topic == "prompt":
        probe.wait_for(lambda m: m.correlation_data == correlation and _is_final(m.payload),
                       timeout=30)
        time.sleep(0.02)  # a second final, if there were one, would be right behind
        got = probe.matching(lambda m: m.correlation_data == correlation
                             and _is_final(m.payload))
        assert len(got) == 1, [m.payload for m in got]
    else:
        assert_served_after(probe, svc, "fuzzed")
    assert svc.alive


def _is_final(payload: bytes) -> bool:
    try:
        return json.loads(payload).get("type") == "final"
    except (ValueError, AttributeError):
        return False


def _unique_id(payload: bytes) -> bytes:
    """A fuzzed request keeps its shape but not a repeated id (a repeat is rightly not answered)."""
    try:
        obj = json.loads(payload)
    except ValueError:
        return payload
    if isinstance(obj, dict) and "id" in obj:
        obj["id"] = uuid.uuid4().hex
        return json.dumps(obj).encode()
    return payload
