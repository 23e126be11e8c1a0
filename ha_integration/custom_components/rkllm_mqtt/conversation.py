"""Conversation platform: one Assist agent (text and voice) per daemon."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import TYPE_CHECKING, Any, Literal

from homeassistant.components import conversation
from homeassistant.const import MATCH_ALL
from homeassistant.exceptions import HomeAssistantError, TemplateError
from homeassistant.helpers import intent, llm, template

from .client import Generation, RkllmClient, RkllmError, refused_for_size
from .const import (
    CONF_MAX_HISTORY,
    CONF_MAX_NEW_TOKENS,
    CONF_PROMPT,
    CONF_TEMPERATURE,
    CONF_TIMEOUT,
    DEFAULT_MAX_HISTORY,
    DEFAULT_TIMEOUT,
    LOGGER,
    exception_args,
)
from .entity import RkllmBaseEntity
from .history import Budget, HistoryTooLong, chat_log_messages, conversation_key, shorter_start, window_start
from .llm_api import async_get_llm_api, format_tools, llm_api_ids, turn_intent_response
from .prefix import PrefixTooLong, TurnContexts, history_room, split_volatile
from .tool_loop import async_add_answer, async_tool_rounds

if TYPE_CHECKING:
    from homeassistant.core import HomeAssistant
    from homeassistant.helpers.entity_platform import AddConfigEntryEntitiesCallback

    from . import RkllmConfigEntry

# Conversations whose window an earlier refusal moved (conversation id → first message sent); HA
# forgets a chat after a few idle minutes, so a small bound keeps every active one.
MAX_MOVED_WINDOWS = 64


async def async_setup_entry(
    hass: HomeAssistant, entry: RkllmConfigEntry, async_add_entities: AddConfigEntryEntitiesCallback
) -> None:
    async_add_entities([RkllmConversationEntity(hass, entry)])


class RkllmConversationEntity(
    RkllmBaseEntity, conversation.ConversationEntity, conversation.AbstractConversationAgent
):
    """Answers Assist with the daemon's model; HA's conversation id is the daemon's conversation."""

    # Read by Home Assistant releases after 2025.4 to start speaking before the answer is complete.
    _attr_supports_streaming = True

    def __init__(self, hass: HomeAssistant, entry: RkllmConfigEntry) -> None:
        super().__init__(hass, entry)
        self._moved_windows: dict[str, int] = {}
        self._turn_contexts = TurnContexts()  # per-turn text kept out of the cached system prompt

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
        turn_start = len(chat_log.content)
        system, context = split_volatile(await self._async_system_prompt(user_input, chat_log))
        await self._async_handle_chat_log(chat_log, system, context)
        response = turn_intent_response(chat_log, turn_start) or intent.IntentResponse(
            language=user_input.language
        )
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

    async def _async_handle_chat_log(
        self, chat_log: conversation.ChatLog, system: str | None, context: str = ""
    ) -> None:
        """Answer the chat log's newest user turn; the answer lands in the chat log.

        Each request of the turn streams into the chat log where this Home Assistant can take a
        delta stream; elsewhere the daemon sends no tokens and the final text is added at once.
        Either way the final reply's text is the answer the chat log keeps. With an LLM API on the
        chat log, its tools go with every request, and the tools the model calls run in rounds
        (tool_loop). Failures are raised as RkllmError (a HomeAssistantError) with a sentence for
        the user.
        """
        options = self.entry.options
        client = self.entry.runtime_data
        # The whole chat (cut to fit) under HA's conversation id: the daemon sends the model only what
        # its stored history lacks, continuing its KV cache, and replays this chat when it has
        # forgotten the conversation (restart, eviction) or holds another one.
        fields: dict[str, Any] = {
            "system": system or None,
            "tools": format_tools(chat_log.llm_api) if chat_log.llm_api else None,
            "conversation": conversation_key(chat_log.conversation_id),
            "max_new_tokens": options.get(CONF_MAX_NEW_TOKENS),
            "temperature": options.get(CONF_TEMPERATURE),
            "priority": "interactive",
            "timeout": float(options.get(CONF_TIMEOUT, DEFAULT_TIMEOUT)),
        }
        # What core's agents put in the conversation trace (Settings → Voice assistants → Debug).
        chat_log.async_trace({"system": fields["system"], "tools": fields["tools"]})

        async def one_request() -> None:
            answered: list[Generation] = []
            messages = self._turn_contexts.apply(chat_log.conversation_id,
                                                 chat_log_messages(chat_log), context)
            texts = self._async_answer(client, messages, fields, chat_log.conversation_id, answered)
            await async_add_answer(self.entity_id, chat_log, texts, lambda: answered[-1].result, _deltas)

        await async_tool_rounds(chat_log, one_request)

    async def _async_answer(
        self, client: RkllmClient, messages: list[dict[str, Any]], fields: dict[str, Any],
        conversation_id: str, answered: list[Generation],
    ) -> AsyncIterator[str]:
        """The answer's text pieces, from a window of the chat that fits the daemon's limits.

        A request the daemon refuses for its size anyway (its limits changed, or its runtime found
        the context too long) is sent once more with a window of a quarter of the limits, which
        later turns of the conversation keep. The generation that answered ends up in `answered`.
        """
        stream = hasattr(conversation.ChatLog, "async_add_delta_content_stream")
        max_history = int(self.entry.options.get(CONF_MAX_HISTORY, DEFAULT_MAX_HISTORY))
        floor = self._moved_windows.get(conversation_id, 0)
        for retry in (False, True):
            budget = self._budget(client, fields)
            try:
                start = window_start(messages, budget=budget, max_history=max_history, floor=floor)
            except HistoryTooLong:
                raise RkllmError(
                    "message_too_long", node_id=client.node_id,
                    max_prompt_chars=str(client.limits.max_prompt_chars),
                ) from None
            generation = client.generate(stream=stream, messages=messages[start:], **fields)
            try:
                async for text in generation:
                    yield text
            except RkllmError as err:
                if retry or generation.streamed or not refused_for_size(err):
                    raise
                LOGGER.info("The RKLLM daemon %s refused %d messages for their size (%s); sending fewer",
                            client.prefix, len(messages) - start, err)
                floor = shorter_start(messages, start, budget)
                self._moved_windows[conversation_id] = floor
                while len(self._moved_windows) > MAX_MOVED_WINDOWS:
                    del self._moved_windows[next(iter(self._moved_windows))]
                continue
            answered.append(generation)
            return

    @staticmethod
    def _budget(client: RkllmClient, fields: dict[str, Any]) -> Budget:
        """The daemon's limits (and its model's context) less what the rest of the request takes."""
        overhead = len(client.generate(messages=[], **fields).payload)
        chars = client.limits.max_prompt_chars - len(fields["system"] or "")
        try:
            room = history_room(client.limits.max_context_tokens, fields["system"],
                                fields.get("tools"), fields.get("max_new_tokens"))
        except PrefixTooLong as err:
            raise RkllmError(
                "prefix_too_long", node_id=client.node_id, needed_tokens=str(err.needed_tokens),
                max_context_tokens=str(err.max_context_tokens),
            ) from None
        return Budget(
            chars=chars if room is None else min(chars, room),
            payload_bytes=client.limits.max_payload_bytes - overhead,
        )


async def _deltas(texts: AsyncIterator[str]) -> AsyncIterator[conversation.AssistantContentDeltaDict]:
    """Text pieces as chat-log deltas: the role opens the one assistant message, then the text.

    Assist speaks the deltas as they come (newer Home Assistant starts text-to-speech after the
    first few dozen characters, and then speaks nothing but the deltas), so an answer that breaks
    off after some text ends with the error sentence among them; the error is raised as well, for
    the turn's response (the chat log keeps nothing of a failed answer).
    """
    yield {"role": "assistant"}
    streamed = False
    try:
        async for text in texts:
            streamed = True
            yield {"content": text}
    except RkllmError as err:
        if streamed:
            yield {"content": f" … {err}"}
        raise
