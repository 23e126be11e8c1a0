"""Home Assistant MQTT device discovery for the daemon, as data.

The entities are a table (`COMPONENTS`); `build_discovery` adds what every component needs
(`~`, unique id, default entity id) and the device, origin and availability blocks. Facts that
shaped it, all checked in Home Assistant 2025.4.4 (its MQTT discovery docs, "Device discovery
payload", and `homeassistant/components/mqtt/discovery.py`):

- HA refuses a device payload with `~` at its top level, so `~` sits inside each component and the
  root availability topic is written in full.
- A component without a unique id, or an origin `url` that is not a URL, makes HA refuse the device.
- `object_id` is deprecated (HA 2025.10); `def_ent_id` is used instead and older HA ignores it. It is
  built from the device name and the component name, the same way HA derives an entity id when it
  ignores the key, so the entity ids are the same on old and new HA.
- HA turns the rendered text "None" into an unknown state for sensors and binary sensors, so every
  value template renders "None" for a missing or null field instead of failing or showing "None".
"""

from __future__ import annotations

import re
import unicodedata
from dataclasses import dataclass
from types import MappingProxyType
from typing import TYPE_CHECKING, Any

from rkllm_mqtt import __version__
from rkllm_mqtt.topics import Topics

if TYPE_CHECKING:
    from collections.abc import Mapping

    from rkllm_mqtt.config import Settings

PROJECT_URL = "https://github.com/rkllm-mqtt/rkllm-mqtt"
MANUFACTURER = "rkllm-mqtt"
DEFAULT_MODEL = "RKLLM LLM daemon"

# Values of `state` in the `~/state` JSON and the event types on `~/event` (the MQTT contract).
DAEMON_STATES = ("idle", "loading", "generating", "error")
EVENT_TYPES = ("completed", "error", "aborted")

# HA's limit for a state string; longer ones fall back to "unknown" with a warning.
MAX_STATE_CHARS = 255


def _field(key: str) -> str:
    """Template for one `~/state` field: a missing key or null becomes HA's "unknown"."""
    return "{{ value_json." + key + " | default(None) }}"


# A missing or null `busy` is unknown rather than "off": HA maps "None" to an unknown state.
_BUSY_TEMPLATE = (
    "{% set busy = value_json.busy | default(None) %}"
    "{{ 'None' if busy is none else ('ON' if busy else 'OFF') }}"
)


@dataclass(frozen=True)
class Component:
    """One entity of the device: its HA platform, display name and platform options."""

    platform: str
    name: str
    options: Mapping[str, Any]


COMPONENTS: Mapping[str, Component] = MappingProxyType(
    {
        "status": Component(
            "sensor",
            "Status",
            {
                "stat_t": "~/state",
                "val_tpl": _field("state"),
                "dev_cla": "enum",
                "ops": list(DAEMON_STATES),
                "ic": "mdi:robot",
            },
        ),
        "busy": Component(
            "binary_sensor",
            "Busy",
            {"stat_t": "~/state", "val_tpl": _BUSY_TEMPLATE, "dev_cla": "running"},
        ),
        "tokens_per_second": Component(
            "sensor",
            "Tokens per second",
            {
                "stat_t": "~/state",
                "val_tpl": _field("tokens_per_second"),
                "unit_of_meas": "tok/s",
                "stat_cla": "measurement",
                "sug_dsp_prc": 1,
                "ic": "mdi:speedometer",
                "ent_cat": "diagnostic",
            },
        ),
        "ttft": Component(
            "sensor",
            "Time to first token",
            {
                "stat_t": "~/state",
                "val_tpl": _field("ttft_ms"),
                "dev_cla": "duration",
                "unit_of_meas": "ms",
                "stat_cla": "measurement",
                "sug_dsp_prc": 0,
                "ic": "mdi:timer-sand",
                "ent_cat": "diagnostic",
            },
        ),
        "queue": Component(
            "sensor",
            "Queue",
            {
                "stat_t": "~/state",
                "val_tpl": _field("queue"),
                "stat_cla": "measurement",
                "ic": "mdi:tray-full",
                "ent_cat": "diagnostic",
            },
        ),
        "model": Component(
            "sensor",
            "Model",
            {
                "stat_t": "~/state",
                "val_tpl": _field("model"),
                "ic": "mdi:brain",
                "ent_cat": "diagnostic",
            },
        ),
        "last_response": Component(
            "sensor",
            "Last response",
            {
                "stat_t": "~/last_response",
                # The daemon already cuts the text; cutting again keeps HA from discarding an
                # over-long state as "unknown" should that ever slip through.
                "val_tpl": "{{ value[:" + str(MAX_STATE_CHARS) + "] }}",
                "json_attr_t": "~/last_response/attributes",
                "ic": "mdi:message-reply-text",
            },
        ),
        "prompt": Component(
            "text",
            "Prompt",
            {
                "cmd_t": "~/prompt",
                "min": 1,
                "max": MAX_STATE_CHARS,
                "mode": "text",
                "ic": "mdi:message-text",
            },
        ),
        "abort": Component(
            "button",
            "Abort",
            # Empty payload = abort the running request (contract of `~/abort`).
            {"cmd_t": "~/abort", "pl_prs": "", "ic": "mdi:stop-circle-outline"},
        ),
        "response": Component(
            "event",
            "Response",
            {"stat_t": "~/event", "evt_typ": list(EVENT_TYPES), "ic": "mdi:message-flash"},
        ),
    }
)


def slugify(text: str) -> str:
    """Lowercase ASCII with `_` separators, close to HA's slugify for entity ids."""
    ascii_text = unicodedata.normalize("NFKD", text).encode("ascii", "ignore").decode()
    return re.sub(r"[^a-z0-9]+", "_", ascii_text.lower()).strip("_")


def device_name(settings: Settings) -> str:
    """The device's display name; the node id keeps several boards apart by default."""
    return settings.homeassistant.device_name or f"RKLLM {settings.mqtt.node_id}"


def discovery_topic(settings: Settings) -> str:
    """Where the retained device config goes (an empty retained payload there removes the device)."""
    return Topics.of(settings).discovery


def build_discovery(settings: Settings, *, model: str | None) -> dict[str, Any]:
    """The device discovery payload; `model` (the LLM's name) shows as the device model."""
    node = settings.mqtt.node_id
    topics = Topics.of(settings)
    entity_base = slugify(device_name(settings)) or f"rkllm_{slugify(node)}"
    components: dict[str, dict[str, Any]] = {}
    for component_id, component in COMPONENTS.items():
        components[component_id] = {
            "p": component.platform,
            "~": topics.prefix,
            "uniq_id": f"rkllm_{node}_{component_id}",
            "def_ent_id": f"{component.platform}.{entity_base}_{slugify(component.name)}",
            "name": component.name,
            # Copies, so a caller mutating the payload cannot change the table.
            **{
                key: list(value) if isinstance(value, list) else value
                for key, value in component.options.items()
            },
        }
    return {
        "dev": {
            "ids": [f"rkllm_{node}"],
            "name": device_name(settings),
            "mf": MANUFACTURER,
            "mdl": model or DEFAULT_MODEL,
            "sw": __version__,
        },
        "o": {"name": "rkllm-mqtt", "sw": __version__, "url": PROJECT_URL},
        "avty_t": topics.status,
        "pl_avail": "online",
        "pl_not_avail": "offline",
        "qos": settings.mqtt.qos,
        "cmps": components,
    }
