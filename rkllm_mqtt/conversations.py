"""Multi-turn conversations: bounded stored history, and which conversation owns the KV cache.

The NPU's KV cache can hold one conversation. Continuing the conversation that is already in it
costs only the new turn's prefill; any other conversation is rebuilt (cache cleared, its stored
history replayed). So the history kept here is what makes switching possible, and its bounds
(count, turns, characters; oldest evicted) are what keep a chatty client from exhausting memory or
the model's context. Runtimes without `keep_history` (1.1.x) always replay the history.

With function calling, an answer can be a turn of tool calls, and the next request brings the
results: that is one more turn of the same conversation, so the cache continues and the model reads
only the results. The tools are part of what the cache holds (the runtime puts them at its start,
like the system prompt), so other tools mean a rebuild, as another system prompt does.
"""

from __future__ import annotations

import json
from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass, field

from rkllm_mqtt.runtime.contract import Message


@dataclass(frozen=True, slots=True)
class Plan:
    """What one run sends: the messages, whether the cache is cleared first and kept after."""

    messages: tuple[Message, ...]
    system: str | None
    keep_history: bool
    clear_kv: bool
    continues_kv: bool  # only the new turn is sent: the rest is already in the cache


@dataclass(slots=True)
class _Conversation:
    system: str | None
    tools: str | None = None  # the canonical tools JSON its cache was built with
    turns: list[tuple[tuple[Message, ...], Message]] = field(default_factory=list)
    chars: int = 0


class Conversations:
    """Stored histories plus the KV-cache owner; used only from the service loop."""

    def __init__(self, *, max_conversations: int, max_turns: int, max_chars: int,
                 kv_cache: bool) -> None:
        self.max_conversations = max_conversations
        self.max_turns = max_turns
        self.max_chars = max_chars
        self.kv_cache = kv_cache
        self._store: OrderedDict[str, _Conversation] = OrderedDict()
        self._kv_owner: str | None = None
        self._kv_dirty = False  # something not owned by a conversation may be in the cache

    def __len__(self) -> int:
        return len(self._store)

    @property
    def kv_owner(self) -> str | None:
        return self._kv_owner

    def history(self, conversation: str) -> tuple[Message, ...]:
        conv = self._store.get(conversation)
        if conv is None:
            return ()
        return tuple(m for user, answer in conv.turns for m in (*user, answer))

    def new_part(self, conversation: str | None, messages: Sequence[Message]) -> tuple[Message, ...]:
        """The turns of `messages` this conversation does not hold yet.

        A request whose messages carry an assistant turn is the whole chat so far (what chat
        clients such as Home Assistant send). When the stored history is where that chat began,
        only what follows it is new, so the KV cache can simply continue; when it is not (the
        daemon restarted, evicted the conversation, or the client edited its history), the
        client's copy wins: the stored history is dropped and the whole chat is replayed.
        Messages without an assistant turn are new turns, appended to the stored history.
        """
        messages = tuple(messages)
        if conversation is None or not any(m.role == "assistant" for m in messages):
            return messages
        chat = [m for m in messages if m.role != "system"]
        stored = [m for m in self.history(conversation) if m.role != "system"]
        if stored and len(stored) < len(chat) and all(map(_same, chat, stored)):
            system = tuple(m for m in messages if m.role == "system")
            return system + tuple(chat[len(stored):])
        self.forget(conversation)
        return messages

    def forget(self, conversation: str) -> None:
        """Drop a conversation's stored history (and its claim on the KV cache)."""
        if self._store.pop(conversation, None) is not None and self._kv_owner == conversation:
            self._kv_owner, self._kv_dirty = None, True

    def plan(self, conversation: str | None, new: Sequence[Message], system: str | None,
             tools: str | None = None) -> Plan:
        """Decide how to run `new` (the request's own messages) for `conversation`."""
        new = tuple(new)
        if not self.kv_cache:
            history = self.history(conversation) if conversation else ()
            stored = self._store.get(conversation) if conversation else None
            if system is None and stored is not None:
                system = stored.system
            return Plan(history + new, system, keep_history=False, clear_kv=False,
                        continues_kv=False)
        if conversation is None:
            clear = self._kv_owner is not None or self._kv_dirty
            self._kv_owner, self._kv_dirty = None, False
            return Plan(new, system, keep_history=False, clear_kv=clear, continues_kv=False)
        stored = self._store.get(conversation)
        if system is None and stored is not None:
            system = stored.system
        same_start = stored is None or (stored.system, stored.tools) == (system, tools)
        if self._kv_owner == conversation and not self._kv_dirty and same_start:
            return Plan(new, system, keep_history=True, clear_kv=False, continues_kv=True)
        clear = self._kv_owner is not None or self._kv_dirty
        self._kv_owner, self._kv_dirty = conversation, False
        return Plan(self.history(conversation) + new, system, keep_history=True,
                    clear_kv=clear, continues_kv=False)

    def finished(self, conversation: str | None, new: Sequence[Message], system: str | None,
                 answer: str | Message | None, *, cache_exact: bool = True,
                 tools: str | None = None) -> None:
        """Record a run's outcome; `answer=None` means it did not complete (error, abort).

        `answer` is the assistant turn: its text, or a Message with the tool calls it made.

        An incomplete run leaves the cache in an unknown state, so the next run rebuilds; so does
        an answer cut by the daemon (`cache_exact=False`: a stop sequence), whose cache may hold
        tokens past the text that was kept.
        """
        if answer is None:
            self._kv_owner, self._kv_dirty = None, True
            return
        if conversation is None:
            return
        if isinstance(answer, str):
            answer = Message("assistant", answer)
        conv = self._store.get(conversation)
        if conv is None:
            conv = self._store[conversation] = _Conversation(system, tools)
        else:
            conv.tools = tools
            if system is not None:
                conv.system = system  # a new system prompt applies to the whole replayed history
        self._store.move_to_end(conversation)
        conv.turns.append((tuple(new), answer))
        conv.chars += _turn_chars(new, answer)
        trimmed = False
        while conv.turns and (len(conv.turns) > self.max_turns or conv.chars > self.max_chars):
            user, old_answer = conv.turns.pop(0)
            conv.chars -= _turn_chars(user, old_answer)
            trimmed = True
        if (trimmed or not cache_exact) and self._kv_owner == conversation:
            # The cache holds evicted turns or tokens past a cut answer: rebuild it next time.
            self._kv_owner, self._kv_dirty = None, True
        while len(self._store) > self.max_conversations:
            evicted, _ = self._store.popitem(last=False)
            if evicted == self._kv_owner:
                self._kv_owner, self._kv_dirty = None, True


def _turn_chars(user: Sequence[Message], answer: Message) -> int:
    """What a stored turn weighs against conversation.max_chars: its texts and its calls."""
    return sum(len(m.content) + sum(len(c.name) + len(json.dumps(c.arguments, ensure_ascii=False))
                                    for c in m.tool_calls)
               for m in (*user, answer))


def _same(sent: Message, stored: Message) -> bool:
    """Whether a client's turn is the stored one: call ids and surrounding blanks may differ
    (a client may give calls its own ids, or strip the text streamed before them)."""
    return (sent.role == stored.role and sent.content.strip() == stored.content.strip()
            and [(c.name, c.arguments) for c in sent.tool_calls]
            == [(c.name, c.arguments) for c in stored.tool_calls])
