"""Helpers for the Home Assistant tier: a real Mosquitto, outside paho clients, waiting on HA's MQTT.

Plain functions and classes (the fixtures wrapping them live in conftest.py), importable from any
test under tests/ha as `from harness import ...` (pytest.ini puts tests/ha on sys.path). Meant to be
reused by the custom integration's tests.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import queue
import shutil
import socket
import subprocess
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import paho.mqtt.client as paho
import pytest
from homeassistant.components.mqtt.models import DATA_MQTT
from homeassistant.core import HomeAssistant
from paho.mqtt.enums import CallbackAPIVersion

# Bounds a failing wait; passing tests never get near it.
WAIT_TIMEOUT_S = 15.0
MOSQUITTO_CANDIDATES = ("/usr/sbin/mosquitto", "/usr/local/sbin/mosquitto")
# Where a refused discovery payload or a failing value template is logged. Not watched:
# homeassistant.helpers.frame, where HA 2025.4.4 itself warns "calls async_forward_entry_setups for
# integration mqtt ... without awaiting" whenever one discovery message brings several platforms
# HA has not loaded yet (its own race between the per-platform setups, whatever the payload).
WATCHED_LOGGERS = ("homeassistant.components.mqtt", "homeassistant.helpers.template")


@dataclass(frozen=True)
class Broker:
    """A Mosquitto listening on 127.0.0.1 (phacc only lets sockets reach that host)."""

    host: str
    port: int


# Component id -> the entity id HA must create of the device "RKLLM kitchen" (node kitchen).
KITCHEN_ENTITIES = {
    "status": "sensor.rkllm_kitchen_status",
    "busy": "binary_sensor.rkllm_kitchen_busy",
    "tokens_per_second": "sensor.rkllm_kitchen_tokens_per_second",
    "ttft": "sensor.rkllm_kitchen_time_to_first_token",
    "queue": "sensor.rkllm_kitchen_queue",
    "model": "sensor.rkllm_kitchen_model",
    "last_response": "sensor.rkllm_kitchen_last_response",
    "prompt": "text.rkllm_kitchen_prompt",
    "abort": "button.rkllm_kitchen_abort",
    "response": "event.rkllm_kitchen_response",
}


def mosquitto_binary() -> str | None:
    found = shutil.which("mosquitto")
    if found:
        return found
    return next((path for path in MOSQUITTO_CANDIDATES if os.access(path, os.X_OK)), None)


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _wait_for_listener(proc: subprocess.Popen[bytes], port: int, log_file: Path) -> None:
    deadline = time.monotonic() + WAIT_TIMEOUT_S
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"mosquitto exited early: {log_file.read_text(errors='replace')}")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.2):
                return
        except OSError:
            time.sleep(0.02)
    raise RuntimeError(f"mosquitto did not listen on {port}: {log_file.read_text(errors='replace')}")


@contextlib.contextmanager
def run_mosquitto(binary: str, workdir: Path) -> Iterator[Broker]:
    """Start Mosquitto on a free port with its config and log in `workdir`; stop it on exit."""
    port = free_port()
    conf = workdir / "mosquitto.conf"
    lines = [f"listener {port} 127.0.0.1", "allow_anonymous true", "persistence false"]
    if os.geteuid() == 0:
        lines.append("user root")  # otherwise mosquitto drops to a user that cannot read workdir
    conf.write_text("\n".join(lines) + "\n")
    log_file = workdir / "mosquitto.log"
    with log_file.open("wb") as log:
        proc = subprocess.Popen([binary, "-c", str(conf)], stdout=log, stderr=subprocess.STDOUT)
    try:
        _wait_for_listener(proc, port, log_file)
        yield Broker("127.0.0.1", port)
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=5)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


@dataclass(frozen=True)
class Received:
    topic: str
    payload: bytes
    retain: bool


@dataclass
class OutsideClient:
    """A paho client outside HA (playing the daemon); records what it receives on its own thread."""

    client: paho.Client
    messages: queue.Queue[Received] = field(default_factory=queue.Queue)

    def publish(self, topic: str, payload: str | bytes, *, retain: bool = False, qos: int = 1) -> None:
        """Publish and wait until the broker has it (QoS 1), so the order of publishes holds."""
        self.client.publish(topic, payload, qos=qos, retain=retain).wait_for_publish(WAIT_TIMEOUT_S)

    def subscribe(self, topic: str) -> None:
        """Subscribe and wait for the SUBACK, so nothing published afterwards is missed."""
        acked: queue.Queue[bool] = queue.Queue()
        self.client.on_subscribe = lambda *_args: acked.put(True)
        self.client.subscribe(topic, qos=1)
        acked.get(timeout=WAIT_TIMEOUT_S)

    async def next_message(self, topic: str) -> Received:
        """The next message on `topic` (others are dropped), waiting without blocking HA's loop."""
        deadline = time.monotonic() + WAIT_TIMEOUT_S
        while time.monotonic() < deadline:
            try:
                msg = self.messages.get_nowait()
            except queue.Empty:
                await asyncio.sleep(0.02)
                continue
            if msg.topic == topic:
                return msg
        raise AssertionError(f"no message on {topic} within {WAIT_TIMEOUT_S} s")

    def close(self) -> None:
        """Disconnect and stop the network thread (phacc fails a test that leaves a thread)."""
        self.client.disconnect()
        self.client.loop_stop()


