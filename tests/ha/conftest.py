"""Fixtures for the Home Assistant tiers: a real Mosquitto, HA's real MQTT integration, outside clients.

Runs in `.venv-ha` (Python 3.13, phacc 0.13.236 → HA 2025.4.4) and in the 2026 chroot (Python 3.14,
phacc 0.13.375 → HA 2026.10.4); see run.sh. HA's real MQTT needs the `socket_enabled` and
`mock_hass_config` fixtures of pytest-homeassistant-custom-component, a real `mqtt` config entry
(https://developers.home-assistant.io/docs/development_testing), and a wait until HA's MQTT client
has sent its debounced SUBSCRIBEs. The helpers behind these fixtures are in harness.py.
"""

from __future__ import annotations

import logging
import re
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


# What Home Assistant logs when code uses an API it has deprecated (helpers.frame.report_usage, the
# helpers.deprecation decorators): "... which is deprecated ...", "... is a deprecated ...".
DEPRECATION = re.compile(r"\bdeprecated\b", re.IGNORECASE)


@pytest.fixture(autouse=True)
def no_deprecation_warning(caplog: pytest.LogCaptureFixture) -> Iterator[None]:
    """Fail a test during which Home Assistant reported the use of a deprecated API.

    Home Assistant raises for some of these in tests, and only logs others (e.g. a deprecated
    device-info key of a custom integration); both would break on the release that removes them.
    """
    yield
    reported = [
        f"{record.name}: {record.getMessage()}"
        for when in ("setup", "call", "teardown")
        for record in caplog.get_records(when)
        if record.levelno >= logging.WARNING and DEPRECATION.search(record.getMessage())
    ]
    assert not reported, f"deprecated API use reported: {reported}"


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
