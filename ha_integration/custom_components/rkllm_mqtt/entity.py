"""Base entity for the RKLLM over MQTT integration: availability, device, and the daemon call."""

from __future__ import annotations

import hashlib
from collections.abc import AsyncIterator
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

if TYPE_CHECKING:

    from . import RkllmConfigEntry
    from .client import Generation

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


def chat_log_messages(chat_log: conversation.ChatLog) -> list[dict[str, str]]:
    """The user and assistant turns of the chat log as contract messages.

    The system prompt travels separately (`system`); tool results do not exist here because the
    daemon has no tool calling.
    """
    return [
        {"role": content.role, "content": content.content}
        for content in chat_log.content
        if isinstance(content, conversation.UserContent | conversation.AssistantContent)
        and content.content is not None
    ]


def conversation_key(conversation_id: str) -> str:
    """HA's conversation id as the request's `conversation` (the contract allows 128 characters).

    Ids are ULIDs unless a caller of `conversation.process` picked its own: a longer one keeps its
    beginning and gets a hash of the whole, so two long ids never share a conversation.
    """
    if len(conversation_id) <= MAX_CONVERSATION_KEY:
        return conversation_id
    digest = hashlib.sha256(conversation_id.encode()).hexdigest()[:32]
    return f"{conversation_id[: MAX_CONVERSATION_KEY - 33]}-{digest}"


def trim_history(messages: list[dict[str, str]], max_history: int) -> list[dict[str, str]]:
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


async def _deltas(generation: Generation) -> AsyncIterator[conversation.AssistantContentDeltaDict]:
    """Daemon text pieces as chat-log deltas: the role opens the one assistant message, then text."""
    yield {"role": "assistant"}
    async for text in generation:
        yield {"content": text}


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

        Token messages stream into the chat log as they arrive where this Home Assistant can take a
        delta stream; elsewhere the daemon sends no tokens and the final text is added at once.
        Failures are raised as RkllmError (a HomeAssistantError) with a sentence for the user.
        """
        options = self.entry.options
        client = self.entry.runtime_data
        # The whole chat (cut to the History length option) under HA's conversation id: the daemon
        # sends the model only what its stored history lacks, continuing its KV cache, and replays
        # this chat when it has forgotten the conversation (restart, eviction) or holds another one.
        messages = trim_history(
            chat_log_messages(chat_log), int(options.get(CONF_MAX_HISTORY, DEFAULT_MAX_HISTORY))
        )
        fields: dict[str, Any] = {
            "messages": messages,
            "system": system or None,
            "conversation": conversation_key(chat_log.conversation_id),
            "max_new_tokens": options.get(CONF_MAX_NEW_TOKENS),
            "temperature": options.get(CONF_TEMPERATURE),
            "priority": "interactive",
            "timeout": float(options.get(CONF_TIMEOUT, DEFAULT_TIMEOUT)),
        }
        answer = ""
        if hasattr(chat_log, "async_add_delta_content_stream"):
            deltas = _deltas(client.generate(stream=True, **fields))
            async for content in chat_log.async_add_delta_content_stream(self.entity_id, deltas):
                answer = content.content or ""
        else:
            answer = (await client.async_generate(**fields)).text
        if not isinstance(chat_log.content[-1], conversation.AssistantContent):
            # The non-streaming path, or an empty answer (the stream adds no message without text):
            # the turn still needs its assistant message, or the next one follows two user messages.
            chat_log.async_add_assistant_content_without_tools(
                conversation.AssistantContent(agent_id=self.entity_id, content=answer)
            )
