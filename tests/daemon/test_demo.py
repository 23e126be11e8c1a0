"""`rkllm-mqtt demo` end to end, and the daemon on the amqtt fallback broker the demo may use."""

from __future__ import annotations

import importlib.util

import pytest

from rkllm_mqtt.broker import start_broker
from rkllm_mqtt.commands.demo import demo
from rkllm_mqtt.simulator import expected_answer

pytestmark = pytest.mark.timeout(60)


def test_demo_answers_the_prompt(capsys):
    assert demo(prompt="demo question", fast=True) == 0
    out = capsys.readouterr().out
    assert expected_answer("demo question") + "\n" in out
    assert "mosquitto_pub -h 127.0.0.1 -p " in out and "-t rkllm/demo/prompt" in out


@pytest.mark.skipif(importlib.util.find_spec("amqtt") is None, reason="amqtt not installed")
def test_daemon_on_amqtt_with_mqtt_311(daemon, probe_factory):
    with start_broker(prefer="amqtt") as b:
        svc = daemon(b, mqtt={"protocol": "3.1.1"})
        probe = probe_factory(b, protocol="3.1.1", topics=(svc.topics["response"],))
        probe.publish(svc.topics["prompt"], {"id": "am", "prompt": "pure python broker"})
        assert probe.final("am")["text"] == expected_answer("pure python broker")
        svc.stop()
