"""Broker restarts, TLS with a password file, and `ask` as a client of the real daemon."""

from __future__ import annotations

import io
import time

import pytest

from rkllm_mqtt.commands.ask import ask
from rkllm_mqtt.simulator import expected_answer

pytestmark = pytest.mark.timeout(90)


def test_broker_restart_mid_generation_final_arrives_exactly_once(private_broker, daemon,
                                                                  probe_factory):
    b = private_broker()
    svc = daemon(b, mqtt={"keepalive": 5})
    # a persistent session: the broker keeps the subscription and queues replies across its restart
    probe = probe_factory(b, topics=(svc.topics["response"],), client_id="restart-probe",
                          persistent=True)
    probe.publish(svc.topics["prompt"],
                  {"id": "survivor", "prompt": "[sim:tokens=40][sim:delay_ms=40] keep going"})
    probe.wait_for(lambda m: m.payload.startswith(b'{"id":"survivor","type":"token"'))
    b.stop()
    deadline = time.monotonic() + 10
    while svc.mqtt.connected and time.monotonic() < deadline:
        time.sleep(0.01)
    assert not svc.mqtt.connected
    b.start()
    final = probe.final("survivor", timeout=40)
    assert final["status"] == "ok" and final["usage"]["completion_tokens"] == 40
    probe.publish(svc.topics["prompt"], {"id": "marker", "prompt": "after the restart"})
    assert probe.final("marker", timeout=20)["text"] == expected_answer("after the restart")
    assert len(probe.replies("survivor", "final")) == 1
    tokens = {r["seq"]: r["text"] for r in probe.replies("survivor", "token")}
    assert "".join(tokens[i] for i in range(40)) == final["text"]


def test_daemon_over_tls_with_password_file_and_ask(private_broker, daemon_settings, tls_files,
                                                    tls_server, tmp_path):
    from rkllm_mqtt.service import Service

    b = private_broker(users={"daemon": "daemon pw"}, tls=tls_server)
    pw = tmp_path / "password"
    pw.write_text("daemon pw\n")
    settings = daemon_settings(b, mqtt={
        "username": "daemon", "password_file": str(pw), "tls": True,
        "tls_ca": str(tls_files["ca"]), "tls_cert": str(tls_files["client_cert"]),
        "tls_key": str(tls_files["client_key"])})
    svc = Service(settings)
    svc.start(connect_attempts=3)
    try:
        out, err = io.StringIO(), io.StringIO()
        assert ask(settings, "secure hello", timeout=20, stream_to=out, errors_to=err) == 0, \
            err.getvalue()
        assert out.getvalue() == expected_answer("secure hello") + "\n"
    finally:
        svc.stop()


def test_ask_reports_error_replies_and_timeouts(broker, daemon, daemon_settings):
    svc = daemon(broker)
    out, err = io.StringIO(), io.StringIO()
    assert ask(svc.settings, "[sim:error]", timeout=20, stream_to=out, errors_to=err) == 1
    assert "runtime_error" in err.getvalue()
    out, err = io.StringIO(), io.StringIO()
    assert ask(svc.settings, "quiet please", timeout=20, stream=False, stream_to=out,
               errors_to=err) == 0
    assert out.getvalue() == expected_answer("quiet please") + "\n"  # the answer alone
    assert err.getvalue().startswith("[finish: stop, ") and " tokens" in err.getvalue()
    nobody = daemon_settings(broker)  # a node no daemon serves
    err = io.StringIO()
    assert ask(nobody, "anyone?", timeout=0.5, stream_to=io.StringIO(), errors_to=err) == 1
    assert "no final reply within 0.5 s" in err.getvalue()
