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

# English messages of the errors users see (Assist speaks them, action calls show them); the same
# texts are strings.json's `exceptions`, under which the frontend finds their translations.
EXCEPTION_MESSAGES = {
    "no_daemon": "No RKLLM daemon is set up.",
    "none_loaded": "No RKLLM daemon is loaded (set up but not running: {titles}).",
    "several_daemons": "Several RKLLM daemons are set up: choose one with config_entry.",
    "not_a_daemon": "{entry_id} is not an RKLLM daemon's config entry.",
    "not_loaded": "The RKLLM daemon {title} is not loaded.",
    "offline": "The RKLLM daemon {node_id} is offline.",
    "went_offline": "The RKLLM daemon {node_id} went offline while answering.",
    "unloaded": "The RKLLM over MQTT integration was unloaded or is reloading, so the answer was abandoned.",
    "timeout": "The RKLLM daemon {node_id} did not answer within {timeout} seconds.",
    "aborted": "The answer was stopped before it was finished.",
    "deadline": "The RKLLM daemon {node_id} ran out of time before it finished the answer.",
    "queue_full": "The RKLLM daemon {node_id} is busy with other requests; try again in a moment.",
    "context_too_long": "The conversation is too long for the model; start a new one.",
    "message_too_long": "The message is too long for the RKLLM daemon {node_id}: with the instructions it "
    "may hold at most {max_prompt_chars} characters.",
    "prefix_too_long": "The instructions and tools alone need about {needed_tokens} tokens, more than the "
    "model's context on the RKLLM daemon {node_id} ({max_context_tokens} tokens): shorten the instructions "
    "or expose fewer entities.",
    "reply_error": "The RKLLM daemon {node_id} could not answer ({code}): {message}",
    "template_error": "Sorry, I had a problem with my instructions template.",
    "llm_api": "Sorry, I could not prepare the Home Assistant control ({api}) for this conversation.",
    "tool_rounds": "Sorry, the model kept calling tools without answering ({rounds} rounds).",
    "mqtt_not_connected": "MQTT is not available; the RKLLM daemon needs Home Assistant's MQTT integration.",
}


def exception_args(key: str, **placeholders: str) -> tuple[tuple[str], dict[str, object]]:
    """(args, kwargs) for a HomeAssistantError: the English message plus its translation key."""
    return (EXCEPTION_MESSAGES[key].format(**placeholders),), {
        "translation_domain": DOMAIN, "translation_key": key, "translation_placeholders": placeholders,
    }


STATUS_ONLINE = "online"
# The daemon's defaults for `limits` (its `[limits]` section), for a daemon that does not announce
# them in `~/state` (releases before the announcement).
DEFAULT_MAX_PROMPT_CHARS = 16000
DEFAULT_MAX_PAYLOAD_BYTES = 65536
# The manufacturer the daemon's MQTT discovery gives its device (rkllm_mqtt.discovery.MANUFACTURER),
# and the identifier of that device, in the `mqtt` domain, that the agent's device links to.
DEVICE_MANUFACTURER = "rkllm-mqtt"
MQTT_DOMAIN = "mqtt"


def mqtt_device_identifier(node_id: str) -> tuple[str, str]:
    return (MQTT_DOMAIN, f"rkllm_{node_id}")

# The manual config-flow step listens this long for retained `<base>/+/status` messages: HA sends
# SUBSCRIBEs after a debounce of up to 0.5 s, and the broker answers with every retained status at
# once, so a short quiet period after the first one means the list is complete.
SCAN_TIMEOUT = 5.0
SCAN_SETTLE = 0.5


def status_topic(base_topic: str, node_id: str) -> str:
    """The daemon's retained `online`/`offline` topic."""
    return f"{base_topic}/{node_id}/status"


def state_topic(base_topic: str, node_id: str) -> str:
    """The daemon's retained JSON state, which also announces its request `limits`."""
    return f"{base_topic}/{node_id}/state"


def reply_topic(base_topic: str, entry_id: str) -> str:
    """Where this config entry's requests are answered.

    Under `<base>/reply/` because that is the daemon's default allow-list for response topics; one
    topic per entry (not per request) so it is subscribed once, before any request needs it.
    """
    return f"{base_topic}/reply/ha_{entry_id.lower()}"
