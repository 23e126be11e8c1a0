"""Fixtures for the custom integration's tests: the integration loaded from this repository, HA with
real MQTT and Assist, and the real daemon on the simulator as a subprocess.

Loaded as a plugin by conftest.py (`pytest_plugins`), before any test module imports it; the
broker and HA-MQTT fixtures come from conftest.py / harness.py (HA-DISCOVERY's).
"""

from __future__ import annotations

import json
import os
import queue
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from harness import (
    WAIT_TIMEOUT_S,
    Broker,
    OutsideClient,
    connect_outside_client,
    wait_for_mqtt_idle,
    wait_until,
)
from homeassistant.config_entries import ConfigEntry, ConfigEntryState
from homeassistant.core import HomeAssistant
from homeassistant.setup import async_setup_component
from pytest_homeassistant_custom_component.common import MockConfigEntry

REPO_ROOT = Path(__file__).resolve().parents[2]

# HA imports `custom_components` with phacc's testing_config first on sys.path, and that copy is a
# regular package that would hide ours (which has no __init__.py, like a user's config dir). Importing
# it now, with our folder first, puts ours in sys.modules before HA looks.
sys.path.insert(0, str(REPO_ROOT / "ha_integration"))
import custom_components  # noqa: E402

_OURS = str(REPO_ROOT / "ha_integration" / "custom_components")
if _OURS not in list(custom_components.__path__):
    raise RuntimeError(f"custom_components is {list(custom_components.__path__)}, not {_OURS}")

# Test modules import the integration through these names, never `custom_components` directly: an
# import sorter would put that import above this module's and undo the fix.
from custom_components.rkllm_mqtt import client as rkllm_client  # noqa: E402
from custom_components.rkllm_mqtt import config_flow as rkllm_config_flow  # noqa: E402
from custom_components.rkllm_mqtt import const as rkllm_const  # noqa: E402
from custom_components.rkllm_mqtt import llm_api as rkllm_llm_api  # noqa: E402

__all__ = ["rkllm_client", "rkllm_config_flow", "rkllm_const", "rkllm_llm_api"]

CONF_BASE_TOPIC = rkllm_const.CONF_BASE_TOPIC
CONF_NODE_ID = rkllm_const.CONF_NODE_ID
DOMAIN = rkllm_const.DOMAIN

NODE_ID = "kitchen"
BASE_TOPIC = "rkllm"
ENTITY_ID = f"conversation.rkllm_{NODE_ID}"


@pytest.fixture
async def ha_with_mqtt(
    hass: HomeAssistant, enable_custom_integrations: None, mqtt_ready: ConfigEntry
) -> AsyncIterator[HomeAssistant]:
    """HA with custom integrations enabled *before* MQTT starts (so the manifest's `mqtt` discovery
    topic is subscribed), real MQTT connected, and the core integrations Assist needs.

    The integration's entries are unloaded at the end while the broker still runs.
    """
    assert await async_setup_component(hass, "homeassistant", {})
    assert await async_setup_component(hass, "conversation", {})
    yield hass
    for entry in hass.config_entries.async_entries(DOMAIN):
        if entry.state is ConfigEntryState.LOADED:
            assert await hass.config_entries.async_unload(entry.entry_id)


@dataclass
class Daemon:
    """The real `rkllm-mqtt run` on the simulator, as a subprocess talking to the test broker."""

    node_id: str
    prefix: str
    proc: subprocess.Popen[bytes]
    log_file: Path

    def log(self) -> str:
        return self.log_file.read_text(errors="replace")

    def stop(self) -> None:
        """Stop it like systemd does (SIGTERM): it publishes `offline` and exits."""
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=WAIT_TIMEOUT_S)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


def _daemon_config(broker: Broker, workdir: Path, node_id: str, abi: str, pool: str | None = None,
                   **runtime: object) -> Path:
    from rkllm_mqtt.simulator import build_simulator, sim_model_file

    library = build_simulator(abi)
    settings = {
        "mqtt": {"host": broker.host, "port": broker.port, "base_topic": BASE_TOPIC, "node_id": node_id},
        "runtime": {"library": str(library), "model": str(sim_model_file()), "abi": abi, **runtime},
        "homeassistant": {"discovery": True},
    }
    if pool is not None:
        settings["pool"] = {"group": pool}
    lines: list[str] = []
    for section, values in settings.items():
        lines.append(f"[{section}]")
        lines.extend(f"{key} = {json.dumps(value)}" for key, value in values.items())
    path = workdir / f"daemon-{node_id}.toml"
    path.write_text("\n".join(lines) + "\n")
    return path


@pytest.fixture
def start_daemon(mqtt_broker: Broker, tmp_path: Path) -> Iterator[Callable[..., Daemon]]:
    """Factory: start a daemon and return once its retained status says `online`."""
    daemons: list[Daemon] = []
    watchers: list[OutsideClient] = []

    def start(
        node_id: str = NODE_ID, env: dict[str, str] | None = None, abi: str = "1.2",
        pool: str | None = None, **runtime: object,
    ) -> Daemon:
        config = _daemon_config(mqtt_broker, tmp_path, node_id, abi, pool, **runtime)
        log_file = tmp_path / f"daemon-{node_id}.log"
        watcher = connect_outside_client(mqtt_broker, f"watch-{node_id}-{len(watchers)}")
        watchers.append(watcher)
        watcher.subscribe(f"{BASE_TOPIC}/{node_id}/status")
        with log_file.open("wb") as log:
            proc = subprocess.Popen(
                [sys.executable, "-m", "rkllm_mqtt", "run", "--config", str(config)],
                stdout=log, stderr=subprocess.STDOUT, cwd=REPO_ROOT, env={**os.environ, **(env or {})},
            )
        daemon = Daemon(node_id, f"{BASE_TOPIC}/{node_id}", proc, log_file)
        daemons.append(daemon)
        deadline = time.monotonic() + WAIT_TIMEOUT_S
        while time.monotonic() < deadline:
            if proc.poll() is not None:
                raise AssertionError(f"daemon exited with {proc.returncode}:\n{daemon.log()}")
            try:
                msg = watcher.messages.get(timeout=0.1)
            except queue.Empty:
                continue
            if msg.payload == b"online":
                return daemon
        raise AssertionError(f"daemon did not come online:\n{daemon.log()}")

    yield start
    for daemon in daemons:
        daemon.stop()
    for watcher in watchers:
        watcher.close()


async def setup_entry(
    hass: HomeAssistant, node_id: str = NODE_ID, *, base_topic: str = BASE_TOPIC, **options: object
) -> MockConfigEntry:
    """A config entry for `node_id` (of this release's version), set up, with its subscriptions at
    the broker."""
    flow = rkllm_config_flow.RkllmConfigFlow
    entry = MockConfigEntry(
        domain=DOMAIN,
        title=f"RKLLM {node_id}",
        unique_id=f"{base_topic}/{node_id}",
        data={CONF_BASE_TOPIC: base_topic, CONF_NODE_ID: node_id},
        options=options,
        version=flow.VERSION,
        minor_version=flow.MINOR_VERSION,
    )
    entry.add_to_hass(hass)
    assert await hass.config_entries.async_setup(entry.entry_id)
    assert entry.state is ConfigEntryState.LOADED
    await wait_for_mqtt_idle(hass)
    return entry


async def wait_for_state(hass: HomeAssistant, entity_id: str, predicate: Callable[[str], bool]) -> str:
    state = await wait_until(
        hass, lambda: (s := hass.states.get(entity_id)) is not None and predicate(s.state) and s,
        f"{entity_id} state",
    )
    return state.state
