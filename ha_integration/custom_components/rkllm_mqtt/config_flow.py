"""Config flow: a daemon found by MQTT discovery, or picked from the daemons seen on the broker."""

from __future__ import annotations

import asyncio
import json
from typing import TYPE_CHECKING, Any

import voluptuous as vol
from homeassistant.components import mqtt
from homeassistant.config_entries import ConfigEntry, ConfigFlow, ConfigFlowResult, OptionsFlow
from homeassistant.core import HomeAssistant, callback
from homeassistant.helpers import llm
from homeassistant.helpers.selector import (
    NumberSelector,
    NumberSelectorConfig,
    NumberSelectorMode,
    SelectOptionDict,
    SelectSelector,
    SelectSelectorConfig,
    SelectSelectorMode,
    TemplateSelector,
    TextSelector,
)

from .const import (
    CONF_BASE_TOPIC,
    CONF_MAX_HISTORY,
    CONF_MAX_NEW_TOKENS,
    CONF_NODE_ID,
    CONF_PROMPT,
    CONF_TEMPERATURE,
    CONF_TIMEOUT,
    DEFAULT_BASE_TOPIC,
    DEFAULT_MAX_HISTORY,
    DEFAULT_TIMEOUT,
    DOMAIN,
    SCAN_SETTLE,
    SCAN_TIMEOUT,
    STATUS_ONLINE,
)
from .llm_api import clean_llm_api_option, llm_api_option
from .pool import CONF_POOL, members_topic

if TYPE_CHECKING:
    from collections.abc import Mapping

    from homeassistant.helpers.service_info.mqtt import MqttServiceInfo

STATUS_SUFFIX = "/status"
POOL_LEVEL = "/pool/"
CONFIG_SUFFIX = "/config"


def _split_pool_config_topic(topic: str) -> tuple[str, str] | None:
    """`<base>/pool/<group>/config` (every member's retained announcement) → (base, group)."""
    if not topic.endswith(CONFIG_SUFFIX):
        return None
    base, sep, group = topic[: -len(CONFIG_SUFFIX)].rpartition(POOL_LEVEL)
    return (base, group) if sep and base and group and "/" not in group else None


async def async_scan_pool(hass: HomeAssistant, base_topic: str, group: str) -> dict[str, bool]:
    """Node → "takes work" of every member record the broker retains for the pool."""
    found: dict[str, bool] = {}
    arrived = asyncio.Event()

    @callback
    def on_record(msg: mqtt.ReceiveMessage) -> None:
        try:
            record = json.loads(msg.payload) if msg.payload else None
        except ValueError:
            return
        if isinstance(record, dict):
            found[msg.topic.rsplit("/", 1)[-1]] = record.get("online") is True
            arrived.set()

    unsubscribe = await mqtt.async_subscribe(hass, members_topic(base_topic, group), on_record, qos=1)
    try:
        async with asyncio.timeout(SCAN_TIMEOUT):
            await arrived.wait()
        await asyncio.sleep(SCAN_SETTLE)  # the other retained records arrive together
    except TimeoutError:
        pass
    finally:
        unsubscribe()
    return found


def _split_status_topic(topic: str) -> tuple[str, str] | None:
    """`<base>/<node>/status` → (base, node); None for anything else."""
    if not topic.endswith(STATUS_SUFFIX):
        return None
    base, _, node = topic[: -len(STATUS_SUFFIX)].rpartition("/")
    return (base, node) if base and node else None


def _valid_base_topic(base_topic: str) -> bool:
    """A plain topic (no wildcards) that `<base>/+/status` can be built on."""
    if not base_topic or "+" in base_topic or "#" in base_topic:
        return False
    try:
        mqtt.valid_subscribe_topic(f"{base_topic}/+{STATUS_SUFFIX}")
    except vol.Invalid:
        return False
    return True


async def async_scan(hass: HomeAssistant, base_topic: str) -> dict[str, str]:
    """Node id → retained status of every daemon under `base_topic`.

    Retained statuses arrive together right after HA's (debounced) SUBSCRIBE, so the scan ends a
    short quiet period after the first one, or after SCAN_TIMEOUT when there is none.
    """
    found: dict[str, str] = {}
    arrived = asyncio.Event()

    @callback
    def on_status(msg: mqtt.ReceiveMessage) -> None:
        parts = _split_status_topic(msg.topic)
        if parts is not None and parts[0] == base_topic and msg.payload:
            found[parts[1]] = str(msg.payload)
            arrived.set()

    unsubscribe = await mqtt.async_subscribe(hass, f"{base_topic}/+{STATUS_SUFFIX}", on_status, qos=1)
    loop = asyncio.get_running_loop()
    deadline = loop.time() + SCAN_TIMEOUT
    try:
        while (remaining := deadline - loop.time()) > 0:
            arrived.clear()
            try:
                async with asyncio.timeout(min(remaining, SCAN_SETTLE) if found else remaining):
                    await arrived.wait()
            except TimeoutError:
                if found:
                    break
    finally:
        unsubscribe()
    return found


