"""The simulator library, driven through plain ctypes (not the package's binding).

These tests pin what the binding's tests rely on: the layouts compile to the reference sizes, the
answer is the one expected_answer() predicts, and every failure mode the daemon must survive
(init errors, run errors, crashes, hangs, aborts, pauses) behaves as INTERFACES.md says.
"""

from __future__ import annotations

import ctypes
import json
import math
import shutil
import signal
import subprocess
import sys
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from rkllm_mqtt.errors import SimulatorBuildError
from rkllm_mqtt.simulator import (
    ABIS,
    build_simulator,
    expected_answer,
    expected_tokens,
    expected_tool_call,
    sim_model_file,
)
from rkllm_mqtt.simulator import build as sim_build

NORMAL, WAITING, FINISH, ERROR = 0, 1, 2, 3
FAMILY = {"1.1": 1, "1.2.0": 2, "1.2": 3, "1.3": 4}
VERSION = {"1.1": "1.1.4", "1.2.0": "1.2.0", "1.2": "1.2.3", "1.3": "1.3.0"}
JOIN_TIMEOUT_S = 30.0

# ---------------------------------------------------------------------------------------------
# A minimal ctypes mirror of each release's rkllm.h (rknn-llm 1.1.4, 1.2.0, 1.2.3, 1.3.0), local to
# these tests.
# ---------------------------------------------------------------------------------------------


def _struct(name: str, fields: list[tuple[str, Any]]) -> type[ctypes.Structure]:
    return type(name, (ctypes.Structure,), {"_fields_": fields})


