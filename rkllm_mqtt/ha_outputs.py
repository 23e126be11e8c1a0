"""What the daemon publishes for Home Assistant: `~/state`, `~/last_response`, `~/event`, discovery.

The service decides *when* (after an answer, an error, a reconnect, HA's `online`); this module
holds *what* goes out and the bounds HA puts on it, and keeps the retained values it must publish
again after a reconnect. Everything is published from the service loop.
"""

from __future__ import annotations

import json
from typing import Any

from rkllm_mqtt.config import Settings
from rkllm_mqtt.discovery import build_discovery
from rkllm_mqtt.mqtt_client import MqttClient
from rkllm_mqtt.runtime.contract import ErrorCode, FinishReason, StatePayload, Timing, Usage
from rkllm_mqtt.topics import Topics

LAST_RESPONSE_CHARS = 255  # HA's limit for a state string
ATTRIBUTES_MAX_BYTES = 16000  # HA's recorder drops attributes over 16384 bytes


def compact_json(obj: Any) -> bytes:
    return json.dumps(obj, ensure_ascii=False, separators=(",", ":")).encode("utf-8")


def bounded_json(obj: dict[str, Any], text: str, limit: int = ATTRIBUTES_MAX_BYTES) -> bytes:
    """`obj` plus "text" and "truncated", the text cut so the whole JSON stays under `limit`."""
    data = compact_json({**obj, "text": text, "truncated": False})
    if len(data) <= limit:
        return data
    cut = text
    while len(data) > limit and cut:
        over = len(data) - limit
        cut = cut[:max(0, len(cut) - max(over // 4, 1))]  # ≤ 4 bytes (and escapes) per character
        data = compact_json({**obj, "text": cut, "truncated": True})
    return data


def discovery_payload(settings: Settings, model: str | None) -> bytes:
    """The retained device discovery, or b"" (which removes the device) when discovery is off."""
    if not settings.homeassistant.discovery:
        return b""
    return compact_json(build_discovery(settings, model=model or None))


class HomeAssistantOutputs:
    """The HA-facing topics of one daemon; remembers the retained ones to re-announce them."""

    def __init__(self, mqtt: MqttClient, topics: Topics, settings: Settings) -> None:
        self._mqtt = mqtt
        self._topics = topics
        self._settings = settings
        self._last_state: bytes | None = None
        self._last_response: tuple[bytes, bytes] | None = None  # state, attributes

    def state(self, payload: StatePayload, *, force: bool = False) -> None:
        """Retained `~/state`, only when it changed (or `force`, after a reconnect)."""
        data = compact_json(payload)
        if force or data != self._last_state:
            self._last_state = data
            self._mqtt.publish_raw(self._topics.state, data, retain=True)

    def last_response(self, request_id: str | int | None, text: str, finish_reason: FinishReason,
                      usage: Usage, timing: Timing) -> None:
        short = text if len(text) <= LAST_RESPONSE_CHARS else text[:LAST_RESPONSE_CHARS - 1] + "…"
        attributes = bounded_json({"id": request_id, "finish_reason": finish_reason,
                                   "usage": usage, "timing": timing}, text)
        self._last_response = (short.encode("utf-8"), attributes)
        self._publish_last_response()

    def _publish_last_response(self) -> None:
        if self._last_response is not None:
            state, attributes = self._last_response
            self._mqtt.publish_raw(self._topics.last_response, state, retain=True)
            self._mqtt.publish_raw(self._topics.attributes, attributes, retain=True)

    def completed(self, request_id: str | int | None, text: str, finish_reason: FinishReason,
                  usage: Usage, timing: Timing) -> None:
        self._event({"event_type": "completed", "id": request_id, "finish_reason": finish_reason,
                     "usage": usage, "timing": timing}, text=text)

    def failed(self, request_id: str | int | None, code: ErrorCode, message: str) -> None:
        if code is ErrorCode.ABORTED:
            self._event({"event_type": "aborted", "id": request_id, "message": message})
        else:
            self._event({"event_type": "error", "id": request_id, "code": str(code),
                         "message": message})

    def _event(self, payload: dict[str, Any], *, text: str | None = None) -> None:
        data = bounded_json(payload, text) if text is not None else compact_json(payload)
        self._mqtt.publish_raw(self._topics.event, data)

    def discovery(self, model: str | None) -> None:
        self._mqtt.publish_raw(self._topics.discovery, discovery_payload(self._settings, model),
                               qos=1, retain=True)

    def announce(self, state: StatePayload, model: str | None) -> None:
        """Everything retained again: after a reconnect the broker may have lost it."""
        self.discovery(model)
        self.state(state, force=True)
        self._publish_last_response()
