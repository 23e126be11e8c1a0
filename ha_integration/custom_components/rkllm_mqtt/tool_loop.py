"""One Assist turn as rounds: ask the daemon; when the model called tools, Home Assistant runs them
(the chat log does, through its LLM API) and the daemon is asked again with their results, until the
model answers in text.

At most MAX_TOOL_ROUNDS requests per turn, as core's ollama: a model that keeps calling tools must
not keep the NPU busy forever. A tool that fails is no exception here: the chat log turns the error
into the tool's result, and the model reads it like any other.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from typing import TYPE_CHECKING, Any

from homeassistant.components import conversation

from .client import RkllmError
from .const import LOGGER
from .llm_api import tool_inputs

if TYPE_CHECKING:
    from .client import Generation, RkllmClient

MAX_TOOL_ROUNDS = 10


async def async_answer(
    agent_id: str,
    chat_log: conversation.ChatLog,
    client: RkllmClient,
    fields: dict[str, Any],
    messages: Callable[[], list[dict[str, Any]]],
) -> None:
    """Answer the chat log's newest user turn; the answer (and any tool rounds) land in the chat log.

    `messages` gives the request's chat at each round, since every round adds to the chat log.
    """
    for _round in range(MAX_TOOL_ROUNDS):
        await _async_round(agent_id, chat_log, client, {**fields, "messages": messages()})
        if not chat_log.unresponded_tool_results:
            return
    LOGGER.warning("The model still called tools after %d rounds; the turn ends without an answer",
                   MAX_TOOL_ROUNDS)
    raise RkllmError("tool_rounds", rounds=str(MAX_TOOL_ROUNDS))


async def _async_round(
    agent_id: str, chat_log: conversation.ChatLog, client: RkllmClient, fields: dict[str, Any]
) -> None:
    """One request; its answer, with any tool calls and their results, is added to the chat log.

    Token messages stream into the chat log as they arrive where this Home Assistant can take a
    delta stream; elsewhere the daemon sends no tokens and the final reply is added at once.
    """
    added_from = len(chat_log.content)
    with_tools = chat_log.llm_api is not None
    if hasattr(chat_log, "async_add_delta_content_stream"):
        deltas = _deltas(client.generate(stream=True, **fields), with_tools)
        async for _content in chat_log.async_add_delta_content_stream(agent_id, deltas):
            pass
    else:
        result = await client.async_generate(**fields)
        calls = _accepted_calls(result.tool_calls, with_tools)
        content = conversation.AssistantContent(
            agent_id=agent_id, content=(result.text or None) if calls else result.text, tool_calls=calls,
        )
        if calls:
            async for _content in chat_log.async_add_assistant_content(content):
                pass
        else:
            chat_log.async_add_assistant_content_without_tools(content)
    added = chat_log.content[added_from:]
    if not any(isinstance(content, conversation.AssistantContent) for content in added):
        # An empty answer (the stream adds no message without text or calls): the turn still needs
        # its assistant message, or the next one follows two user messages.
        chat_log.async_add_assistant_content_without_tools(
            conversation.AssistantContent(agent_id=agent_id, content="")
        )


async def _deltas(
    generation: Generation, with_tools: bool
) -> AsyncIterator[conversation.AssistantContentDeltaDict]:
    """Daemon replies as chat-log deltas: the role opens the one assistant message, then its text,
    then the tool calls of the final reply (the chat log starts running them at once)."""
    yield {"role": "assistant"}
    async for text in generation:
        yield {"content": text}
    assert generation.result is not None  # the iteration ends only with a result or an exception
    if calls := _accepted_calls(generation.result.tool_calls, with_tools):
        yield {"tool_calls": calls}


def _accepted_calls(calls: list[dict[str, Any]], with_tools: bool) -> list[Any] | None:
    """The calls as tool inputs; none when this turn offered no tools (nothing could run them)."""
    if not calls:
        return None
    if not with_tools:
        LOGGER.warning("Ignoring tool calls in an answer to a request without tools: %s",
                       ", ".join(call["name"] for call in calls))
        return None
    return tool_inputs(calls)
