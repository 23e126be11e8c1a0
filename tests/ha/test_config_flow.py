"""The integration's config flow in real Home Assistant over a real broker: MQTT discovery, the manual
step that lists the daemons seen on the broker, and the options."""

from __future__ import annotations

from collections.abc import Callable

import pytest
from harness import OutsideClient, wait_until
from homeassistant import config_entries
from homeassistant.core import HomeAssistant
from homeassistant.data_entry_flow import FlowResultType
from homeassistant.helpers.service_info.mqtt import MqttServiceInfo
from integration_fixtures import BASE_TOPIC, rkllm_config_flow, rkllm_const, setup_entry
from pytest_homeassistant_custom_component.common import MockConfigEntry

DOMAIN = rkllm_const.DOMAIN
CONF_BASE_TOPIC = rkllm_const.CONF_BASE_TOPIC
CONF_NODE_ID = rkllm_const.CONF_NODE_ID



def _mqtt_flows(hass: HomeAssistant) -> list[dict]:
    return [
        flow for flow in hass.config_entries.flow.async_progress_by_handler(DOMAIN)
        if flow["context"]["source"] == config_entries.SOURCE_MQTT
    ]


async def test_discovery_offers_an_online_daemon(
    ha_with_mqtt: HomeAssistant, outside_client: Callable[[], OutsideClient]
) -> None:
    hass = ha_with_mqtt
    daemon = outside_client()
    daemon.publish(f"{BASE_TOPIC}/garage/status", "offline", retain=True)
    daemon.publish(f"{BASE_TOPIC}/kitchen/status", "online", retain=True)

    flows = await wait_until(hass, lambda: _mqtt_flows(hass), "a discovery flow")
    # Only the online daemon is offered; the offline one's flow aborted.
    assert [flow["context"]["unique_id"] for flow in flows] == [f"{BASE_TOPIC}/kitchen"]
    assert flows[0]["step_id"] == "confirm"
    assert flows[0]["context"]["title_placeholders"] == {"name": "kitchen"}

    result = await hass.config_entries.flow.async_configure(flows[0]["flow_id"], {})
    assert result["type"] is FlowResultType.CREATE_ENTRY
    assert result["title"] == "RKLLM kitchen"
    assert result["data"] == {CONF_BASE_TOPIC: BASE_TOPIC, CONF_NODE_ID: "kitchen"}
    entry = result["result"]
    assert entry.unique_id == f"{BASE_TOPIC}/kitchen"
    await hass.async_block_till_done()
    assert entry.state is config_entries.ConfigEntryState.LOADED


async def test_discovery_of_a_configured_daemon_aborts(ha_with_mqtt: HomeAssistant) -> None:
    hass = ha_with_mqtt
    await setup_entry(hass, "kitchen")
    result = await hass.config_entries.flow.async_init(
        DOMAIN,
        context={"source": config_entries.SOURCE_MQTT},
        data=MqttServiceInfo(
            topic=f"{BASE_TOPIC}/kitchen/status", payload="online", qos=0, retain=True,
            subscribed_topic=f"{BASE_TOPIC}/+/status", timestamp=0,
        ),
    )
    assert result["type"] is FlowResultType.ABORT
    assert result["reason"] == "already_configured"


async def test_manual_step_lists_the_daemons_seen_on_the_broker(
    ha_with_mqtt: HomeAssistant, outside_client: Callable[[], OutsideClient]
) -> None:
    hass = ha_with_mqtt
    daemon = outside_client()
    daemon.publish("lab/llm/attic/status", "online", retain=True)
    daemon.publish("lab/llm/cellar/status", "offline", retain=True)
    daemon.publish("lab/llm/configured/status", "online", retain=True)
    daemon.publish("other/shed/status", "online", retain=True)
    MockConfigEntry(
        domain=DOMAIN, unique_id="lab/llm/configured",
        data={CONF_BASE_TOPIC: "lab/llm", CONF_NODE_ID: "configured"},
    ).add_to_hass(hass)

    result = await hass.config_entries.flow.async_init(DOMAIN, context={"source": config_entries.SOURCE_USER})
    assert result["type"] is FlowResultType.FORM
    assert result["step_id"] == "user"

    result = await hass.config_entries.flow.async_configure(result["flow_id"], {CONF_BASE_TOPIC: "lab/llm"})
    assert result["type"] is FlowResultType.FORM
    assert result["step_id"] == "pick"
    selector = result["data_schema"].schema[CONF_NODE_ID].config
    # Both statuses are listed, the configured daemon and other base topics are not.
    assert selector["options"] == [
        {"value": "attic", "label": "attic (online)"},
        {"value": "cellar", "label": "cellar (offline)"},
    ]

    result = await hass.config_entries.flow.async_configure(result["flow_id"], {CONF_NODE_ID: "cellar"})
    assert result["type"] is FlowResultType.CREATE_ENTRY
    assert result["title"] == "RKLLM cellar"
    assert result["data"] == {CONF_BASE_TOPIC: "lab/llm", CONF_NODE_ID: "cellar"}
    assert result["result"].unique_id == "lab/llm/cellar"


