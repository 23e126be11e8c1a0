"""From a request to the exact text `RKLLMInput.prompt_input` receives, and the chat template.

RKLLMInput has no "system" role and takes one string, so a chat becomes (system text, one prompt):

- `render_messages`: system messages are joined into the system text; a single user message is
  passed as it is; several turns become a plain transcript ("User: …\\nAssistant: …\\nUser: …")
  that the model's own template then wraps as one user turn. Simple on purpose: the runtime owns
  the real template, and a transcript is what every instruct model follows.
- `plan_prompt`: where the system text goes. On 1.2.0+ `rkllm_set_chat_template` puts it in the
  template, but only when both prefix and postfix are configured: a template with an empty
  prefix/postfix would replace the model's built-in one with nothing, so otherwise the system text
  is prepended to the prompt. 1.1.x has no template API; prefix/system/postfix are applied here.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

from rkllm_mqtt.runtime.contract import Message

_ROLE_LABELS = {"user": "User", "assistant": "Assistant", "tool": "Tool"}


def render_messages(
    messages: Iterable[Message], system: str | None
) -> tuple[str | None, str]:
    """(system text or None, prompt) for a chat; raises ValueError when there is nothing to ask."""
    system_parts = [system] if system else []
    turns: list[Message] = []
    for message in messages:
        if message.role == "system":
            if message.content:
                system_parts.append(message.content)
        else:
            turns.append(message)
    if not turns:
        raise ValueError("the request has no prompt and no user message")
    if len(turns) == 1 and turns[0].role == "user":
        prompt = turns[0].content
    else:
        prompt = "\n".join(
            f"{_ROLE_LABELS.get(m.role, m.role.capitalize())}: {m.content}" for m in turns
        )
    return ("\n\n".join(system_parts) or None), prompt


@dataclass(frozen=True)
class Template:
    """Arguments of rkllm_set_chat_template(system_prompt, prompt_prefix, prompt_postfix)."""

    system_prompt: str
    prompt_prefix: str
    prompt_postfix: str


@dataclass(frozen=True)
class TemplateConfig:
    """runtime.system_prompt / prompt_prefix / prompt_postfix as configured (None = unset)."""

    system_prompt: str | None = None
    prompt_prefix: str | None = None
    prompt_postfix: str | None = None

    def native(self) -> Template | None:
        """The template to set at init on 1.2.0+; None keeps the model's built-in template."""
        if self.prompt_prefix is None and self.prompt_postfix is None:
            return None
        return Template(
            self.system_prompt or "", self.prompt_prefix or "", self.prompt_postfix or ""
        )


@dataclass(frozen=True)
class PromptPlan:
    text: str  # what RKLLMInput.prompt_input receives
    template: Template | None  # template this run needs (1.2.0+), None = the configured one


def _prepend(system: str | None, prompt: str) -> str:
    return f"{system}\n\n{prompt}" if system else prompt


def plan_prompt(
    config: TemplateConfig, system: str | None, prompt: str, *, native_template: bool
) -> PromptPlan:
    """Decide the prompt text and, on 1.2.0+, whether this run needs another chat template."""
    configured = config.native()
    if not native_template:  # 1.1.x: the whole template is applied here
        system = system or config.system_prompt
        if configured is None:
            return PromptPlan(_prepend(system, prompt), None)
        text = f"{system or ''}{configured.prompt_prefix}{prompt}{configured.prompt_postfix}"
        return PromptPlan(text, None)
    if system is None:
        if configured is None:  # a bare configured system prompt: keep the model's template
            return PromptPlan(_prepend(config.system_prompt, prompt), None)
        return PromptPlan(prompt, None)
    if config.prompt_prefix is not None and config.prompt_postfix is not None:
        return PromptPlan(prompt, Template(system, config.prompt_prefix, config.prompt_postfix))
    return PromptPlan(_prepend(system, prompt), None)
