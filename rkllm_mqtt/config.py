"""Configuration: one TOML file, every key overridable by `RKLLM_MQTT_<SECTION>__<KEY>`.

The model is frozen and validated at load so that a typo or a wrong type stops the daemon at start
with the offending key named, instead of surfacing as a segfault or a silent default on a board.
"""

from __future__ import annotations

import re
import socket
from contextvars import ContextVar
from pathlib import Path
from typing import Any, Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    SecretStr,
    ValidationError,
    field_validator,
    model_validator,
)
from pydantic_settings import (
    BaseSettings,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
    TomlConfigSettingsSource,
)

from rkllm_mqtt.errors import ConfigError
from rkllm_mqtt.runtime.contract import (
    DEFAULT_MAX_PAYLOAD_BYTES,
    DEFAULT_MAX_PROMPT_CHARS,
    FLOAT32_MAX,
    INT32_MAX,
    INT32_MIN,
)

DEFAULT_CONFIG_PATH = Path("/etc/rkllm-mqtt/config.toml")
ENV_PREFIX = "RKLLM_MQTT_"

_TOPIC_LEVEL = re.compile(r"^[A-Za-z0-9_-]+$")
_toml_file: ContextVar[Path | None] = ContextVar("rkllm_mqtt_toml_file", default=None)


def default_node_id() -> str:
    """The hostname reduced to `[a-z0-9_-]`, so it is a valid topic level and HA object id."""
    node = re.sub(r"[^a-z0-9_-]+", "_", socket.gethostname().lower()).strip("_")
    return node or "rkllm"


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class MqttSettings(_Section):
    """How to reach the broker and where on it the daemon lives."""

    host: str = "127.0.0.1"
    port: int = Field(1883, ge=1, le=65535)
    username: str | None = None
    password: SecretStr | None = None
    password_file: Path | None = None
    client_id: str | None = None
    protocol: Literal["5", "3.1.1"] = "5"
    keepalive: int = Field(30, ge=5, le=3600)
    tls: bool = False
    tls_ca: Path | None = None
    tls_cert: Path | None = None
    tls_key: Path | None = None
    tls_insecure: bool = False
    base_topic: str = "rkllm"
    node_id: str = Field(default_factory=default_node_id)
    qos: Literal[0, 1, 2] = 1
    allowed_response_topics: tuple[str, ...] | None = None

    @field_validator("protocol", mode="before")
    @classmethod
    def _protocol_as_text(cls, value: Any) -> Any:
        # TOML users write `protocol = 5` as often as `protocol = "5"`.
        if isinstance(value, int | float) and not isinstance(value, bool):
            return {5: "5", 3.1: "3.1.1", 311: "3.1.1"}.get(value, str(value))
        return value

    @field_validator("base_topic")
    @classmethod
    def _valid_base(cls, value: str) -> str:
        if not value or any(ch in value for ch in "#+") or value.startswith("/") or value.endswith("/"):
            raise ValueError("must be a plain topic without wildcards or leading/trailing '/'")
        return value

    @field_validator("node_id")
    @classmethod
    def _valid_node(cls, value: str) -> str:
        if not _TOPIC_LEVEL.match(value):
            raise ValueError("may only contain letters, digits, '_' and '-'")
        return value

    @field_validator("allowed_response_topics")
    @classmethod
    def _valid_filters(cls, value: tuple[str, ...] | None) -> tuple[str, ...] | None:
        for flt in value or ():
            levels = flt.split("/")
            if not flt or any(("#" in lv and lv != "#") or ("+" in lv and lv != "+") for lv in levels):
                raise ValueError(f"{flt!r} is not a valid MQTT topic filter")
            if "#" in levels[:-1]:
                raise ValueError(f"{flt!r}: '#' may only be the last level")
        return value

    @model_validator(mode="after")
    def _consistent(self) -> MqttSettings:
        if self.password is not None and self.password_file is not None:
            raise ValueError("set password or password_file, not both")
        if (self.tls_cert is None) != (self.tls_key is None):
            raise ValueError("tls_cert and tls_key go together")
        return self

    @property
    def prefix(self) -> str:
        """The `~` of the contract: every daemon topic starts here."""
        return f"{self.base_topic}/{self.node_id}"

    @property
    def response_filters(self) -> tuple[str, ...]:
        """Where a request may ask to be answered; the default keeps replies under our base."""
        if self.allowed_response_topics is None:
            return (f"{self.base_topic}/reply/#",)
        return self.allowed_response_topics

    @property
    def effective_client_id(self) -> str:
        return self.client_id or f"rkllm-mqtt-{self.node_id}"

    def read_password(self) -> str | None:
        """The password from the config or its file; read late so the secret is never logged."""
        if self.password is not None:
            return self.password.get_secret_value()
        if self.password_file is not None:
            try:
                return self.password_file.read_text(encoding="utf-8").strip()
            except OSError as err:
                reason = f"cannot read {self.password_file}: {err.strerror}"
                raise ConfigError("mqtt.password_file", reason) from err
        return None


