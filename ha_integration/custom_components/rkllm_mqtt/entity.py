"""Base entity for the RKLLM over MQTT integration: availability, device, and the daemon call."""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any
from uuid import uuid4

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
    DOMAIN,
)

if TYPE_CHECKING:
    from homeassistant.core import HomeAssistant

    from . import RkllmConfigEntry
    from .client import Generation

# Conversations remembered per daemon; Home Assistant drops a chat session after minutes of silence.
MAX_TRACKED_CONVERSATIONS = 64


def daemon_device_info(hass: HomeAssistant, entry: RkllmConfigEntry) -> dr.DeviceInfo:
    """Join the device the daemon's own MQTT discovery made, or make one when there is none.

    One device then shows the daemon's sensors and its conversation agent together. The identifier
    is the one `rkllm_mqtt.discovery` announces; MQTT is a low-priority domain for a shared device,
    so the link adds this entry without renaming anything.
    """
    mqtt_identifier = ("mqtt", f"rkllm_{entry.data[CONF_NODE_ID]}")
    if dr.async_get(hass).async_get_device(identifiers={mqtt_identifier}) is not None:
        return dr.DeviceInfo(identifiers={mqtt_identifier})
    return dr.DeviceInfo(
        identifiers={(DOMAIN, entry.entry_id)},
        name=entry.title,
        manufacturer="rkllm-mqtt",
        model="RKLLM LLM daemon",
        entry_type=dr.DeviceEntryType.SERVICE,
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


def trim_history(messages: list[dict[str, str]], max_history: int) -> list[dict[str, str]]:
    """The newest user turn with at most `max_history` earlier user turns (and their answers)."""
    if max_history <= 0:
        return messages
    user_turns = [i for i, message in enumerate(messages) if message["role"] == "user"]
    if len(user_turns) <= max_history + 1:
        return messages
    return messages[user_turns[-(max_history + 1)]:]


@dataclass(slots=True)
class _DaemonConversation:
    """What the daemon holds for one Home Assistant conversation."""

    key: str  # the request's `conversation`
    epoch: int  # RkllmClient.epoch when it was sent: a daemon restart since means it is gone
    messages: list[dict[str, str]]  # the chat log's turns the daemon has, answers included


class DaemonConversations:
    """Home Assistant conversation id → the daemon's conversation, so a turn sends only what is new.

    The daemon keeps each conversation's history (and the newest one in the NPU's KV cache) and
    appends a request's `messages` to it. The ChatLog stays the truth: when the daemon already has
    everything before the new user turn, only that turn is sent and the daemon continues from its
    KV cache; otherwise (first turn, daemon restarted, turns the daemon never saw) the history, cut
    to `max_history` turns, is sent under a fresh key so nothing is appended twice.
    """

    def __init__(self, max_size: int = MAX_TRACKED_CONVERSATIONS) -> None:
        self._max_size = max_size
        self._known: OrderedDict[str, _DaemonConversation] = OrderedDict()

    def request(
        self, conversation_id: str, history: list[dict[str, str]], epoch: int, max_history: int
    ) -> tuple[str, list[dict[str, str]]]:
        """(conversation key, messages) for a request whose last message is the new user turn."""
        known = self._known.get(conversation_id)
        if known is not None and known.epoch == epoch and known.messages == history[:-1]:
            return known.key, history[-1:]
        key = f"{conversation_id[:100]}-{uuid4().hex[:8]}"
        return key, trim_history(history, max_history)

    def answered(
        self, conversation_id: str, key: str, epoch: int, history: list[dict[str, str]], answer: str
    ) -> None:
        """Record a completed turn (a failed one leaves the daemon's history unchanged too)."""
        self._known[conversation_id] = _DaemonConversation(
            key, epoch, [*history, {"role": "assistant", "content": answer}]
        )
        self._known.move_to_end(conversation_id)
        while len(self._known) > self._max_size:
            self._known.popitem(last=False)


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
        self._conversations = DaemonConversations()
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
        history = chat_log_messages(chat_log)
        epoch = client.epoch
        key, messages = self._conversations.request(
            chat_log.conversation_id, history, epoch,
            int(options.get(CONF_MAX_HISTORY, DEFAULT_MAX_HISTORY)),
        )
        fields: dict[str, Any] = {
            "messages": messages,
            "system": system or None,
            "conversation": key,
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
        self._conversations.answered(chat_log.conversation_id, key, epoch, history, answer)
