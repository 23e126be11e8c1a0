"""A pool of daemons (the daemons' `[pool] group`) as one conversation agent.

Requests go to the pool's prompt topic and the members decide which of them answers, so the agent
holds no scheduling of its own. What differs from one daemon is whom it watches: the pool is
available while at least one member is (its retained record says `online` and its status is
`online`), a member that dies while answering does not fail the request (another member takes it
over and answers it), an abort goes to the member that last said it holds the request, and the
limits a request must stay within are the smallest any live member announces (any of them may be
the one that answers).
"""

from __future__ import annotations

import json
from dataclasses import fields

from homeassistant.components import mqtt
from homeassistant.core import HomeAssistant, callback
from homeassistant.helpers import device_registry as dr

from .client import Limits, RkllmClient, limits_of
from .const import DEVICE_MANUFACTURER, DOMAIN, LOGGER, STATUS_ONLINE

CONF_POOL = "pool"


def pool_prefix(base_topic: str, group: str) -> str:
    """`<base>/pool/<group>`: the pool's prompt topic is `<prefix>/prompt` (the daemons' default)."""
    return f"{base_topic}/pool/{group}"


def members_topic(base_topic: str, group: str) -> str:
    """The members' retained records, `<prefix>/members/<node>`."""
    return f"{pool_prefix(base_topic, group)}/members/+"


def pool_device_info(entry_id: str, group: str) -> dr.DeviceInfo:
    """The pool is a service of its own: it has no one daemon's MQTT device to belong to."""
    return dr.DeviceInfo(
        identifiers={(DOMAIN, entry_id)}, name=f"RKLLM pool {group}", manufacturer=DEVICE_MANUFACTURER,
        model="pool", entry_type=dr.DeviceEntryType.SERVICE,
    )


class RkllmPoolClient(RkllmClient):
    """The members of one pool as seen from Home Assistant, behind RkllmClient's interface."""

    def __init__(self, hass: HomeAssistant, *, base_topic: str, group: str, reply_topic: str) -> None:
        super().__init__(hass, base_topic=base_topic, node_id=group, reply_topic=reply_topic)
        self.group = group
        self.prefix = pool_prefix(base_topic, group)  # requests go to <prefix>/prompt
        self._base_topic = base_topic
        self._serving: dict[str, bool] = {}  # node -> its record says it takes work
        self._status: dict[str, bool] = {}  # node -> its status is online
        self._holders: dict[str, str] = {}  # request id -> the member that said it took it
        self._limits: dict[str, Limits] = {}  # node -> the limits its ~/state announces

    @property
    def members(self) -> list[str]:
        """The live members."""
        return sorted(n for n, serving in self._serving.items() if serving and self._status.get(n))

    async def async_start(self) -> None:
        self._unsubscribe = [
            await mqtt.async_subscribe(self.hass, members_topic(self._base_topic, self.group),
                                       self._on_record, qos=1),
            await mqtt.async_subscribe(self.hass, f"{self._base_topic}/+/status", self._on_member_status,
                                       qos=1),
            await mqtt.async_subscribe(self.hass, f"{self._base_topic}/+/state", self._on_member_state,
                                       qos=1),
            await mqtt.async_subscribe(self.hass, self.reply_topic, self._on_reply, qos=1),
            mqtt.async_subscribe_connection_status(self.hass, self._on_connection),
        ]

    @callback
    def _on_record(self, msg: mqtt.ReceiveMessage) -> None:
        node = msg.topic.rsplit("/", 1)[-1]
        try:
            record = json.loads(msg.payload) if msg.payload else None
        except ValueError:
            record = None
        self._serving[node] = isinstance(record, dict) and record.get("online") is True
        self._update_limits()
        self._set_online(bool(self.members))

    @callback
    def _on_member_status(self, msg: mqtt.ReceiveMessage) -> None:
        node = msg.topic.rsplit("/", 2)[-2]
        self._status[node] = msg.payload == STATUS_ONLINE
        if node in self._serving:
            LOGGER.debug("Pool %s member %s is %s", self.prefix, node, msg.payload)
        self._update_limits()
        self._set_online(bool(self.members))

    @callback
    def _on_member_state(self, msg: mqtt.ReceiveMessage) -> None:
        """Every daemon's limits are kept; only the members' count (see `_update_limits`)."""
        limits = limits_of(msg.payload)
        if limits is not None:
            self._limits[msg.topic.rsplit("/", 2)[-2]] = limits
            self._update_limits()

    @callback
    def _update_limits(self) -> None:
        """Each limit is the smallest the live members announce; the defaults while none does."""
        announced = [self._limits[node] for node in self.members if node in self._limits]
        if not announced:
            self.limits = Limits()
            return
        values = {}
        for field in fields(Limits):
            given = [v for limits in announced if (v := getattr(limits, field.name)) is not None]
            values[field.name] = min(given) if given else None
        self.limits = Limits(**values)

    @callback
    def _on_reply(self, msg: mqtt.ReceiveMessage) -> None:
        try:
            reply = json.loads(msg.payload)
        except ValueError:
            reply = None
        if isinstance(reply, dict) and isinstance(reply.get("node"), str):
            request_id = str(reply.get("id"))
            if reply.get("type") == "final":
                self._holders.pop(request_id, None)
            elif request_id in self._pending:
                self._holders[request_id] = reply["node"]
        super()._on_reply(msg)

    async def async_abort(self, request_id: str) -> None:
        """Abort on the member that holds it; without one known, on every member (a no-op elsewhere)."""
        holder = self._holders.pop(request_id, None)
        for node in [holder] if holder is not None else self.members:
            await mqtt.async_publish(self.hass, f"{self._base_topic}/{node}/abort", request_id, qos=1,
                                     retain=False)
