"""A pool of daemons as one Assist agent: real Home Assistant, real MQTT, two real daemons in a pool."""

from __future__ import annotations

import json
import signal
from collections.abc import Callable

from harness import OutsideClient, wait_for_mqtt_idle, wait_until
from homeassistant import config_entries
from homeassistant.components import conversation
from homeassistant.const import STATE_UNAVAILABLE
from homeassistant.core import Context, HomeAssistant
from homeassistant.data_entry_flow import FlowResultType
from homeassistant.helpers import device_registry as dr
from homeassistant.helpers import entity_registry as er
from integration_fixtures import BASE_TOPIC, Daemon, rkllm_const, wait_for_state
from pytest_homeassistant_custom_component.common import MockConfigEntry

DOMAIN = rkllm_const.DOMAIN
CONF_BASE_TOPIC = rkllm_const.CONF_BASE_TOPIC
GROUP = "house"
POOL_ENTITY = f"conversation.rkllm_pool_{GROUP}"
POOL_PROMPT = f"{BASE_TOPIC}/pool/{GROUP}/prompt"


async def _setup_pool(hass: HomeAssistant) -> MockConfigEntry:
    entry = MockConfigEntry(domain=DOMAIN, title=f"RKLLM pool {GROUP}",
                            unique_id=f"{BASE_TOPIC}/pool/{GROUP}",
                            data={CONF_BASE_TOPIC: BASE_TOPIC, "pool": GROUP})
    entry.add_to_hass(hass)
    assert await hass.config_entries.async_setup(entry.entry_id)
    await wait_for_mqtt_idle(hass)  # its reply topic is subscribed at the broker
    return entry


async def _ask(hass: HomeAssistant, text: str,
               conversation_id: str | None = None) -> conversation.ConversationResult:
    return await conversation.async_converse(hass, text, conversation_id, Context(), language="en",
                                             agent_id=POOL_ENTITY)


async def test_a_pool_answers_as_one_agent_and_keeps_answering_with_a_member_gone(
    ha_with_mqtt: HomeAssistant, start_daemon: Callable[..., Daemon],
    outside_client: Callable[[], OutsideClient],
) -> None:
    hass = ha_with_mqtt
    spy = outside_client()
    spy.subscribe(POOL_PROMPT)
    spy.subscribe(f"{BASE_TOPIC}/reply/#")
    daemons = {node: start_daemon(node, pool=GROUP) for node in ("attic", "cellar")}
    entry = await _setup_pool(hass)
    await wait_for_state(hass, POOL_ENTITY, lambda state: state != STATE_UNAVAILABLE)
    # The pool's own service device (looked up through the entity: HA 2026.x deprecates lookups
    # by identifier alone), linked to no member's device.
    device_id = er.async_get(hass).async_get(POOL_ENTITY).device_id
    device = dr.async_get(hass).async_get(device_id) if device_id else None
    assert device is not None and device.name == f"RKLLM pool {GROUP}"
    assert device.identifiers == {(DOMAIN, entry.entry_id)} and device.via_device_id is None
    assert device.entry_type is dr.DeviceEntryType.SERVICE

    first = await _ask(hass, "Who answers?")
    request = json.loads((await spy.next_message(POOL_PROMPT)).payload)
    assert first.response.response_type.value == "action_done", first.response.speech
    assert request["conversation"] == first.conversation_id
    while True:  # the final on the entry's reply topic names the member that answered
        reply = json.loads((await spy.next_message(request["response_topic"])).payload)
        if reply["type"] == "final":
            break
    assert first.response.speech["plain"]["speech"] == reply["text"]
    assert reply["text"].startswith("You said: ")
    answered_by = reply["node"]
    assert answered_by in daemons

    # That member dies (kill -9): the pool is still available and another member answers.
    daemons[answered_by].proc.send_signal(signal.SIGKILL)
    daemons[answered_by].proc.wait()
    client = entry.runtime_data
    await wait_until(hass, lambda: client.members == [n for n in daemons if n != answered_by],
                     "the dead member gone from the pool")
    assert hass.states.get(POOL_ENTITY).state != STATE_UNAVAILABLE
    second = await _ask(hass, "And now?", first.conversation_id)
    assert second.response.response_type.value == "action_done"
    assert second.response.speech["plain"]["speech"]

    # With every member gone the agent is unavailable.
    for daemon in daemons.values():
        daemon.stop()
    await wait_for_state(hass, POOL_ENTITY, lambda state: state == STATE_UNAVAILABLE)