class RkllmConfigFlow(ConfigFlow, domain=DOMAIN):
    """One config entry per daemon; its unique id is the daemon's `<base_topic>/<node_id>`."""

    VERSION = 1
    MINOR_VERSION = 2  # 1.2: the agent has a device of its own (async_migrate_entry)

    def __init__(self) -> None:
        self._base_topic = DEFAULT_BASE_TOPIC
        self._node_id = ""
        self._nodes: dict[str, str] = {}
        self._pool = ""

    async def async_step_mqtt(self, discovery_info: MqttServiceInfo) -> ConfigFlowResult:
        """A daemon published its status, or a pool member the pool's config, on a manifest topic."""
        pool = _split_pool_config_topic(discovery_info.topic)
        if pool is not None:
            return await self._async_discovered_pool(pool, discovery_info.payload)
        parts = _split_status_topic(discovery_info.topic)
        if parts is None:
            return self.async_abort(reason="invalid_discovery_info")
        # An `offline` (the daemon's will, or a clean stop) must not offer a daemon that is gone.
        if discovery_info.payload != STATUS_ONLINE:
            return self.async_abort(reason="not_online")
        self._base_topic, self._node_id = parts
        await self.async_set_unique_id(f"{self._base_topic}/{self._node_id}")
        self._abort_if_unique_id_configured()
        self.context["title_placeholders"] = {"name": self._node_id}
        return await self.async_step_confirm()

    async def _async_discovered_pool(self, pool: tuple[str, str], payload: Any) -> ConfigFlowResult:
        try:
            config = json.loads(payload) if payload else None
        except ValueError:
            config = None
        if not isinstance(config, dict):  # cleared: the pool is gone
            return self.async_abort(reason="invalid_discovery_info")
        self._base_topic, self._pool = pool
        await self.async_set_unique_id(f"{self._base_topic}/pool/{self._pool}")
        self._abort_if_unique_id_configured()
        self.context["title_placeholders"] = {"name": f"pool {self._pool}"}
        return await self.async_step_pool_confirm()

    async def async_step_pool_confirm(self, user_input: dict[str, Any] | None = None) -> ConfigFlowResult:
        if user_input is None:
            self._set_confirm_only()
            return self.async_show_form(
                step_id="pool_confirm",
                description_placeholders={"pool": self._pool, "base_topic": self._base_topic},
            )
        return self._create_pool_entry()

    async def async_step_confirm(self, user_input: dict[str, Any] | None = None) -> ConfigFlowResult:
        if user_input is None:
            self._set_confirm_only()
            return self.async_show_form(
                step_id="confirm",
                description_placeholders={"node_id": self._node_id, "base_topic": self._base_topic},
            )
        return self._create_entry()

    async def async_step_user(self, user_input: dict[str, Any] | None = None) -> ConfigFlowResult:
        """Ask for the base topic, then list the daemons whose status the broker retains there."""
        # Loaded is not connected: with the broker down, the scan would find nothing and blame the daemon.
        if not await mqtt.async_wait_for_mqtt_client(self.hass) or not mqtt.is_connected(self.hass):
            return self.async_abort(reason="mqtt_not_connected")
        errors: dict[str, str] = {}
        if user_input is not None:
            self._base_topic = user_input[CONF_BASE_TOPIC].strip().strip("/")
            self._pool = (user_input.get(CONF_POOL) or "").strip()
            if not _valid_base_topic(self._base_topic):
                errors[CONF_BASE_TOPIC] = "invalid_topic"
            elif self._pool:
                if not _valid_base_topic(f"{self._base_topic}/pool/{self._pool}") or "/" in self._pool:
                    errors[CONF_POOL] = "invalid_pool"
                elif not await async_scan_pool(self.hass, self._base_topic, self._pool):
                    errors[CONF_POOL] = "no_members"
                else:
                    await self.async_set_unique_id(f"{self._base_topic}/pool/{self._pool}",
                                                   raise_on_progress=False)
                    self._abort_if_unique_id_configured()
                    return self._create_pool_entry()
            else:
                found = await async_scan(self.hass, self._base_topic)
                configured = {entry.unique_id for entry in self._async_current_entries(include_ignore=False)}
                self._nodes = {
                    node: status for node, status in found.items()
                    if f"{self._base_topic}/{node}" not in configured
                }
                if self._nodes:
                    return await self.async_step_pick()
                errors["base"] = "all_configured" if found else "no_daemons"
        return self.async_show_form(
            step_id="user",
            data_schema=vol.Schema(
                {vol.Required(CONF_BASE_TOPIC, default=self._base_topic): TextSelector(),
                 vol.Optional(CONF_POOL): TextSelector()}
            ),
            errors=errors,
        )

    async def async_step_pick(self, user_input: dict[str, Any] | None = None) -> ConfigFlowResult:
        if user_input is not None:
            self._node_id = user_input[CONF_NODE_ID]
            # A discovery flow for the same daemon may be waiting for confirmation: this one wins,
            # and Home Assistant aborts that one when the entry is created.
            await self.async_set_unique_id(f"{self._base_topic}/{self._node_id}", raise_on_progress=False)
            self._abort_if_unique_id_configured()
            return self._create_entry()
        options = [
            SelectOptionDict(value=node, label=f"{node} ({status})")
            for node, status in sorted(self._nodes.items())
        ]
        return self.async_show_form(
            step_id="pick",
            data_schema=vol.Schema(
                {
                    vol.Required(CONF_NODE_ID): SelectSelector(
                        SelectSelectorConfig(options=options, mode=SelectSelectorMode.LIST)
                    )
                }
            ),
            description_placeholders={"base_topic": self._base_topic},
        )

    @callback
    def _create_pool_entry(self) -> ConfigFlowResult:
        return self.async_create_entry(
            title=f"RKLLM pool {self._pool}",
            data={CONF_BASE_TOPIC: self._base_topic, CONF_POOL: self._pool},
        )

    @callback
    def _create_entry(self) -> ConfigFlowResult:
        return self.async_create_entry(
            title=f"RKLLM {self._node_id}",
            data={CONF_BASE_TOPIC: self._base_topic, CONF_NODE_ID: self._node_id},
        )

    @staticmethod
    @callback
    def async_get_options_flow(config_entry: ConfigEntry) -> OptionsFlow:
        return RkllmOptionsFlow()


