"""The private broker used by the tests and the demo: Mosquitto, or amqtt when Mosquitto is absent."""

from __future__ import annotations

import importlib.util

import pytest

from rkllm_mqtt.broker import BrokerError, start_broker


def test_mosquitto_restart_keeps_retained_messages(private_broker, probe_factory):
    b = private_broker()
    assert b.kind == "mosquitto" and "5" in b.protocols
    probe_factory(b).publish("keep/me", b"retained", retain=True)
    port = b.port
    b.restart()
    assert b.port == port and b.running
    probe = probe_factory(b, topics=("keep/#",))
    assert probe.wait_for(lambda m: m.topic == "keep/me").payload == b"retained"


@pytest.mark.skipif(importlib.util.find_spec("amqtt") is None, reason="amqtt not installed")
def test_amqtt_fallback_serves_mqtt_311(probe_factory):
    with start_broker(prefer="amqtt") as b:
        assert b.kind == "amqtt" and b.protocols == ("3.1.1",)
        probe = probe_factory(b, protocol="3.1.1", topics=("a/#",))
        probe.publish("a/b", b"via amqtt")
        assert probe.wait_for(lambda m: m.topic == "a/b").payload == b"via amqtt"
        with pytest.raises(BrokerError, match="Mosquitto"):
            start_broker(prefer="amqtt", users={"u": "p"})
    assert not b.running and not b.workdir.exists()


def test_the_daemon_never_imports_the_demo_broker():
    import subprocess
    import sys

    code = ("import sys, rkllm_mqtt.cli, rkllm_mqtt.commands.run; "
            "sys.exit(int('rkllm_mqtt.broker' in sys.modules or 'amqtt' in sys.modules))")
    assert subprocess.run([sys.executable, "-c", code], check=False).returncode == 0
