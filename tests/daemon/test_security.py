"""The recommended broker setup, shown to work against a real Mosquitto: TLS with client certificates,
passwords, and the ACL shipped in config/mosquitto-acl.example. And no secret in any log line,
`check` output or exception text."""

from __future__ import annotations

import io
import logging
import os
import ssl
import subprocess
import sys
import threading
import uuid
from pathlib import Path

import paho.mqtt.client as paho
import pytest
from paho.mqtt.enums import CallbackAPIVersion, MQTTProtocolVersion

from rkllm_mqtt.commands.ask import ask
from rkllm_mqtt.errors import RkllmMqttError
from rkllm_mqtt.service import Service
from rkllm_mqtt.simulator import expected_answer

pytestmark = pytest.mark.timeout(120)

REPO = Path(__file__).resolve().parents[2]
ACL_EXAMPLE = REPO / "config" / "mosquitto-acl.example"


class TlsClient:
    """A test client over TLS with a client certificate and a user; records what it receives."""

    def __init__(self, broker, tls_files, user: str, password: str, topics=()) -> None:
        self.received: list[paho.MQTTMessage] = []
        self.published: dict[int, object] = {}
        self._cond = threading.Condition()
        self.client = paho.Client(CallbackAPIVersion.VERSION2, client_id=f"{user}-{uuid.uuid4().hex[:6]}",
                                  protocol=MQTTProtocolVersion.MQTTv5)
        self.client.username_pw_set(user, password)
        self.client.tls_set(ca_certs=str(tls_files["ca"]), certfile=str(tls_files["client_cert"]),
                            keyfile=str(tls_files["client_key"]), cert_reqs=ssl.CERT_REQUIRED)
        self.client.on_message = self._on_message
        self.client.on_publish = self._on_publish
        subscribed = threading.Event()
        self.client.on_subscribe = lambda *a: subscribed.set()
        self.client.connect(broker.host, broker.port)
        self.client.loop_start()
        if topics:
            self.client.subscribe([(t, 1) for t in topics])
            assert subscribed.wait(10)

    def _on_message(self, client, userdata, msg) -> None:
        with self._cond:
            self.received.append(msg)
            self._cond.notify_all()

    def _on_publish(self, client, userdata, mid, reason_code, properties) -> None:
        with self._cond:
            self.published[mid] = reason_code
            self._cond.notify_all()

    def publish(self, topic: str, payload: str):
        """Publish at QoS 1 and return the broker's PUBACK reason code."""
        info = self.client.publish(topic, payload, qos=1)
        with self._cond:
            assert self._cond.wait_for(lambda: info.mid in self.published, 10)
            return self.published[info.mid]

    def wait_for(self, pred, timeout: float = 20):
        with self._cond:
            found: list[paho.MQTTMessage] = []
            ok = self._cond.wait_for(
                lambda: found.extend(m for m in self.received if pred(m)) or found, timeout)
            assert ok, [(m.topic, m.payload[:100]) for m in self.received[-5:]]
            return found[0]

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()


def test_daemon_under_tls_client_certificates_and_the_example_acl(private_broker, daemon_settings,
                                                                  tls_files, tls_server, tmp_path):
    node = f"acl{uuid.uuid4().hex[:6]}"
    acl = ACL_EXAMPLE.read_text().replace("kitchen", node)
    users = {f"rkllm-{node}": "daemon pw", "homeassistant": "ha pw", "guest": "guest pw"}
    b = private_broker(users=users, tls=tls_server, acl=acl)
    settings = daemon_settings(b, mqtt={
        "node_id": node, "username": f"rkllm-{node}", "password": "daemon pw", "tls": True,
        "tls_ca": str(tls_files["ca"]), "tls_cert": str(tls_files["client_cert"]),
        "tls_key": str(tls_files["client_key"])}, homeassistant={"discovery": True})
    svc = Service(settings)
    svc.start(connect_attempts=3)
    ha = guest = None
    try:
        ha = TlsClient(b, tls_files, "homeassistant", "ha pw",
                       topics=(f"rkllm/{node}/#", "homeassistant/device/#", "rkllm/reply/#"))
        # everything the daemon publishes got through its ACL
        ha.wait_for(lambda m: m.topic == f"rkllm/{node}/status" and m.payload == b"online")
        ha.wait_for(lambda m: m.topic == f"homeassistant/device/{node}/config" and m.payload)
        assert ha.publish(f"rkllm/{node}/prompt",
                          '{"id": "ha1", "prompt": "allowed", "response_topic": "rkllm/reply/ha"}'
                          ) == 0
        final = ha.wait_for(lambda m: m.topic == "rkllm/reply/ha" and b'"type":"final"' in m.payload)
        assert expected_answer("allowed").encode() in final.payload

        guest = TlsClient(b, tls_files, "guest", "guest pw")
        refused = guest.publish(f"rkllm/{node}/prompt", '{"id": "intruder", "prompt": "let me in"}')
        assert refused == paho.ReasonCode(paho.PacketTypes.PUBACK, "Not authorized")
        assert ha.publish(f"rkllm/{node}/prompt", '{"id": "ha2", "prompt": "after"}') == 0
        ha.wait_for(lambda m: m.topic == f"rkllm/{node}/response" and b'"ha2"' in m.payload
                    and b'"type":"final"' in m.payload)
        assert not [m for m in ha.received if b"intruder" in m.payload]
        assert svc.state_payload()["requests_total"] == 2  # the intruder's prompt never arrived
    finally:
        for client in (ha, guest):
            if client is not None:
                client.close()
        svc.stop()