class RkllmOptionsFlow(OptionsFlow):
    """Instructions, generation limits, timeout and history length, read at every request."""

    async def async_step_init(self, user_input: dict[str, Any] | None = None) -> ConfigFlowResult:
        if user_input is not None:
            # Number selectors give floats; the daemon wants integers where the contract says so.
            for key in (CONF_MAX_NEW_TOKENS, CONF_MAX_HISTORY):
                if key in user_input:
                    user_input[key] = int(user_input[key])
            clean_llm_api_option(user_input)
            return self.async_create_entry(data=user_input)
        return self.async_show_form(
            step_id="init", data_schema=_options_schema(self.hass, self.config_entry.options)
        )


def _box(minimum: float, maximum: float, step: float, unit: str | None = None) -> NumberSelector:
    config = NumberSelectorConfig(min=minimum, max=maximum, step=step, mode=NumberSelectorMode.BOX)
    if unit is not None:
        config["unit_of_measurement"] = unit
    return NumberSelector(config)


def _options_schema(hass: HomeAssistant, options: Mapping[str, Any]) -> vol.Schema:
    """Empty max new tokens / temperature mean "the daemon's configuration", so they have no default."""

    def suggested(key: str, default: Any = None) -> dict[str, Any]:
        return {"suggested_value": options.get(key, default)}

    return vol.Schema(
        {
            vol.Optional(CONF_PROMPT, description=suggested(CONF_PROMPT, llm.DEFAULT_INSTRUCTIONS_PROMPT)):
                TemplateSelector(),
            **llm_api_option(hass, options),
            vol.Optional(CONF_MAX_NEW_TOKENS, description=suggested(CONF_MAX_NEW_TOKENS)): _box(1, 8192, 1),
            vol.Optional(CONF_TEMPERATURE, description=suggested(CONF_TEMPERATURE)): _box(0, 2, 0.05),
            vol.Required(CONF_TIMEOUT, default=options.get(CONF_TIMEOUT, DEFAULT_TIMEOUT)):
                _box(1, 3600, 1, "s"),
            vol.Required(CONF_MAX_HISTORY, default=options.get(CONF_MAX_HISTORY, DEFAULT_MAX_HISTORY)):
                _box(0, 100, 1),
        }
    )
