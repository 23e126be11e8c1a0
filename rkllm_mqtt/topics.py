"""Every topic of one daemon, built in one place from `mqtt.base_topic`, `mqtt.node_id` and HA's prefix.

The service subscribes and publishes with it, `ask` addresses a daemon with it, discovery writes
it into Home Assistant's config: a rename here reaches all three. The names follow the README's
`~/…` topics (`~` being `<base_topic>/<node_id>`).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from rkllm_mqtt.config import Settings


@dataclass(frozen=True, slots=True)
class Topics:
    prefix: str  # ~
    reply_base: str  # <base_topic>/reply: private reply topics (allowed by default)
    discovery: str  # <discovery_prefix>/device/<node_id>/config, retained device discovery
    prompt: str
    abort: str
    response: str
    status: str
    state: str
    last_response: str
    attributes: str
    event: str

    @classmethod
    def build(cls, base_topic: str, node_id: str, discovery_prefix: str = "homeassistant") -> Topics:
        prefix = f"{base_topic}/{node_id}"
        return cls(
            prefix=prefix,
            reply_base=f"{base_topic}/reply",
            discovery=f"{discovery_prefix}/device/{node_id}/config",
            prompt=f"{prefix}/prompt",
            abort=f"{prefix}/abort",
            response=f"{prefix}/response",
            status=f"{prefix}/status",
            state=f"{prefix}/state",
            last_response=f"{prefix}/last_response",
            attributes=f"{prefix}/last_response/attributes",
            event=f"{prefix}/event",
        )

    @classmethod
    def of(cls, settings: Settings) -> Topics:
        return cls.build(settings.mqtt.base_topic, settings.mqtt.node_id,
                         settings.homeassistant.discovery_prefix)

    @property
    def commands(self) -> tuple[str, str]:
        """The topics the daemon acts on (a retained message there is refused)."""
        return (self.prompt, self.abort)

    @property
    def own(self) -> frozenset[str]:
        """The daemon's topics under `~` that no client may use as its response_topic."""
        return frozenset({self.prompt, self.abort, self.status, self.state, self.last_response,
                          self.attributes, self.event})

    def __getitem__(self, name: str) -> str:
        """`topics["prompt"]`, as the README writes `~/prompt`."""
        value = getattr(self, name)
        if not isinstance(value, str):
            raise KeyError(name)
        return value


@dataclass(frozen=True, slots=True)
class PoolTopics:
    """The topics of one pool (`[pool] group`): shared by its members and its clients.

    Everything but the prompt topic lives under `<base_topic>/pool/<group>/`, so a client that
    knows the base topic and the group finds the members, their load and the pool's replies.
    """

    group: str
    prompt: str  # where clients send requests (members take them through `shared`)
    response: str  # replies to a pool request that names no response_topic
    members: str  # members/+: one retained record per member (node, load, model)
    config: str  # retained, the same from every member: the pool exists (Home Assistant discovers it)
    ledger: str  # what each member took and finished, so the others can take over
    status: str  # <base_topic>/+/status: every daemon's availability (its MQTT will)

    @classmethod
    def build(cls, base_topic: str, group: str, prompt: str | None = None) -> PoolTopics:
        root = f"{base_topic}/pool/{group}"
        return cls(group=group, prompt=prompt or f"{root}/prompt", response=f"{root}/response",
                   members=f"{root}/members", config=f"{root}/config", ledger=f"{root}/ledger",
                   status=f"{base_topic}/+/status")

    @classmethod
    def of(cls, settings: Settings) -> PoolTopics | None:
        """The pool this daemon is a member of; None when `[pool] group` is not set."""
        pool = settings.pool
        if pool.group is None:
            return None
        return cls.build(settings.mqtt.base_topic, pool.group, pool.topic)

    @property
    def shared(self) -> str:
        """The shared subscription (MQTT 5, 4.8.2): the broker gives each request to one member."""
        return f"$share/{self.group}/{self.prompt}"

    def member(self, node: str) -> str:
        return f"{self.members}/{node}"

    @property
    def subscriptions(self) -> tuple[str, ...]:
        """What a member subscribes to on its main connection."""
        return (self.shared, f"{self.members}/+", self.ledger, self.status)

    @staticmethod
    def node_of_status(topic: str) -> str:
        """`<base>/<node>/status` -> node."""
        return topic.rsplit("/", 2)[-2]
