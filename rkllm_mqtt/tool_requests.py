"""The function-calling parts of a request: `tools`, and the tool turns of `messages`.

Bounded before anything reaches the runtime: the tools' JSON goes into the model's context (through
rkllm_set_function_tools, or the system text) on every change, so their count, size and nesting
are limited and a client hears which one it exceeded. Errors are `ValueError("[i]…: why")`, so
the protocol module reports them as `tools[i]…` / `messages[i]…`.

The tools are kept as one canonical JSON string (only the OpenAI-form keys, `ensure_ascii=False`):
the runtime compares it to decide whether rkllm_set_function_tools must run again, and the
conversation store compares it to decide whether a KV cache built with other tools can continue.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from typing import Any

from rkllm_mqtt.runtime.contract import Message, ToolCall

MAX_TOOLS = 64
MAX_TOOLS_CHARS = 32768  # of the tools' canonical JSON
MAX_TOOL_DEPTH = 16  # nesting of objects and lists in one tool definition
MAX_TOOL_CALLS = 32  # in one assistant turn
TOOL_NAME = re.compile(r"[A-Za-z0-9_.:-]{1,128}")  # room for an API namespace ("assist__…")


@dataclass(frozen=True, slots=True)
class Tools:
    """A request's validated `tools`."""

    json: str  # the canonical OpenAI-form list
    names: tuple[str, ...]


def tools_list(tools: Tools | None) -> list[Any] | None:
    """The request's `tools` again, in the form `parse_tools` takes."""
    return None if tools is None else json.loads(tools.json)


def parse_tools(value: Any) -> Tools | None:
    """Validate `tools`; an empty list means none."""
    if value is None:
        return None
    if not isinstance(value, list):
        raise ValueError(": must be a list of {\"type\": \"function\", \"function\": {...}}")
    if len(value) > MAX_TOOLS:
        raise ValueError(f": at most {MAX_TOOLS} tools (got {len(value)})")
    if not value:
        return None
    canonical, names = [], []
    for i, tool in enumerate(value):
        if not isinstance(tool, dict) or tool.get("type", "function") != "function" \
                or not isinstance(tool.get("function"), dict):
            raise ValueError(f"[{i}]: must be {{\"type\": \"function\", \"function\": {{...}}}}")
        if _depth(tool) > MAX_TOOL_DEPTH:
            raise ValueError(f"[{i}]: nested deeper than {MAX_TOOL_DEPTH} levels")
        function = tool["function"]
        name = function.get("name")
        if not isinstance(name, str) or not TOOL_NAME.fullmatch(name):
            raise ValueError(f"[{i}].function.name: must be 1 to 128 characters of "
                             "A-Z a-z 0-9 _ . : -")
        if name in names:
            raise ValueError(f"[{i}].function.name: {name!r} is given twice")
        entry: dict[str, Any] = {"name": name}
        description = function.get("description")
        if description is not None:
            if not isinstance(description, str):
                raise ValueError(f"[{i}].function.description: must be a string")
            entry["description"] = description
        parameters = function.get("parameters")
        if parameters is not None:
            if not isinstance(parameters, dict):
                raise ValueError(f"[{i}].function.parameters: must be a JSON schema object")
            entry["parameters"] = parameters
        canonical.append({"type": "function", "function": entry})
        names.append(name)
    text = json.dumps(canonical, ensure_ascii=False)
    if len(text) > MAX_TOOLS_CHARS:
        raise ValueError(f": {len(text)} characters of JSON, over {MAX_TOOLS_CHARS}")
    return Tools(text, tuple(names))


def _depth(value: Any) -> int:
    if isinstance(value, dict):
        return 1 + max((_depth(v) for v in value.values()), default=0)
    if isinstance(value, list):
        return 1 + max((_depth(v) for v in value), default=0)
    return 0


def tool_message(i: int, item: dict[str, Any]) -> Message:
    """A `messages[i]` of role tool, or an assistant turn with `tool_calls`."""
    if item["role"] == "tool":
        content = item.get("content")
        if not isinstance(content, str):
            raise ValueError(f"[{i}].content: a tool result must be a string")
        for key in ("tool_call_id", "name"):
            if item.get(key) is not None and not isinstance(item[key], str):
                raise ValueError(f"[{i}].{key}: must be a string")
        return Message("tool", content, tool_call_id=item.get("tool_call_id"),
                       name=item.get("name"))
    content = item.get("content")
    if content is not None and not isinstance(content, str):
        raise ValueError(f"[{i}].content: must be a string or null")
    calls = item["tool_calls"]
    if not isinstance(calls, list) or len(calls) > MAX_TOOL_CALLS:
        raise ValueError(f"[{i}].tool_calls: must be a list of at most {MAX_TOOL_CALLS} calls")
    return Message("assistant", content or "",
                   tool_calls=tuple(_call(f"[{i}].tool_calls[{k}]", c) for k, c in enumerate(calls)))


def _call(where: str, call: Any) -> ToolCall:
    """`{"id", "name", "arguments": {...}}` (this contract's reply form) or OpenAI's
    `{"id", "type": "function", "function": {"name", "arguments": "<JSON>"}}`."""
    if not isinstance(call, dict):
        raise ValueError(f"{where}: must be {{\"id\", \"name\", \"arguments\": {{...}}}}")
    body = call["function"] if isinstance(call.get("function"), dict) else call
    name, arguments, call_id = body.get("name"), body.get("arguments", {}), call.get("id", "")
    if isinstance(arguments, str):
        try:
            arguments = json.loads(arguments)
        except (ValueError, RecursionError):  # RecursionError: nesting too deep
            arguments = None
    if not isinstance(name, str) or not name or not isinstance(arguments, dict) \
            or not isinstance(call_id, str):
        raise ValueError(f"{where}: must be {{\"id\": string, \"name\": string, "
                         "\"arguments\": object}")
    if _depth(arguments) > MAX_TOOL_DEPTH:
        raise ValueError(f"{where}.arguments: nested deeper than {MAX_TOOL_DEPTH} levels")
    return ToolCall(call_id, name, arguments)
