"""The `rkllm_mqtt.generate` action in real Home Assistant, answered by the real daemon on the
simulator over a real broker."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import pytest
import voluptuous as vol
from harness import OutsideClient
from homeassistant.const import STATE_UNAVAILABLE
from homeassistant.core import HomeAssistant
from homeassistant.exceptions import HomeAssistantError, ServiceValidationError
from homeassistant.setup import async_setup_component
from integration_fixtures import (
    BASE_TOPIC,
    ENTITY_ID,
    NODE_ID,
    Daemon,
    rkllm_client,
    rkllm_const,
    setup_entry,
    wait_for_state,
)

from rkllm_mqtt.simulator import expected_answer

DOMAIN = rkllm_const.DOMAIN
PREFIX = f"{BASE_TOPIC}/{NODE_ID}"


async def _generate(hass: HomeAssistant, **data: object) -> dict:
    return await hass.services.async_call(
        DOMAIN, rkllm_const.SERVICE_GENERATE, data, blocking=True, return_response=True
    )


async def test_generate_returns_the_daemons_answer(
    ha_with_mqtt: HomeAssistant,
    start_daemon: Callable[..., Daemon],
    outside_client: Callable[[], OutsideClient],
) -> None:
    hass = ha_with_mqtt
    spy = outside_client()
    spy.subscribe(f"{PREFIX}/prompt")
    start_daemon()
    entry = await setup_entry(hass)
    await wait_for_state(hass, ENTITY_ID, lambda state: state != STATE_UNAVAILABLE)

    response = await _generate(
        hass, prompt="Write a haiku about the NPU", max_new_tokens=200, temperature=0.5,
        config_entry=entry.entry_id,
    )
    request = json.loads((await spy.next_message(f"{PREFIX}/prompt")).payload)

    assert set(response) == {"text", "finish_reason", "usage", "timing"}
    assert response["text"] == expected_answer("Write a haiku about the NPU")
    assert response["finish_reason"] == "stop"
    assert response["usage"]["completion_tokens"] > 0
    assert response["timing"]["total_ms"] >= response["timing"]["queue_ms"]
    # An action waits for the whole answer, so it asks for no token messages; automations go behind
    # voice requests on the daemon.
    assert request["prompt"] == "Write a haiku about the NPU"
    assert request["stream"] is False
    assert request["priority"] == "background"
    assert request["max_new_tokens"] == 200
    assert request["temperature"] == 0.5
    assert "system" not in request
    assert "conversation" not in request


async def test_generate_sends_the_system_prompt_and_picks_the_only_daemon(
    ha_with_mqtt: HomeAssistant,
    start_daemon: Callable[..., Daemon],
) -> None:
    hass = ha_with_mqtt
    start_daemon()
    await setup_entry(hass)
    await wait_for_state(hass, ENTITY_ID, lambda state: state != STATE_UNAVAILABLE)

    response = await _generate(hass, prompt="Hi", system="Be brief.")
    # No chat template configured on this daemon: the system text is prepended to the prompt.
    assert response["text"] == expected_answer("Be brief.\n\nHi")


async def test_generate_errors(ha_with_mqtt: HomeAssistant, start_daemon: Callable[..., Daemon]) -> None:
    hass = ha_with_mqtt
    assert await async_setup_component(hass, DOMAIN, {})  # the action exists before any daemon
    with pytest.raises(ServiceValidationError, match="No RKLLM daemon is set up"):
        await _generate(hass, prompt="Hi")

    start_daemon()
    kitchen = await setup_entry(hass)
    await wait_for_state(hass, ENTITY_ID, lambda state: state != STATE_UNAVAILABLE)
    await setup_entry(hass, "garage")  # never comes online
    with pytest.raises(ServiceValidationError, match="Several RKLLM daemons"):
        await _generate(hass, prompt="Hi")
    with pytest.raises(ServiceValidationError, match="is not an RKLLM daemon"):
        await _generate(hass, prompt="Hi", config_entry="nope")

    garage = hass.config_entries.async_entries(DOMAIN)[1]
    with pytest.raises(rkllm_client.DaemonOfflineError, match=r"^The RKLLM daemon garage is offline\.$"):
        await _generate(hass, prompt="Hi", config_entry=garage.entry_id)

    # An error reply from the daemon is raised with the daemon's code and message.
    with pytest.raises(HomeAssistantError, match=r"could not answer \(runtime_error\)") as err:
        await _generate(hass, prompt="Fail [sim:error]", config_entry=kitchen.entry_id)
    assert err.value.code == "runtime_error"


async def test_generate_needs_a_prompt(ha_with_mqtt: HomeAssistant) -> None:
    hass = ha_with_mqtt
    entry = await setup_entry(hass)
    for prompt in ("", None):
        with pytest.raises(vol.Invalid):
            await _generate(hass, prompt=prompt, config_entry=entry.entry_id)


async def test_errors_carry_their_translation(ha_with_mqtt: HomeAssistant) -> None:
    """The English sentences are strings.json's `exceptions`, so the frontend can translate them."""
    component = Path(rkllm_const.__file__).parent
    for name in ("strings.json", "translations/en.json"):
        exceptions = json.loads((component / name).read_text())["exceptions"]
        assert {key: value["message"] for key, value in exceptions.items()} == rkllm_const.EXCEPTION_MESSAGES

    hass = ha_with_mqtt
    entry = await setup_entry(hass)  # no daemon: offline
    with pytest.raises(rkllm_client.DaemonOfflineError) as err:
        await _generate(hass, prompt="Hi", config_entry=entry.entry_id)
    assert (err.value.translation_domain, err.value.translation_key) == (DOMAIN, "offline")
    assert err.value.translation_placeholders == {"node_id": NODE_ID}
    assert str(err.value) == f"The RKLLM daemon {NODE_ID} is offline."


