"""Function calling as text: the Qwen (Hermes-style) markup in, tool calls out.

Pure Python on purpose (it imports nothing from the daemon): it runs inside the runtime, which may
live in a lean child process, on the callback path of every token.

- `ToolSet`: the functions a request offers, read once from its OpenAI-form JSON.
- `ToolCallFilter`: the streaming filter. Text that could be the start of tool-call markup is held
  back, and released as soon as it cannot be; a complete block that parses into a call of an
  offered function becomes a `ToolCall` and never reaches the token stream. Both forms Rockchip's
  1.3.0 rkllm_server_demo parses are read: `<tool_call>{"name", "arguments"}</tool_call>` and the
  XML-like `<function=NAME><parameter=KEY>VALUE</parameter></function>` (inside `<tool_call>` or
  bare).
- Malformed markup (bad JSON, a function that was not offered, arguments that are not an object,
  a block still open when the run ends or longer than MAX_BLOCK_CHARS) is handled one way every
  time: it is not a call, and it is not text either (a voice assistant would read it out). It
  never reaches the token stream or the final text; it becomes an `InvalidToolCall` (the markup
  as written, bounded, and why), the name and shape of LangChain's AIMessage.invalid_tool_calls.
  Each block is judged on its own.
- `hermes_system`, `render_tool_results`, `render_tool_calls`: the Qwen2.5 chat template's tool
  parts (tokenizer_config.json of Qwen/Qwen2.5-*-Instruct), for runtimes without
  rkllm_set_function_tools (1.1.x, 1.2.0), where the daemon writes the prompt text itself.
- `merge_tool_results`: what a role "tool" input carries on 1.2.1+, the way the 1.3.0 demo's
  `get_last_input` builds it: every result of the round (parsed when it is JSON) in one JSON array.
"""

from __future__ import annotations

import json
import logging
import os
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

from rkllm_mqtt.runtime.contract import InvalidToolCall, Message, ToolCall

log = logging.getLogger(__name__)

# tool_response_str of rkllm_set_function_tools, as in the 1.3.0 demo.
TOOL_RESPONSE_TAG = "tool_response"

# A block longer than this is malformed: the rest of it, up to its closer, is skipped instead of
# holding the stream until the closer comes.
MAX_BLOCK_CHARS = 8192
MAX_RAW_CHARS = 1024  # of the markup an invalid_tool_calls entry quotes
_CLOSERS = {"<tool_call>": "</tool_call>", "<function=": "</function>"}
_OPENERS = tuple(_CLOSERS)
_CUT_OPENERS = tuple(o[:-1] for o in _OPENERS)  # an opening tag the end of the answer cut short
_LONGEST_OPENER = max(len(o) for o in _OPENERS)
_FUNCTION = re.compile(r"<function=([^>\s]+)>(.*?)</function>", re.DOTALL)
_PARAMETER = re.compile(r"<parameter=([^>\s]+)>(.*?)</parameter>", re.DOTALL)


@dataclass(frozen=True)
class ToolSet:
    """Offered function names, each with its parameters' JSON-schema types (for the XML form)."""

    functions: dict[str, dict[str, str]]

    @classmethod
    def from_json(cls, tools_json: str | None) -> ToolSet:
        functions: dict[str, dict[str, str]] = {}
        for tool in json.loads(tools_json) if tools_json else ():
            function = tool.get("function", {}) if isinstance(tool, dict) else {}
            name = function.get("name")
            if not isinstance(name, str):
                continue
            parameters = function.get("parameters")
            properties = parameters.get("properties") if isinstance(parameters, dict) else None
            functions[name] = {
                str(key): _schema_type(schema)
                for key, schema in (properties.items() if isinstance(properties, dict) else ())
            }
        return cls(functions)


def _schema_type(schema: Any) -> str:
    """A parameter's JSON-schema type; anything unusual reads as a string (kept as written)."""
    kind = schema.get("type") if isinstance(schema, dict) else None
    return kind if isinstance(kind, str) else "string"


def new_call_id() -> str:
    return f"call_{os.urandom(12).hex()}"  # not uuid: its import costs the child RSS


