"""Shape of the Home Assistant discovery payload (HA's acceptance of it is tested in tests/ha)."""

from __future__ import annotations

import json

import pytest

from rkllm_mqtt import __version__
from rkllm_mqtt.config import Settings, load_config
from rkllm_mqtt.discovery import build_discovery, discovery_topic, slugify

COMPONENT_IDS = {
    "status",
    "busy",
    "tokens_per_second",
    "ttft",
    "queue",
    "model",
    "last_response",
    "prompt",
    "abort",
    "response",
}


def settings(**sections: dict) -> Settings:
    mqtt = {"node_id": "kitchen", **sections.pop("mqtt", {})}
    return load_config(mqtt=mqtt, **sections)


def expand(component: dict, key: str) -> str:
    """What HA does with `~`: substitute it at the start of a topic."""
    topic = component[key]
    assert topic.startswith("~/"), f"{key}={topic!r} does not use ~"
    return component["~"] + topic[1:]


def test_discovery_topic_uses_prefix_and_node() -> None:
    assert discovery_topic(settings()) == "homeassistant/device/kitchen/config"
    custom = settings(homeassistant={"discovery_prefix": "ha"}, mqtt={"node_id": "rk-1"})
    assert discovery_topic(custom) == "ha/device/rk-1/config"


def test_root_has_device_origin_and_full_availability_but_no_tilde() -> None:
    payload = build_discovery(settings(), model="qwen2.5-1.5b-w8a8")
    assert set(payload) == {"dev", "o", "avty_t", "pl_avail", "pl_not_avail", "qos", "cmps"}
    assert payload["dev"] == {
        "ids": ["rkllm_kitchen"],
        "name": "RKLLM kitchen",
        "mf": "rkllm-mqtt",
        "mdl": "qwen2.5-1.5b-w8a8",
        "sw": __version__,
    }
    assert payload["o"] == {
        "name": "rkllm-mqtt",
        "sw": __version__,
        "url": "https://github.com/rkllm-mqtt/rkllm-mqtt",
    }
    assert (payload["avty_t"], payload["pl_avail"], payload["pl_not_avail"]) == (
        "rkllm/kitchen/status",
        "online",
        "offline",
    )
    assert payload["qos"] == 1


def test_every_component_carries_tilde_unique_id_and_default_entity_id() -> None:
    payload = build_discovery(settings(), model=None)
    components = payload["cmps"]
    assert set(components) == COMPONENT_IDS
    for cid, component in components.items():
        assert component["~"] == "rkllm/kitchen"
        assert component["uniq_id"] == f"rkllm_kitchen_{cid}"
        assert component["def_ent_id"].startswith(f"{component['p']}.rkllm_kitchen_")
        assert "object_id" not in component and "obj_id" not in component
    assert len({c["def_ent_id"] for c in components.values()}) == len(components)
    assert "object_id" not in json.dumps(payload)


def test_components_use_the_contract_topics() -> None:
    components = build_discovery(settings(), model=None)["cmps"]
    state_users = {"status", "busy", "tokens_per_second", "ttft", "queue", "model"}
    for cid in state_users:
        assert expand(components[cid], "stat_t") == "rkllm/kitchen/state"
    last = components["last_response"]
    assert expand(last, "stat_t") == "rkllm/kitchen/last_response"
    assert expand(last, "json_attr_t") == "rkllm/kitchen/last_response/attributes"
    assert expand(components["prompt"], "cmd_t") == "rkllm/kitchen/prompt"
    assert expand(components["abort"], "cmd_t") == "rkllm/kitchen/abort"
    assert expand(components["response"], "stat_t") == "rkllm/kitchen/event"