def test_a_client_without_a_certificate_is_refused(private_broker, tls_files, tls_server):
    b = private_broker(users={"homeassistant": "ha pw"}, tls=tls_server)
    client = paho.Client(CallbackAPIVersion.VERSION2, protocol=MQTTProtocolVersion.MQTTv5)
    client.username_pw_set("homeassistant", "ha pw")
    client.tls_set(ca_certs=str(tls_files["ca"]))
    accepted = threading.Event()
    client.on_connect = lambda c, u, f, rc, p: rc == 0 and accepted.set()
    try:
        client.connect(b.host, b.port)
    except (ssl.SSLError, OSError):
        return  # refused in the handshake
    client.loop_start()
    try:  # TLS 1.3 reports the missing certificate after the handshake: no CONNACK ever comes
        assert not accepted.wait(3)
    finally:
        client.loop_stop()


# ----------------------------------------------------------------------------- secrets

SECRET = "hunter2-Zq8#secret"


def test_no_secret_in_logs_check_output_or_exceptions(private_broker, daemon_settings, sim_library,
                                                      sim_model, tmp_path, caplog):
    caplog.set_level(logging.DEBUG)
    b = private_broker(users={"daemon": SECRET})
    seen: list[str] = []

    # a good connection, a request, and the daemon's whole life at DEBUG
    settings = daemon_settings(b, mqtt={"username": "daemon", "password": SECRET},
                               runtime={"isolation": "process"})
    seen += [repr(settings), str(settings), settings.model_dump_json()]
    svc = Service(settings)
    svc.start(connect_attempts=3)
    try:
        out, err = io.StringIO(), io.StringIO()
        assert ask(settings, "hello", timeout=20, stream_to=out, errors_to=err) == 0
        seen += [out.getvalue(), err.getvalue()]
    finally:
        svc.stop()

    # a wrong password, and a password file that cannot be read: the errors name no secret
    for mqtt in ({"username": "daemon", "password": SECRET + "-wrong"},
                 {"username": "daemon", "password_file": str(tmp_path / "missing")}):
        with pytest.raises(RkllmMqttError) as raised:
            Service(daemon_settings(b, mqtt=mqtt)).start(connect_attempts=1)
        seen += [str(raised.value), repr(raised.value)]

    # `check` and `run` from the command line, the password from the environment and from a file
    config = tmp_path / "config.toml"
    password_file = tmp_path / "password"
    password_file.write_text(SECRET + "\n")
    config.write_text(f"""
[mqtt]
host = "{b.host}"
port = {b.port}
username = "daemon"
password_file = "{password_file}"

[runtime]
library = "{sim_library}"
abi = "1.2"
model = "{sim_model}"
""")
    env = {**os.environ, "RKLLM_MQTT_MQTT__PASSWORD": SECRET}
    check = subprocess.run([sys.executable, "-m", "rkllm_mqtt", "check", "--config", str(config)],
                           capture_output=True, text=True, timeout=60, cwd=REPO)
    assert check.returncode == 0, check.stderr
    both = subprocess.run([sys.executable, "-m", "rkllm_mqtt", "check", "--config", str(config)],
                          capture_output=True, text=True, timeout=60, cwd=REPO, env=env)
    assert both.returncode == 2  # password and password_file together: a config error
    seen += [check.stdout, check.stderr, both.stdout, both.stderr]

    seen += [caplog.text] + [str(r.args) for r in caplog.records]
    leaks = [text for text in seen if SECRET in text or SECRET.encode().hex() in text]
    assert not leaks