async def test_a_pool_is_discovered_from_its_config_and_entered_by_hand(
    ha_with_mqtt: HomeAssistant, outside_client: Callable[[], OutsideClient]
) -> None:
    hass = ha_with_mqtt
    member = outside_client()
    record = {"node": "attic", "online": True, "load": 0, "running": 0, "queued": 0, "capacity": 9,
              "model": "m.rkllm", "prompt": f"{BASE_TOPIC}/attic/prompt"}
    member.publish(f"{BASE_TOPIC}/pool/{GROUP}/members/attic", json.dumps(record), retain=True)
    config = {"group": GROUP, "prompt": POOL_PROMPT}
    member.publish(f"{BASE_TOPIC}/pool/{GROUP}/config", json.dumps(config), retain=True)

    def pool_flows() -> list[dict]:
        return [f for f in hass.config_entries.flow.async_progress_by_handler(DOMAIN)
                if f["context"]["source"] == config_entries.SOURCE_MQTT]

    flows = await wait_until(hass, pool_flows, "a pool discovery flow")
    assert [f["context"]["unique_id"] for f in flows] == [f"{BASE_TOPIC}/pool/{GROUP}"]
    assert flows[0]["step_id"] == "pool_confirm"
    hass.config_entries.flow.async_abort(flows[0]["flow_id"])

    result = await hass.config_entries.flow.async_init(DOMAIN, context={"source": config_entries.SOURCE_USER})
    result = await hass.config_entries.flow.async_configure(
        result["flow_id"], {CONF_BASE_TOPIC: BASE_TOPIC, "pool": "nobody"})
    assert result["type"] is FlowResultType.FORM and result["errors"] == {"pool": "no_members"}
    result = await hass.config_entries.flow.async_configure(
        result["flow_id"], {CONF_BASE_TOPIC: BASE_TOPIC, "pool": GROUP})
    assert result["type"] is FlowResultType.CREATE_ENTRY
    assert result["title"] == f"RKLLM pool {GROUP}"
    assert result["data"] == {CONF_BASE_TOPIC: BASE_TOPIC, "pool": GROUP}
    await hass.async_block_till_done()
    member.publish(f"{BASE_TOPIC}/pool/{GROUP}/members/attic", "", retain=True)
    member.publish(f"{BASE_TOPIC}/pool/{GROUP}/config", "", retain=True)


async def test_a_pools_limits_are_the_smallest_any_live_member_announces(
    ha_with_mqtt: HomeAssistant, outside_client: Callable[[], OutsideClient]
) -> None:
    hass = ha_with_mqtt
    members = outside_client()
    announced = {"attic": {"max_prompt_chars": 4000, "max_payload_bytes": 65536},
                 "cellar": {"max_prompt_chars": 9000, "max_payload_bytes": 20000,
                            "max_context_tokens": 2048}}
    for node, limits in announced.items():
        record = {"node": node, "online": True, "load": 0, "running": 0, "queued": 0, "capacity": 9,
                  "model": "m.rkllm", "prompt": f"{BASE_TOPIC}/{node}/prompt"}
        members.publish(f"{BASE_TOPIC}/pool/{GROUP}/members/{node}", json.dumps(record), retain=True)
        members.publish(f"{BASE_TOPIC}/{node}/state", json.dumps({"limits": limits}), retain=True)
        members.publish(f"{BASE_TOPIC}/{node}/status", "online", retain=True)
    entry = await _setup_pool(hass)
    client = entry.runtime_data
    await wait_until(hass, lambda: client.members == ["attic", "cellar"], "both members live")
    limits = await wait_until(hass, lambda: client.limits if client.limits.max_context_tokens else None,
                              "both members' limits")
    assert (limits.max_prompt_chars, limits.max_payload_bytes, limits.max_context_tokens) == \
        (4000, 20000, 2048)

    # attic goes offline: what is left is cellar's
    members.publish(f"{BASE_TOPIC}/attic/status", "offline", retain=True)
    await wait_until(hass, lambda: client.limits.max_prompt_chars == 9000, "cellar's limits alone")
    assert client.limits.max_payload_bytes == 20000

    for node in announced:
        for topic in (f"pool/{GROUP}/members/{node}", f"{node}/state", f"{node}/status"):
            members.publish(f"{BASE_TOPIC}/{topic}", "", retain=True)
