"""The configuration contract: TOML keys, environment overrides, errors that name the key."""

from __future__ import annotations

import tomllib
from pathlib import Path

import pytest

from rkllm_mqtt.config import RuntimeSettings, Settings, load_config
from rkllm_mqtt.errors import ConfigError

EXAMPLE = Path(__file__).resolve().parents[1] / "config" / "rkllm-mqtt.example.toml"


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "config.toml"
    path.write_text(text, encoding="utf-8")
    return path


def test_example_config_loads_and_documents_every_key() -> None:
    settings = load_config(EXAMPLE)
    assert settings.runtime.max_context_len == 4096
    text = EXAMPLE.read_text(encoding="utf-8")
    for section, model in Settings.model_fields.items():
        assert f"[{section}]" in text
        for key in model.annotation.model_fields:
            assert f"{key} =" in text, f"{section}.{key} is not documented in the example"


def test_example_is_valid_toml_with_only_known_keys() -> None:
    data = tomllib.loads(EXAMPLE.read_text(encoding="utf-8"))
    assert set(data) <= set(Settings.model_fields)


def test_environment_overrides_toml_key_by_key(tmp_path: Path, monkeypatch) -> None:
    path = write(tmp_path, '[runtime]\nmodel = "/m.rkllm"\ntop_k = 7\n[mqtt]\nport = 1999\n')
    monkeypatch.setenv("RKLLM_MQTT_RUNTIME__TOP_K", "9")
    monkeypatch.setenv("RKLLM_MQTT_MQTT__HOST", "broker.lan")
    settings = load_config(path)
    assert settings.runtime.top_k == 9
    assert settings.runtime.model == "/m.rkllm"
    assert settings.mqtt.port == 1999
    assert settings.mqtt.host == "broker.lan"


@pytest.mark.parametrize(
    ("text", "key"),
    [
        ("[runtime]\ntop_p = 2.0\n", "runtime.top_p"),
        ("[runtime]\ntopk = 3\n", "runtime.topk"),
        ('[runtime]\nabi = "1.4"\n', "runtime.abi"),
        ("[mqtt]\nport = 0\n", "mqtt.port"),
        ('[mqtt]\nnode_id = "kitchen/1"\n', "mqtt.node_id"),
        ('[mqtt]\nallowed_response_topics = ["a/#/b"]\n', "mqtt.allowed_response_topics"),
        ("[queue]\nmax_pending = -1\n", "queue.max_pending"),
        ("[runtime]\nmax_new_tokens = 2147483648\n", "runtime.max_new_tokens"),
        ("[runtime]\nbase_domain_id = 4294967299\n", "runtime.base_domain_id"),
        ("[runtime]\ntemperature = 1e40\n", "runtime.temperature"),
        ("[bogus]\nx = 1\n", "bogus"),
    ],
)
def test_invalid_config_names_the_key(tmp_path: Path, text: str, key: str) -> None:
    with pytest.raises(ConfigError) as info:
        load_config(write(tmp_path, text))
    assert info.value.key == key
    assert key in str(info.value)


def test_invalid_env_value_names_the_key(monkeypatch) -> None:
    monkeypatch.setenv("RKLLM_MQTT_RUNTIME__TEMPERATURE", "hot")
    with pytest.raises(ConfigError) as info:
        load_config(None)
    assert info.value.key == "runtime.temperature"


def test_broken_toml_and_missing_file_are_clear(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="cannot parse TOML"):
        load_config(write(tmp_path, "[runtime\n"))
    with pytest.raises(ConfigError, match="does not exist"):
        load_config(tmp_path / "nope.toml")


def test_protocol_and_cpu_mask_accept_natural_spellings(tmp_path: Path) -> None:
    settings = load_config(write(tmp_path, '[mqtt]\nprotocol = 5\n[runtime]\nenabled_cpus_mask = "0xF0"\n'))
    assert settings.mqtt.protocol == "5"
    assert settings.runtime.enabled_cpus_mask == 0xF0


def test_defaults_derive_topics_from_base_and_node() -> None:
    settings = load_config(None, mqtt={"base_topic": "llm", "node_id": "den"})
    assert settings.mqtt.prefix == "llm/den"
    assert settings.mqtt.response_filters == ("llm/reply/#",)
    assert settings.mqtt.effective_client_id == "rkllm-mqtt-den"
    assert RuntimeSettings().top_k is None  # unset keys keep the library's own default


def test_password_file_is_read_and_never_shown(tmp_path: Path) -> None:
    secret = tmp_path / "pw"
    secret.write_text("s3cret\n", encoding="utf-8")
    settings = load_config(None, mqtt={"username": "u", "password_file": str(secret)})
    assert settings.mqtt.read_password() == "s3cret"
    inline = load_config(None, mqtt={"password": "hunter2"})
    assert "hunter2" not in repr(inline)
    with pytest.raises(ConfigError, match="password"):
        load_config(None, mqtt={"password": "a", "password_file": str(secret)})


def test_the_runtime_gets_every_runtime_key_it_reads_as_a_plain_value():
    from dataclasses import fields

    from rkllm_mqtt.engine import runtime_options
    from rkllm_mqtt.runtime.options import RuntimeOptions

    assert {f.name for f in fields(RuntimeOptions)} <= set(RuntimeSettings.model_fields)
    options = runtime_options(RuntimeSettings(model="/m.rkllm", top_k=5, enabled_cpus_mask=0xF0,
                                              abi="1.3", keep_history=False))
    assert options == RuntimeOptions(model="/m.rkllm", top_k=5, enabled_cpus_mask=0xF0, abi="1.3")
