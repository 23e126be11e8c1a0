"""Base entity for the RKLLM over MQTT integration: availability and the agent's device.

The agent has a device of its own (a service, like the agents of core's LLM integrations), linked
to the device of the daemon's MQTT discovery so the device page connects the two. Home Assistant
2026.x gives a device a single config entry, so the agent cannot join the MQTT device: that device
is the `mqtt` entry's. The link is made the way each release expects: the
`via_device` identifier until the device info takes `via_device_id`, by device id after that; and
by device id whenever the daemon's discovery arrives after the agent. A pool's agent has no one
daemon to link to: its device stands alone.
(Home Assistant developer docs: https://developers.home-assistant.io/docs/device_registry_index)
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from homeassistant.core import Event, HomeAssistant, callback
from homeassistant.helpers import device_registry as dr
from homeassistant.helpers import entity_registry as er
from homeassistant.helpers.entity import Entity

from .const import CONF_NODE_ID, DEVICE_MANUFACTURER, DOMAIN, MQTT_DOMAIN, mqtt_device_identifier
from .pool import CONF_POOL, pool_device_info

if TYPE_CHECKING:
    from . import RkllmConfigEntry

# Home Assistant 2026.x: device info links by device id, identifiers are unique per config entry.
LINKS_BY_DEVICE_ID = "via_device_id" in dr.DeviceInfo.__annotations__


def find_daemon_device(hass: HomeAssistant, node_id: str) -> dr.DeviceEntry | None:
    """The device the daemon's MQTT discovery made, if Home Assistant has it."""
    registry = dr.async_get(hass)
    identifier = mqtt_device_identifier(node_id)
    if hasattr(registry, "async_get_device_by_identifier"):
        for mqtt_entry in hass.config_entries.async_entries(MQTT_DOMAIN):
            if device := registry.async_get_device_by_identifier(identifier, mqtt_entry.entry_id):
                return device
        return None
    return registry.async_get_device(identifiers={identifier})


def agent_device_info(hass: HomeAssistant, entry: RkllmConfigEntry) -> dr.DeviceInfo:
    """The agent's own device: one per config entry, so two daemons never share one."""
    if CONF_POOL in entry.data:
        return pool_device_info(entry.entry_id, entry.data[CONF_POOL])
    info = dr.DeviceInfo(
        identifiers={(DOMAIN, entry.entry_id)},
        name=entry.title,
        manufacturer=DEVICE_MANUFACTURER,
        model="Conversation agent",
        entry_type=dr.DeviceEntryType.SERVICE,
    )
    # Only a device that exists: some releases report a via_device that does not.
    node_id = entry.data[CONF_NODE_ID]
    if (daemon_device := find_daemon_device(hass, node_id)) is None:
        return info
    if LINKS_BY_DEVICE_ID:
        info["via_device_id"] = daemon_device.id
    else:
        info["via_device"] = mqtt_device_identifier(node_id)  # type: ignore[typeddict-unknown-key]
    return info


@callback
def async_detach_from_mqtt_devices(hass: HomeAssistant, entry: RkllmConfigEntry) -> None:
    """Undo what releases up to 0.1.0 did: the agent on the daemon's MQTT device, that device
    listing this entry. The agent's entity keeps its id and moves to its own device at setup."""
    devices = dr.async_get(hass)
    entities = er.async_get(hass)
    for device in dr.async_entries_for_config_entry(devices, entry.entry_id):
        if not any(domain == MQTT_DOMAIN for domain, _ in device.identifiers):
            continue
        for entity in er.async_entries_for_device(entities, device.id, include_disabled_entities=True):
            if entity.config_entry_id == entry.entry_id:
                entities.async_update_entity(entity.entity_id, device_id=None)
        if LINKS_BY_DEVICE_ID:
            devices.async_remove_device(device.id)  # a device has one config entry: this one
        else:
            devices.async_update_device(device.id, remove_config_entry_id=entry.entry_id)


class RkllmBaseEntity(Entity):
    """An entity backed by one daemon (or a pool); unavailable whenever the daemon's status is not
    `online` (no member of the pool is)."""

    _attr_has_entity_name = True
    _attr_name = None
    _attr_should_poll = False

    def __init__(self, hass: HomeAssistant, entry: RkllmConfigEntry) -> None:
        self.entry = entry
        self._attr_unique_id = entry.entry_id
        self._attr_device_info = agent_device_info(hass, entry)

    @property
    def available(self) -> bool:
        return self.entry.runtime_data.online

    async def async_added_to_hass(self) -> None:
        await super().async_added_to_hass()
        self.async_on_remove(self.entry.runtime_data.async_add_listener(self.async_write_ha_state))
        self.async_on_remove(
            self.hass.bus.async_listen(dr.EVENT_DEVICE_REGISTRY_UPDATED, self._async_device_changed)
        )
        self._async_link_daemon_device()

    @callback
    def _async_device_changed(self, _event: Event[dr.EventDeviceRegistryUpdatedData]) -> None:
        self._async_link_daemon_device()

    @callback
    def _async_link_daemon_device(self) -> None:
        """Point the agent's device at the daemon's, once the daemon's discovery made that one."""
        if CONF_POOL in self.entry.data or self.registry_entry is None \
                or self.registry_entry.device_id is None:
            return
        daemon_device = find_daemon_device(self.hass, self.entry.data[CONF_NODE_ID])
        devices = dr.async_get(self.hass)
        own = devices.async_get(self.registry_entry.device_id)
        if daemon_device is not None and own is not None and own.via_device_id != daemon_device.id:
            devices.async_update_device(own.id, via_device_id=daemon_device.id)
