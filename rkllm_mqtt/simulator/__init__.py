"""A stand-in librkllmrt.so (built from rkllm_sim.c) and the answer it gives, for tests and `demo`."""

from __future__ import annotations

import json

from rkllm_mqtt.simulator.build import ABIS, build_simulator, sim_model_file

__all__ = ["ABIS", "build_simulator", "expected_answer", "expected_tokens", "expected_tool_call",
           "sim_model_file"]

# Mirrors SIM_ANSWER_PREFIX / SIM_ECHO_CHARS / SIM_ANSWER_TAIL / SIM_CHUNK_BYTES in rkllm_sim.c.
ANSWER_PREFIX = "You said: "
ECHO_CHARS = 60
ANSWER_TAIL = " — ünïcödé 你好 🙂 done."
CHUNK_BYTES = 3


def expected_answer(prompt: str) -> str:
    """The exact text the simulator streams for `prompt` (default settings, no [sim:...] directive).

    `prompt` is the text rkllm_run received in RKLLMInput.prompt_input. Generation also stops at
    max_new_tokens and at max_context_len minus the prompt's tokens (ceil(bytes / 4)); with
    the defaults that only matters for prompts near the context limit.
    """
    return ANSWER_PREFIX + prompt[:ECHO_CHARS] + ANSWER_TAIL


def expected_tokens(prompt: str) -> list[bytes]:
    """The bytes of each NORMAL callback for `prompt`: the echo part and the tail cut separately
    into 3-byte chunks, so multi-byte characters of the tail are always split across callbacks."""
    head = (ANSWER_PREFIX + prompt[:ECHO_CHARS]).encode()
    tail = ANSWER_TAIL.encode()
    return [part[i : i + CHUNK_BYTES] for part in (head, tail) for i in range(0, len(part), CHUNK_BYTES)]


def expected_tool_call(name: str, thing: str | None = None, *, xml: bool = False) -> str:
    """The text of the simulator's tool call (mirrors sim_tools_answer in rkllm_sim.c): a call of
    `name` with {"name": thing} (no arguments without it), Qwen's JSON form or, with `xml`
    ([sim:tool_xml]), the XML-like form. It is streamed in CHUNK_BYTES tokens like any answer."""
    if xml:
        parameter = f"<parameter=name>\n{thing}\n</parameter>\n" if thing is not None else ""
        return f"<tool_call>\n<function={name}>\n{parameter}</function>\n</tool_call>"
    arguments = f'"name": {json.dumps(thing, ensure_ascii=False)}' if thing is not None else ""
    return f'<tool_call>\n{{"name": {json.dumps(name)}, "arguments": {{{arguments}}}}}\n</tool_call>'
