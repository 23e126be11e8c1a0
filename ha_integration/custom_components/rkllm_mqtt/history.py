"""What part of a chat goes to the daemon: a window of whole turns that fits the daemon's limits.

The daemon refuses a request over `limits.max_prompt_chars` (characters of every message plus the
system prompt) or `limits.max_payload_bytes` (the JSON request), and a refused turn is not stored,
so a window that only counted turns would stay too long forever once a chat outgrew it. The window
here is measured in characters and bytes against the limits the daemon announces.

Its start moves in jumps rather than one turn at a time: the daemon continues its KV cache only
while the chat it is sent begins where its stored history does, so a window that slid every turn
would make it re-read the conversation every turn. When the window is full, its start jumps ahead
to keep half of it (or, with the History length option, half the number of turns).
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from typing import Any

from homeassistant.components import conversation

from .llm_api import tool_calls_message, tool_result_message

MAX_CONVERSATION_KEY = 128  # the contract's limit for `conversation` (and `id`)
# Bytes json.dumps puts between two list items (", ").
_SEPARATOR_BYTES = 2


class HistoryTooLong(Exception):
    """Even the newest user turn alone, with the system prompt, is over the daemon's limits."""


@dataclass(frozen=True, slots=True)
class Budget:
    """What the messages of one request may take.

    `chars` and `payload_bytes` are what is left of the daemon's limits once the rest of the request
    (the system prompt, the other fields) is counted.
    """

    chars: int
    payload_bytes: int

    def scaled(self, share: float) -> Budget:
        return Budget(int(self.chars * share), int(self.payload_bytes * share))


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


def message_chars(message: dict[str, Any]) -> int:
    """What a message adds to the daemon's prompt size (`limits.max_prompt_chars`): its `content`
    only, as the contract counts it; an assistant turn that only called tools has none."""
    return len(message.get("content") or "")


def conversation_key(conversation_id: str) -> str:
    """HA's conversation id as the request's `conversation` (the contract allows 128 characters).

    Ids are ULIDs unless a caller of `conversation.process` picked its own: a longer one keeps its
    beginning and gets a hash of the whole, so two long ids never share a conversation.
    """
    if len(conversation_id) <= MAX_CONVERSATION_KEY:
        return conversation_id
    digest = hashlib.sha256(conversation_id.encode()).hexdigest()[:32]
    return f"{conversation_id[: MAX_CONVERSATION_KEY - 33]}-{digest}"


def window_start(
    messages: list[dict[str, Any]], *, budget: Budget, max_history: int = 0, floor: int = 0
) -> int:
    """Index of the first message to send: a user turn, the newest one at the latest.

    The start is replayed turn by turn from `floor` (0, or where an earlier refusal moved it), so
    it is the same at every turn for the same chat, without any state: it moves only on the turns
    where the window would otherwise be over `budget` (or over `max_history` earlier user turns,
    when that option is set), and then by half a window. Raises HistoryTooLong when the newest user
    turn alone does not fit.
    """
    user_turns = [i for i, message in enumerate(messages) if message["role"] == "user"]
    if not user_turns:
        return 0
    # Prefix sums of each message's share of the limits.
    chars = [0]
    payload = [0]
    for message in messages:
        chars.append(chars[-1] + message_chars(message))
        payload.append(payload[-1] + len(json.dumps(message, ensure_ascii=False).encode()) + _SEPARATOR_BYTES)

    def fits(start: int, end: int, within: Budget) -> bool:
        return (chars[end] - chars[start] <= within.chars
                and payload[end] - payload[start] <= within.payload_bytes)

    half = budget.scaled(0.5)
    step = max(1, max_history // 2)
    start = min(floor, user_turns[-1])
    for turn, end_index in enumerate(user_turns):
        end = end_index + 1
        if max_history > 0 and turn > max_history:
            first = -(-(turn - max_history) // step) * step  # rounded up to a whole step
            start = max(start, user_turns[first])
        if start > end_index or fits(start, end, budget):
            continue
        # Keep the longest run of whole turns, from a user turn, that fits half the budget.
        start = next(
            (i for i in user_turns if start <= i <= end_index and fits(i, end, half)), end_index
        )
    if not fits(start, len(messages), budget):
        raise HistoryTooLong
    return start


def shorter_start(messages: list[dict[str, Any]], start: int, budget: Budget) -> int:
    """Where to start after the daemon refused a window from `start` anyway: keep a quarter."""
    quarter = budget.scaled(0.25)
    user_turns = [i for i, message in enumerate(messages) if message["role"] == "user"]
    for index in user_turns:
        if index <= start:
            continue
        rest = messages[index:]
        if (sum(message_chars(m) for m in rest) <= quarter.chars
                and len(json.dumps(rest, ensure_ascii=False).encode()) <= quarter.payload_bytes):
            return index
    return user_turns[-1] if user_turns else start