class Types:
    """The structs and callback type of one ABI family."""

    def __init__(self, abi: str) -> None:
        f = self.family = FAMILY[abi]
        ext: list[tuple[str, Any]] = [("base_domain_id", ctypes.c_int32)]
        if f == 1:
            ext += [("reserved", ctypes.c_uint8 * 112)]
        else:
            ext += [
                ("embed_flash", ctypes.c_int8),
                ("enabled_cpus_num", ctypes.c_int8),
                ("enabled_cpus_mask", ctypes.c_uint32),
            ]
            if f == 2:
                ext += [("reserved", ctypes.c_uint8 * 106)]
            else:
                ext += [
                    ("n_batch", ctypes.c_uint8),
                    ("use_cross_attn", ctypes.c_int8),
                    ("reserved", ctypes.c_uint8 * 104),
                ]
        self.Ext = _struct("RKLLMExtendParam", ext)

        param: list[tuple[str, Any]] = [
            ("model_path", ctypes.c_char_p),
            ("max_context_len", ctypes.c_int32),
            ("max_new_tokens", ctypes.c_int32),
            ("top_k", ctypes.c_int32),
        ]
        if f >= 2:
            param += [("n_keep", ctypes.c_int32)]
        param += [
            (name, ctypes.c_float)
            for name in ("top_p", "temperature", "repeat_penalty", "frequency_penalty", "presence_penalty")
        ]
        param += [
            ("mirostat", ctypes.c_int32),
            ("mirostat_tau", ctypes.c_float),
            ("mirostat_eta", ctypes.c_float),
            ("skip_special_token", ctypes.c_bool),
        ]
        if f == 4:
            param += [("ignore_eos_token", ctypes.c_bool)]
        param += [("is_async", ctypes.c_bool)]
        if f < 4:
            param += [(n, ctypes.c_char_p) for n in ("img_start", "img_end", "img_content")]
        param += [("extend_param", self.Ext)]
        self.Param = _struct("RKLLMParam", param)

        mm_size = {1: 24, 2: 24, 3: 48, 4: 144}[f]
        multimodal = _struct(
            "RKLLMMultiModalInput",
            [("prompt", ctypes.c_char_p), ("rest", ctypes.c_size_t * ((mm_size - 8) // 8))],
        )
        union = type(
            "RKLLMInputUnion",
            (ctypes.Union,),
            {"_fields_": [("prompt_input", ctypes.c_char_p), ("multimodal_input", multimodal)]},
        )
        head = [("role", ctypes.c_char_p), ("enable_thinking", ctypes.c_bool)] if f >= 3 else []
        self.Input = _struct("RKLLMInput", [*head, ("input_type", ctypes.c_int), ("u", union)])

        self.Sampling = _struct(
            "RKLLMSamplingParam",
            [
                ("top_k", ctypes.c_int32),
                ("top_p", ctypes.c_float),
                ("temperature", ctypes.c_float),
                ("repeat_penalty", ctypes.c_float),
                ("frequency_penalty", ctypes.c_float),
                ("presence_penalty", ctypes.c_float),
                ("mirostat", ctypes.c_int32),
                ("mirostat_tau", ctypes.c_float),
                ("mirostat_eta", ctypes.c_float),
            ],
        )
        infer: list[tuple[str, Any]] = [
            ("mode", ctypes.c_int),
            ("lora_params", ctypes.c_void_p),
            ("prompt_cache_params", ctypes.c_void_p),
        ]
        if f == 4:
            infer += [("sampling_params", ctypes.POINTER(self.Sampling))]
        if f >= 2:
            infer += [("keep_history", ctypes.c_int)]
        if f == 4:
            infer += [("max_new_tokens", ctypes.c_int32)]
        self.Infer = _struct("RKLLMInferParam", infer)

        triple = [("ptr", ctypes.c_void_p), ("size", ctypes.c_int), ("num_tokens", ctypes.c_int)]
        self.Perf = _struct(
            "RKLLMPerfStat",
            [
                ("prefill_time_ms", ctypes.c_float),
                ("prefill_tokens", ctypes.c_int),
                ("generate_time_ms", ctypes.c_float),
                ("generate_tokens", ctypes.c_int),
                ("memory_usage_mb", ctypes.c_float),
            ],
        )
        result: list[tuple[str, Any]] = [
            ("text", ctypes.c_void_p),  # raw pointer: text can be NULL or a split character
            ("token_id", ctypes.c_int32),
            ("last_hidden_layer", _struct("RKLLMResultLastHiddenLayer", triple)),
        ]
        if f >= 2:
            result += [("logits", _struct("RKLLMResultLogits", triple))]
        if f >= 3:
            result += [("perf", self.Perf)]
        self.Result = _struct("RKLLMResult", result)

        restype = ctypes.c_int if f >= 3 else None
        self.Callback = ctypes.CFUNCTYPE(restype, ctypes.POINTER(self.Result), ctypes.c_void_p, ctypes.c_int)
        self.CallbackStruct = _struct(
            "RKLLMCallback",
            [
                ("result_callback", self.Callback),
                ("result_userdata", ctypes.c_void_p),
                ("tokenizer_callback", ctypes.c_void_p),
                ("tokenizer_userdata", ctypes.c_void_p),
                ("embed_callback", ctypes.c_void_p),
                ("embed_userdata", ctypes.c_void_p),
            ],
        )


@dataclass(frozen=True)
class Event:
    state: int
    text: bytes | None
    thread: int
    userdata: int | None
    perf: dict[str, float] | None


class Sim:
    """One simulator handle driven through ctypes; records every callback."""

    def __init__(self, path: Path | str, abi: str) -> None:
        self.abi = abi
        self.t = t = Types(abi)
        self.family = t.family
        lib = self.lib = ctypes.CDLL(str(path))
        lib.rkllm_createDefaultParam.argtypes = []
        lib.rkllm_createDefaultParam.restype = t.Param
        cb_arg = ctypes.POINTER(t.CallbackStruct) if self.family == 4 else t.Callback
        lib.rkllm_init.argtypes = [ctypes.POINTER(ctypes.c_void_p), ctypes.POINTER(t.Param), cb_arg]
        lib.rkllm_init.restype = ctypes.c_int
        for name in ("rkllm_run", "rkllm_run_async"):
            fn = getattr(lib, name)
            fn.argtypes = [ctypes.c_void_p, ctypes.POINTER(t.Input), ctypes.POINTER(t.Infer), ctypes.c_void_p]
            fn.restype = ctypes.c_int
        for name in ("rkllm_abort", "rkllm_destroy", "rkllm_is_running", "rkllm_release_prompt_cache"):
            getattr(lib, name).argtypes = [ctypes.c_void_p]
            getattr(lib, name).restype = ctypes.c_int
        lib.rkllm_load_prompt_cache.argtypes = [ctypes.c_void_p, ctypes.c_char_p]
        lib.rkllm_sim_inspect.argtypes = [ctypes.c_void_p]
        lib.rkllm_sim_inspect.restype = ctypes.c_char_p
        if self.family >= 2:
            lib.rkllm_set_chat_template.argtypes = [ctypes.c_void_p] + [ctypes.c_char_p] * 3
            pos = [ctypes.POINTER(ctypes.c_int)] * 2 if self.family >= 3 else []
            lib.rkllm_clear_kv_cache.argtypes = [ctypes.c_void_p, ctypes.c_int, *pos]
        if self.family >= 3:
            lib.rkllm_set_function_tools.argtypes = [ctypes.c_void_p] + [ctypes.c_char_p] * 3
            lib.rkllm_get_kv_cache_size.argtypes = [ctypes.c_void_p, ctypes.POINTER(ctypes.c_int)]
            lib.rkllm_set_cross_attn_params.argtypes = [ctypes.c_void_p, ctypes.c_void_p]
        self.handle = ctypes.c_void_p()
        self.events: list[Event] = []
        self.pause_after: int | None = None
        self.on_event: Any = None
        self._callback = t.Callback(self._on_result)
        self._callbacks: Any = None

    def _on_result(self, result: Any, userdata: int | None, state: int) -> int | None:
        r = result.contents
        text = ctypes.string_at(r.text) if r.text else None
        perf = None
        if self.family >= 3 and state == FINISH:
            perf = {name: getattr(r.perf, name) for name, _ in self.t.Perf._fields_}
        event = Event(state, text, threading.get_ident(), userdata, perf)
        self.events.append(event)
        if self.on_event is not None:
            self.on_event(event)
        if self.family < 3:
            return None
        pause = self.pause_after is not None and len(self.texts()) >= self.pause_after
        return 1 if pause and state == NORMAL else 0

    def init(self, model: Path | None, extend: dict[str, int] | None = None, **fields: Any) -> int:
        p = self.lib.rkllm_createDefaultParam()
        p.model_path = str(model).encode() if model is not None else None
        for name, value in fields.items():
            setattr(p, name, value)
        for name, value in (extend or {}).items():
            setattr(p.extend_param, name, value)
        self._param = p
        if self.family == 4:
            self._callbacks = self.t.CallbackStruct(result_callback=self._callback)
            return self.lib.rkllm_init(
                ctypes.byref(self.handle), ctypes.byref(p), ctypes.byref(self._callbacks)
            )
        return self.lib.rkllm_init(ctypes.byref(self.handle), ctypes.byref(p), self._callback)

    def run(
        self,
        prompt: bytes | None,
        *,
        keep_history: int = 0,
        max_new_tokens: int = 0,
        sampling: dict[str, float] | None = None,
        role: bytes | None = b"user",
        enable_thinking: bool = False,
        userdata: int | None = None,
        use_async: bool = False,
        multimodal: bool = False,
    ) -> int:
        inp = self.t.Input()
        if multimodal:
            inp.input_type = 3
            inp.u.multimodal_input.prompt = prompt
        else:
            inp.input_type = 0
            inp.u.prompt_input = prompt
        if self.family >= 3:
            inp.role = role
            inp.enable_thinking = enable_thinking
        infer = self.t.Infer()
        infer.mode = 0
        if self.family >= 2:
            infer.keep_history = keep_history
        if self.family == 4:
            infer.max_new_tokens = max_new_tokens
            if sampling is not None:
                infer.sampling_params = ctypes.pointer(self.t.Sampling(**sampling))
        fn = self.lib.rkllm_run_async if use_async else self.lib.rkllm_run
        return fn(self.handle, ctypes.byref(inp), ctypes.byref(infer), userdata)

    def texts(self) -> list[bytes]:
        return [e.text for e in self.events if e.state == NORMAL and e.text is not None]

    def states(self) -> list[int]:
        return [e.state for e in self.events]

    def inspect(self) -> dict[str, Any]:
        return json.loads(self.lib.rkllm_sim_inspect(self.handle))

    def destroy(self) -> int:
        rc = self.lib.rkllm_destroy(self.handle)
        self.handle = ctypes.c_void_p()
        return rc


def _run_in_thread(sim: Sim, prompt: bytes, **kw: Any) -> tuple[threading.Thread, dict[str, int]]:
    out: dict[str, int] = {}

    def target() -> None:
        out["ret"] = sim.run(prompt, **kw)

    thread = threading.Thread(target=target, daemon=True)
    thread.start()
    return thread, out


def _first_token_event(sim: Sim) -> threading.Event:
    seen = threading.Event()
    sim.on_event = lambda e: seen.set() if e.state == NORMAL else None
    return seen


def _f32(x: float) -> float:
    return ctypes.c_float(x).value


# ---------------------------------------------------------------------------------------------
# Fixtures
# ---------------------------------------------------------------------------------------------


@pytest.fixture(params=ABIS)
def abi(request: pytest.FixtureRequest) -> str:
    return request.param


@pytest.fixture
def make_sim(sim_libraries: dict[str, Path], sim_model: Path):
    """Factory for initialised handles; destroys them all at teardown."""
    made: list[Sim] = []

    def make(abi: str, **init: Any) -> Sim:
        sim = Sim(sim_libraries[abi], abi)
        assert sim.init(sim_model, **init) == 0
        made.append(sim)
        return sim

    yield make
    for sim in made:
        if sim.handle.value:
            sim.lib.rkllm_abort(sim.handle)
            assert sim.destroy() == 0


@pytest.fixture
def sim(make_sim: Any, abi: str) -> Sim:
    return make_sim(abi)


def _only(*abis: str) -> pytest.MarkDecorator:
    return pytest.mark.parametrize("abi", abis)


# ---------------------------------------------------------------------------------------------
# Build, layout, exports
# ---------------------------------------------------------------------------------------------

EXPORTS = {
    1: {
        "rkllm_createDefaultParam",
        "rkllm_init",
        "rkllm_load_lora",
        "rkllm_load_prompt_cache",
        "rkllm_release_prompt_cache",
        "rkllm_destroy",
        "rkllm_run",
        "rkllm_run_async",
        "rkllm_abort",
        "rkllm_is_running",
    },
    2: {"rkllm_clear_kv_cache", "rkllm_set_chat_template"},
    3: {"rkllm_get_kv_cache_size", "rkllm_set_function_tools", "rkllm_set_cross_attn_params"},
    4: set(),
}
ALL_EXPORTS = set().union(*EXPORTS.values())


def test_every_family_compiles_without_warnings_and_checks_layouts(tmp_path: Path) -> None:
    compiler = sim_build.find_compiler()
    for abi, define in (("1.1", "11"), ("1.2.0", "120"), ("1.2", "12"), ("1.3", "13")):
        cmd = [
            *compiler,
            *sim_build._CFLAGS,
            "-Werror",
            f"-DRKLLM_SIM_ABI={define}",
            str(sim_build.SOURCE),
            "-o",
            str(tmp_path / f"{abi}.so"),
        ]
        proc = subprocess.run(cmd, capture_output=True, text=True, check=False)
        assert proc.returncode == 0, proc.stderr
        assert proc.stderr == ""
        # The layout asserts are live on this (LP64) platform, not compiled out.
        pre = subprocess.run(
            [*compiler, "-E", f"-DRKLLM_SIM_ABI={define}", str(sim_build.SOURCE)],
            capture_output=True,
            text=True,
            check=True,
        ).stdout
        size = {"1.1": 200, "1.2.0": 208, "1.2": 208, "1.3": 184}[abi]
        assert f"_Static_assert(sizeof(RKLLMParam) == ({size})" in pre


def test_unknown_abi_is_a_compile_error(tmp_path: Path) -> None:
    compiler = sim_build.find_compiler()
    cmd = [
        *compiler,
        *sim_build._CFLAGS,
        "-DRKLLM_SIM_ABI=14",
        str(sim_build.SOURCE),
        "-o",
        str(tmp_path / "x.so"),
    ]
    proc = subprocess.run(cmd, capture_output=True, text=True, check=False)
    assert proc.returncode != 0
    assert "RKLLM_SIM_ABI must be" in proc.stderr


def test_ctypes_mirror_matches_reference_sizes(abi: str) -> None:
    t = Types(abi)
    f = t.family
    assert ctypes.sizeof(t.Param) == {1: 200, 2: 208, 3: 208, 4: 184}[f]
    assert t.Param.extend_param.offset == {1: 80, 2: 88, 3: 88, 4: 60}[f]
    assert ctypes.sizeof(t.Input) == {1: 32, 2: 32, 3: 64, 4: 160}[f]
    assert ctypes.sizeof(t.Infer) == {1: 24, 2: 32, 3: 32, 4: 40}[f]
    assert ctypes.sizeof(t.Result) == {1: 32, 2: 48, 3: 72, 4: 72}[f]
    assert ctypes.sizeof(t.Ext) == {1: 116, 2: 120, 3: 120, 4: 120}[f]
    assert ctypes.sizeof(t.CallbackStruct) == 48
    assert ctypes.sizeof(t.Sampling) == 36


def test_exports_exactly_the_family_functions(sim_libraries: dict[str, Path], abi: str) -> None:
    lib = ctypes.CDLL(str(sim_libraries[abi]))
    family = FAMILY[abi]
    wanted = set().union(*(EXPORTS[f] for f in range(1, family + 1)))
    for name in ALL_EXPORTS:
        assert hasattr(lib, name) == (name in wanted), name
    assert hasattr(lib, "rkllm_sim_inspect")
    for internal in ("sim_run", "sim_stream", "json_str"):
        assert not hasattr(lib, internal)


def test_version_string_is_embedded(sim_libraries: dict[str, Path], abi: str) -> None:
    assert f"rkllm-runtime version: {VERSION[abi]}".encode() in sim_libraries[abi].read_bytes()


def test_version_string_can_be_left_out(
    sim_libraries: dict[str, Path], sim_cache: Path, sim_model: Path, capfd: pytest.CaptureFixture[str]
) -> None:
    bare = build_simulator("1.3", cache_dir=sim_cache, defines=("RKLLM_SIM_NO_VERSION",))
    assert bare != sim_libraries["1.3"]
    assert b"rkllm-runtime version" not in bare.read_bytes()
    sim = Sim(bare, "1.3")
    assert sim.init(sim_model) == 0
    assert "rkllm-runtime version" not in capfd.readouterr().err
    assert sim.run(b"still works") == 0
    assert b"".join(sim.texts()).decode() == expected_answer("still works")
    assert sim.destroy() == 0


def test_init_logs_the_version_like_the_real_library(
    make_sim: Any, abi: str, capfd: pytest.CaptureFixture[str]
) -> None:
    make_sim(abi)
    assert f"I rkllm: rkllm-runtime version: {VERSION[abi]}" in capfd.readouterr().err


# ---------------------------------------------------------------------------------------------
# Defaults and init
# ---------------------------------------------------------------------------------------------


def test_create_default_param_returns_documented_defaults(sim_libraries: dict[str, Path], abi: str) -> None:
    p = Sim(sim_libraries[abi], abi).lib.rkllm_createDefaultParam()
    f = FAMILY[abi]
    assert p.model_path is None
    assert (p.max_context_len, p.max_new_tokens, p.top_k, p.mirostat) == (512, -1, 40, 0)
    assert (p.top_p, p.temperature, p.repeat_penalty) == (_f32(0.9), _f32(0.8), _f32(1.1))
    assert (p.frequency_penalty, p.presence_penalty) == (0.0, 0.0)
    assert (p.mirostat_tau, p.mirostat_eta) == (5.0, _f32(0.1))
    assert p.skip_special_token is True
    assert p.is_async is False
    e = p.extend_param
    assert e.base_domain_id == 0
    assert bytes(e.reserved) == bytes(len(e.reserved))
    if f >= 2:
        assert p.n_keep == -1
        assert (e.embed_flash, e.enabled_cpus_num, e.enabled_cpus_mask) == (0, 4, 0xF0)
    if f >= 3:
        assert (e.n_batch, e.use_cross_attn) == (1, 0)
    if f == 4:
        assert p.ignore_eos_token is False
    else:
        assert (p.img_start, p.img_end, p.img_content) == (None, None, None)


def test_init_fails_on_missing_model(
    sim_libraries: dict[str, Path], abi: str, tmp_path: Path, capfd: pytest.CaptureFixture[str]
) -> None:
    sim = Sim(sim_libraries[abi], abi)
    sim.handle = ctypes.c_void_p(1234)
    assert sim.init(tmp_path / "missing.rkllm") == -1
    assert sim.handle.value is None
    assert "E rkllm: failed to open model file" in capfd.readouterr().err
    assert sim.init(None) == -1
    empty = tmp_path / "empty.rkllm"
    empty.write_bytes(b"")
    assert sim.init(empty) == -1


def test_init_fails_when_context_exceeds_the_model_limit(
    sim_libraries: dict[str, Path],
    sim_model: Path,
    abi: str,
    monkeypatch: pytest.MonkeyPatch,
    capfd: pytest.CaptureFixture[str],
) -> None:
    sim = Sim(sim_libraries[abi], abi)
    assert sim.init(sim_model, max_context_len=8192) == -1
    assert (
        "E rkllm: max_context[8192] must be less than the model's max_context_limit[4096]"
        in capfd.readouterr().err
    )
    monkeypatch.setenv("RKLLM_SIM_MODEL_MAX_CONTEXT", "16384")
    assert sim.init(sim_model, max_context_len=8192) == 0
    assert sim.inspect()["init"]["max_context_len"] == 8192
    assert sim.destroy() == 0


def test_init_fails_on_request(
    sim_libraries: dict[str, Path],
    sim_model: Path,
    abi: str,
    monkeypatch: pytest.MonkeyPatch,
    capfd: pytest.CaptureFixture[str],
) -> None:
    monkeypatch.setenv("RKLLM_SIM_FAIL", "init")
    assert Sim(sim_libraries[abi], abi).init(sim_model) == -1
    err = capfd.readouterr().err
    assert [line for line in err.splitlines() if line.startswith("E rkllm:")] == [
        "E rkllm: simulated init failure (RKLLM_SIM_FAIL=init)"
    ]


def test_destroy_rejects_a_null_handle(sim_libraries: dict[str, Path], abi: str) -> None:
    assert Sim(sim_libraries[abi], abi).lib.rkllm_destroy(None) == -1


# ---------------------------------------------------------------------------------------------
# The answer and how it streams
# ---------------------------------------------------------------------------------------------

PROMPTS = [
    "Hello there",
    "",
    "Grüße aus Köln — 東京 🚀 and a prompt that is clearly longer than sixty characters in total",
    'quotes " and \\ backslashes\nnew line',
]


@pytest.mark.parametrize("prompt", PROMPTS)
def test_answer_equals_expected_answer(sim: Sim, prompt: str) -> None:
    assert sim.run(prompt.encode()) == 0
    assert b"".join(sim.texts()).decode() == expected_answer(prompt)
    assert sim.texts() == expected_tokens(prompt)
    assert sim.states()[-1] == FINISH
    assert sim.events[-1].text is None
    assert sim.states().count(FINISH) == 1
    assert ERROR not in sim.states()


def _incomplete_tail(chunk: bytes) -> int:
    """Length of the character a chunk leaves unfinished (0 when it ends on a boundary)."""
    for back in range(1, min(4, len(chunk)) + 1):
        byte = chunk[-back]
        if byte & 0xC0 == 0x80:
            continue
        need = 2 if byte >> 5 == 0b110 else 3 if byte >> 4 == 0b1110 else 4 if byte >> 3 == 0b11110 else 1
        return need if need > back else 0
    return 0


def test_multimodal_prompt_is_answered(sim: Sim) -> None:
    assert sim.run(b"<image> what is this", multimodal=True) == 0
    assert b"".join(sim.texts()).decode() == expected_answer("<image> what is this")
    run = sim.inspect()["run"]
    assert (run["input_type"], run["prompt"]) == (3, "<image> what is this")


def test_null_prompt_is_an_error(sim: Sim) -> None:
    assert sim.run(None) == -1
    assert sim.states() == [ERROR]
    assert sim.inspect()["run"]["prompt"] is None


def test_multibyte_characters_are_split_across_callbacks(sim: Sim) -> None:
    assert sim.run(b"hi") == 0
    split = {_incomplete_tail(chunk) for chunk in sim.texts()}
    assert {2, 3, 4} <= split
    with pytest.raises(UnicodeDecodeError):
        sim.texts()[4].decode()


def test_1_1_sends_waiting_after_an_incomplete_character(sim: Sim) -> None:
    assert sim.run(b"hi") == 0
    expected: list[tuple[int, bytes | None]] = []
    sent = b""
    for chunk in expected_tokens("hi"):
        expected.append((NORMAL, chunk))
        sent += chunk
        if sim.family == 1 and _incomplete_tail(sent):
            expected.append((WAITING, None))
    expected.append((FINISH, None))
    assert [(e.state, e.text) for e in sim.events] == expected
    assert (WAITING in sim.states()) == (sim.family == 1)


def test_finish_carries_perf_on_1_2_1_and_later(make_sim: Any) -> None:
    for abi in ("1.2", "1.3"):
        sim = make_sim(abi)
        prompt = "x" * 37
        assert sim.run(prompt.encode()) == 0
        perf = sim.events[-1].perf
        assert perf is not None
        assert perf["prefill_tokens"] == math.ceil(37 / 4)
        assert perf["generate_tokens"] == len(expected_tokens(prompt))
        assert perf["memory_usage_mb"] > 0


def test_callbacks_run_on_the_caller_thread_by_default(sim: Sim, monkeypatch: pytest.MonkeyPatch) -> None:
    assert sim.run(b"a") == 0
    assert {e.thread for e in sim.events} == {threading.get_ident()}
    assert sim.inspect()["run"]["callback_thread"] is False

    sim.events.clear()
    monkeypatch.setenv("RKLLM_SIM_CALLBACK_THREAD", "1")
    assert sim.run(b"a") == 0
    threads = {e.thread for e in sim.events}
    assert len(threads) == 1
    assert threading.get_ident() not in threads
    assert b"".join(sim.texts()).decode() == expected_answer("a")
    assert sim.inspect()["run"]["callback_thread"] is True


def test_userdata_reaches_the_callback(make_sim: Any, abi: str) -> None:
    sim = make_sim(abi)
    assert sim.run(b"a", userdata=0x1234) == 0
    assert {e.userdata for e in sim.events} == {0x1234}
    assert sim.inspect()["run"]["userdata"] is True
    sim.events.clear()
    assert sim.run(b"a") == 0
    assert {e.userdata for e in sim.events} == {None}
    assert sim.inspect()["run"]["userdata"] is False


def test_1_3_falls_back_to_result_userdata(sim_libraries: dict[str, Path], sim_model: Path) -> None:
    sim = Sim(sim_libraries["1.3"], "1.3")
    p = sim.lib.rkllm_createDefaultParam()
    p.model_path = str(sim_model).encode()
    callbacks = sim.t.CallbackStruct(result_callback=sim._callback, result_userdata=0x77)
    assert sim.lib.rkllm_init(ctypes.byref(sim.handle), ctypes.byref(p), ctypes.byref(callbacks)) == 0
    assert sim.run(b"a") == 0
    assert {e.userdata for e in sim.events} == {0x77}
    assert sim.inspect()["init"]["callback"] == {
        "result_callback": True,
        "result_userdata": True,
        "tokenizer_callback": False,
        "embed_callback": False,
    }
    assert sim.destroy() == 0


def test_speed_settings_slow_the_run_down(make_sim: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    # Lower bounds only: a sleep never ends early, so these cannot flake.
    sim = make_sim("1.2")
    monkeypatch.setenv("RKLLM_SIM_DECODE_TPS", "500")
    monkeypatch.setenv("RKLLM_SIM_PREFILL_TPS", "1000")
    assert sim.run(b"[sim:tokens=4] and some prompt") == 0
    perf = sim.events[-1].perf
    assert perf is not None
    assert perf["generate_tokens"] == 4
    assert perf["generate_time_ms"] >= 4 * 2.0
    assert perf["prefill_time_ms"] >= perf["prefill_tokens"] * 1.0

    sim.events.clear()
    monkeypatch.delenv("RKLLM_SIM_DECODE_TPS")
    monkeypatch.delenv("RKLLM_SIM_PREFILL_TPS")
    monkeypatch.setenv("RKLLM_SIM_SPEED", "rk3588")
    assert sim.run(b"[sim:tokens=1]") == 0
    perf = sim.events[-1].perf
    assert perf is not None
    assert perf["generate_time_ms"] >= 1000 / 16.69
    assert perf["prefill_time_ms"] >= perf["prefill_tokens"] * 378.31 / 128


# ---------------------------------------------------------------------------------------------
# Directives and failures
# ---------------------------------------------------------------------------------------------


def test_tokens_directive_gives_exactly_n_words(sim: Sim) -> None:
    assert sim.run(b"[sim:tokens=5] hello") == 0
    assert sim.texts() == [b"tok0", b" tok1", b" tok2", b" tok3", b" tok4"]
    assert sim.states()[-1] == FINISH
    assert sim.run(b"[sim:tokens=0]") == 0


def test_error_directive_fails_the_run(sim: Sim, capfd: pytest.CaptureFixture[str]) -> None:
    assert sim.run(b"please [sim:error]") == -1
    assert sim.states() == [ERROR]
    assert sim.events[0].text is None
    assert "E rkllm: simulated run error" in capfd.readouterr().err


def test_error_after_directive_streams_then_fails(sim: Sim) -> None:
    assert sim.run(b"[sim:error_after=2] x") == -1
    assert len(sim.texts()) == 2
    assert sim.states()[-1] == ERROR
    assert FINISH not in sim.states()


def test_fail_run_env_fails_every_run(sim: Sim, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("RKLLM_SIM_FAIL", "run")
    assert sim.run(b"hello") == -1
    assert sim.states() == [ERROR]
    monkeypatch.delenv("RKLLM_SIM_FAIL")
    assert sim.run(b"hello") == 0


def test_delay_directive_keeps_the_answer(sim: Sim) -> None:
    prompt = "[sim:delay_ms=1] hi"
    assert sim.run(prompt.encode()) == 0
    assert b"".join(sim.texts()).decode() == expected_answer(prompt)


CRASH_SCRIPT = """
import sys
sys.path.insert(0, {test_dir!r})
import test_simulator as t
sim = t.Sim({lib!r}, {abi!r})
sim.on_event = lambda e: print("event", e.state, flush=True)
assert sim.init(t.Path({model!r})) == 0
sim.run({prompt!r})
print("survived", flush=True)
"""


@pytest.mark.parametrize(
    ("prompt", "env"), [(b"[sim:crash] boom", {}), (b"boom", {"RKLLM_SIM_FAIL": "crash"})]
)
def test_crash_kills_the_process_after_two_tokens(
    sim_libraries: dict[str, Path],
    sim_model: Path,
    prompt: bytes,
    env: dict[str, str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    script = CRASH_SCRIPT.format(
        test_dir=str(Path(__file__).parent),
        lib=str(sim_libraries["1.2"]),
        abi="1.2",
        model=str(sim_model),
        prompt=prompt,
    )
    proc = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=60, check=False
    )
    assert proc.returncode == -signal.SIGSEGV, proc.stderr
    assert proc.stdout.splitlines() == [f"event {NORMAL}"] * 2


def test_max_new_tokens_from_init_caps_the_answer(make_sim: Any, abi: str) -> None:
    sim = make_sim(abi, max_new_tokens=3)
    assert sim.run(b"hello") == 0
    assert sim.texts() == expected_tokens("hello")[:3]
    assert sim.states()[-1] == FINISH


def test_1_3_per_run_max_new_tokens_overrides_init(make_sim: Any) -> None:
    sim = make_sim("1.3", max_new_tokens=5)
    assert sim.run(b"[sim:tokens=9]", max_new_tokens=2) == 0
    assert len(sim.texts()) == 2
    assert sim.inspect()["run"]["max_new_tokens"] == 2
    sim.events.clear()
    assert sim.run(b"[sim:tokens=9]", max_new_tokens=0) == 0
    assert len(sim.texts()) == 5


def test_prompt_longer_than_context_is_an_error(
    make_sim: Any, abi: str, capfd: pytest.CaptureFixture[str]
) -> None:
    sim = make_sim(abi, max_context_len=16)
    assert sim.run(b"y" * 65) == -1  # 17 tokens
    assert sim.states() == [ERROR]
    err = capfd.readouterr().err
    assert "E rkllm: prompt tokens(17) is greater than max context(16)" in err
    assert sim.run(b"y" * 56) == 0  # 14 tokens: 2 left for the answer
    assert len(sim.texts()) == 2
    assert sim.states()[-1] == FINISH


# ---------------------------------------------------------------------------------------------
# Abort, pause, concurrency, handles
# ---------------------------------------------------------------------------------------------


def test_abort_stops_a_hanging_run_without_finish(sim: Sim) -> None:
    first = _first_token_event(sim)
    thread, out = _run_in_thread(sim, b"[sim:hang] wait")
    assert first.wait(JOIN_TIMEOUT_S)
    running = 1 if sim.family == 4 else 0
    assert sim.lib.rkllm_is_running(sim.handle) == running
    assert sim.lib.rkllm_abort(sim.handle) == 0
    thread.join(JOIN_TIMEOUT_S)
    assert not thread.is_alive()
    assert out["ret"] == 0
    assert len(sim.texts()) == 1
    assert FINISH not in sim.states()
    assert ERROR not in sim.states()
    run = sim.inspect()["run"]
    assert (run["aborted"], run["finished"], run["generated_tokens"]) == (True, False, 1)
    assert sim.inspect()["aborts"] == 1
    assert sim.lib.rkllm_is_running(sim.handle) == 1 - running


def test_abort_from_inside_the_callback_ends_the_run(sim: Sim) -> None:
    def on_event(event: Event) -> None:
        if len(sim.texts()) == 2 and event.state == NORMAL:
            assert sim.lib.rkllm_abort(sim.handle) == 0

    sim.on_event = on_event
    assert sim.run(b"[sim:tokens=5]") == 0
    assert sim.texts() == [b"tok0", b" tok1"]
    assert FINISH not in sim.states()
    assert sim.inspect()["run"]["aborted"] is True

    # Even when the abort comes with the last token, no FINISH follows.
    sim.events.clear()
    assert sim.run(b"[sim:tokens=2]") == 0
    assert sim.texts() == [b"tok0", b" tok1"]
    assert FINISH not in sim.states()


def test_abort_when_idle_is_harmless(sim: Sim) -> None:
    assert sim.lib.rkllm_abort(sim.handle) == 0
    assert sim.run(b"hi") == 0
    assert sim.states()[-1] == FINISH
    insp = sim.inspect()
    assert insp["run"]["aborted"] is False
    assert insp["aborts"] == 1


@_only("1.2", "1.3")
def test_callback_returning_1_pauses(sim: Sim) -> None:
    sim.pause_after = 2
    assert sim.run(b"[sim:tokens=6]") == 0
    assert sim.texts() == [b"tok0", b" tok1"]
    assert FINISH not in sim.states()
    run = sim.inspect()["run"]
    assert (run["paused"], run["aborted"], run["finished"]) == (True, False, False)


def test_runs_are_not_serialized_by_the_simulator(sim: Sim) -> None:
    assert sim.run(b"one") == 0
    assert sim.inspect()["max_concurrent_runs"] == 1
    first = _first_token_event(sim)
    thread, out = _run_in_thread(sim, b"[sim:hang]")
    assert first.wait(JOIN_TIMEOUT_S)
    sim.on_event = None
    assert sim.run(b"[sim:tokens=2] second") == 0
    insp = sim.inspect()
    assert insp["max_concurrent_runs"] == 2
    assert insp["running"] == 1
    assert sim.lib.rkllm_abort(sim.handle) == 0
    thread.join(JOIN_TIMEOUT_S)
    assert out["ret"] == 0
    assert sim.inspect()["running"] == 0


def test_handles_are_independent(make_sim: Any, abi: str) -> None:
    a, b = make_sim(abi), make_sim(abi)
    first = _first_token_event(a)
    thread, out = _run_in_thread(a, b"[sim:hang] on a")
    assert first.wait(JOIN_TIMEOUT_S)
    assert b.run(b"on b") == 0  # a's hang and abort flag do not touch b
    assert b.states()[-1] == FINISH
    assert a.lib.rkllm_abort(a.handle) == 0
    thread.join(JOIN_TIMEOUT_S)
    assert out["ret"] == 0
    assert a.inspect()["run"]["prompt"] == "[sim:hang] on a"
    assert b.inspect()["run"]["prompt"] == "on b"
    assert (a.inspect()["aborts"], b.inspect()["aborts"]) == (1, 0)
    assert b.inspect()["max_concurrent_runs"] == 1


def test_run_async_streams_from_another_thread(sim: Sim) -> None:
    done = threading.Event()
    sim.on_event = lambda e: done.set() if e.state == FINISH else None
    assert sim.run(b"async", use_async=True) == 0
    assert done.wait(JOIN_TIMEOUT_S)
    assert b"".join(sim.texts()).decode() == expected_answer("async")
    assert threading.get_ident() not in {e.thread for e in sim.events}


# ---------------------------------------------------------------------------------------------
# KV cache, templates and the other functions
# ---------------------------------------------------------------------------------------------


@_only("1.2.0", "1.2", "1.3")
def test_keep_history_and_clear_kv_cache(sim: Sim) -> None:
    assert sim.run(b"first", keep_history=1) == 0
    assert sim.run(b"second", keep_history=1) == 0
    assert sim.inspect()["history"] == [
        "first",
        expected_answer("first"),
        "second",
        expected_answer("second"),
    ]
    assert sim.inspect()["run"]["keep_history"] == 1
    if sim.family >= 3:
        size = ctypes.c_int(-1)
        assert sim.lib.rkllm_get_kv_cache_size(sim.handle, ctypes.byref(size)) == 0
        assert size.value > 0
        start, end = ctypes.c_int(3), ctypes.c_int(9)
        assert sim.lib.rkllm_clear_kv_cache(sim.handle, 1, ctypes.byref(start), ctypes.byref(end)) == 0
        expected_clear = {"count": 1, "keep_system_prompt": 1, "start_pos": 3, "end_pos": 9}
    else:
        assert sim.lib.rkllm_clear_kv_cache(sim.handle, 1) == 0
        expected_clear = {"count": 1, "keep_system_prompt": 1}
    insp = sim.inspect()
    assert insp["history"] == []
    assert insp["clear_kv_cache"] == expected_clear
    if sim.family >= 3:
        assert sim.lib.rkllm_clear_kv_cache(sim.handle, 0, None, None) == 0
        assert sim.inspect()["clear_kv_cache"] == {
            "count": 2,
            "keep_system_prompt": 0,
            "start_pos": None,
            "end_pos": None,
        }

    assert sim.run(b"kept", keep_history=1) == 0
    assert sim.run(b"alone", keep_history=0) == 0
    assert sim.inspect()["history"] == []


@_only("1.2.0", "1.2", "1.3")
def test_failed_run_without_keep_history_empties_the_cache(sim: Sim) -> None:
    assert sim.run(b"first", keep_history=1) == 0
    assert sim.run(b"[sim:error]", keep_history=1) == -1
    assert sim.inspect()["history"] == ["first", expected_answer("first")]
    assert sim.run(b"[sim:error]", keep_history=0) == -1
    assert sim.inspect()["history"] == []


@_only("1.2.0", "1.2", "1.3")
def test_aborted_run_keeps_its_partial_answer_in_history(sim: Sim) -> None:
    first = _first_token_event(sim)
    thread, _ = _run_in_thread(sim, b"[sim:hang] h", keep_history=1)
    assert first.wait(JOIN_TIMEOUT_S)
    sim.lib.rkllm_abort(sim.handle)
    thread.join(JOIN_TIMEOUT_S)
    assert sim.inspect()["history"] == ["[sim:hang] h", expected_answer("[sim:hang] h")[:3]]


TRICKY = 'sys "quoted" \\ back\nnew\ttab \x01 ctl — 你好 🙂'


@_only("1.2.0", "1.2", "1.3")
def test_set_chat_template_is_recorded_with_escaping(sim: Sim) -> None:
    assert sim.inspect()["chat_template"] is None
    assert sim.lib.rkllm_set_chat_template(sim.handle, TRICKY.encode(), b"<u>", None) == 0
    assert sim.inspect()["chat_template"] == {
        "system_prompt": TRICKY,
        "prompt_prefix": "<u>",
        "prompt_postfix": None,
    }


@_only("1.2", "1.3")
def test_function_tools_and_cross_attn_are_recorded(sim: Sim) -> None:
    assert sim.lib.rkllm_set_function_tools(sim.handle, b"sys", b'[{"name": "x"}]', b"<tool>") == 0
    assert sim.lib.rkllm_set_cross_attn_params(sim.handle, None) == 0
    insp = sim.inspect()
    assert insp["function_tools"] == {
        "system_prompt": "sys",
        "tools": '[{"name": "x"}]',
        "tool_response_str": "<tool>",
        "calls": 1,
    }
    assert insp["cross_attn_params"] is False


def test_prompt_cache_and_lora_functions(sim: Sim, tmp_path: Path) -> None:
    assert sim.lib.rkllm_load_prompt_cache(sim.handle, str(tmp_path / "none.bin").encode()) == -1
    cache = tmp_path / "cache.bin"
    cache.write_bytes(b"x")
    assert sim.lib.rkllm_load_prompt_cache(sim.handle, str(cache).encode()) == 0
    assert sim.inspect()["prompt_cache_loaded"] is True
    assert sim.lib.rkllm_release_prompt_cache(sim.handle) == 0
    assert sim.inspect()["prompt_cache_loaded"] is False
    adapter = (ctypes.c_char_p * 3)(b"/x/lora.rkllm", b"lora", None)
    assert sim.lib.rkllm_load_lora(sim.handle, adapter) == 0
    assert sim.inspect()["lora_loaded"] == 1


# ---------------------------------------------------------------------------------------------
# Inspection
# ---------------------------------------------------------------------------------------------


def test_inspect_reports_init_fields_as_read(make_sim: Any, abi: str, sim_model: Path) -> None:
    f = FAMILY[abi]
    fields: dict[str, Any] = {
        "max_context_len": 1024,
        "max_new_tokens": 77,
        "top_k": 7,
        "top_p": 0.5,
        "temperature": 0.25,
        "repeat_penalty": 1.5,
        "frequency_penalty": 0.125,
        "presence_penalty": 0.75,
        "mirostat": 2,
        "mirostat_tau": 4.5,
        "mirostat_eta": 0.9,
        "skip_special_token": False,
    }
    extend: dict[str, int] = {"base_domain_id": 3}
    if f >= 2:
        fields["n_keep"] = 11
        extend |= {"embed_flash": 1, "enabled_cpus_num": 2, "enabled_cpus_mask": 0x30}
    if f >= 3:
        extend |= {"n_batch": 1, "use_cross_attn": 0}
    if f == 4:
        fields["ignore_eos_token"] = True
    else:
        fields |= {"img_start": b"<img>", "img_end": b"</img>", "img_content": None}
    sim = make_sim(abi, extend=extend, **fields)
    insp = sim.inspect()
    assert (insp["abi"], insp["version"]) == (abi, VERSION[abi])
    init = insp["init"]
    expected: dict[str, Any] = {"model_path": str(sim_model), "is_async": False}
    for name, value in fields.items():
        expected[name] = value.decode() if isinstance(value, bytes) else value
    # "%.9g" round-trips float32: 0.9 arrives as "0.899999976", the float32 nearest to 0.9.
    expected["mirostat_eta"] = init["mirostat_eta"]
    assert _f32(init["mirostat_eta"]) == _f32(0.9)
    assert init["mirostat_eta"] != 0.9
    assert {k: init[k] for k in expected} == expected
    assert init["extend_param"] == {**extend, "reserved_all_zero": True}
    assert ("n_keep" in init) == (f >= 2)
    assert ("ignore_eos_token" in init) == (f == 4)
    assert ("img_start" in init) == (f < 4)


def test_inspect_reports_the_run_as_read(make_sim: Any, abi: str) -> None:
    sim = make_sim(abi)
    assert sim.inspect()["run"] == {"count": 0}
    sampling = {
        "top_k": 5,
        "top_p": 0.5,
        "temperature": 0.25,
        "repeat_penalty": 1.5,
        "frequency_penalty": 0.0,
        "presence_penalty": 0.5,
        "mirostat": 1,
        "mirostat_tau": 3.0,
        "mirostat_eta": 0.125,
    }
    kwargs: dict[str, Any] = {"keep_history": 1, "role": b"tool", "enable_thinking": True}
    if sim.family == 4:
        kwargs |= {"sampling": sampling, "max_new_tokens": 4}
    assert sim.run(b"ask \xff me", **kwargs) == 0  # invalid UTF-8 must still give valid JSON
    run = sim.inspect()["run"]
    assert run["count"] == 1
    assert run["prompt"] == "ask \ufffd me"
    assert (run["input_type"], run["mode"], run["infer_params"]) == (0, 0, True)
    assert (run["lora_params"], run["prompt_cache_params"]) == (False, False)
    assert ("keep_history" in run) == (sim.family >= 2)
    if sim.family >= 2:
        assert run["keep_history"] == 1
    if sim.family >= 3:
        assert (run["role"], run["enable_thinking"]) == ("tool", True)
    else:
        assert "role" not in run
    if sim.family == 4:
        assert run["sampling"] == sampling
        assert run["max_new_tokens"] == 4
        assert run["generated_tokens"] == 4
    else:
        assert "sampling" not in run
    assert (run["aborted"], run["paused"], run["finished"], run["ret"]) == (False, False, True, 0)


@_only("1.3")
def test_inspect_sampling_is_null_without_sampling_params(sim: Sim) -> None:
    assert sim.run(b"x") == 0
    assert sim.inspect()["run"]["sampling"] is None


def test_inspect_top_level_keys(sim: Sim) -> None:
    insp = sim.inspect()
    keys = {
        "abi",
        "version",
        "init",
        "run",
        "chat_template",
        "clear_kv_cache",
        "aborts",
        "history",
        "max_concurrent_runs",
    }
    assert keys <= set(insp)
    assert insp["max_concurrent_runs"] == 0
    assert insp["history"] == []


# ---------------------------------------------------------------------------------------------
# build.py
# ---------------------------------------------------------------------------------------------


def test_build_is_cached_and_rebuilt_when_the_source_changes(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    source = tmp_path / "rkllm_sim.c"
    shutil.copyfile(sim_build.SOURCE, source)
    monkeypatch.setattr(sim_build, "SOURCE", source)
    first = build_simulator("1.2", cache_dir=tmp_path / "cache")
    stamp = first.stat().st_mtime_ns
    assert build_simulator("1.2", cache_dir=tmp_path / "cache") == first
    assert first.stat().st_mtime_ns == stamp
    assert first.parent == tmp_path / "cache" / "sim"

    source.write_text(source.read_text() + "\n/* changed */\n")
    second = build_simulator("1.2", cache_dir=tmp_path / "cache")
    assert second != first
    assert second.is_file()
    assert not list((tmp_path / "cache" / "sim").glob(".build-*"))


def test_library_name_depends_on_every_input() -> None:
    base = sim_build.library_name(b"src", "1.2", (), ["/usr/bin/cc"])
    assert base.startswith("librkllmrt-sim-1.2-")
    assert base.endswith(".so")
    others = {
        sim_build.library_name(b"src2", "1.2", (), ["/usr/bin/cc"]),
        sim_build.library_name(b"src", "1.3", (), ["/usr/bin/cc"]),
        sim_build.library_name(b"src", "1.2", ("RKLLM_SIM_NO_VERSION",), ["/usr/bin/cc"]),
        sim_build.library_name(b"src", "1.2", (), ["/usr/bin/clang"]),
    }
    assert base not in others
    assert len(others) == 4


def test_concurrent_builds_agree(tmp_path: Path) -> None:
    results: list[Path] = []
    threads = [
        threading.Thread(target=lambda: results.append(build_simulator("1.1", cache_dir=tmp_path)))
        for _ in range(3)
    ]
    for t in threads:
        t.start()
    for t in threads:
        t.join(JOIN_TIMEOUT_S)
    assert len(results) == 3
    assert len(set(results)) == 1
    assert hasattr(ctypes.CDLL(str(results[0])), "rkllm_init")
    assert [p.name for p in (tmp_path / "sim").iterdir()] == [results[0].name]


def test_default_cache_dir_follows_the_environment(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("RKLLM_MQTT_CACHE", str(tmp_path / "explicit"))
    assert sim_build.default_cache_dir() == tmp_path / "explicit"
    monkeypatch.delenv("RKLLM_MQTT_CACHE")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert sim_build.default_cache_dir() == tmp_path / "xdg" / "rkllm-mqtt"
    monkeypatch.delenv("XDG_CACHE_HOME")
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    assert sim_build.default_cache_dir() == tmp_path / "home" / ".cache" / "rkllm-mqtt"


def test_missing_compiler_is_a_clear_error(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CC", str(tmp_path / "no-such-cc"))
    with pytest.raises(SimulatorBuildError, match="install gcc or set CC"):
        build_simulator("1.2", cache_dir=tmp_path)
    monkeypatch.delenv("CC")
    monkeypatch.setenv("PATH", str(tmp_path))
    with pytest.raises(SimulatorBuildError, match=r"no C compiler found .*set CC"):
        build_simulator("1.2", cache_dir=tmp_path)


def test_compile_failure_carries_the_compiler_output(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    broken = tmp_path / "rkllm_sim.c"
    broken.write_text("int this_is_not_c(;\n")
    monkeypatch.setattr(sim_build, "SOURCE", broken)
    with pytest.raises(SimulatorBuildError, match=r"(?s)failed with exit code.*error") as info:
        build_simulator("1.3", cache_dir=tmp_path)
    assert "this_is_not_c" in str(info.value)
    assert not list((tmp_path / "sim").glob("*.so"))


def test_unknown_abi_and_bad_defines_are_rejected(tmp_path: Path) -> None:
    with pytest.raises(SimulatorBuildError, match="unknown simulator ABI"):
        build_simulator("1.0", cache_dir=tmp_path)
    with pytest.raises(SimulatorBuildError, match="invalid simulator define"):
        build_simulator("1.2", cache_dir=tmp_path, defines=("-o/etc/x",))


def test_sim_model_file_is_written_once(tmp_path: Path) -> None:
    path = sim_model_file(tmp_path)
    stamp = path.stat().st_mtime_ns
    assert path == tmp_path / "sim" / "model.rkllm"
    assert path.stat().st_size > 0
    assert sim_model_file(tmp_path) == path
    assert path.stat().st_mtime_ns == stamp


# --------------------------------------------------------------------------------------------- #
# Function calling: where each family's model sees the tools, and the split call it answers with

SIM_TOOLS = json.dumps([
    {"type": "function", "function": {"name": "intent__HassTurnOn", "parameters": {
        "type": "object", "properties": {"name": {"type": "string"}}}}},
    {"type": "function", "function": {"name": "GetTime", "parameters": {"type": "object"}}},
])
HERMES_BLOCK = "# Tools\n<tools>\n" + "\n".join(
    json.dumps(t) for t in json.loads(SIM_TOOLS)) + "\n</tools>\n"


def _chunks(text: str) -> list[bytes]:
    data = text.encode()
    return [data[i:i + 3] for i in range(0, len(data), 3)]


@_only("1.2", "1.3")
def test_set_function_tools_makes_turn_on_a_split_tool_call(sim: Sim) -> None:
    assert sim.lib.rkllm_set_function_tools(sim.handle, b"sys", SIM_TOOLS.encode(),
                                            b"tool_response") == 0
    assert sim.run(b"Please turn on the Kitchen Light!") == 0
    call = expected_tool_call("intent__HassTurnOn", "Kitchen Light")
    assert sim.texts() == _chunks(call) and len(sim.texts()) > 10
    assert sim.inspect()["run"]["tool_call"] == "intent__HassTurnOn"
    sim.events.clear()
    assert sim.run(b"What does GetTime say? [sim:tool_xml]") == 0  # named: no arguments
    assert b"".join(sim.texts()).decode() == expected_tool_call("GetTime", xml=True)
    sim.events.clear()
    assert sim.run(b'[{"success": true}]', role=b"tool") == 0  # a result: answered in text
    assert b"".join(sim.texts()).decode() == expected_answer('[{"success": true}]')
    assert sim.inspect()["run"]["tool_call"] is None


@_only("1.2", "1.3")
def test_on_1_2_1_tools_in_the_text_or_an_empty_list_are_no_tools(sim: Sim) -> None:
    assert sim.run(f"{HERMES_BLOCK}turn on the lamp".encode()) == 0
    assert sim.inspect()["run"]["tool_call"] is None
    assert sim.lib.rkllm_set_function_tools(sim.handle, b"", b"[]", b"tool_response") == 0
    sim.events.clear()
    assert sim.run(b"turn on the lamp") == 0
    assert b"".join(sim.texts()).decode() == expected_answer("turn on the lamp")


@_only("1.1", "1.2.0")
def test_before_1_2_1_the_tools_are_read_from_the_text(sim: Sim) -> None:
    assert sim.run(f"{HERMES_BLOCK}turn off the porch. [sim:echo]".encode()) == 0
    assert sim.inspect()["run"]["tool_call"] is None  # [sim:echo]
    sim.events.clear()
    assert sim.run(f"{HERMES_BLOCK}turn on the porch.".encode()) == 0
    assert b"".join(sim.texts()).decode() == expected_tool_call("intent__HassTurnOn", "porch")
    sim.events.clear()
    reply = f"{HERMES_BLOCK}User: turn on the porch\n<tool_response>\nok\n</tool_response>"
    assert sim.run(reply.encode()) == 0  # ends in a result: answered in text
    assert sim.inspect()["run"]["tool_call"] is None


@_only("1.2.0")
def test_1_2_0_reads_the_tools_from_the_template_and_the_kv_cache(sim: Sim) -> None:
    assert sim.lib.rkllm_set_chat_template(sim.handle, HERMES_BLOCK.encode(), b"<u>", b"</u>") == 0
    assert sim.run(b"turn on the hall") == 0
    assert sim.inspect()["run"]["tool_call"] == "intent__HassTurnOn"
    assert sim.lib.rkllm_set_chat_template(sim.handle, b"", b"<u>", b"</u>") == 0
    assert sim.run(f"{HERMES_BLOCK}hello".encode(), keep_history=1) == 0
    sim.events.clear()
    assert sim.run(b"turn on the hall", keep_history=1) == 0  # the tools are in the cache
    assert b"".join(sim.texts()).decode() == expected_tool_call("intent__HassTurnOn", "hall")
