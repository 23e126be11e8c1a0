"""Home Assistant's LLM APIs for the agent (the `llm_hass_api` option, as in core's LLM integrations).

Which APIs a turn uses, their prompt and tools as the daemon's `system` and `tools`, and the tool
content of the chat log as contract messages. Home Assistant 2025.4 lets an agent use one API;
releases with `llm.MergedAPI` (2025.x later, 2026.x) let it use several, and the option is a list.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import voluptuous as vol
from homeassistant.components import conversation
from homeassistant.const import CONF_LLM_HASS_API
from homeassistant.core import HomeAssistant
from homeassistant.exceptions import HomeAssistantError
from homeassistant.helpers import intent, llm
from homeassistant.helpers.json import json_dumps
from homeassistant.helpers.selector import SelectOptionDict, SelectSelector, SelectSelectorConfig

from .client import RkllmError
from .const import DOMAIN, LOGGER

try:  # Home Assistant 2026.x converts tool schemas with probatio, its voluptuous successor
    from probatio import to_openapi as _to_openapi
except ImportError:  # earlier releases ship voluptuous_openapi, which core's integrations use there
    from voluptuous_openapi import convert as _to_openapi

# An agent may combine several APIs where Home Assistant can merge them into one instance.
SEVERAL_APIS = hasattr(llm, "MergedAPI")
# The single-API select's "No control" entry (core's ollama of 2025.4 does the same); never stored.
NO_API = "none"


def llm_api_ids(options: Mapping[str, Any]) -> list[str]:
    """The option's API ids, whichever release stored it (a string on 2025.4, a list later)."""
    value = options.get(CONF_LLM_HASS_API)
    if not value or value == NO_API:
        return []
    if isinstance(value, str):
        return [value]
    return [api_id for api_id in value if isinstance(api_id, str) and api_id != NO_API]


def llm_api_option(hass: HomeAssistant, options: Mapping[str, Any]) -> dict[vol.Optional, SelectSelector]:
    """The options-form field: every registered LLM API (Assist and any other), one or several."""
    apis = [SelectOptionDict(label=api.name, value=api.id) for api in llm.async_get_apis(hass)]
    chosen = llm_api_ids(options)
    if SEVERAL_APIS:
        return {
            vol.Optional(CONF_LLM_HASS_API, description={"suggested_value": chosen}):
                SelectSelector(SelectSelectorConfig(options=apis, multiple=True)),
        }
    none = SelectOptionDict(label="No control", value=NO_API)
    return {
        vol.Optional(CONF_LLM_HASS_API, default=chosen[0] if chosen else NO_API):
            SelectSelector(SelectSelectorConfig(options=[none, *apis])),
    }


def clean_llm_api_option(user_input: dict[str, Any]) -> None:
    """Store the option the way this release reads it; no API chosen stores nothing."""
    ids = llm_api_ids(user_input)
    if not ids:
        user_input.pop(CONF_LLM_HASS_API, None)
    else:
        user_input[CONF_LLM_HASS_API] = ids if SEVERAL_APIS else ids[0]


def _llm_context(user_input: conversation.ConversationInput) -> llm.LLMContext:
    """The caller, language and device of the turn, which the tools act for."""
    if hasattr(user_input, "as_llm_context"):
        return user_input.as_llm_context(DOMAIN)
    return llm.LLMContext(
        platform=DOMAIN,
        context=user_input.context,
        user_prompt=user_input.text,
        language=user_input.language,
        assistant=conversation.DOMAIN,
        device_id=user_input.device_id,
    )


async def async_get_llm_api(
    hass: HomeAssistant, user_input: conversation.ConversationInput, options: Mapping[str, Any]
) -> llm.APIInstance | None:
    """The API instance of this turn, or None when the option chooses none.

    Fetched directly rather than through `ChatLog.async_update_llm_data`, which also puts the
    current time into the system prompt: a prompt that changes every turn would make the daemon
    re-read the whole conversation each turn.
    """
    ids = llm_api_ids(options)
    if not ids:
        return None
    api_id: str | list[str] = ids if SEVERAL_APIS else ids[0]
    try:
        return await llm.async_get_api(hass, api_id, _llm_context(user_input))
    except HomeAssistantError as err:
        LOGGER.error("Error getting the LLM API %s: %s", ", ".join(ids), err)
        raise RkllmError("llm_api", api=", ".join(ids)) from err


def format_tools(api: llm.APIInstance) -> list[dict[str, Any]]:
    """The API's tools as the request's `tools` (OpenAI function definitions).

    The voluptuous parameter schemas become JSON schemas the way core's integrations convert them,
    with the API's serializer for Home Assistant's selectors.
    """
    tools = []
    for tool in api.tools:
        function: dict[str, Any] = {
            "name": tool.name,
            "parameters": _to_openapi(tool.parameters, custom_serializer=api.custom_serializer),
        }
        if tool.description:
            function["description"] = tool.description
        tools.append({"type": "function", "function": function})
    return tools


def tool_calls_message(content: conversation.AssistantContent) -> dict[str, Any]:
    """An assistant turn that called tools, as the daemon's final reply described the calls."""
    message: dict[str, Any] = {
        "role": "assistant",
        "tool_calls": [
            {"id": call.id, "name": call.tool_name, "arguments": call.tool_args}
            for call in content.tool_calls or ()
        ],
    }
    if content.content:
        message["content"] = content.content
    return message


def tool_result_message(content: conversation.ToolResultContent) -> dict[str, Any]:
    """A tool's result (or its error: Home Assistant catches it) as the `tool` message for the model."""
    return {
        "role": "tool",
        "tool_call_id": content.tool_call_id,
        "name": content.tool_name,
        "content": json_dumps(_tool_result(content)),
    }


def _tool_result(content: conversation.ToolResultContent) -> Any:
    """The result's JSON: `result.data` where results are `llm.ToolResult` (2026.x; a failure's data is
    its `{"error", "error_text"}` there too), `tool_result` before. Same content on every release."""
    result = getattr(content, "result", None)  # read first: 2026's `tool_result` warns as deprecated
    if result is not None and hasattr(result, "data"):
        return result.data
    return content.tool_result


def turn_intent_response(chat_log: conversation.ChatLog, since: int) -> intent.IntentResponse | None:
    """The intent response of the turn's last intent tool call, which core's agents answer with
    (its targets tell Assist what was switched); the model's text becomes its speech.

    Only releases whose tool results keep the intent response (`llm.IntentResponseDict`, 2026.x)
    have one; on 2025.4 the results are plain dicts and the turn's response is a new one.
    """
    for content in reversed(chat_log.content[since:]):
        if isinstance(content, conversation.ToolResultContent):
            original = getattr(getattr(getattr(content, "result", None), "data", None), "original", None)
            if isinstance(original, intent.IntentResponse):
                return original
    return None


def tool_inputs(calls: list[dict[str, Any]]) -> list[llm.ToolInput]:
    """The daemon's `tool_calls` as Home Assistant's tool inputs, keeping the daemon's ids.

    The ids travel back in the `tool` messages, so the daemon can pair results with calls.
    """
    return [
        llm.ToolInput(tool_name=call["name"], tool_args=call.get("arguments") or {}, id=str(call["id"]))
        for call in calls
    ]
