"""Every init and run parameter reaches the C side exactly, for every ABI family.

The simulator reports each field as the C code read it (rkllm_sim_inspect); a wrong offset, type
or order in our ctypes mirror shows up here as a wrong value, not as a crash on a board.
"""

from __future__ import annotations

import logging
import struct
from collections.abc import Callable
from typing import Any

import pytest

from rkllm_mqtt.runtime import FinalEvent, GenerationRequest, Sampling, Session
from rkllm_mqtt.simulator import expected_answer

pytestmark = pytest.mark.timeout(60)


def f32(value: float) -> float:
    """The float32 nearest to `value`, so both sides are compared at C float precision."""
    return struct.unpack("f", struct.pack("f", value))[0]


INIT_VALUES: dict[str, Any] = {
    "max_context_len": 1000,
    "max_new_tokens": 333,
    "top_k": 17,
    "n_keep": 9,
    "top_p": 0.55,
    "temperature": 0.37,
    "repeat_penalty": 1.23,
    "frequency_penalty": 0.11,
    "presence_penalty": 0.22,
    "mirostat": 2,
    "mirostat_tau": 4.5,
    "mirostat_eta": 0.07,
    "skip_special_token": False,
}
FLOAT_KEYS = {"top_p", "temperature", "repeat_penalty", "frequency_penalty", "presence_penalty",
              "mirostat_tau", "mirostat_eta"}
# rkllm_createDefaultParam() of the simulator (documented at the top of rkllm_sim.c).
DEFAULTS: dict[str, Any] = {
    "max_context_len": 512,
    "max_new_tokens": -1,
    "top_k": 40,
    "n_keep": -1,
    "top_p": 0.9,
    "temperature": 0.8,
    "repeat_penalty": 1.1,
    "frequency_penalty": 0.0,
    "presence_penalty": 0.0,
    "mirostat": 0,
    "mirostat_tau": 5.0,
    "mirostat_eta": 0.1,
    "skip_special_token": True,
}


def assert_fields(seen: dict[str, Any], wanted: dict[str, Any]) -> None:
    for key, value in wanted.items():
        if key in FLOAT_KEYS:
            assert f32(seen[key]) == f32(value), key
        else:
            assert seen[key] == value, key


def test_every_configured_init_parameter_round_trips(
    open_session: Callable[..., Session], inspect: Callable[[Session], dict[str, Any]],
    family: str, caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.WARNING, "rkllm_mqtt.runtime")
    session = open_session(family, **INIT_VALUES, base_domain_id=3, embed_flash=True,
                           enabled_cpus_mask=0x1C)
    init = inspect(session)["init"]

    wanted = dict(INIT_VALUES)
    if family == "1.1":  # no n_keep / embed_flash / CPU mask in the 1.1 header
        del wanted["n_keep"]
        assert "n_keep" not in init
        assert set(init["extend_param"]) == {"base_domain_id", "reserved_all_zero"}
        for key in ("n_keep", "embed_flash", "enabled_cpus_mask"):
            assert f"runtime.{key} is not part of the RKLLM 1.1 ABI" in caplog.text
    else:
        ext = init["extend_param"]
        assert (ext["embed_flash"], ext["enabled_cpus_mask"], ext["enabled_cpus_num"]) == (
            1, 0x1C, 3)
    assert_fields(init, wanted)
    assert init["model_path"] == session.settings.model
    assert init["is_async"] is False
    assert init["extend_param"]["base_domain_id"] == 3
    assert init["extend_param"]["reserved_all_zero"] is True
    if family in ("1.2", "1.3"):
        assert (init["extend_param"]["n_batch"], init["extend_param"]["use_cross_attn"]) == (1, 0)
    if family == "1.3":
        assert init["ignore_eos_token"] is False  # not configurable: the library default stays
        assert init["callback"] == {"result_callback": True, "result_userdata": False,
                                    "tokenizer_callback": False, "embed_callback": False}
    else:
        assert init["callback"]["result_callback"] is True


def test_unset_keys_keep_the_library_defaults(
    open_session: Callable[..., Session], inspect: Callable[[Session], dict[str, Any]], family: str
) -> None:
    init = inspect(open_session(family))["init"]
    wanted = {k: v for k, v in DEFAULTS.items() if family != "1.1" or k != "n_keep"}
    assert_fields(init, wanted)
    ext = init["extend_param"]
    assert ext["base_domain_id"] == 0
    if family != "1.1":
        assert (ext["embed_flash"], ext["enabled_cpus_num"], ext["enabled_cpus_mask"]) == (0, 4,
                                                                                          0xF0)
    if family in ("1.1", "1.2.0", "1.2"):
        assert (init["img_start"], init["img_end"], init["img_content"]) == (None, None, None)


