"""The paho wrapper against a real Mosquitto: auth, TLS, will, birth, TCP_NODELAY, reconnect."""

from __future__ import annotations

import logging
import queue
import socket
import threading
import time

import pytest

from rkllm_mqtt.broker import free_port
from rkllm_mqtt.config import MqttSettings
from rkllm_mqtt.mqtt_client import InMessage, MqttClient, MqttConnectError
from rkllm_mqtt.protocol import Outgoing


def settings(b, **kw) -> MqttSettings:
    return MqttSettings(host=b.host, port=b.port, node_id="t", **kw)


@pytest.fixture
def clients():
    made: list[MqttClient] = []

    def make(s: MqttSettings, **kw) -> tuple[MqttClient, queue.Queue[InMessage]]:
        inbox: queue.Queue[InMessage] = queue.Queue()
        c = MqttClient(s, on_message=inbox.put, **kw)
        made.append(c)
        return c, inbox

    yield make
    for c in made:
        c.close(timeout=1)


@pytest.mark.parametrize("protocol", ["5", "3.1.1"])
def test_birth_subscriptions_nodelay_and_offline(broker, clients, probe_factory, protocol):
    probe = probe_factory(broker, topics=("client/#",))
    c, inbox = clients(settings(broker, protocol=protocol), client_id=f"c-{protocol}",
                       availability_topic=f"client/{protocol}/status",
                       subscriptions=[f"client/{protocol}/in"])
    c.connect(attempts=3)
    online = probe.wait_for(lambda m: m.topic == f"client/{protocol}/status")
    assert online.payload == b"online"
    sock = c.client.socket()
    assert sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY) != 0
    probe.publish(f"client/{protocol}/in", b"hello", response_topic="client/x/reply" if protocol == "5"
                  else None, correlation_data=b"\x00cd" if protocol == "5" else None)
    msg = inbox.get(timeout=10)
    assert msg.topic == f"client/{protocol}/in" and msg.payload == b"hello"
    if protocol == "5":
        assert (msg.response_topic, msg.correlation_data) == ("client/x/reply", b"\x00cd")
    c.publish(Outgoing(f"client/{protocol}/out", b"{}", b"corr"))
    out = probe.wait_for(lambda m: m.topic == f"client/{protocol}/out")
    assert out.correlation_data == (b"corr" if protocol == "5" else None)
    c.close()
    probe.wait_for(lambda m: m.topic == f"client/{protocol}/status" and m.payload == b"offline")


def test_will_is_offline_when_the_connection_dies(broker, clients, probe_factory):
    probe = probe_factory(broker, topics=("will/#",))
    c, _ = clients(settings(broker, keepalive=5), client_id="will-test",
                   availability_topic="will/status")
    c.connect(attempts=3)
    probe.wait_for(lambda m: m.topic == "will/status" and m.payload == b"online")
    c.client.loop_stop()
    c.client.socket().shutdown(socket.SHUT_RDWR)  # no DISCONNECT: the broker sends the will
    probe.wait_for(lambda m: m.topic == "will/status" and m.payload == b"offline")


def test_first_connect_retries_with_a_log_line_per_attempt(caplog, clients, private_broker):
    port = free_port()
    c, _ = clients(MqttSettings(host="127.0.0.1", port=port, node_id="t"),
                       subscriptions=["late/in"])
    caplog.set_level(logging.INFO, logger="rkllm_mqtt.mqtt_client")
    with pytest.raises(MqttConnectError):
        c.connect(attempts=2)
    retries = [r for r in caplog.records if "MQTT connect attempt 1" in r.getMessage()]
    assert len(retries) == 1 and "retrying in" in retries[0].getMessage()

    # a broker that appears later is found by the retry loop
    done = threading.Event()
    errors: list[BaseException] = []

    def connect() -> None:
        try:
            c.connect(attempts=20)
        except BaseException as err:
            errors.append(err)
        finally:
            done.set()

    threading.Thread(target=connect, daemon=True).start()
    b = private_broker(port=port)
    assert done.wait(30) and not errors
    assert c.connected and b.running