class RuntimeSettings(_Section):
    """librkllmrt.so and the model; sampling keys carry their C names. None keeps the library default."""

    library: str = "librkllmrt.so"
    abi: Literal["auto", "1.1", "1.2.0", "1.2", "1.3"] = "auto"
    model: str | None = None
    max_context_len: int | None = Field(None, gt=0, le=INT32_MAX)
    max_new_tokens: int | None = Field(None, ge=INT32_MIN, le=INT32_MAX)
    top_k: int | None = Field(None, ge=0, le=INT32_MAX)
    top_p: float | None = Field(None, ge=0.0, le=1.0)
    temperature: float | None = Field(None, ge=0.0, le=FLOAT32_MAX)
    repeat_penalty: float | None = Field(None, ge=0.0, le=FLOAT32_MAX)
    frequency_penalty: float | None = Field(None, ge=-FLOAT32_MAX, le=FLOAT32_MAX)
    presence_penalty: float | None = Field(None, ge=-FLOAT32_MAX, le=FLOAT32_MAX)
    mirostat: Literal[0, 1, 2] | None = None
    mirostat_tau: float | None = Field(None, ge=-FLOAT32_MAX, le=FLOAT32_MAX)
    mirostat_eta: float | None = Field(None, ge=-FLOAT32_MAX, le=FLOAT32_MAX)
    skip_special_token: bool | None = None
    n_keep: int | None = Field(None, ge=INT32_MIN, le=INT32_MAX)
    base_domain_id: int | None = Field(None, ge=0, le=INT32_MAX)
    embed_flash: bool | None = None
    enabled_cpus_mask: int | None = Field(None, gt=0, le=0xFF)
    system_prompt: str | None = None
    prompt_prefix: str | None = None
    prompt_postfix: str | None = None
    # The markup rkllm_set_chat_template gets on 1.2.0+ (runtime/templates.py): "auto" picks it by
    # the model file's name; "model" keeps the model's own template, with the system text in the
    # prompt (prefilled again by every conversation). prompt_prefix/prompt_postfix win over it.
    chat_template: Literal["auto", "model", "chatml", "deepseek", "llama3", "gemma"] = "auto"
    keep_history: bool = True
    # Warm start: prompt cache files (RKLLMPromptCacheParam / rkllm_load_prompt_cache), one per
    # model + runtime version + prefix, so the first turn after a restart does not prefill the
    # system prompt and tools again. None = off. Bounded in files and size (least recently used go).
    prompt_cache_dir: str | None = None
    prompt_cache_max_files: int = Field(4, ge=1, le=1000)
    prompt_cache_max_mb: int = Field(1024, ge=1, le=1_000_000)
    # Prefill the last-used (or configured) prefix at start, before reporting ready.
    prefill_at_start: bool = False
    # "process" (the default): the runtime runs in a lean child process, so a native crash or a run
    # that ignores abort costs one request (`runtime_crashed`, or the abort's own reply) and a
    # model reload, not the daemon. "thread": inside the daemon, ~18 MB less memory, but a crash
    # of librkllmrt.so ends the daemon and a hung run blocks every request after it.
    isolation: Literal["thread", "process"] = "process"

    @field_validator("enabled_cpus_mask", mode="before")
    @classmethod
    def _mask_from_text(cls, value: Any) -> Any:
        # Masks read naturally in hex ("0xF0"); TOML and env vars hand them over as text.
        if isinstance(value, str):
            try:
                return int(value, 0)
            except ValueError as err:
                raise ValueError("must be an integer such as 0xF0") from err
        return value


