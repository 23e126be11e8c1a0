"""Keep what changes from turn to turn out of the system prompt, which the daemon keeps prefilled.

The daemon prefills the system prompt (and the tools) once and shares it across conversations for
as long as it is the same text, so a voice turn waits only for its own words. Home Assistant's
prompt helpers put text in it that changes per turn or per speaking device (the lines of
`homeassistant/helpers/llm.py` in 2025.4 and later):

- `llm.BASE_PROMPT`, which `ChatLog.async_update_llm_data` puts in front of the prompt and an
  instructions template may contain: "Current time is 14:03:27. Today's date is 2026-12-01.";
- the Assist API's lines for the device that is speaking: "You are in area Kitchen (floor Ground)
  and all generic commands like 'turn on the lights' should target this area.", or, without an
  area, "When a user asks to turn on all devices of a specific type, ask user to specify an area,
  unless there is only one device of that type."; and "This device is not able to start timers."

`split_volatile` takes those lines out of the system prompt; `TurnContexts` puts them after the
newest user turn, where the model still reads them, and sends every earlier turn with the text it
was first sent with, so the chat the daemon gets keeps beginning where its stored history does
(the daemon then continues its KV cache instead of re-reading the conversation).
"""

from __future__ import annotations

import json
import re
from collections import OrderedDict

# As Home Assistant writes them; each on a line of its own, or run into the text that follows.
_VOLATILE = (
    re.compile(r"Current time is \d{1,2}:\d{2}(?::\d{2})?\. Today's date is \d{4}-\d{2}-\d{2}\.[ \t]*"),
    re.compile(r"You are in area [^\n]* and all generic commands like 'turn on the lights' should "
               r"target this area\."),
    re.compile(r"When a user asks to turn on all devices of a specific type, ask user to specify an "
               r"area, unless there is only one device of that type\."),
    re.compile(r"This device is not able to start timers\."),
)
MAX_CONVERSATIONS = 64


def split_volatile(system: str) -> tuple[str, str]:
    """(the system prompt without the per-turn lines, those lines joined), order kept."""
    moved: list[str] = []
    kept: list[str] = []

    def take(match: re.Match[str]) -> str:
        moved.append(match.group(0).strip())
        return ""

    for line in system.split("\n"):
        rest = line
        for pattern in _VOLATILE:
            rest = pattern.sub(take, rest)
        if rest == line or rest.strip():  # a line emptied by the move goes with it
            kept.append(rest.rstrip() if rest != line else rest)
    return "\n".join(kept), " ".join(moved)


class TurnContexts:
    """What each user turn of a conversation was sent with, so a later turn repeats it exactly."""

    def __init__(self) -> None:
        self._sent: OrderedDict[str, list[tuple[str, str]]] = OrderedDict()

    def apply(self, conversation_id: str, messages: list[dict[str, str]],
              context: str) -> list[dict[str, str]]:
        """`messages` with the newest user turn followed by `context`, earlier ones as sent."""
        sent = self._sent.setdefault(conversation_id, [])
        self._sent.move_to_end(conversation_id)
        while len(self._sent) > MAX_CONVERSATIONS:
            self._sent.popitem(last=False)
        users = [i for i, m in enumerate(messages) if m["role"] == "user"]
        out = [dict(m) for m in messages]
        for k, i in enumerate(users[:-1]):
            if k < len(sent) and sent[k][0] == messages[i]["content"]:
                out[i]["content"] = sent[k][1]
        if not users:
            return out
        last, text = users[-1], messages[users[-1]]["content"]
        # The same turn again (a retry after a refusal) keeps what it was first sent with.
        k = len(users) - 1
        if k < len(sent) and sent[k][0] == text:
            out[last]["content"] = sent[k][1]
            return out
        augmented = f"{text}\n\n({context})" if context else text
        del sent[k:]
        sent.append((text, augmented))
        out[last]["content"] = augmented
        return out


# The daemon's runtime counts real tokens; few texts take under 3 characters a token, so history
# cut at this rate fits the context, with room left for the answer.
CHARS_PER_TOKEN = 3
ANSWER_TOKENS = 256  # kept free for the answer when the agent sets no maximum


class PrefixTooLong(Exception):
    """The system prompt and tools alone do not fit the model's context."""

    def __init__(self, needed_tokens: int, max_context_tokens: int) -> None:
        super().__init__(f"{needed_tokens} > {max_context_tokens}")
        self.needed_tokens = needed_tokens
        self.max_context_tokens = max_context_tokens


def history_room(max_context_tokens: int | None, system: str | None, tools: object,
                 max_new_tokens: int | None) -> int | None:
    """Characters of chat the model's context leaves after the prefix and the answer.

    None when the daemon does not announce its context; raises PrefixTooLong when the prefix alone
    does not fit, so the user hears that instead of a turn the daemon refuses every time.
    """
    if not max_context_tokens:
        return None
    prefix = len(system or "") + (len(json.dumps(tools, ensure_ascii=False)) if tools else 0)
    usable = max_context_tokens - (max_new_tokens or ANSWER_TOKENS)
    needed = -(-prefix // CHARS_PER_TOKEN)
    if needed >= usable:
        raise PrefixTooLong(needed, max_context_tokens)
    return (usable - needed) * CHARS_PER_TOKEN