class ToolCallFilter:
    """One run's text after stop sequences: markup held back, calls taken out; not thread-safe."""

    def __init__(self, tools: ToolSet) -> None:
        self._tools = tools
        self._buffer = ""  # text not released yet: a possible markup start, or a block
        self._block: str | None = None  # the opener of the block being read
        self._dropping = False  # the block outgrew MAX_BLOCK_CHARS: skipped up to its closer
        self._after_block = False  # the last thing read was a block: blanks after it may go
        self._parts: list[str] = []
        self.calls: list[ToolCall] = []
        self.invalid: list[InvalidToolCall] = []

    @property
    def text(self) -> str:
        """Everything released so far: exactly the concatenation of the returned pieces."""
        return "".join(self._parts)

    def feed(self, text: str) -> str:
        """Add text; return what can be released now ("" if none)."""
        self._buffer += text
        out: list[str] = []
        while self._step(out):
            pass
        return self._emit("".join(out))

    def finish(self) -> str:
        """End of run: an open block (or an opening tag cut short) is malformed; held text goes.

        Logs one warning for the run when any block was malformed."""
        out: list[str] = []
        if self._block is not None:
            if not self._dropping:
                self._invalid(self._buffer, f"not closed: the answer ended before "
                                            f"{_CLOSERS[self._block]}")
        elif self._buffer.strip() in _CUT_OPENERS:
            self._invalid(self._buffer.strip(), "not closed: the answer ended inside the tag")
        elif not (self._after_block and not self._buffer.strip()):  # blanks after a block go
            out.append(self._buffer)
        self._buffer, self._block, self._dropping = "", None, False
        if self.invalid:
            first = self.invalid[0]
            log.warning("%d malformed tool call(s) left out of the answer; the first: %s: %.200r",
                        len(self.invalid), first.error, first.raw)
        return self._emit("".join(out))

    def _step(self, out: list[str]) -> bool:
        """Consume what the buffer settles; True when another step may settle more."""
        if self._after_block and not self._parts and not any(out):
            self._buffer = self._buffer.lstrip()  # an answer that starts with a block
        if self._block is None:
            found = ([(i, o) for o in _OPENERS if (i := self._buffer.find(o)) >= 0]
                     if "<" in self._buffer else [])
            if not found:
                keep = _held_suffix(self._buffer)
                ready = self._buffer[: len(self._buffer) - keep]
                text = ready.rstrip()  # whitespace may precede markup: hold it too
                out.append(text)
                self._after_block = self._after_block and not text
                self._buffer = self._buffer[len(text):]
                return False
            start, opener = min(found)
            text = self._buffer[:start].rstrip()  # the blanks before a block go with it
            out.append(text)
            self._after_block = self._after_block and not text
            self._block = opener
            self._buffer = self._buffer[start:]
            return True
        closer = _CLOSERS[self._block]
        end = self._buffer.find(closer, 0 if self._dropping else len(self._block))
        if end < 0:
            if not self._dropping and len(self._buffer) > MAX_BLOCK_CHARS:
                self._invalid(self._buffer, f"longer than {MAX_BLOCK_CHARS} characters "
                                            f"without {closer}")
                self._dropping = True
            if self._dropping:  # keep only what may be the start of the closer
                self._buffer = self._buffer[max(0, len(self._buffer) - len(closer) + 1):]
            return False
        end += len(closer)
        block, self._buffer = self._buffer[:end], self._buffer[end:]
        if not self._dropping:
            parsed = self._parse(block)
            if isinstance(parsed, str):
                self._invalid(block, parsed)
            else:
                self.calls.extend(parsed)
        self._block, self._dropping, self._after_block = None, False, True
        return True

    def _invalid(self, raw: str, error: str) -> None:
        if len(raw) > MAX_RAW_CHARS:
            raw = raw[:MAX_RAW_CHARS - 1] + "…"
        self.invalid.append(InvalidToolCall(raw, error))

    def _parse(self, block: str) -> list[ToolCall] | str:
        """The calls in one complete block, or why it is malformed."""
        if block.startswith("<function="):
            return self._parse_functions(block)
        inner = block[len("<tool_call>"): -len("</tool_call>")].strip()
        if inner.startswith("<function="):
            return self._parse_functions(inner)
        obj = _json(inner)
        if isinstance(obj, _BadJson):
            return f"bad JSON: {obj.why}"
        if not isinstance(obj, dict):
            return 'not a JSON object {"name": …, "arguments": {…}}'
        arguments = obj.get("arguments", obj.get("parameters", {}))
        if isinstance(arguments, str):  # some models write the arguments as a JSON string
            arguments = _json(arguments)
            if isinstance(arguments, _BadJson):
                return f"arguments: a string that is not JSON ({arguments.why})"
        call = self._call(obj.get("name"), arguments)
        return call if isinstance(call, str) else [call]

    def _parse_functions(self, text: str) -> list[ToolCall] | str:
        calls: list[ToolCall] = []
        if _FUNCTION.sub("", text).strip():
            return "text outside the <function=…>…</function> blocks"
        for name, body in _FUNCTION.findall(text):
            if _PARAMETER.sub("", body).strip():
                return f"<function={name[:128]}>: text outside the <parameter=…> blocks"
            types = self._tools.functions.get(name, {})
            arguments = {key: _typed(value.strip(), types.get(key, "string"))
                         for key, value in _PARAMETER.findall(body)}
            call = self._call(name, arguments)
            if isinstance(call, str):
                return call
            calls.append(call)
        return calls or "no <function=…>…</function> in the block"

    def _call(self, name: Any, arguments: Any) -> ToolCall | str:
        if not isinstance(name, str) or not name:
            return "no function name"
        if name not in self._tools.functions:
            return f"unknown function {name[:128]!r} (not in the request's tools)"
        if not isinstance(arguments, dict):
            return f"{name}: arguments are not a JSON object"
        return ToolCall(new_call_id(), name, arguments)

    def _emit(self, piece: str) -> str:
        if piece:
            self._parts.append(piece)
        return piece


