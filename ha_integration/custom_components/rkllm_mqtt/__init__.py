"""RKLLM over MQTT: a local LLM daemon on a Rockchip NPU as an Assist agent and an action."""

from __future__ import annotations

from typing import TypeAlias

import voluptuous as vol
from homeassistant.components import mqtt
from homeassistant.config_entries import ConfigEntry, ConfigEntryState
from homeassistant.const import Platform
from homeassistant.core import HomeAssistant, ServiceCall, ServiceResponse, SupportsResponse
from homeassistant.exceptions import ConfigEntryNotReady, ServiceValidationError
from homeassistant.helpers import config_validation as cv
from homeassistant.helpers.typing import ConfigType

from .client import RkllmClient
from .const import (
    ATTR_CONFIG_ENTRY,
    ATTR_PROMPT,
    ATTR_SYSTEM,
    CONF_BASE_TOPIC,
    CONF_MAX_NEW_TOKENS,
    CONF_NODE_ID,
    CONF_TEMPERATURE,
    CONF_TIMEOUT,
    DEFAULT_TIMEOUT,
    DOMAIN,
    SERVICE_GENERATE,
    exception_args,
    reply_topic,
)
from .entity import async_detach_from_mqtt_devices
from .pool import CONF_POOL, RkllmPoolClient

RkllmConfigEntry: TypeAlias = ConfigEntry[RkllmClient]

PLATFORMS = (Platform.CONVERSATION,)
CONFIG_SCHEMA = cv.config_entry_only_config_schema(DOMAIN)

GENERATE_SCHEMA = vol.Schema(
    {
        vol.Required(ATTR_PROMPT): vol.All(cv.string, vol.Length(min=1)),
        vol.Optional(ATTR_SYSTEM): cv.string,
        vol.Optional(CONF_MAX_NEW_TOKENS): vol.All(vol.Coerce(int), vol.Range(min=1)),
        vol.Optional(CONF_TEMPERATURE): vol.All(vol.Coerce(float), vol.Range(min=0.0, max=2.0)),
        vol.Optional(ATTR_CONFIG_ENTRY): cv.string,
    }
)


async def async_setup(hass: HomeAssistant, config: ConfigType) -> bool:
    """Register the action once, whatever number of daemons is configured."""

    async def async_generate(call: ServiceCall) -> ServiceResponse:
        entry = _entry_for_call(hass, call.data.get(ATTR_CONFIG_ENTRY))
        options = entry.options
        result = await entry.runtime_data.async_generate(
            prompt=call.data[ATTR_PROMPT],
            # Empty means the daemon's configured system prompt, as the action's description says.
            system=call.data.get(ATTR_SYSTEM) or None,
            max_new_tokens=call.data.get(CONF_MAX_NEW_TOKENS, options.get(CONF_MAX_NEW_TOKENS)),
            temperature=call.data.get(CONF_TEMPERATURE, options.get(CONF_TEMPERATURE)),
            # Automations wait behind voice requests on the daemon, never in front of them.
            priority="background",
            timeout=float(options.get(CONF_TIMEOUT, DEFAULT_TIMEOUT)),
        )
        return result.as_dict()

    hass.services.async_register(
        DOMAIN, SERVICE_GENERATE, async_generate, schema=GENERATE_SCHEMA,
        supports_response=SupportsResponse.ONLY,
    )
    return True


def _entry_for_call(hass: HomeAssistant, entry_id: str | None) -> RkllmConfigEntry:
    """The daemon an action call names, or the only one there is."""
    if entry_id is None:
        loaded = hass.config_entries.async_loaded_entries(DOMAIN)
        if len(loaded) == 1:
            return loaded[0]
        if loaded:
            raise _invalid("several_daemons")
        # Set up but not loaded (setup retry, disabled, failed) is not the same as none at all.
        if configured := [e.title for e in hass.config_entries.async_entries(DOMAIN, include_ignore=False)]:
            raise _invalid("none_loaded", titles=", ".join(configured))
        raise _invalid("no_daemon")
    entry = hass.config_entries.async_get_entry(entry_id)
    if entry is None or entry.domain != DOMAIN:
        raise _invalid("not_a_daemon", entry_id=entry_id)
    if entry.state is not ConfigEntryState.LOADED:
        raise _invalid("not_loaded", title=entry.title)
    return entry


def _invalid(key: str, **placeholders: str) -> ServiceValidationError:
    args, kwargs = exception_args(key, **placeholders)
    return ServiceValidationError(*args, **kwargs)


async def async_setup_entry(hass: HomeAssistant, entry: RkllmConfigEntry) -> bool:
    """Follow one daemon (or a pool's members): status, limits and this entry's reply topic, then
    the conversation agent."""
    if not await mqtt.async_wait_for_mqtt_client(hass):
        args, kwargs = exception_args("mqtt_not_connected")
        raise ConfigEntryNotReady(*args, **kwargs)
    base_topic = entry.data[CONF_BASE_TOPIC]
    client: RkllmClient
    if CONF_POOL in entry.data:  # a pool of daemons: one agent, whichever member answers
        client = RkllmPoolClient(hass, base_topic=base_topic, group=entry.data[CONF_POOL],
                                 reply_topic=reply_topic(base_topic, entry.entry_id))
    else:
        client = RkllmClient(
            hass,
            base_topic=base_topic,
            node_id=entry.data[CONF_NODE_ID],
            reply_topic=reply_topic(base_topic, entry.entry_id),
        )
    await client.async_start()
    entry.async_on_unload(client.async_stop)
    entry.runtime_data = client
    # Options are read at every request, so changing them needs no reload.
    await hass.config_entries.async_forward_entry_setups(entry, PLATFORMS)
    return True


async def async_migrate_entry(hass: HomeAssistant, entry: RkllmConfigEntry) -> bool:
    """1.1 → 1.2: the agent leaves the daemon's MQTT device for a device of its own."""
    if entry.version > 1:
        return False  # made by a newer release
    if entry.minor_version < 2:
        async_detach_from_mqtt_devices(hass, entry)
        hass.config_entries.async_update_entry(entry, minor_version=2)
    return True


async def async_unload_entry(hass: HomeAssistant, entry: RkllmConfigEntry) -> bool:
    """Remove the conversation agent; then `RkllmClient.async_stop` (an on-unload hook) aborts and
    fails whatever is still waiting for the daemon, and unsubscribes."""
    return await hass.config_entries.async_unload_platforms(entry, PLATFORMS)