def connect_outside_client(broker: Broker, client_id: str) -> OutsideClient:
    """A connected paho client with its network thread running; call `close()` before the test ends."""
    client = paho.Client(CallbackAPIVersion.VERSION2, client_id=client_id)
    outside = OutsideClient(client)
    connected: queue.Queue[bool] = queue.Queue()
    client.on_connect = lambda *_args: connected.put(True)
    client.on_message = lambda _client, _userdata, msg: outside.messages.put(
        Received(msg.topic, msg.payload, bool(msg.retain))
    )
    client.connect(broker.host, broker.port)
    client.loop_start()
    try:
        connected.get(timeout=WAIT_TIMEOUT_S)
    except queue.Empty:
        outside.close()
        raise
    return outside


def mqtt_client_idle(hass: HomeAssistant) -> bool:
    """True when HA's MQTT client has sent every SUBSCRIBE it owes and nothing is in flight.

    `mqtt.async_subscribe` returns before the broker knows the topic (HA debounces SUBSCRIBEs), so a
    message published right after it would be lost. These are private attributes of HA 2025.4's
    client; `wait_for_mqtt_idle` falls back to a fixed wait if they disappear.
    """
    client = hass.data[DATA_MQTT].client
    debouncer = client._subscribe_debouncer
    return (
        not client._pending_subscriptions
        and debouncer._timer is None
        and debouncer._task is None
        and not client._pending_operations
    )


async def wait_until(hass: HomeAssistant, predicate: Callable[[], Any], what: str) -> Any:
    """Poll `predicate` while letting HA run; returns its first truthy result."""
    deadline = time.monotonic() + WAIT_TIMEOUT_S
    while time.monotonic() < deadline:
        await hass.async_block_till_done()
        if result := predicate():
            return result
        await asyncio.sleep(0.02)
    raise AssertionError(f"timed out waiting for {what}")


async def wait_for_mqtt_idle(hass: HomeAssistant) -> None:
    """Wait until HA's MQTT subscriptions reached the broker (see `mqtt_client_idle`)."""
    try:
        mqtt_client_idle(hass)
    except AttributeError:
        await asyncio.sleep(2.0)
        return
    await wait_until(hass, lambda: mqtt_client_idle(hass), "HA's MQTT client to become idle")


def log_problems(caplog: pytest.LogCaptureFixture) -> list[str]:
    """WARNING+ records from HA's MQTT integration and template engine, as readable lines."""
    return [
        f"{record.levelname} {record.name}: {record.getMessage()}"
        for record in caplog.records
        if record.levelno >= logging.WARNING and record.name.startswith(WATCHED_LOGGERS)
    ]
