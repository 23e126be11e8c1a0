"""What a Session needs to load and run a model, as a plain value.

The daemon's `[runtime]` config section is a pydantic model; the runtime takes this frozen
dataclass instead, so it (and the child process that hosts it) never imports the daemon's
config. `rkllm_mqtt.engine.runtime_options` translates one into the other; the values are already
validated there. Sampling keys carry their C names (RKLLMParam of rkllm.h); None keeps the
library's default.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class RuntimeOptions:
    library: str = "librkllmrt.so"
    abi: str = "auto"  # "auto" | "1.1" | "1.2.0" | "1.2" | "1.3"
    model: str | None = None
    max_context_len: int | None = None
    max_new_tokens: int | None = None
    top_k: int | None = None
    top_p: float | None = None
    temperature: float | None = None
    repeat_penalty: float | None = None
    frequency_penalty: float | None = None
    presence_penalty: float | None = None
    mirostat: int | None = None
    mirostat_tau: float | None = None
    mirostat_eta: float | None = None
    skip_special_token: bool | None = None
    n_keep: int | None = None
    base_domain_id: int | None = None
    embed_flash: bool | None = None
    enabled_cpus_mask: int | None = None
    system_prompt: str | None = None
    prompt_prefix: str | None = None
    prompt_postfix: str | None = None
