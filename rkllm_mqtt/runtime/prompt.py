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
- `plan_request`: the whole decision for one run, tools included. On 1.2.1+ the tools and the
  system text go to rkllm_set_function_tools, and a round of tool results is one input of role
  "tool" (the 1.3.0 demo's way); before 1.2.1 the tools are rendered into the system text and the
  results into the prompt, as Qwen's template writes them (`tools.py`).
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, replace

from rkllm_mqtt.runtime.contract import Message
from rkllm_mqtt.runtime.tools import (
    hermes_system,
    merge_tool_results,
    render_tool_calls,
    render_tool_results,
)

_ROLE_LABELS = {"user": "User", "assistant": "Assistant", "tool": "Tool"}


def render_messages(
    messages: Iterable[Message], system: str | None
) -> tuple[str | None, str]:
    """(system text or None, prompt) for a chat; raises ValueError when there is nothing to ask."""
    messages = list(messages)
    turns = [m for m in messages if m.role != "system"]
    if not turns:
        raise ValueError("the request has no prompt and no user message")
    if len(turns) == 1 and turns[0].role == "user":
        prompt = turns[0].content
    else:
        prompt = "\n".join(
            f"{_ROLE_LABELS.get(m.role, m.role.capitalize())}: {_turn_text(m)}" for m in turns
        )
    return _system_text(messages, system), prompt


def _system_text(messages: Iterable[Message], system: str | None) -> str | None:
    """The request's system text and its system messages, each once: a replayed conversation
    holds the system message of every turn that brought one."""
    parts = [system] if system else []
    parts += [m.content for m in messages if m.role == "system" and m.content]
    return "\n\n".join(dict.fromkeys(parts)) or None


def _turn_text(message: Message) -> str:
    """A transcript line's text: tool calls and results in the markup the model knows."""
    if message.role == "tool":
        return render_tool_results([message])
    if message.tool_calls:
        return "\n".join(p for p in (message.content, render_tool_calls(message.tool_calls)) if p)
    return message.content


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
    role: str = "user"  # RKLLMInput.role (1.2.1+)
    # (system_prompt, tools) for rkllm_set_function_tools (1.2.1+); None: no tools this run
    function_tools: tuple[str, str] | None = None


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


def plan_request(
    config: TemplateConfig,
    messages: Sequence[Message],
    system: str | None,
    *,
    native_template: bool,
    native_tools: bool,
    tools_json: str | None = None,
    continues: bool = False,
) -> PromptPlan:
    """Everything one run sends; `continues`: the KV cache holds the rest, send only the new part.

    A request whose turns are all tool results is a tool round: on 1.2.1+ one role "tool" input
    with the results merged, before that the results as the user turn Qwen's template makes.
    """
    turns = [m for m in messages if m.role != "system"]
    if turns and all(m.role == "tool" for m in turns):
        system_text = _system_text(messages, system)
        if native_tools:
            prompt, role = merge_tool_results(turns), "tool"
        else:
            prompt, role = render_tool_results(turns), "user"
    else:
        system_text, prompt = render_messages(messages, system)
        role = "user"
    if tools_json and native_tools:
        tools = (system_text or config.system_prompt or "", tools_json)
        return PromptPlan(prompt, None, role, tools)
    if tools_json:
        system_text = hermes_system(system_text or config.system_prompt, tools_json)
    plan = replace(plan_prompt(config, system_text, prompt, native_template=native_template),
                   role=role)
    return replace(plan, text=prompt) if continues else plan
