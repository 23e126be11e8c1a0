"""What every measure shares: the simulator, a private Mosquitto, an in-process daemon whose engine
sink is timestamped, and a subscriber that timestamps what it receives.

Everything runs in one process on loopback, on one clock (`time.perf_counter`), so "when the token
left the runtime" and "when the subscriber had it" are directly comparable.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import socket
import threading
import time
import uuid
from collections import defaultdict
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import paho.mqtt.client as paho
from paho.mqtt.enums import CallbackAPIVersion, MQTTProtocolVersion

from rkllm_mqtt.broker import Broker, find_mosquitto, start_broker
from rkllm_mqtt.config import RuntimeSettings, Settings, load_config
from rkllm_mqtt.engine import (
    Engine,
    EngineInfo,
    EngineSink,
    InProcessEngine,
    ProcessEngine,
    RunCommand,
)
from rkllm_mqtt.runtime import Event, TokenEvent
from rkllm_mqtt.runtime.contract import AbortReason
from rkllm_mqtt.service import Service
from rkllm_mqtt.simulator import build_simulator, sim_model_file

ABI = "1.2"
MAX_CONTEXT = 32768  # room for the 20,000-token run (the simulator's default model limit is 4096)
SIM_ENV = ("RKLLM_SIM_SPEED", "RKLLM_SIM_DECODE_TPS", "RKLLM_SIM_PREFILL_TPS", "RKLLM_SIM_FAIL",
           "RKLLM_SIM_CALLBACK_THREAD", "RKLLM_SIM_MODEL_MAX_CONTEXT")

now = time.perf_counter


@dataclass(frozen=True)
class Simulator:
    library: Path
    model: Path


def simulator() -> Simulator:
    return Simulator(build_simulator(ABI), sim_model_file())


@contextmanager
def sim_env(**values: str) -> Iterator[None]:
    """The simulator's environment for the block (unlimited speed unless set), restored after."""
    saved = {k: os.environ.get(k) for k in SIM_ENV}
    for k in SIM_ENV:
        os.environ.pop(k, None)
    os.environ["RKLLM_SIM_MODEL_MAX_CONTEXT"] = str(MAX_CONTEXT)
    os.environ.update(values)
    try:
        yield
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


def broker() -> Broker:
    if find_mosquitto() is None:
        raise SystemExit("benchmarks need Mosquitto (make broker, or apt install mosquitto)")
    return start_broker(prefer="mosquitto")


def broker_pid(b: Broker) -> int:
    proc = b._proc
    if proc is None:
        raise RuntimeError("the broker is not running")
    return proc.pid


def mosquitto_version() -> str:
    import subprocess

    path = find_mosquitto()
    if path is None:
        return "not installed"
    out = subprocess.run([path, "-h"], capture_output=True, text=True, timeout=10)
    first = (out.stdout or out.stderr).splitlines()
    return first[0].removeprefix("mosquitto version ").strip() if first else "unknown"


def settings_for(b: Broker, sim: Simulator, **sections: dict[str, Any]) -> Settings:
    base: dict[str, dict[str, Any]] = {
        "mqtt": {"host": b.host, "port": b.port, "node_id": f"bench{uuid.uuid4().hex[:6]}"},
        "runtime": {"library": str(sim.library), "abi": ABI, "model": str(sim.model),
                    "max_context_len": MAX_CONTEXT},
        "queue": {"on_shutdown": "abort"},
        "homeassistant": {"discovery": False},
    }
    for name, values in sections.items():
        base.setdefault(name, {}).update(values)
    return load_config(None, **base)


# ----------------------------------------------------------------------------- the timed engine


@dataclass
class EngineTimes:
    """perf_counter stamps taken on the runtime side, per job id (the request key)."""

    run: dict[str, float] = field(default_factory=dict)  # Service called engine.run
    tokens: dict[str, list[float]] = field(default_factory=lambda: defaultdict(list))
    final: dict[str, float] = field(default_factory=dict)


