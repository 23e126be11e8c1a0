"""One Assist turn as rounds: ask the daemon; when the model called tools, Home Assistant runs them
(the chat log does, through its LLM API) and the daemon is asked again with their results, until the
model answers in text.

At most MAX_TOOL_ROUNDS requests per turn, as core's ollama: a model that keeps calling tools must
not keep the NPU busy forever. A tool that fails is no exception here: the chat log turns the error
into the tool's result, and the model reads it like any other.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import replace
from typing import TYPE_CHECKING, Any

from homeassistant.components import conversation

from .client import RkllmError
from .const import LOGGER
from .llm_api import tool_inputs

if TYPE_CHECKING:
    from homeassistant.helpers import llm

    from .client import GenerationResult

MAX_TOOL_ROUNDS = 10

Delta = conversation.AssistantContentDeltaDict


async def async_tool_rounds(chat_log: conversation.ChatLog, request: Callable[[], Awaitable[None]]) -> None:
    """Run `request` (one request of the turn, whose answer it adds to the chat log) until the chat
    log holds no tool results the model has not read yet."""
    for _round in range(MAX_TOOL_ROUNDS):
        await request()
        if not chat_log.unresponded_tool_results:
            return
    LOGGER.warning("The model still called tools after %d requests; the turn ends without an answer",
                   MAX_TOOL_ROUNDS)
    raise RkllmError("tool_rounds", rounds=str(MAX_TOOL_ROUNDS))


async def async_add_answer(
    agent_id: str,
    chat_log: conversation.ChatLog,
    texts: AsyncIterator[str],
    result: Callable[[], GenerationResult | None],
    text_deltas: Callable[[AsyncIterator[str]], AsyncIterator[Delta]],
) -> None:
    """Add one request's answer to the chat log: its text, then its tool calls, which the chat log
    runs at once and whose results it adds after it.

    `texts` are the answer's pieces, `result()` the final reply once they are exhausted, and
    `text_deltas` turns the pieces into the assistant message's deltas. Where the chat log takes a
    delta stream the text streams; elsewhere the final reply is added at once. The final reply's text
    is what the chat log keeps, even when a token message was lost on the way.
    """
    added_from = len(chat_log.content)
    with_tools = chat_log.llm_api is not None
    if hasattr(chat_log, "async_add_delta_content_stream"):

        async def deltas() -> AsyncIterator[Delta]:
            async for delta in text_deltas(texts):
                yield delta
            if calls := _accepted_calls(_final(result).tool_calls, with_tools):
                yield {"tool_calls": calls}

        async for _content in chat_log.async_add_delta_content_stream(agent_id, deltas()):
            pass
    else:
        async for _text in texts:
            pass
        final = _final(result)
        if calls := _accepted_calls(final.tool_calls, with_tools):
            content = conversation.AssistantContent(
                agent_id=agent_id, content=final.text or None, tool_calls=calls
            )
            async for _content in chat_log.async_add_assistant_content(content):
                pass
    final = _final(result)
    for index in range(added_from, len(chat_log.content)):
        added = chat_log.content[index]
        if isinstance(added, conversation.AssistantContent):
            if (added.content or "") != final.text:
                # A token message was lost: what streamed is not the answer. Correct the chat log,
                # from which the response's speech and the next request's chat are read.
                text = final.text or (None if added.tool_calls else "")
                chat_log.content[index] = replace(added, content=text)
            return
    # An empty answer (the stream adds no message without text or calls), or no delta stream in
    # this Home Assistant: the turn still needs its assistant message, or the next one follows two
    # user messages.
    chat_log.async_add_assistant_content_without_tools(
        conversation.AssistantContent(agent_id=agent_id, content=final.text)
    )


def _final(result: Callable[[], GenerationResult | None]) -> GenerationResult:
    final = result()
    assert final is not None  # the pieces end only with a result or an exception
    return final


def _accepted_calls(calls: list[dict[str, Any]], with_tools: bool) -> list[llm.ToolInput] | None:
    """The calls as tool inputs; none when this turn offered no tools (nothing could run them)."""
    if not calls:
        return None
    if not with_tools:
        LOGGER.warning("Ignoring tool calls in an answer to a request without tools: %s",
                       ", ".join(call["name"] for call in calls))
        return None
    return tool_inputs(calls)
