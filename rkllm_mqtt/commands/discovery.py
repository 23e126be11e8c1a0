"""`rkllm-mqtt discovery [--remove]`: the retained Home Assistant discovery, without the daemon."""

from __future__ import annotations

import os

from rkllm_mqtt.config import Settings
from rkllm_mqtt.discovery import build_discovery
from rkllm_mqtt.ha_outputs import compact_json
from rkllm_mqtt.mqtt_client import MqttClient
from rkllm_mqtt.topics import Topics


def publish_discovery(settings: Settings) -> int:
    """Publish the retained device discovery once."""
    model = os.path.basename(settings.runtime.model or "") or None
    topic = _publish_retained(settings, compact_json(build_discovery(settings, model=model)))
    print(f"published {topic}")
    return 0


def remove_discovery(settings: Settings) -> int:
    """Clear the retained discovery, so Home Assistant forgets the device."""
    topic = _publish_retained(settings, b"")
    print(f"removed {topic}")
    return 0


def _publish_retained(settings: Settings, payload: bytes) -> str:
    topic = Topics.of(settings).discovery
    client = MqttClient(settings.mqtt, client_id=f"{settings.mqtt.effective_client_id}-discovery")
    client.connect(attempts=3)
    try:
        client.publish_raw(topic, payload, qos=1, retain=True).wait_for_publish(10)
    finally:
        client.close()
    return topic