class TimedEngine:
    """The product's engine, unchanged, with a stamp before each event reaches the Service's sink.

    For `InProcessEngine` the stamp is taken on the runtime's thread right as the Session hands
    the token over, i.e. when the token leaves the runtime; everything after it (JSON, paho,
    socket, broker, subscriber) is what the bridge adds. For `ProcessEngine` it is taken after the
    token crossed the pipe from the child, so only the `final` timing is comparable there.
    """

    def __init__(self, inner: Callable[[RuntimeSettings, EngineSink], Engine],
                 settings: RuntimeSettings, sink: EngineSink, times: EngineTimes) -> None:
        self.times = times

        def timed(job_id: str, event: Event) -> None:
            if isinstance(event, TokenEvent):
                times.tokens[job_id].append(now())
            else:
                times.final[job_id] = now()
            sink(job_id, event)

        self.inner = inner(settings, timed)

    @property
    def ready(self) -> bool:
        return self.inner.ready

    def open(self) -> EngineInfo:
        return self.inner.open()

    def run(self, job_id: str, command: RunCommand) -> None:
        self.times.run[job_id] = now()
        self.inner.run(job_id, command)

    def abort(self, job_id: str, reason: AbortReason) -> None:
        self.inner.abort(job_id, reason)

    def close(self) -> None:
        self.inner.close()


ENGINES: dict[str, Callable[[RuntimeSettings, EngineSink], Engine]] = {
    "in-process": InProcessEngine,
    "child process": ProcessEngine,
}


@contextmanager
def daemon(settings: Settings, engine: str = "in-process") -> Iterator[tuple[Service, EngineTimes]]:
    times = EngineTimes()
    inner = ENGINES[engine]
    service = Service(settings, engine_factory=lambda s, sink: TimedEngine(inner, s, sink, times))
    service.start(connect_attempts=5)
    try:
        yield service, times
    finally:
        service.stop()


def set_nodelay(sock: object, on: bool) -> None:
    if isinstance(sock, socket.socket):
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1 if on else 0)


def nodelay_of(sock: object) -> bool | None:
    if not isinstance(sock, socket.socket):
        return None
    return bool(sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY))


# ----------------------------------------------------------------------------- the subscriber


@dataclass
class Reply:
    at: float
    payload: bytes


class Subscriber:
    """A client of the contract (MQTT 5, QoS 1 like the daemon's replies): publishes requests and
    timestamps every reply on arrival; parsing happens afterwards, off the clock.

    Its own socket has TCP_NODELAY, so only the daemon's setting varies between runs.
    """

    def __init__(self, b: Broker, topic: str, qos: int = 1) -> None:
        self.topic = topic
        self.replies: list[Reply] = []
        self._finals: dict[str, threading.Event] = defaultdict(threading.Event)
        self._lock = threading.Lock()
        self._acked = threading.Event()
        self.client = paho.Client(CallbackAPIVersion.VERSION2, client_id=f"bench-{uuid.uuid4().hex[:8]}",
                                  protocol=MQTTProtocolVersion.MQTTv5)
        self.client.on_message = self._on_message
        self.client.on_subscribe = lambda *a: self._acked.set()
        self.client.on_unsubscribe = lambda *a: self._acked.set()
        self.client.connect(b.host, b.port, keepalive=30)
        set_nodelay(self.client.socket(), True)
        self.client.loop_start()
        self._acked.clear()
        self.client.subscribe(topic, qos=qos)
        if not self._acked.wait(10):
            raise RuntimeError("the benchmark subscriber could not subscribe")

    def unsubscribe(self) -> None:
        """Stop receiving (the client stays connected to publish requests)."""
        self._acked.clear()
        self.client.unsubscribe(self.topic)
        if not self._acked.wait(10):
            raise RuntimeError("the benchmark subscriber could not unsubscribe")

    def _on_message(self, client: paho.Client, userdata: Any, msg: paho.MQTTMessage) -> None:
        t = now()
        payload = bytes(msg.payload)  # already bytes from paho's reader: no copy
        self.replies.append(Reply(t, payload))
        head = payload[:200]
        if b'"type":"final"' in head:
            rid = head[7:head.index(b'"', 7)].decode() if head.startswith(b'{"id":"') else ""
            with self._lock:
                event = self._finals[rid]
            event.set()

    def request(self, topic: str, request_id: str, prompt: str, **fields: Any) -> float:
        """Publish a request; returns the perf_counter stamp taken just before the publish call."""
        payload = json.dumps({"id": request_id, "prompt": prompt, "stream": True, **fields})
        with self._lock:
            self._finals[request_id].clear()
        t = now()
        self.client.publish(topic, payload, qos=1)
        return t

    def wait_final(self, request_id: str, timeout: float) -> None:
        with self._lock:
            event = self._finals[request_id]
        if not event.wait(timeout):
            raise TimeoutError(f"no final reply to {request_id!r} within {timeout:g} s")

    def parsed(self, request_id: str) -> tuple[dict[int, float], dict[str, Any] | None, int]:
        """(first arrival per token seq, the final reply, number of token messages incl. duplicates)."""
        tokens: dict[int, float] = {}
        final = None
        count = 0
        for r in list(self.replies):
            obj = json.loads(r.payload)
            if obj.get("id") != request_id:
                continue
            if obj.get("type") == "token":
                count += 1
                tokens.setdefault(obj["seq"], r.at)
            elif obj.get("type") == "final":
                final = obj
        return tokens, final, count

    def forget(self) -> None:
        self.replies = []

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()


