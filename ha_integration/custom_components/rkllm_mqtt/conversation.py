"""Conversation platform: one Assist agent (text and voice) per daemon."""

from __future__ import annotations

from typing import TYPE_CHECKING, Literal

from homeassistant.components import conversation
from homeassistant.const import MATCH_ALL
from homeassistant.exceptions import HomeAssistantError, TemplateError
from homeassistant.helpers import intent, llm, template

from .const import CONF_PROMPT, LOGGER, exception_args
from .entity import RkllmBaseEntity, daemon_device_info
from .pool import CONF_POOL, pool_device_info

if TYPE_CHECKING:
    from homeassistant.core import HomeAssistant
    from homeassistant.helpers.entity_platform import AddConfigEntryEntitiesCallback

    from . import RkllmConfigEntry


async def async_setup_entry(
    hass: HomeAssistant, entry: RkllmConfigEntry, async_add_entities: AddConfigEntryEntitiesCallback
) -> None:
    if CONF_POOL in entry.data:
        device = pool_device_info(entry.entry_id, entry.data[CONF_POOL])
    else:
        device = daemon_device_info(entry)
    async_add_entities([RkllmConversationEntity(entry, device)])


class RkllmConversationEntity(
    RkllmBaseEntity, conversation.ConversationEntity, conversation.AbstractConversationAgent
):
    """Answers Assist with the daemon's model; HA's conversation id is the daemon's conversation."""

    # Read by Home Assistant releases after 2025.4 to start speaking before the answer is complete.
    _attr_supports_streaming = True

    async def async_added_to_hass(self) -> None:
        """Also answer to the config entry id as an agent id, as core's LLM integrations do."""
        await super().async_added_to_hass()
        conversation.async_set_agent(self.hass, self.entry, self)

    async def async_will_remove_from_hass(self) -> None:
        conversation.async_unset_agent(self.hass, self.entry)
        await super().async_will_remove_from_hass()

    @property
    def supported_languages(self) -> list[str] | Literal["*"]:
        return MATCH_ALL

    async def _async_handle_message(
        self, user_input: conversation.ConversationInput, chat_log: conversation.ChatLog
    ) -> conversation.ConversationResult:
        await self._async_handle_chat_log(chat_log, await self._async_system_prompt(user_input, chat_log))
        response = intent.IntentResponse(language=user_input.language)
        response.async_set_speech(chat_log.content[-1].content or "")
        return conversation.ConversationResult(
            response=response,
            conversation_id=chat_log.conversation_id,
            continue_conversation=chat_log.continue_conversation,
        )

    async def _async_system_prompt(
        self, user_input: conversation.ConversationInput, chat_log: conversation.ChatLog
    ) -> str:
        """The instructions from the options (a template) plus the caller's extra system prompt.

        Unlike core's LLM agents this does not prepend the current time: a system prompt that changes
        every turn makes the daemon rebuild the conversation's KV cache, i.e. re-read the whole
        conversation at NPU prefill speed. The template may still use now() for those who want it.
        """
        user_name = None
        if user_input.context.user_id and (
            user := await self.hass.auth.async_get_user(user_input.context.user_id)
        ):
            user_name = user.name
        try:
            prompt = template.Template(
                self.entry.options.get(CONF_PROMPT, llm.DEFAULT_INSTRUCTIONS_PROMPT), self.hass
            ).async_render({"ha_name": self.hass.config.location_name, "user_name": user_name},
                           parse_result=False)
        except TemplateError as err:
            LOGGER.error("Error rendering the instructions of %s: %s", self.entity_id, err)
            args, kwargs = exception_args("template_error")
            raise HomeAssistantError(*args, **kwargs) from err
        # Kept on the chat log so every later turn of the conversation gets it too.
        chat_log.extra_system_prompt = user_input.extra_system_prompt or chat_log.extra_system_prompt
        return "\n".join(part for part in (prompt.strip(), chat_log.extra_system_prompt) if part)
