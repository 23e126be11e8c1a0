"""Daemon tests run against a real Mosquitto: a container when a Docker engine answers, else a process.

Nothing here assumes a broker on port 1883: every broker is private, on a free port.
"""

from __future__ import annotations

import json
import logging
import shutil
import subprocess
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import paho.mqtt.client as paho
import pytest
from paho.mqtt.enums import CallbackAPIVersion, MQTTProtocolVersion
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from rkllm_mqtt.broker import Broker, TlsFiles, find_mosquitto, start_broker

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class BrokerAddress:
    host: str
    port: int


def _docker_answers() -> bool:
    try:
        import docker

        client = docker.from_env(timeout=3)
        client.ping()
        return True
    except Exception:  # no engine, no socket, no permission: all mean "use a process"
        return False


@pytest.fixture(scope="session")
def broker() -> Iterator[BrokerAddress]:
    """The shared broker for tests that do not need to stop it or configure it."""
    if _docker_answers():
        from testcontainers.community.mqtt import MosquittoContainer

        container = MosquittoContainer("eclipse-mosquitto:2")
        container.start()
        try:
            yield BrokerAddress(container.get_container_host_ip(),
                                int(container.get_exposed_port(MosquittoContainer.MQTT_PORT)))
        finally:
            container.stop()
        return
    if find_mosquitto() is None:
        pytest.skip("neither a Docker engine nor the mosquitto binary is available")
    with start_broker(prefer="mosquitto") as b:
        yield BrokerAddress(b.host, b.port)


@pytest.fixture
def private_broker() -> Iterator[Callable[..., Broker]]:
    """A factory for brokers a test may restart or configure (users, TLS); stopped at the end."""
    if find_mosquitto() is None:
        pytest.skip("the mosquitto binary is not installed")
    started: list[Broker] = []

    def make(**kwargs: Any) -> Broker:
        b = start_broker(prefer="mosquitto", **kwargs)
        started.append(b)
        return b

    yield make
    for b in started:
        b.close()