class RawMqtt:
    """Just enough MQTT 3.1.1 on a plain blocking socket (CONNECT, SUBSCRIBE, QoS 0 PUBLISH) to
    measure Mosquitto without any client library."""

    def __init__(self, b: Broker, client_id: str) -> None:
        self.sock = socket.create_connection((b.host, b.port), timeout=10)
        set_nodelay(self.sock, True)
        self._send(0x10, _str("MQTT") + bytes([4, 2]) + (30).to_bytes(2, "big") + _str(client_id))
        if self.read_packet()[0] != 0x20:
            raise RuntimeError("no CONNACK from the broker")
        self.sock.settimeout(None)

    def subscribe(self, topic: str) -> None:
        self._send(0x82, (1).to_bytes(2, "big") + _str(topic) + b"\x00")
        if self.read_packet()[0] != 0x90:
            raise RuntimeError("no SUBACK from the broker")

    def publish(self, topic: str, payload: bytes) -> None:
        self._send(0x30, _str(topic) + payload)

    def read_packet(self) -> tuple[int, bytes]:
        header = self._read(1)[0]
        length, shift = 0, 0
        while True:
            byte = self._read(1)[0]
            length |= (byte & 0x7F) << shift
            shift += 7
            if not byte & 0x80:
                break
        return header, self._read(length)

    def close(self) -> None:
        with contextlib.suppress(OSError):
            self._send(0xE0, b"")
        self.sock.close()

    def _send(self, header: int, body: bytes) -> None:
        length, encoded = len(body), bytearray()
        while True:
            byte, length = length & 0x7F, length >> 7
            encoded.append(byte | (0x80 if length else 0))
            if not length:
                break
        self.sock.sendall(bytes([header]) + bytes(encoded) + body)

    def _read(self, n: int) -> bytes:
        data = b""
        while len(data) < n:
            chunk = self.sock.recv(n - len(data))
            if not chunk:
                raise OSError("the broker closed the connection")
            data += chunk
        return data


def _str(text: str) -> bytes:
    data = text.encode()
    return len(data).to_bytes(2, "big") + data


# ----------------------------------------------------------------------------- statistics


def percentile(values: list[float], p: float) -> float:
    """Nearest-rank percentile (p in 0..100); the value actually observed, no interpolation."""
    if not values:
        return float("nan")
    ordered = sorted(values)
    rank = max(1, min(len(ordered), math.ceil(p / 100 * len(ordered))))
    return ordered[rank - 1]
