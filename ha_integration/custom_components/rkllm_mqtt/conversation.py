"""Conversation platform: one Assist agent (text and voice) per daemon."""

from __future__ import annotations

from typing import TYPE_CHECKING, Literal

from homeassistant.components import conversation
from homeassistant.const import MATCH_ALL
from homeassistant.exceptions import HomeAssistantError, TemplateError
from homeassistant.helpers import intent, llm, template

from .const import CONF_PROMPT, LOGGER, exception_args
from .entity import RkllmBaseEntity, daemon_device_info
from .llm_api import async_get_llm_api, llm_api_ids

if TYPE_CHECKING:
    from homeassistant.core import HomeAssistant
    from homeassistant.helpers.entity_platform import AddConfigEntryEntitiesCallback

    from . import RkllmConfigEntry


async def async_setup_entry(
    hass: HomeAssistant, entry: RkllmConfigEntry, async_add_entities: AddConfigEntryEntitiesCallback
) -> None:
    async_add_entities([RkllmConversationEntity(entry, daemon_device_info(entry))])


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
        self.async_on_remove(self.entry.add_update_listener(self._async_options_updated))

    @property
    def supported_features(self) -> conversation.ConversationEntityFeature:
        """CONTROL while an LLM API is chosen: Assist pipelines read it from the state's attributes."""
        if llm_api_ids(self.entry.options):
            return conversation.ConversationEntityFeature.CONTROL
        return conversation.ConversationEntityFeature(0)

    async def _async_options_updated(self, _hass: HomeAssistant, _entry: RkllmConfigEntry) -> None:
        """Options apply at the next request without a reload; only the features must be written."""
        self.async_write_ha_state()

    async def async_will_remove_from_hass(self) -> None:
        conversation.async_unset_agent(self.hass, self.entry)
        await super().async_will_remove_from_hass()

    @property
    def supported_languages(self) -> list[str] | Literal["*"]:
        return MATCH_ALL

    async def _async_handle_message(
        self, user_input: conversation.ConversationInput, chat_log: conversation.ChatLog
    ) -> conversation.ConversationResult:
        chat_log.llm_api = await async_get_llm_api(self.hass, user_input, self.entry.options)
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
        """The instructions from the options (a template), the LLM API's prompt, and the caller's
        extra system prompt.

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
        api_prompt = chat_log.llm_api.api_prompt if chat_log.llm_api else None
        return "\n".join(part for part in (prompt.strip(), api_prompt, chat_log.extra_system_prompt) if part)