@pytest.fixture(scope="session")
def tls_files(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """A CA, a server certificate for 127.0.0.1/localhost and a client certificate, made here."""
    if shutil.which("openssl") is None:
        pytest.skip("the openssl command is not installed")
    d = tmp_path_factory.mktemp("tls")

    def openssl(*args: str) -> None:
        subprocess.run(["openssl", *args], check=True, cwd=d, capture_output=True)

    openssl("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2", "-subj", "/CN=test-ca",
            "-keyout", "ca.key", "-out", "ca.crt")
    for name, ext in (("server", "subjectAltName=IP:127.0.0.1,DNS:localhost"),
                      ("client", "extendedKeyUsage=clientAuth")):
        openssl("req", "-newkey", "rsa:2048", "-nodes", "-subj", f"/CN={name}",
                "-keyout", f"{name}.key", "-out", f"{name}.csr")
        (d / f"{name}.ext").write_text(ext + "\n")
        openssl("x509", "-req", "-in", f"{name}.csr", "-CA", "ca.crt", "-CAkey", "ca.key",
                "-CAcreateserial", "-days", "2", "-out", f"{name}.crt", "-extfile", f"{name}.ext")
    return {"ca": d / "ca.crt", "server_cert": d / "server.crt", "server_key": d / "server.key",
            "client_cert": d / "client.crt", "client_key": d / "client.key"}


@pytest.fixture
def tls_server(tls_files: dict[str, Path]) -> TlsFiles:
    return TlsFiles(tls_files["ca"], tls_files["server_cert"], tls_files["server_key"],
                    require_certificate=True)


@dataclass(frozen=True)
class Received:
    topic: str
    payload: bytes
    retain: bool
    correlation_data: bytes | None
    at: float

    @property
    def json(self) -> Any:
        return json.loads(self.payload)

    @property
    def text(self) -> str:
        return self.payload.decode("utf-8")


class Probe:
    """A test-side MQTT client that records everything it receives, for exact assertions."""

    def __init__(self, host: str, port: int, *, protocol: str = "5", topics: tuple[str, ...] = (),
                 client_id: str | None = None, persistent: bool = False) -> None:
        self.received: list[Received] = []
        self._cond = threading.Condition()
        self._topics = topics
        self._subscribed = threading.Event()
        v5 = protocol == "5"
        self.client = paho.Client(
            CallbackAPIVersion.VERSION2,
            client_id=client_id or f"probe-{uuid.uuid4().hex[:8]}",
            protocol=MQTTProtocolVersion.MQTTv5 if v5 else MQTTProtocolVersion.MQTTv311,
            clean_session=None if v5 else not persistent,
        )
        self.client.on_connect = self._on_connect
        self.client.on_message = self._on_message
        self.client.on_subscribe = lambda *a: self._subscribed.set()
        connect_props = None
        if v5 and persistent:
            connect_props = Properties(PacketTypes.CONNECT)
            connect_props.SessionExpiryInterval = 3600
        kwargs: dict[str, Any] = {"keepalive": 10}
        if v5:
            kwargs["clean_start"] = not persistent
            kwargs["properties"] = connect_props
        self.client.reconnect_delay_set(min_delay=1, max_delay=1)
        self.client.connect(host, port, **kwargs)
        self.client.loop_start()
        if topics:
            assert self._subscribed.wait(10), "probe did not subscribe"

    def _on_connect(self, client: paho.Client, *args: Any) -> None:
        if self._topics:
            client.subscribe([(t, 1) for t in self._topics])

    def _on_message(self, client: paho.Client, userdata: Any, msg: paho.MQTTMessage) -> None:
        props = getattr(msg, "properties", None)
        corr = getattr(props, "CorrelationData", None) if props is not None else None
        with self._cond:
            self.received.append(Received(msg.topic, msg.payload, bool(msg.retain), corr,
                                          time.monotonic()))
            self._cond.notify_all()

    def publish(self, topic: str, payload: bytes | str | dict[str, Any], *, qos: int = 1,
                retain: bool = False, response_topic: str | None = None,
                correlation_data: bytes | None = None) -> None:
        if isinstance(payload, dict):
            payload = json.dumps(payload)
        props = None
        if response_topic is not None or correlation_data is not None:
            props = Properties(PacketTypes.PUBLISH)
            if response_topic is not None:
                props.ResponseTopic = response_topic
            if correlation_data is not None:
                props.CorrelationData = correlation_data
        self.client.publish(topic, payload, qos=qos, retain=retain, properties=props).wait_for_publish(10)

    def matching(self, pred: Callable[[Received], bool]) -> list[Received]:
        with self._cond:
            return [m for m in self.received if pred(m)]

    def wait_for(self, pred: Callable[[Received], bool], timeout: float = 15.0) -> Received:
        """The first message (received so far or later) for which `pred` holds."""
        deadline = time.monotonic() + timeout
        checked = 0  # each message is tested once, so a long stream stays linear
        with self._cond:
            while True:
                for m in self.received[checked:]:
                    if pred(m):
                        return m
                checked = len(self.received)
                left = deadline - time.monotonic()
                if left <= 0:
                    tail = [(m.topic, m.payload[:200]) for m in self.received[-10:]]
                    raise AssertionError(f"no matching message within {timeout} s; last: {tail}")
                self._cond.wait(left)

    def final(self, request_id: Any, topic: str | None = None, timeout: float = 15.0) -> dict[str, Any]:
        """Wait for the final reply to `request_id` and return its JSON."""
        return self.wait_for(lambda m: _is_reply(m, request_id, "final", topic), timeout).json

    def replies(self, request_id: Any, kind: str | None = None) -> list[dict[str, Any]]:
        return [m.json for m in self.matching(lambda m: _is_reply(m, request_id, kind, None))]

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()


def _is_reply(m: Received, request_id: Any, kind: str | None, topic: str | None) -> bool:
    if topic is not None and m.topic != topic:
        return False
    if not m.payload.startswith(b"{"):
        return False
    try:
        obj = json.loads(m.payload)
    except ValueError:
        return False
    return (isinstance(obj, dict) and "type" in obj and obj.get("id") == request_id
            and (kind is None or obj.get("type") == kind))


@pytest.fixture
def probe_factory() -> Iterator[Callable[..., Probe]]:
    probes: list[Probe] = []

    def make(address: Any, **kwargs: Any) -> Probe:
        p = Probe(address.host, address.port, **kwargs)
        probes.append(p)
        return p

    yield make
    for p in probes:
        p.close()


# ----------------------------------------------------------------------------- the daemon


def _merge(base: dict[str, Any], extra: dict[str, Any]) -> dict[str, Any]:
    out = {k: dict(v) for k, v in base.items()}
    for section, values in extra.items():
        out.setdefault(section, {}).update(values)
    return out


@pytest.fixture
def daemon_settings(sim_library: Path, sim_model: Path) -> Callable[..., Any]:
    """Settings for a daemon on `address`, with a fresh node id so retained topics never collide."""
    from rkllm_mqtt.config import load_config

    def make(address: Any, **sections: dict[str, Any]) -> Any:
        base = {
            "mqtt": {"host": address.host, "port": address.port,
                     "node_id": f"t{uuid.uuid4().hex[:8]}"},
            "runtime": {"library": str(sim_library), "abi": "1.2", "model": str(sim_model)},
            "queue": {"on_shutdown": "abort"},
            "homeassistant": {"discovery": False},
        }
        return load_config(None, **_merge(base, sections))

    return make


@pytest.fixture
def daemon(daemon_settings: Callable[..., Any]) -> Iterator[Callable[..., Any]]:
    """Start an in-process daemon (`Service`) on the real simulator; stopped at the end."""
    from rkllm_mqtt.service import Service

    started: list[Service] = []

    def make(address: Any, **sections: dict[str, Any]) -> Service:
        service = Service(daemon_settings(address, **sections))
        service.start(connect_attempts=5)
        started.append(service)
        return service

    yield make
    for service in started:
        service.stop()