def test_reconnect_resubscribes_and_delivers_queued_publishes(private_broker, clients,
                                                             probe_factory):
    b = private_broker()
    c, inbox = clients(settings(b), client_id="reconnector", availability_topic="rc/status",
                       subscriptions=["rc/in"])
    c.connect(attempts=3)
    b.stop()
    deadline = time.monotonic() + 10
    while c.connected and time.monotonic() < deadline:
        time.sleep(0.01)
    assert not c.connected
    c.publish(Outgoing("rc/out", b"while-down"))  # QoS 1: kept by paho until the reconnect
    b.start()
    probe = probe_factory(b, topics=("rc/#",), client_id="rc-probe")
    assert c.wait_connected(30)
    probe.wait_for(lambda m: m.topic == "rc/out" and m.payload == b"while-down", timeout=30)
    probe.wait_for(lambda m: m.topic == "rc/status" and m.payload == b"online")
    probe.publish("rc/in", b"after-restart")
    assert inbox.get(timeout=10).payload == b"after-restart"


def test_bad_password_fails_at_once(private_broker, clients):
    b = private_broker(users={"daemon": "s3cret"})
    c, _ = clients(settings(b, username="daemon", password="wrong"))
    with pytest.raises(MqttConnectError, match="refused") as info:
        c.connect(attempts=None)  # would retry forever if the refusal were treated as transient
    assert "wrong" not in str(info.value)


def test_password_file_and_tls_with_client_certificate(private_broker, clients, probe_factory,
                                                       tls_files, tls_server, tmp_path):
    b = private_broker(users={"daemon": "s3cret pw"}, tls=tls_server)
    pw = tmp_path / "pw"
    pw.write_text("s3cret pw\n")
    s = settings(b, username="daemon", password_file=pw, tls=True, tls_ca=tls_files["ca"],
                 tls_cert=tls_files["client_cert"], tls_key=tls_files["client_key"])
    c, inbox = clients(s, client_id="tls-daemon", subscriptions=["tls/in"])
    c.connect(attempts=2)
    assert c.connected
    assert c.client.socket().getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY) != 0
    c.publish(Outgoing("tls/in", b"loop"))
    assert inbox.get(timeout=10).payload == b"loop"
    # without the client certificate the broker refuses the handshake
    bare, _ = clients(settings(b, username="daemon", password_file=pw, tls=True,
                               tls_ca=tls_files["ca"]), client_id="tls-nocert")
    with pytest.raises(MqttConnectError):
        bare.connect(attempts=1)


def test_a_stop_request_ends_the_first_connect_retries(clients):
    c, _ = clients(MqttSettings(host="127.0.0.1", port=free_port(), node_id="t"))
    stop = threading.Event()
    outcome: list[BaseException] = []

    def connect() -> None:
        try:
            c.connect(attempts=None, stop=stop)  # would retry forever
        except BaseException as err:
            outcome.append(err)

    thread = threading.Thread(target=connect, daemon=True)
    thread.start()
    stop.set()
    thread.join(10)
    assert not thread.is_alive() and isinstance(outcome[0], MqttConnectError)


def test_a_clean_close_logs_no_paho_error(caplog, broker, clients):
    """paho 2.2's network thread may loop once more after sending our DISCONNECT and log
    "Client is not connected" at ERROR; `loop()` on the closed client takes that same path."""
    c, _ = clients(settings(broker), client_id="clean-close", availability_topic="clean/status")
    c.connect(attempts=3)
    with caplog.at_level(logging.DEBUG, logger="paho.mqtt"):
        c.close()
        c.client.loop(timeout=0)  # paho's _loop on a client that disconnected as asked
    assert not [r for r in caplog.records if r.levelno >= logging.ERROR], caplog.text