async def test_manual_step_errors(
    ha_with_mqtt: HomeAssistant, monkeypatch: pytest.MonkeyPatch
) -> None:
    hass = ha_with_mqtt
    monkeypatch.setattr(rkllm_config_flow, "SCAN_TIMEOUT", 1.0)  # nothing will arrive; do not wait 5 s
    result = await hass.config_entries.flow.async_init(DOMAIN, context={"source": config_entries.SOURCE_USER})

    result = await hass.config_entries.flow.async_configure(result["flow_id"], {CONF_BASE_TOPIC: "rkllm/#"})
    assert result["step_id"] == "user"
    assert result["errors"] == {CONF_BASE_TOPIC: "invalid_topic"}

    result = await hass.config_entries.flow.async_configure(
        result["flow_id"], {CONF_BASE_TOPIC: "nobody/here"}
    )
    assert result["step_id"] == "user"
    assert result["errors"] == {"base": "no_daemons"}


async def test_options(ha_with_mqtt: HomeAssistant) -> None:
    hass = ha_with_mqtt
    entry = await setup_entry(hass, "kitchen")
    result = await hass.config_entries.options.async_init(entry.entry_id)
    assert result["type"] is FlowResultType.FORM
    c = rkllm_const
    result = await hass.config_entries.options.async_configure(
        result["flow_id"],
        {c.CONF_PROMPT: "Answer like a pirate.", c.CONF_MAX_NEW_TOKENS: 64.0, c.CONF_TEMPERATURE: 0.2,
         c.CONF_TIMEOUT: 30, c.CONF_MAX_HISTORY: 3.0},
    )
    assert result["type"] is FlowResultType.CREATE_ENTRY
    # Number selectors give floats; the contract's integers are stored as integers.
    assert entry.options == {c.CONF_PROMPT: "Answer like a pirate.", c.CONF_MAX_NEW_TOKENS: 64,
                             c.CONF_TEMPERATURE: 0.2, c.CONF_TIMEOUT: 30, c.CONF_MAX_HISTORY: 3}
    assert isinstance(entry.options[c.CONF_MAX_NEW_TOKENS], int)


async def test_picking_a_daemon_whose_discovery_is_in_progress_creates_the_entry(
    ha_with_mqtt: HomeAssistant, outside_client: Callable[[], OutsideClient]
) -> None:
    hass = ha_with_mqtt
    outside_client().publish(f"{BASE_TOPIC}/kitchen/status", "online", retain=True)
    await wait_until(hass, lambda: _mqtt_flows(hass), "a discovery flow")

    result = await hass.config_entries.flow.async_init(DOMAIN, context={"source": config_entries.SOURCE_USER})
    result = await hass.config_entries.flow.async_configure(result["flow_id"], {CONF_BASE_TOPIC: BASE_TOPIC})
    assert result["step_id"] == "pick"
    result = await hass.config_entries.flow.async_configure(result["flow_id"], {CONF_NODE_ID: "kitchen"})
    assert result["type"] is FlowResultType.CREATE_ENTRY
    assert result["result"].unique_id == f"{BASE_TOPIC}/kitchen"
    await hass.async_block_till_done()
    # The discovery flow for the same daemon is gone with it (Home Assistant aborts it).
    assert _mqtt_flows(hass) == []


async def test_the_manual_step_needs_a_connected_broker(
    hass: HomeAssistant, enable_custom_integrations: None, socket_enabled: None, mock_hass_config: None
) -> None:
    """MQTT loaded but its broker unreachable: say so, instead of scanning and blaming the daemon."""
    from harness import free_port
    from homeassistant.components import mqtt
    from homeassistant.setup import async_setup_component

    assert await async_setup_component(hass, "homeassistant", {})
    mqtt_entry = MockConfigEntry(
        domain=mqtt.DOMAIN, version=1, minor_version=2,
        data={"broker": "127.0.0.1", "port": free_port()}, options={},
    )
    mqtt_entry.add_to_hass(hass)
    assert await hass.config_entries.async_setup(mqtt_entry.entry_id)
    assert await mqtt.async_wait_for_mqtt_client(hass)  # loaded ...
    assert not mqtt.is_connected(hass)  # ... but not connected

    result = await hass.config_entries.flow.async_init(DOMAIN, context={"source": config_entries.SOURCE_USER})
    assert result["type"] is FlowResultType.ABORT
    assert result["reason"] == "mqtt_not_connected"
    assert await hass.config_entries.async_unload(mqtt_entry.entry_id)
