"""The daemon's discovery payload in real Home Assistant, over HA's real MQTT and a real broker.

The payload is `rkllm_mqtt.discovery.build_discovery` itself, so a change to the daemon's table that
HA would refuse or mis-read fails here.
"""

from __future__ import annotations

import json
from collections.abc import Callable

import pytest
from harness import KITCHEN_ENTITIES, Broker, OutsideClient, wait_for_mqtt_idle, wait_until
from homeassistant.config_entries import ConfigEntry
from homeassistant.const import STATE_UNAVAILABLE, STATE_UNKNOWN
from homeassistant.core import HomeAssistant
from homeassistant.helpers import device_registry as dr
from homeassistant.helpers import entity_registry as er

from rkllm_mqtt import __version__
from rkllm_mqtt.config import Settings, load_config
from rkllm_mqtt.discovery import build_discovery, discovery_topic

MODEL = "qwen2.5-1.5b-w8a8"

DIAGNOSTIC = {"tokens_per_second", "ttft", "queue", "model"}


def _settings(broker: Broker, **homeassistant: str) -> Settings:
    return load_config(
        mqtt={"host": broker.host, "port": broker.port, "node_id": "kitchen"},
        homeassistant=homeassistant,
    )


async def _announce(
    hass: HomeAssistant,
    daemon: OutsideClient,
    settings: Settings,
    expected: dict[str, str],
    log_problems: Callable[[], list[str]],
) -> dict[str, er.RegistryEntry]:
    """Publish what the daemon publishes at start; wait until HA made every entity and subscribed.

    A payload HA refuses shows up as a log record; that fails at once with HA's reason.
    """
    prefix = settings.mqtt.prefix
    daemon.publish(f"{prefix}/status", "online", retain=True)
    payload = json.dumps(build_discovery(settings, model=MODEL))
    daemon.publish(discovery_topic(settings), payload, retain=True)
    registry = er.async_get(hass)
    unique_ids = {cid: f"rkllm_{settings.mqtt.node_id}_{cid}" for cid in expected}

    def all_created() -> dict[str, er.RegistryEntry] | None:
        assert log_problems() == []
        entries = {
            cid: registry.async_get_entity_id(entity_id.split(".")[0], "mqtt", unique_ids[cid])
            for cid, entity_id in expected.items()
        }
        if None in entries.values():
            return None
        return {cid: registry.async_get(entity_id) for cid, entity_id in entries.items()}

    entries = await wait_until(hass, all_created, "every discovered entity")
    await wait_for_mqtt_idle(hass)  # state topics are subscribed only now
    return entries


@pytest.fixture
def daemon(outside_client: Callable[[], OutsideClient]) -> OutsideClient:
    return outside_client()


async def test_every_component_is_an_entity_of_one_device(
    hass: HomeAssistant,
    mqtt_ready: ConfigEntry,
    mqtt_broker: Broker,
    daemon: OutsideClient,
    mqtt_log_problems: Callable[[], list[str]],
) -> None:
    settings = _settings(mqtt_broker)
    entries = await _announce(hass, daemon, settings, KITCHEN_ENTITIES, mqtt_log_problems)

    assert {cid: entry.entity_id for cid, entry in entries.items()} == KITCHEN_ENTITIES
    device_ids = {entry.device_id for entry in entries.values()}
    assert len(device_ids) == 1
    device = dr.async_get(hass).async_get(device_ids.pop())
    assert device is not None
    assert device.identifiers == {("mqtt", "rkllm_kitchen")}
    assert (device.name, device.manufacturer, device.model, device.sw_version) == (
        "RKLLM kitchen",
        "rkllm-mqtt",
        MODEL,
        __version__,
    )
    categories = {cid: entry.entity_category for cid, entry in entries.items()}
    assert {cid for cid, cat in categories.items() if cat == "diagnostic"} == DIAGNOSTIC
    assert set(categories.values()) == {None, "diagnostic"}
    # Online, but no state published yet: known-nothing, not unavailable.
    assert hass.states.get(KITCHEN_ENTITIES["status"]).state == STATE_UNKNOWN
    assert mqtt_log_problems() == []