def test_run_parameters_round_trip(
    open_session: Callable[..., Session], inspect: Callable[[Session], dict[str, Any]], family: str
) -> None:
    session = open_session(family, top_k=17, repeat_penalty=1.23, mirostat_eta=0.07)
    request = GenerationRequest(
        prompt="Grüße, 世界",
        keep_history=True,
        role="tool",
        enable_thinking=True,
        max_new_tokens=7,
        sampling=Sampling(top_p=0.61, temperature=0.29, frequency_penalty=0.4,
                          presence_penalty=0.3, mirostat=1, mirostat_tau=3.5),
    )
    outcome = session.generate(request).result()
    assert isinstance(outcome, FinalEvent)
    run = inspect(session)["run"]

    assert (run["count"], run["input_type"], run["mode"]) == (1, 0, 0)
    assert run["prompt"] == "Grüße, 世界"
    assert (run["lora_params"], run["prompt_cache_params"], run["userdata"]) == (False, False, False)
    assert run["infer_params"] is True
    if family == "1.1":
        assert "keep_history" not in run and "role" not in run
    else:
        assert run["keep_history"] == 1
    if family in ("1.2", "1.3"):
        assert (run["role"], run["enable_thinking"]) == ("tool", True)
    else:
        assert "role" not in run and "enable_thinking" not in run
    if family == "1.3":  # native per-run sampling: config values, overridden by the request
        assert run["max_new_tokens"] == 7
        assert_fields(run["sampling"], {
            "top_k": 17, "top_p": 0.61, "temperature": 0.29, "repeat_penalty": 1.23,
            "frequency_penalty": 0.4, "presence_penalty": 0.3, "mirostat": 1,
            "mirostat_tau": 3.5, "mirostat_eta": 0.07,
        })
    else:
        assert "sampling" not in run and "max_new_tokens" not in run
    if family == "1.3":  # capped by the library
        assert (run["generated_tokens"], run["aborted"]) == (7, False)
    else:  # counted by us, aborted from the token thread; tokens past the limit are dropped
        assert run["generated_tokens"] >= 7  # the simulator does not wait: it may finish first
    assert outcome.finish_reason == "length"
    assert outcome.stats.completion_tokens == 7


def test_1_3_run_without_overrides_sends_the_init_values(
    open_session: Callable[..., Session], inspect: Callable[[Session], dict[str, Any]]
) -> None:
    session = open_session("1.3", temperature=0.5)
    outcome = session.generate(GenerationRequest(prompt="hello")).result()
    assert isinstance(outcome, FinalEvent) and outcome.text == expected_answer("hello")
    run = inspect(session)["run"]
    assert run["max_new_tokens"] == 0  # <= 0: the init value
    assert run["keep_history"] == 0 and run["role"] == "user" and run["enable_thinking"] is False
    wanted = {k: v for k, v in DEFAULTS.items() if k in run["sampling"]} | {"temperature": 0.5}
    assert_fields(run["sampling"], wanted)


@pytest.mark.parametrize("family", ["1.2.0", "1.2", "1.3"])
def test_keep_history_and_clear_kv_cache(
    open_session: Callable[..., Session], inspect: Callable[[Session], dict[str, Any]], family: str
) -> None:
    session = open_session(family)
    assert session.supports_history
    session.generate(GenerationRequest(prompt="first", keep_history=True)).result()
    session.generate(GenerationRequest(prompt="second", keep_history=True)).result()
    record = inspect(session)
    assert record["history"] == ["first", expected_answer("first"),
                                 "second", expected_answer("second")]
    session.clear(keep_system_prompt=True)
    record = inspect(session)
    assert record["history"] == []
    assert record["clear_kv_cache"]["count"] == 1
    assert record["clear_kv_cache"]["keep_system_prompt"] == 1
    if family != "1.2.0":  # 1.2.1+: clear the whole cache, no range
        assert (record["clear_kv_cache"]["start_pos"], record["clear_kv_cache"]["end_pos"]) == (
            None, None)

    session.generate(GenerationRequest(prompt="alone", keep_history=False)).result()
    assert inspect(session)["history"] == []


def test_1_1_has_no_history_and_clear_is_a_no_op(
    open_session: Callable[..., Session], inspect: Callable[[Session], dict[str, Any]]
) -> None:
    session = open_session("1.1")
    assert not session.supports_history
    session.clear()
    assert inspect(session)["clear_kv_cache"]["count"] == 0