@dataclass(frozen=True, slots=True)
class _BadJson:
    why: str


def _json(text: str) -> Any:
    """The parsed JSON, or `_BadJson` saying why not (one line)."""
    try:
        return json.loads(text)
    except json.JSONDecodeError as err:
        return _BadJson(f"{err.msg} at character {err.pos}")
    except RecursionError:
        return _BadJson("nested too deep")


def _held_suffix(buffer: str) -> int:
    """Length of the longest end of `buffer` that is the start of an opening tag.

    Every opener has its only "<" first, so such an end starts at the last "<" (one search per
    token instead of one comparison per length: this runs on every token)."""
    at = buffer.rfind("<", max(0, len(buffer) - _LONGEST_OPENER + 1))
    if at < 0:
        return 0
    tail = buffer[at:]
    return len(tail) if any(o.startswith(tail) for o in _OPENERS) else 0


def _typed(value: str, schema_type: str) -> Any:
    """An XML-form parameter value as its schema type says (JSON for non-strings), else the text."""
    if schema_type == "string":
        return value
    try:
        return json.loads(value)
    except (ValueError, RecursionError):  # RecursionError: nesting too deep
        return value


# ----------------------------------------------------------------------------- prompt text


def hermes_system(system: str | None, tools_json: str) -> str:
    """The system text with the tools in it, as Qwen2.5's chat template writes it."""
    lines = "\n".join(json.dumps(tool, ensure_ascii=False) for tool in json.loads(tools_json))
    block = (
        "# Tools\n\nYou may call one or more functions to assist with the user query.\n\n"
        "You are provided with function signatures within <tools></tools> XML tags:\n<tools>\n"
        f"{lines}\n</tools>\n\n"
        "For each function call, return a json object with function name and arguments within "
        "<tool_call></tool_call> XML tags:\n<tool_call>\n"
        '{"name": <function-name>, "arguments": <args-json-object>}\n</tool_call>'
    )
    return f"{system}\n\n{block}" if system else block


def render_tool_results(messages: Iterable[Message]) -> str:
    """Tool results as the user turn Qwen2.5's template makes of consecutive tool messages."""
    return "\n".join(f"<{TOOL_RESPONSE_TAG}>\n{m.content}\n</{TOOL_RESPONSE_TAG}>"
                     for m in messages)


def render_tool_calls(calls: Sequence[ToolCall]) -> str:
    """An assistant turn's calls as the model wrote them (for a replayed transcript)."""
    return "\n".join(
        "<tool_call>\n"
        + json.dumps({"name": c.name, "arguments": c.arguments}, ensure_ascii=False)
        + "\n</tool_call>"
        for c in calls
    )


def merge_tool_results(messages: Iterable[Message]) -> str:
    """The prompt of a role "tool" input (1.2.1+): the round's results in one JSON array."""
    results: list[Any] = []
    for m in messages:
        try:
            results.append(json.loads(m.content))
        except (ValueError, RecursionError):  # RecursionError: nesting too deep
            results.append(m.content)
    return json.dumps(results, ensure_ascii=False)