async def test_entity_ids_follow_a_custom_device_name(
    hass: HomeAssistant,
    mqtt_ready: ConfigEntry,
    mqtt_broker: Broker,
    daemon: OutsideClient,
    mqtt_log_problems: Callable[[], list[str]],
) -> None:
    """HA 2025.4 ignores `def_ent_id` and derives ids from the names; both must agree."""
    settings = _settings(mqtt_broker, device_name="Küche LLM")
    expected = {
        cid: entity_id.replace("rkllm_kitchen", "kuche_llm")
        for cid, entity_id in KITCHEN_ENTITIES.items()
    }
    entries = await _announce(hass, daemon, settings, expected, mqtt_log_problems)

    assert {cid: entry.entity_id for cid, entry in entries.items()} == expected
    payload = build_discovery(settings, model=None)
    assert {cid: c["def_ent_id"] for cid, c in payload["cmps"].items()} == expected
    assert mqtt_log_problems() == []


async def test_state_messages_set_entity_states(
    hass: HomeAssistant,
    mqtt_ready: ConfigEntry,
    mqtt_broker: Broker,
    daemon: OutsideClient,
    mqtt_log_problems: Callable[[], list[str]],
) -> None:
    settings = _settings(mqtt_broker)
    await _announce(hass, daemon, settings, KITCHEN_ENTITIES, mqtt_log_problems)
    prefix = settings.mqtt.prefix
    ids = KITCHEN_ENTITIES

    def state(cid: str) -> str:
        return hass.states.get(ids[cid]).state

    generating = {
        "state": "generating",
        "busy": True,
        "queue": 2,
        "model": MODEL,
        "runtime_version": "1.2.3",
        "abi": "1.2",
        "tokens_per_second": 16.7,
        "ttft_ms": 380.5,
        "requests_total": 7,
        "errors_total": 1,
    }
    daemon.publish(f"{prefix}/state", json.dumps(generating), retain=True)
    await wait_until(hass, lambda: state("status") == "generating", "status generating")
    assert {cid: state(cid) for cid in ("busy", "tokens_per_second", "ttft", "queue", "model")} == {
        "busy": "on",
        "tokens_per_second": "16.7",
        "ttft": "380.5",
        "queue": "2",
        "model": MODEL,
    }
    assert hass.states.get(ids["tokens_per_second"]).attributes["unit_of_measurement"] == "tok/s"
    assert hass.states.get(ids["ttft"]).attributes["unit_of_measurement"] == "ms"
    assert hass.states.get(ids["status"]).attributes["options"] == [
        "idle",
        "loading",
        "generating",
        "error",
    ]

    # Before the first run the daemon has no speed figures: null must read as unknown.
    idle = {**generating, "state": "idle", "busy": False, "queue": 0}
    idle.update(tokens_per_second=None, ttft_ms=None)
    daemon.publish(f"{prefix}/state", json.dumps(idle), retain=True)
    await wait_until(hass, lambda: state("status") == "idle", "status idle")
    assert [state(cid) for cid in ("busy", "tokens_per_second", "ttft", "queue")] == [
        "off",
        STATE_UNKNOWN,
        STATE_UNKNOWN,
        "0",
    ]

    # A state without the fields (an older or partial daemon) gives unknown, not an error.
    daemon.publish(f"{prefix}/state", json.dumps({"state": "loading"}), retain=True)
    await wait_until(hass, lambda: state("status") == "loading", "status loading")
    assert [state(cid) for cid in ("busy", "tokens_per_second", "ttft", "queue", "model")] == [
        STATE_UNKNOWN
    ] * 5
    assert mqtt_log_problems() == []


async def test_last_response_is_cut_with_full_text_in_attributes(
    hass: HomeAssistant,
    mqtt_ready: ConfigEntry,
    mqtt_broker: Broker,
    daemon: OutsideClient,
    mqtt_log_problems: Callable[[], list[str]],
) -> None:
    settings = _settings(mqtt_broker)
    await _announce(hass, daemon, settings, KITCHEN_ENTITIES, mqtt_log_problems)
    prefix = settings.mqtt.prefix
    entity_id = KITCHEN_ENTITIES["last_response"]
    full = "Grüße aus der Küche 🍲 " * 20  # 440 characters, multi-byte
    attributes = {"text": full, "id": "kitchen-42", "usage": {"completion_tokens": 120}}

    daemon.publish(f"{prefix}/last_response/attributes", json.dumps(attributes), retain=True)
    daemon.publish(f"{prefix}/last_response", full[:255], retain=True)
    await wait_until(hass, lambda: hass.states.get(entity_id).state != STATE_UNKNOWN, "response")
    current = hass.states.get(entity_id)
    assert current.state == full[:255].strip()  # HA strips a rendered template
    assert current.attributes["text"] == full
    assert current.attributes["id"] == "kitchen-42"

    # Should an over-long text ever reach the topic, the template cuts it instead of HA dropping it.
    other = "x" * 300
    daemon.publish(f"{prefix}/last_response", other, retain=True)
    await wait_until(hass, lambda: hass.states.get(entity_id).state == "x" * 255, "cut response")
    assert mqtt_log_problems() == []


