"""Fixtures for the Home Assistant tier: a real Mosquitto, HA's real MQTT integration, outside clients.

Runs only in `.venv-ha` (Python 3.13, phacc 0.13.236 → HA 2025.4.4). The recipe (socket_enabled,
mock_hass_config, a real `mqtt` config entry, waiting for HA's subscriptions) is the one checked in
reference/ha-mqtt.md §4.5. The helpers behind these fixtures are in harness.py.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path

import pytest
from harness import (
    Broker,
    OutsideClient,
    connect_outside_client,
    log_problems,
    mosquitto_binary,
    run_mosquitto,
    wait_for_mqtt_idle,
)
from homeassistant.components import mqtt
from homeassistant.config_entries import ConfigEntry
from homeassistant.core import HomeAssistant
from pytest_homeassistant_custom_component.common import MockConfigEntry

# The custom integration's fixtures (its tests import helpers from there too, so it must load first).
pytest_plugins = ["integration_fixtures"]


@pytest.fixture
def mqtt_broker(tmp_path: Path, socket_enabled: None) -> Iterator[Broker]:
    """A fresh broker per test, so no retained message leaks from one test into the next."""
    binary = mosquitto_binary()
    if binary is None:
        pytest.skip("mosquitto is not installed")
    with run_mosquitto(binary, tmp_path) as broker:
        yield broker


@pytest.fixture
def outside_client(mqtt_broker: Broker) -> Iterator[Callable[[], OutsideClient]]:
    """Factory of connected paho clients outside HA; all are closed when the test ends."""
    clients: list[OutsideClient] = []

    def make() -> OutsideClient:
        client = connect_outside_client(mqtt_broker, f"outside-{len(clients)}")
        clients.append(client)
        return client

    yield make
    for client in clients:
        client.close()


@pytest.fixture
async def mqtt_ready(
    hass: HomeAssistant, mqtt_broker: Broker, mock_hass_config: None
) -> AsyncIterator[ConfigEntry]:
    """HA's real MQTT integration connected to `mqtt_broker`, discovery on, subscriptions flushed."""
    entry = MockConfigEntry(
        domain=mqtt.DOMAIN,
        version=1,
        minor_version=2,
        data={"broker": mqtt_broker.host, "port": mqtt_broker.port},
        options={},
    )
    entry.add_to_hass(hass)
    assert await hass.config_entries.async_setup(entry.entry_id), "HA's MQTT entry did not set up"
    assert await mqtt.async_wait_for_mqtt_client(hass), "HA's MQTT client did not connect"
    await wait_for_mqtt_idle(hass)
    yield entry
    # Unload while the broker still runs; otherwise HA logs a lost connection and a failed unload.
    assert await hass.config_entries.async_unload(entry.entry_id)


@pytest.fixture
def mqtt_log_problems(caplog: pytest.LogCaptureFixture) -> Callable[[], list[str]]:
    """A function listing the WARNING+ records HA's MQTT side logged so far in the test."""
    return lambda: log_problems(caplog)
