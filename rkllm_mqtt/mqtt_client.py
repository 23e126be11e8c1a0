"""paho-mqtt 2.x behind a small class: connect, auth, TLS, will, TCP_NODELAY, reconnect.

paho calls every callback on its one network thread, so the callbacks here only convert the message
and hand it on; the daemon's work happens on its own loop. Subscriptions and the `online` birth are
sent from `on_connect`, so an automatic reconnect restores both. QoS > 0 messages published while
disconnected stay in paho's queue and go out after the reconnect, which is what lets a final reply
survive a broker restart.
"""

from __future__ import annotations

import logging
import socket
import ssl
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import paho.mqtt.client as paho
from paho.mqtt.enums import CallbackAPIVersion, MQTTErrorCode, MQTTProtocolVersion
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties
from paho.mqtt.reasoncodes import ReasonCode
from tenacity import (
    RetryCallState,
    Retrying,
    retry_if_exception_type,
    stop_after_attempt,
    stop_any,
    stop_never,
    stop_when_event_set,
    wait_exponential,
)

from rkllm_mqtt.config import MqttSettings
from rkllm_mqtt.errors import RkllmMqttError
from rkllm_mqtt.protocol import Outgoing

log = logging.getLogger(__name__)


class _WantedDisconnectNoise(logging.Filter):
    """Drops paho 2.2's ERROR "Client is not connected ... Last known Connection State:
    MQTT_CS_DISCONNECTED". Its network thread sends our DISCONNECT, closes the socket and loops
    once more before `loop_stop()` has told it to end (paho/mqtt/client.py, `loop_forever` and
    `_loop`), so a clean shutdown logged that line one time in three. paho sets
    MQTT_CS_DISCONNECTED only for a disconnect the client asked for; a lost connection keeps
    its other states and stays logged."""

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        return not (message.startswith("Client is not connected")
                    and message.endswith("MQTT_CS_DISCONNECTED"))


_PAHO_LOG = logging.getLogger("paho.mqtt")
_PAHO_LOG.addFilter(_WantedDisconnectNoise())

CONNACK_TIMEOUT_S = 10.0
ONLINE = b"online"
OFFLINE = b"offline"
# CONNACK reasons a retry cannot fix: the user has to change the configuration. MQTT 5 reason
# code values (OASIS MQTT 5.0, 3.2.2.2); paho maps MQTT 3.1.1 return codes 1, 2, 4, 5 onto the
# first four.
_FATAL_CONNACK = frozenset({
    0x84,  # Unsupported Protocol Version
    0x85,  # Client Identifier not valid
    0x86,  # Bad User Name or Password
    0x87,  # Not authorized
    0x8A,  # Banned
})


class MqttConnectError(RkllmMqttError):
    """The broker could not be reached, or refused us."""


class _RetryableConnectError(MqttConnectError):
    pass


@dataclass(frozen=True, slots=True)
class InMessage:
    """An incoming PUBLISH, with the MQTT 5 request/response properties when present."""

    topic: str
    payload: bytes
    retain: bool = False
    response_topic: str | None = None
    correlation_data: bytes | None = None