async def test_prompt_and_abort_publish_commands(
    hass: HomeAssistant,
    mqtt_ready: ConfigEntry,
    mqtt_broker: Broker,
    daemon: OutsideClient,
    mqtt_log_problems: Callable[[], list[str]],
) -> None:
    settings = _settings(mqtt_broker)
    await _announce(hass, daemon, settings, KITCHEN_ENTITIES, mqtt_log_problems)
    prefix = settings.mqtt.prefix
    daemon.subscribe(f"{prefix}/prompt")
    daemon.subscribe(f"{prefix}/abort")

    await hass.services.async_call(
        "text",
        "set_value",
        {"entity_id": KITCHEN_ENTITIES["prompt"], "value": "Wie spät ist es?"},
        blocking=True,
    )
    msg = await daemon.next_message(f"{prefix}/prompt")
    assert (msg.payload.decode(), msg.retain) == ("Wie spät ist es?", False)

    await hass.services.async_call(
        "button", "press", {"entity_id": KITCHEN_ENTITIES["abort"]}, blocking=True
    )
    msg = await daemon.next_message(f"{prefix}/abort")
    assert (msg.payload, msg.retain) == (b"", False)
    assert mqtt_log_problems() == []


async def test_event_message_fires_the_event_entity(
    hass: HomeAssistant,
    mqtt_ready: ConfigEntry,
    mqtt_broker: Broker,
    daemon: OutsideClient,
    mqtt_log_problems: Callable[[], list[str]],
) -> None:
    settings = _settings(mqtt_broker)
    await _announce(hass, daemon, settings, KITCHEN_ENTITIES, mqtt_log_problems)
    entity_id = KITCHEN_ENTITIES["response"]
    assert hass.states.get(entity_id).state == STATE_UNKNOWN
    assert hass.states.get(entity_id).attributes["event_types"] == ["completed", "error", "aborted"]

    event = {"event_type": "completed", "id": "kitchen-42", "finish_reason": "stop"}
    daemon.publish(f"{settings.mqtt.prefix}/event", json.dumps(event))
    fired = await wait_until(
        hass,
        lambda: (s := hass.states.get(entity_id)).state != STATE_UNKNOWN and s,
        "the event entity to fire",
    )
    assert fired.attributes["event_type"] == "completed"
    assert fired.attributes["id"] == "kitchen-42"
    assert fired.attributes["finish_reason"] == "stop"
    assert mqtt_log_problems() == []


async def test_offline_makes_every_entity_unavailable(
    hass: HomeAssistant,
    mqtt_ready: ConfigEntry,
    mqtt_broker: Broker,
    daemon: OutsideClient,
    mqtt_log_problems: Callable[[], list[str]],
) -> None:
    settings = _settings(mqtt_broker)
    await _announce(hass, daemon, settings, KITCHEN_ENTITIES, mqtt_log_problems)
    prefix = settings.mqtt.prefix
    daemon.publish(f"{prefix}/state", json.dumps({"state": "idle", "busy": False}), retain=True)
    await wait_until(
        hass, lambda: hass.states.get(KITCHEN_ENTITIES["status"]).state == "idle", "idle"
    )

    def states() -> set[str]:
        return {hass.states.get(entity_id).state for entity_id in KITCHEN_ENTITIES.values()}

    assert STATE_UNAVAILABLE not in states()
    daemon.publish(f"{prefix}/status", "offline", retain=True)
    await wait_until(hass, lambda: states() == {STATE_UNAVAILABLE}, "every entity unavailable")

    daemon.publish(f"{prefix}/status", "online", retain=True)
    await wait_until(hass, lambda: STATE_UNAVAILABLE not in states(), "entities available again")
    assert hass.states.get(KITCHEN_ENTITIES["status"]).state == "idle"
    assert mqtt_log_problems() == []
