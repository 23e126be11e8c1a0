"""Constants for the RKLLM over MQTT integration: option keys with their defaults, and topics."""

from __future__ import annotations

import logging

DOMAIN = "rkllm_mqtt"
LOGGER = logging.getLogger(__package__)

# Where a daemon lives on the broker: `<base_topic>/<node_id>` is the contract's `~`.
CONF_BASE_TOPIC = "base_topic"
DEFAULT_BASE_TOPIC = "rkllm"
CONF_NODE_ID = "node_id"

# Options. Max new tokens and temperature have no default on purpose: left empty, the daemon's own
# configuration applies, so the integration never silently overrides what the board's owner chose.
CONF_PROMPT = "prompt"
CONF_MAX_NEW_TOKENS = "max_new_tokens"
CONF_TEMPERATURE = "temperature"
CONF_TIMEOUT = "timeout"
DEFAULT_TIMEOUT = 60.0  # seconds for a whole answer: prefill + decode at ~16 tokens/s on an RK3588
CONF_MAX_HISTORY = "max_history"
DEFAULT_MAX_HISTORY = 10  # previous user turns sent with a new one; 0 = all of them

# Action `rkllm_mqtt.generate`.
SERVICE_GENERATE = "generate"
ATTR_CONFIG_ENTRY = "config_entry"
ATTR_PROMPT = "prompt"
ATTR_SYSTEM = "system"

STATUS_ONLINE = "online"
# The manufacturer the daemon's MQTT discovery gives its device (rkllm_mqtt.discovery.MANUFACTURER).
DEVICE_MANUFACTURER = "rkllm-mqtt"

# The manual config-flow step listens this long for retained `<base>/+/status` messages: HA sends
# SUBSCRIBEs after a debounce of up to 0.5 s, and the broker answers with every retained status at
# once, so a short quiet period after the first one means the list is complete.
SCAN_TIMEOUT = 5.0
SCAN_SETTLE = 0.5


def status_topic(base_topic: str, node_id: str) -> str:
    """The daemon's retained `online`/`offline` topic."""
    return f"{base_topic}/{node_id}/status"


def reply_topic(base_topic: str, entry_id: str) -> str:
    """Where this config entry's requests are answered.

    Under `<base>/reply/` because that is the daemon's default allow-list for response topics; one
    topic per entry (not per request) so it is subscribed once, before any request needs it.
    """
    return f"{base_topic}/reply/ha_{entry_id.lower()}"