class MqttClient:
    """One connection to the broker, reconnecting by itself after the first success."""

    def __init__(
        self,
        settings: MqttSettings,
        *,
        client_id: str | None = None,
        availability_topic: str | None = None,
        subscriptions: Sequence[str] = (),
        on_message: Callable[[InMessage], None] | None = None,
        on_connected: Callable[[], None] | None = None,
    ) -> None:
        self.settings = settings
        self.availability_topic = availability_topic
        self.subscriptions = tuple(subscriptions)
        self.qos = settings.qos
        self._on_message = on_message
        self._on_connected = on_connected
        self._connack: threading.Event = threading.Event()
        self._connack_reason: ReasonCode | None = None
        self._connected = threading.Event()
        self._closing = False
        self.v5 = settings.protocol == "5"
        self.client = self._build(client_id or settings.effective_client_id)

    # ------------------------------------------------------------------ setup

    def _build(self, client_id: str) -> paho.Client:
        s = self.settings
        protocol = MQTTProtocolVersion.MQTTv5 if self.v5 else MQTTProtocolVersion.MQTTv311
        client = paho.Client(CallbackAPIVersion.VERSION2, client_id=client_id, protocol=protocol,
                             clean_session=None if self.v5 else True)
        if s.username is not None:
            client.username_pw_set(s.username, s.read_password())
        if s.tls:
            try:
                client.tls_set(
                    ca_certs=str(s.tls_ca) if s.tls_ca else None,
                    certfile=str(s.tls_cert) if s.tls_cert else None,
                    keyfile=str(s.tls_key) if s.tls_key else None,
                    cert_reqs=ssl.CERT_REQUIRED,
                )
            except (OSError, ssl.SSLError) as err:
                raise MqttConnectError(f"TLS setup failed (mqtt.tls_ca/tls_cert/tls_key): {err}") from err
            if s.tls_insecure:
                client.tls_insecure_set(True)
        if self.availability_topic is not None:
            client.will_set(self.availability_topic, OFFLINE, qos=1, retain=True)
        client.reconnect_delay_set(min_delay=1, max_delay=30)
        client.enable_logger(_PAHO_LOG)  # paho's own log, in ours
        client.on_connect = self._handle_connect
        client.on_disconnect = self._handle_disconnect
        client.on_message = self._handle_message
        return client

    @property
    def connected(self) -> bool:
        return self._connected.is_set()

    def wait_connected(self, timeout: float) -> bool:
        return self._connected.wait(timeout)

    # ------------------------------------------------------------------ connect

    def connect(self, *, attempts: int | None = None, stop: threading.Event | None = None) -> None:
        """First connection, retried with exponential backoff; then paho reconnects by itself.

        `attempts=None` retries until `stop` is set (a daemon under systemd should wait for its
        broker); a refusal that retrying cannot fix (bad credentials) raises at once.
        """
        stop = stop or threading.Event()

        def sleep(seconds: float) -> None:  # set `stop` to cut a wait short
            stop.wait(seconds)

        retrying = Retrying(
            retry=retry_if_exception_type(_RetryableConnectError),
            wait=wait_exponential(multiplier=0.5, min=0.5, max=30),
            stop=stop_any(stop_after_attempt(attempts) if attempts else stop_never,
                          stop_when_event_set(stop)),
            sleep=sleep,
            before_sleep=self._log_retry,
            reraise=True,
        )
        retrying(self._attempt)
        self.client.loop_start()

    def _log_retry(self, state: RetryCallState) -> None:
        err = state.outcome.exception() if state.outcome else None
        delay = state.next_action.sleep if state.next_action else 0
        log.warning("MQTT connect attempt %d to %s:%d failed: %s; retrying in %.1f s",
                    state.attempt_number, self.settings.host, self.settings.port, err, delay)

    def _attempt(self) -> None:
        s = self.settings
        log.info("connecting to MQTT broker %s:%d (MQTT %s%s)", s.host, s.port, s.protocol,
                 ", TLS" if s.tls else "")
        self._connack.clear()
        self._connack_reason = None
        try:
            self.client.connect(s.host, s.port, keepalive=s.keepalive)
        except (OSError, ssl.SSLError) as err:
            raise _RetryableConnectError(str(err) or type(err).__name__) from err
        deadline = time.monotonic() + CONNACK_TIMEOUT_S
        while not self._connack.is_set() and time.monotonic() < deadline:
            rc = self.client.loop(timeout=0.1)
            if rc not in (MQTTErrorCode.MQTT_ERR_SUCCESS, MQTTErrorCode.MQTT_ERR_AGAIN):
                if self._connack.is_set():
                    break
                raise _RetryableConnectError(f"connection lost before CONNACK ({paho.error_string(rc)})")
        if not self._connack.is_set():
            self.client.disconnect()
            raise _RetryableConnectError(f"no CONNACK within {CONNACK_TIMEOUT_S:g} s")
        reason = self._connack_reason
        if reason is not None:
            if reason.value in _FATAL_CONNACK:
                raise MqttConnectError(f"broker {s.host}:{s.port} refused the connection: {reason} "
                                       "(check mqtt.username / password / client_id)")
            raise _RetryableConnectError(f"broker refused the connection: {reason}")

    # ------------------------------------------------------------------ paho callbacks (network thread)

    def _handle_connect(self, client: paho.Client, userdata: object, flags: object,
                        reason_code: ReasonCode, properties: Properties | None) -> None:
        try:
            if reason_code.is_failure:
                self._connack_reason = reason_code
                log.error("MQTT broker refused the connection: %s", reason_code)
                return
            sock = client.socket()
            if isinstance(sock, socket.socket):  # TLS sockets too (ssl.SSLSocket)
                # paho leaves Nagle on; with it each streamed token waits for the previous ACK.
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            if self.availability_topic is not None:
                client.publish(self.availability_topic, ONLINE, qos=1, retain=True)
            if self.subscriptions:
                topics: list[tuple[str, int]] = [(t, self.qos) for t in self.subscriptions]
                client.subscribe(topics)
            self._connected.set()
            log.info("connected to MQTT broker %s:%d", self.settings.host, self.settings.port)
            if self._on_connected is not None:
                self._on_connected()
        except Exception:  # a callback must never kill paho's thread
            log.exception("error in MQTT on_connect")
        finally:
            self._connack.set()

    def _handle_disconnect(self, client: paho.Client, userdata: object, flags: object,
                           reason_code: ReasonCode, properties: Properties | None) -> None:
        was_connected = self._connected.is_set()
        self._connected.clear()
        if not self._closing and was_connected:
            log.warning("disconnected from MQTT broker (%s); reconnecting", reason_code)

    def _handle_message(self, client: paho.Client, userdata: object, msg: paho.MQTTMessage) -> None:
        if self._on_message is None:
            return
        try:
            props = getattr(msg, "properties", None)
            response_topic = getattr(props, "ResponseTopic", None) if props else None
            correlation = getattr(props, "CorrelationData", None) if props else None
            self._on_message(InMessage(msg.topic, bytes(msg.payload), bool(msg.retain),
                                       response_topic, correlation))
        except Exception:  # a callback must never kill paho's thread
            log.exception("error handling MQTT message on %s", msg.topic)

    # ------------------------------------------------------------------ publish / close

    def publish(self, out: Outgoing, *, qos: int | None = None,
                retain: bool = False) -> paho.MQTTMessageInfo:
        """Publish a reply (thread-safe); correlation data goes out as the MQTT 5 property."""
        props = None
        if out.correlation_data is not None and self.v5:
            props = Properties(PacketTypes.PUBLISH)
            props.CorrelationData = out.correlation_data
        return self.client.publish(out.topic, out.payload, qos=self.qos if qos is None else qos,
                                   retain=retain, properties=props)

    def publish_raw(self, topic: str, payload: bytes | str, *, qos: int | None = None,
                    retain: bool = False) -> paho.MQTTMessageInfo:
        return self.client.publish(topic, payload, qos=self.qos if qos is None else qos,
                                   retain=retain)

    def unsubscribe(self, topic: str) -> None:
        """Stop receiving `topic`, now and after any reconnect."""
        self.subscriptions = tuple(t for t in self.subscriptions if t != topic)
        self.client.unsubscribe(topic)

    def close(self, *, timeout: float = 5.0) -> None:
        """Publish `offline` (when we own an availability topic), flush, and disconnect.

        paho sends in order, so once `offline` is acknowledged every earlier reply has gone out.
        """
        self._closing = True
        try:
            if self.availability_topic is not None:
                info = self.client.publish(self.availability_topic, OFFLINE, qos=1, retain=True)
                _wait(info, timeout)
            self.client.disconnect()
        finally:
            self.client.loop_stop()
            self._connected.clear()


def _wait(info: paho.MQTTMessageInfo, timeout: float) -> None:
    try:
        info.wait_for_publish(timeout)
    except (RuntimeError, ValueError) as err:  # not queued / not connected
        log.debug("publish not confirmed: %s", err)