async def test_an_empty_system_is_the_daemons_own(
    ha_with_mqtt: HomeAssistant,
    start_daemon: Callable[..., Daemon],
    outside_client: Callable[[], OutsideClient],
) -> None:
    """The action's description says empty means the daemon's configured system prompt."""
    hass = ha_with_mqtt
    spy = outside_client()
    spy.subscribe(f"{PREFIX}/prompt")
    start_daemon(system_prompt="You are the kitchen.")
    await setup_entry(hass)
    await wait_for_state(hass, ENTITY_ID, lambda state: state != STATE_UNAVAILABLE)

    response = await _generate(hass, prompt="Hi", system="")
    request = json.loads((await spy.next_message(f"{PREFIX}/prompt")).payload)
    assert "system" not in request
    assert response["text"] == expected_answer("You are the kitchen.\n\nHi")


async def test_an_entry_that_is_not_loaded_is_named(ha_with_mqtt: HomeAssistant) -> None:
    """An entry waiting to retry its setup is not "no daemon set up"."""
    from homeassistant.config_entries import ConfigEntryState
    from pytest_homeassistant_custom_component.common import MockConfigEntry

    hass = ha_with_mqtt
    assert await async_setup_component(hass, DOMAIN, {})
    MockConfigEntry(
        domain=DOMAIN, title="RKLLM kitchen", unique_id=f"{BASE_TOPIC}/{NODE_ID}",
        data={rkllm_const.CONF_BASE_TOPIC: BASE_TOPIC, rkllm_const.CONF_NODE_ID: NODE_ID},
        state=ConfigEntryState.SETUP_RETRY,
    ).add_to_hass(hass)
    with pytest.raises(ServiceValidationError) as err:
        await _generate(hass, prompt="Hi")
    assert str(err.value) == "No RKLLM daemon is loaded (set up but not running: RKLLM kitchen)."
    assert err.value.translation_key == "none_loaded"


async def test_setup_without_mqtt_retries_with_a_translated_reason(
    ha_with_mqtt: HomeAssistant, monkeypatch: pytest.MonkeyPatch
) -> None:
    from homeassistant.components import mqtt
    from homeassistant.config_entries import ConfigEntryState
    from pytest_homeassistant_custom_component.common import MockConfigEntry

    async def mqtt_unavailable(_hass: HomeAssistant) -> bool:
        return False

    hass = ha_with_mqtt
    monkeypatch.setattr(mqtt, "async_wait_for_mqtt_client", mqtt_unavailable)
    entry = MockConfigEntry(
        domain=DOMAIN, title="RKLLM kitchen", unique_id=f"{BASE_TOPIC}/{NODE_ID}",
        data={rkllm_const.CONF_BASE_TOPIC: BASE_TOPIC, rkllm_const.CONF_NODE_ID: NODE_ID},
    )
    entry.add_to_hass(hass)
    assert not await hass.config_entries.async_setup(entry.entry_id)
    assert entry.state is ConfigEntryState.SETUP_RETRY
    assert entry.reason == rkllm_const.EXCEPTION_MESSAGES["mqtt_not_connected"]
    assert entry.error_reason_translation_key == "mqtt_not_connected"
