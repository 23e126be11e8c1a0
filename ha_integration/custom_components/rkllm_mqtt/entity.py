"""Base entity for the RKLLM over MQTT integration: availability, device, and the daemon call."""

from __future__ import annotations

import hashlib
from typing import TYPE_CHECKING, Any

from homeassistant.components import conversation
from homeassistant.helpers import device_registry as dr
from homeassistant.helpers.entity import Entity

from .const import (
    CONF_MAX_HISTORY,
    CONF_MAX_NEW_TOKENS,
    CONF_NODE_ID,
    CONF_TEMPERATURE,
    CONF_TIMEOUT,
    DEFAULT_MAX_HISTORY,
    DEFAULT_TIMEOUT,
    DEVICE_MANUFACTURER,
)
from .llm_api import format_tools, tool_calls_message, tool_result_message
from .tool_loop import async_answer

if TYPE_CHECKING:
    from . import RkllmConfigEntry

MAX_CONVERSATION_KEY = 128  # the contract's limit for `conversation` (and `id`)


def daemon_device_info(entry: RkllmConfigEntry) -> dr.DeviceInfo:
    """The device of the daemon's own MQTT discovery, whether it exists yet or not.

    One device then shows the daemon's sensors and its conversation agent together, whichever of
    the two Home Assistant sees first. The identifier is the one `rkllm_mqtt.discovery` announces.
    When the entity comes first, Home Assistant makes the device and names it after the entry
    ("RKLLM <node>", the daemon's default name too); when discovery comes first or later, it names
    the device and sets its model. The manufacturer is the daemon's own, so nothing flips.
    """
    return dr.DeviceInfo(
        identifiers={("mqtt", f"rkllm_{entry.data[CONF_NODE_ID]}")}, manufacturer=DEVICE_MANUFACTURER
    )


def chat_log_messages(chat_log: conversation.ChatLog) -> list[dict[str, Any]]:
    """The user and assistant turns of the chat log, and its tool rounds, as contract messages.

    The system prompt travels separately (`system`).
    """
    messages: list[dict[str, Any]] = []
    for content in chat_log.content:
        if isinstance(content, conversation.ToolResultContent):
            messages.append(tool_result_message(content))
        elif isinstance(content, conversation.AssistantContent) and content.tool_calls:
            messages.append(tool_calls_message(content))
        elif (
            isinstance(content, conversation.UserContent | conversation.AssistantContent)
            and content.content is not None
        ):
            messages.append({"role": content.role, "content": content.content})
    return messages


def conversation_key(conversation_id: str) -> str:
    """HA's conversation id as the request's `conversation` (the contract allows 128 characters).

    Ids are ULIDs unless a caller of `conversation.process` picked its own: a longer one keeps its
    beginning and gets a hash of the whole, so two long ids never share a conversation.
    """
    if len(conversation_id) <= MAX_CONVERSATION_KEY:
        return conversation_id
    digest = hashlib.sha256(conversation_id.encode()).hexdigest()[:32]
    return f"{conversation_id[: MAX_CONVERSATION_KEY - 33]}-{digest}"


def trim_history(messages: list[dict[str, Any]], max_history: int) -> list[dict[str, Any]]:
    """The newest user turn with at most `max_history` earlier user turns (and their answers).

    The start of the window moves in steps of half the window rather than one turn at a time: the
    daemon continues its KV cache only while the chat it is sent begins where its stored history
    does, so a window that slid every turn would make it re-read the conversation every turn.
    """
    if max_history <= 0:
        return messages
    user_turns = [i for i, message in enumerate(messages) if message["role"] == "user"]
    earlier = len(user_turns) - 1
    if earlier <= max_history:
        return messages
    step = max(1, max_history // 2)
    first = -(-(earlier - max_history) // step) * step  # rounded up to a whole step
    return messages[user_turns[first]:]


class RkllmBaseEntity(Entity):
    """An entity backed by one daemon; unavailable whenever the daemon's status is not `online`."""

    _attr_has_entity_name = True
    _attr_name = None
    _attr_should_poll = False

    def __init__(self, entry: RkllmConfigEntry, device_info: dr.DeviceInfo) -> None:
        self.entry = entry
        self._attr_unique_id = entry.entry_id
        self._attr_device_info = device_info

    @property
    def available(self) -> bool:
        return self.entry.runtime_data.online

    async def async_added_to_hass(self) -> None:
        await super().async_added_to_hass()
        self.async_on_remove(self.entry.runtime_data.async_add_listener(self.async_write_ha_state))

    async def _async_handle_chat_log(self, chat_log: conversation.ChatLog, system: str | None) -> None:
        """Answer the chat log's newest user turn; the answer lands in the chat log.

        With an LLM API on the chat log, its tools go with every request and the tools the model
        calls run in tool rounds (tool_loop). Failures are raised as RkllmError (a
        HomeAssistantError) with a sentence for the user.
        """
        options = self.entry.options
        max_history = int(options.get(CONF_MAX_HISTORY, DEFAULT_MAX_HISTORY))
        fields: dict[str, Any] = {
            "system": system or None,
            "tools": format_tools(chat_log.llm_api) if chat_log.llm_api else None,
            "conversation": conversation_key(chat_log.conversation_id),
            "max_new_tokens": options.get(CONF_MAX_NEW_TOKENS),
            "temperature": options.get(CONF_TEMPERATURE),
            "priority": "interactive",
            "timeout": float(options.get(CONF_TIMEOUT, DEFAULT_TIMEOUT)),
        }
        # The whole chat (cut to the History length option) under HA's conversation id: the daemon
        # sends the model only what its stored history lacks, continuing its KV cache, and replays
        # this chat when it has forgotten the conversation (restart, eviction) or holds another one.
        await async_answer(
            self.entity_id, chat_log, self.entry.runtime_data, fields,
            lambda: trim_history(chat_log_messages(chat_log), max_history),
        )
