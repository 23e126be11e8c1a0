"""runtime.chat_template: the table, the choice by model file name, markup detection."""

from __future__ import annotations

import pytest

from rkllm_mqtt.runtime.templates import CHATML, TEMPLATES, carries_markup, choose


@pytest.mark.parametrize(("model", "name"), [
    ("Qwen2.5-1.5B-Instruct-rk3588-w8a8-opt-0-hybrid-ratio-0.5.rkllm", "chatml"),
    ("QwQ-32B.rkllm", "chatml"),
    ("MiniCPM4-0.5B_W8A8.rkllm", "chatml"),
    ("internlm2-chat-1_8b.rkllm", "chatml"),
    ("Yi-1.5-6B-Chat.rkllm", "chatml"),
    ("DeepSeek-R1-Distill-Qwen-1.5B_W8A8_RK3588.rkllm", "deepseek"),  # not its Qwen base
    ("Llama-3.2-1B-Instruct_w8a8.rkllm", "llama3"),
    ("llama3-8b.rkllm", "llama3"),
    ("gemma-3-1b-it.rkllm", "gemma"),
])
def test_auto_names_the_family_of_the_file(model: str, name: str) -> None:
    template, why = choose("auto", model)
    assert template is TEMPLATES[name]
    assert model in why


@pytest.mark.parametrize("model", ["model.rkllm", "phi-3-mini.rkllm", "tinyllama-1.1b.rkllm",
                                   "skyline.rkllm"])
def test_auto_falls_back_to_chatml_and_says_so(model: str) -> None:
    template, why = choose("auto", model)
    assert template is CHATML
    assert "no known family" in why


def test_a_named_template_or_the_models_own() -> None:
    assert choose("llama3", "Qwen2.5.rkllm")[0] is TEMPLATES["llama3"]
    assert choose("model", "Qwen2.5.rkllm")[0] is None
    with pytest.raises(ValueError, match=r"runtime\.chat_template"):
        choose("vicuna", "x.rkllm")


def test_system_segment_and_markup() -> None:
    assert CHATML.system_segment("Be brief.") == "<|im_start|>system\nBe brief.<|im_end|>\n"
    assert CHATML.system_segment("") == ""
    assert TEMPLATES["deepseek"].system_segment("Be brief.") == "Be brief."
    assert carries_markup("<|im_start|>system\nBe brief.<|im_end|>\n")
    assert carries_markup("<|start_header_id|>system<|end_header_id|>\n\nX<|eot_id|>")
    assert not carries_markup("Be brief. Use <b>bold</b> rarely.")
