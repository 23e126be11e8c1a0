"""`rkllm-mqtt run`: serve until SIGTERM/SIGINT, telling systemd how it goes."""

from __future__ import annotations

import logging
import signal
import threading
from types import FrameType

from rkllm_mqtt import __version__
from rkllm_mqtt.config import Settings
from rkllm_mqtt.mqtt_client import MqttConnectError
from rkllm_mqtt.sdnotify import Notifier
from rkllm_mqtt.service import Service

log = logging.getLogger(__name__)

_SIGNALS = {signal.SIGTERM: "SIGTERM", signal.SIGINT: "SIGINT"}


def run_service(settings: Settings, *, notifier: Notifier | None = None) -> int:
    """Serve; expected failures raise RkllmMqttError (the CLI turns them into exit codes)."""
    notifier = notifier or Notifier()
    stop = threading.Event()

    def on_signal(signum: int, frame: FrameType | None) -> None:
        if stop.is_set() and signum == signal.SIGINT:
            raise KeyboardInterrupt  # a second Ctrl-C: leave now
        log.info("%s received: stopping", _SIGNALS.get(signal.Signals(signum), signum))
        stop.set()

    previous = {sig: signal.signal(sig, on_signal) for sig in _SIGNALS}
    try:
        log.info("rkllm-mqtt %s starting (node %s, broker %s:%d)", __version__,
                 settings.mqtt.node_id, settings.mqtt.host, settings.mqtt.port)
        service = Service(settings, notifier=notifier)
        notifier.status("connecting to the MQTT broker")
        try:
            service.start(stop=stop)
        except MqttConnectError:
            if stop.is_set():
                log.info("stopped before the broker answered")
                return 0
            raise
        if stop.is_set():
            notifier.stopping()
            service.stop()
            return 0
        notifier.ready(f"serving {service.info.model} on {service.topics.prompt}")
        while not stop.wait(0.5):
            if not service.alive:
                log.error("the service loop ended unexpectedly")
                break
        notifier.stopping()
        service.stop()
        return 0
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
