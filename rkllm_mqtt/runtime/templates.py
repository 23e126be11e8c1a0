"""The chat markup of the model families the daemon knows, for rkllm_set_chat_template (1.2.0+).

rkllm_set_chat_template(handle, system_prompt, prompt_prefix, prompt_postfix) replaces the template
the toolkit parsed into the model file (rkllm.h and the RKLLM SDK manual of release-v1.2.0): the
runtime then sends system_prompt, and prefix + prompt + postfix for each turn, as they are. So the
three strings carry the model's own markup, as Rockchip's demos write them: the ChatML segments for
Qwen ("<|im_start|>system\\n…<|im_end|>\\n", "<|im_start|>user\\n",
"<|im_end|>\\n<|im_start|>assistant\\n"), and "", "<｜User｜>", "<｜Assistant｜>" for
DeepSeek-R1-Distill (the C demo of rknn-llm release-v1.2.0). Only through that call does a system
prompt sit in the KV cache as the system segment that rkllm_clear_kv_cache(keep_system_prompt = 1)
keeps, so a new conversation does not prefill it again.

`runtime.chat_template = "auto"` picks the table entry by the model file's name; a name that names
no known family gets ChatML, the template of the Qwen models Rockchip publishes its benchmarks and
function-calling demo for. "model" keeps the model's own template (the system text then travels in
the prompt and is prefilled again by every conversation).
"""

from __future__ import annotations

import re
from dataclasses import dataclass


@dataclass(frozen=True)
class ChatTemplate:
    """One family's markup: `system` holds "{system}" where the system text goes."""

    name: str
    system: str
    prefix: str
    postfix: str

    def system_segment(self, text: str) -> str:
        return self.system.replace("{system}", text) if text else ""


CHATML = ChatTemplate(
    "chatml", "<|im_start|>system\n{system}<|im_end|>\n",
    "<|im_start|>user\n", "<|im_end|>\n<|im_start|>assistant\n",
)
TEMPLATES: dict[str, ChatTemplate] = {
    "chatml": CHATML,
    # DeepSeek-R1-Distill's tokenizer_config puts the system text first, without a tag.
    "deepseek": ChatTemplate("deepseek", "{system}", "<｜User｜>", "<｜Assistant｜>"),
    "llama3": ChatTemplate(
        "llama3", "<|start_header_id|>system<|end_header_id|>\n\n{system}<|eot_id|>",
        "<|start_header_id|>user<|end_header_id|>\n\n",
        "<|eot_id|><|start_header_id|>assistant<|end_header_id|>\n\n",
    ),
    # Gemma has no system role; its template puts the system text in a user turn of its own here.
    "gemma": ChatTemplate(
        "gemma", "<start_of_turn>user\n{system}<end_of_turn>\n",
        "<start_of_turn>user\n", "<end_of_turn>\n<start_of_turn>model\n",
    ),
}
CHOICES = ("auto", "model", *TEMPLATES)

# Markup that says a configured system prompt is already a whole system segment.
_MARKERS = ("<|im_start|>", "<|start_header_id|>", "<start_of_turn>", "<｜", "<|system|>",
            "[INST]", "<<SYS>>")

# (pattern over the lowercased file name, template); the first match wins, so DeepSeek's Qwen
# distills are found before "qwen".
_BY_NAME: tuple[tuple[re.Pattern[str], str], ...] = (
    (re.compile(r"deepseek.*(r1|distill)"), "deepseek"),
    (re.compile(r"llama[-_ .]?3"), "llama3"),
    (re.compile(r"gemma"), "gemma"),
    (re.compile(r"qwen|qwq|minicpm|internlm|(^|[^a-z])yi([^a-z]|$)"), "chatml"),
)


def carries_markup(text: str) -> bool:
    return any(marker in text for marker in _MARKERS)


def choose(setting: str, model_file: str) -> tuple[ChatTemplate | None, str]:
    """(template or None for the model's own, why) for runtime.chat_template and the model file."""
    if setting == "model":
        return None, 'runtime.chat_template = "model": the model\'s own template'
    if setting != "auto":
        if setting not in TEMPLATES:
            raise ValueError(f"runtime.chat_template: {setting!r} is not one of {', '.join(CHOICES)}")
        return TEMPLATES[setting], f'runtime.chat_template = "{setting}"'
    name = model_file.lower()
    for pattern, template in _BY_NAME:
        found = pattern.search(name)
        if found:
            return TEMPLATES[template], (f'"auto": the model file name {model_file!r} '
                                         f'names {found.group(0).strip("-_. ")!r}')
    return CHATML, (f'"auto": the model file name {model_file!r} names no known family; ChatML, '
                    "the template of the Qwen models Rockchip publishes")