def test_platform_options() -> None:
    c = build_discovery(settings(), model=None)["cmps"]
    assert {cid: comp["p"] for cid, comp in c.items()} == {
        "status": "sensor",
        "busy": "binary_sensor",
        "tokens_per_second": "sensor",
        "ttft": "sensor",
        "queue": "sensor",
        "model": "sensor",
        "last_response": "sensor",
        "prompt": "text",
        "abort": "button",
        "response": "event",
    }
    assert (c["status"]["dev_cla"], c["status"]["ops"]) == (
        "enum",
        ["idle", "loading", "generating", "error"],
    )
    assert c["busy"]["dev_cla"] == "running"
    assert (c["tokens_per_second"]["unit_of_meas"], c["tokens_per_second"]["stat_cla"]) == (
        "tok/s",
        "measurement",
    )
    assert (c["ttft"]["dev_cla"], c["ttft"]["unit_of_meas"]) == ("duration", "ms")
    assert c["prompt"]["max"] == 255
    assert c["abort"]["pl_prs"] == ""
    assert c["response"]["evt_typ"] == ["completed", "error", "aborted"]
    diagnostic = {cid for cid, comp in c.items() if comp.get("ent_cat") == "diagnostic"}
    assert diagnostic == {"tokens_per_second", "ttft", "queue", "model"}
    assert all(comp.get("ic", "mdi:").startswith("mdi:") for comp in c.values())


@pytest.mark.parametrize(
    ("cid", "field"),
    [
        ("status", "state"),
        ("tokens_per_second", "tokens_per_second"),
        ("ttft", "ttft_ms"),
        ("queue", "queue"),
        ("model", "model"),
    ],
)
def test_value_templates_read_the_state_field_with_a_none_default(cid: str, field: str) -> None:
    template = build_discovery(settings(), model=None)["cmps"][cid]["val_tpl"]
    assert template == "{{ value_json." + field + " | default(None) }}"


def test_device_name_and_model_defaults_and_overrides() -> None:
    default = build_discovery(settings(), model=None)
    assert default["dev"]["name"] == "RKLLM kitchen"
    assert default["dev"]["mdl"] == "RKLLM LLM daemon"
    named = build_discovery(settings(homeassistant={"device_name": "Küche LLM"}), model=None)
    assert named["dev"]["name"] == "Küche LLM"
    # Entity ids follow the device name, as HA derives them when it ignores def_ent_id.
    assert named["cmps"]["ttft"]["def_ent_id"] == "sensor.kuche_llm_time_to_first_token"
    assert named["cmps"]["status"]["uniq_id"] == "rkllm_kitchen_status"


def test_node_with_hyphen_gives_valid_entity_ids() -> None:
    payload = build_discovery(settings(mqtt={"node_id": "rk-3588"}), model=None)
    assert payload["cmps"]["busy"]["def_ent_id"] == "binary_sensor.rkllm_rk_3588_busy"
    assert payload["cmps"]["busy"]["uniq_id"] == "rkllm_rk-3588_busy"
    assert payload["cmps"]["busy"]["~"] == "rkllm/rk-3588"
    assert payload["avty_t"] == "rkllm/rk-3588/status"


def test_base_topic_and_qos_come_from_config() -> None:
    payload = build_discovery(settings(mqtt={"base_topic": "home/llm", "qos": 0}), model=None)
    assert payload["avty_t"] == "home/llm/kitchen/status"
    assert payload["qos"] == 0
    assert {c["~"] for c in payload["cmps"].values()} == {"home/llm/kitchen"}


def test_payload_is_deterministic_json_and_independent_of_the_table() -> None:
    """The publisher skips a payload identical to the last one, so equal input must give equal
    bytes; and a caller editing one payload must not change the next."""
    first = build_discovery(settings(), model="m")
    text = json.dumps(first)
    first["cmps"]["status"]["ops"].append("bogus")
    first["cmps"]["status"]["name"] = "changed"
    assert json.dumps(build_discovery(settings(), model="m")) == text


def test_slugify() -> None:
    assert slugify("RKLLM kitchen") == "rkllm_kitchen"
    assert slugify("Küche  LLM!") == "kuche_llm"
    assert slugify("Time to first token") == "time_to_first_token"