class QueueSettings(_Section):
    """How much work the daemon accepts and how long a run may take."""

    max_pending: int = Field(8, ge=0, le=10_000)
    request_timeout_s: float = Field(300.0, gt=0)
    on_shutdown: Literal["finish", "abort"] = "finish"
    dedupe_window_s: float = Field(600.0, ge=0)


class LimitsSettings(_Section):
    """Bounds on what a client may send; a flaky device must not exhaust the board."""

    max_payload_bytes: int = Field(DEFAULT_MAX_PAYLOAD_BYTES, ge=256)
    max_prompt_chars: int = Field(DEFAULT_MAX_PROMPT_CHARS, ge=1)


class HomeAssistantSettings(_Section):
    """MQTT discovery for Home Assistant."""

    discovery: bool = True
    discovery_prefix: str = "homeassistant"
    device_name: str | None = None
    status_topic: str = "homeassistant/status"
    rediscovery_delay_max_s: float = Field(5.0, ge=0.0, le=300.0)


class ConversationSettings(_Section):
    """Bounds on the multi-turn history the daemon keeps in memory."""

    max_conversations: int = Field(16, ge=1)
    max_turns: int = Field(20, ge=1)
    max_chars: int = Field(16000, ge=100)


class PoolSettings(_Section):
    """Membership of a pool: daemons that serve one prompt topic through a shared subscription."""

    group: str | None = None  # off by default; a topic level such as "house"
    topic: str | None = None  # default <base_topic>/pool/<group>/prompt
    max_hops: int = Field(2, ge=0, le=8)  # how often a request may be passed on to a peer

    @field_validator("group")
    @classmethod
    def _valid_group(cls, value: str | None) -> str | None:
        if value is not None and not _TOPIC_LEVEL.match(value):
            raise ValueError("may only contain letters, digits, '_' and '-'")
        return value

    @field_validator("topic")
    @classmethod
    def _valid_topic(cls, value: str | None) -> str | None:
        if value is not None and (not value or any(ch in value for ch in "#+")
                                  or value.startswith(("/", "$")) or value.endswith("/")):
            raise ValueError("must be a plain topic without wildcards, '$' or leading/trailing '/'")
        return value


class Settings(BaseSettings):
    """The whole configuration, from TOML (`--config`) overridden by the environment."""

    model_config = SettingsConfigDict(
        env_prefix=ENV_PREFIX,
        env_nested_delimiter="__",
        extra="forbid",
        frozen=True,
    )

    mqtt: MqttSettings = MqttSettings()
    runtime: RuntimeSettings = RuntimeSettings()
    queue: QueueSettings = QueueSettings()
    limits: LimitsSettings = LimitsSettings()
    homeassistant: HomeAssistantSettings = HomeAssistantSettings()
    conversation: ConversationSettings = ConversationSettings()
    pool: PoolSettings = PoolSettings()

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        sources: list[PydanticBaseSettingsSource] = [init_settings, env_settings]
        toml_file = _toml_file.get()
        if toml_file is not None:
            sources.append(TomlConfigSettingsSource(settings_cls, toml_file=toml_file))
        return tuple(sources)


def load_config(path: str | Path | None = None, **overrides: Any) -> Settings:
    """Load and validate; raises ConfigError naming the first offending key.

    `path=None` means defaults and environment only (what tests and `demo` use); an explicit path
    that does not exist is an error rather than a silent fallback to defaults.
    """
    toml_path = Path(path) if path is not None else None
    if toml_path is not None and not toml_path.is_file():
        raise ConfigError("--config", f"{toml_path} does not exist or is not a file")
    token = _toml_file.set(toml_path)
    try:
        return Settings(**overrides)
    except ValidationError as err:
        first = err.errors()[0]
        key = ".".join(str(part) for part in first["loc"]) or "(top level)"
        raise ConfigError(key, first["msg"]) from None
    except ValueError as err:  # TOML syntax errors surface as ValueError subclasses
        raise ConfigError(str(toml_path), f"cannot parse TOML: {err}") from None
    finally:
        _toml_file.reset(token)
