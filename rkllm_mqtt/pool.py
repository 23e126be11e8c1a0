"""A pool of daemons on one prompt topic: work goes where there is room, and a dead member loses nothing.

The broker spreads the pool's requests over the members (an MQTT 5 shared subscription), but it
does not balance them: Mosquitto hands them out round-robin whatever each member holds, and the
requests it gave a member that dies (kill -9, power loss) are gone, never redelivered to another.
So the members coordinate among themselves, over these topics:

- `<base>/pool/<group>/members/<node>`, retained: each member's load (running + queued), capacity
  (`queue.max_pending` + 1) and model. Whether it is alive is its `~/status`, which its MQTT will
  turns `offline` the moment its connection dies.
- `<base>/pool/<group>/ledger`: a member that keeps a request, or passes it on to a peer, says so
  (`assign`, with the request itself), and says `done` once its final reply is out. Every member
  holds the open entries of every other.
- `<base>/pool/<group>/config`, retained, the same bytes from every member: the pool exists (Home
  Assistant discovers pools there; the records change too often for that).

Decisions, all taken by the member that holds a request:
- Room: the broker's round-robin spreads requests as they arrive; a member that has no room for one
  passes it to the least-loaded live peer with room (at most `pool.max_hops` times, so two stale
  views cannot bounce it for ever). Imbalance is fixed by pulling, not pushing: a member that falls
  idle asks the member with the most queued requests for one (`want`), and that member alone passes
  it the request that would wait longest. Pushing to whoever looks idle sends a burst to the same
  member from every side; a pull is answered by one member, about one request.
- A dead member: when its status turns `offline`, the live member with the smallest node id assigns
  its open entries again. Another member answers them, once. A request the broker delivered to a
  member that died before it could say so on the ledger is caught by a second, plain subscription
  every member holds on the pool topic (its own connection, so the broker sends it a copy of every
  request): a request with an id that no member has taken within CLAIM_TIMEOUT_S is taken by that
  same smallest live member.
- Stickiness: the ledger says who took each conversation's last turn; its next turn goes there while
  that member is alive and has room, else by load (clients send the whole chat, so any member can
  replay it).
- Duplicates: an id open on a live member, or finished within `queue.dedupe_window_s`, is not taken
  again, so a client may repeat a request (same id) it has heard nothing about.
"""

from __future__ import annotations

import base64
import json
import logging
import threading
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass, replace
from functools import partial
from typing import Any, Protocol

from paho.mqtt.client import topic_matches_sub

from rkllm_mqtt.mqtt_client import InMessage, MqttClient
from rkllm_mqtt.protocol import Request, RequestPolicy, RequestRejected, parse_request, reply
from rkllm_mqtt.scheduler import RecentIds
from rkllm_mqtt.topics import PoolTopics

log = logging.getLogger(__name__)

ONLINE = b"online"
MAX_STICKY = 1024  # conversations whose last member is remembered
MAX_ENTRIES = 10_000  # open entries kept (a `done` missed during a reconnect must not pile up)
CLAIM_TIMEOUT_S = 2.0  # a pool request no member has taken for this long is taken over
WANT_RETRY_S = 0.5  # an idle member asks again for work after this long without an answer


@dataclass(slots=True)
class Member:
    """A peer as the last records showed it."""

    node: str
    load: int = 0
    queued: int = 0
    capacity: int = 1
    model: str | None = None
    online: bool | None = None  # its ~/status (the MQTT will makes it `offline` when it dies)
    serving: bool = False  # its member record says it takes work (not leaving)

    @property
    def live(self) -> bool:
        return self.online is True and self.serving

    @property
    def dead(self) -> bool:
        return self.online is False

    @property
    def has_room(self) -> bool:
        return self.load < self.capacity


@dataclass(frozen=True, slots=True)
class Entry:
    """A pool request some member owns until its `done`: what another needs to answer it instead."""

    key: str
    owner: str
    request: dict[str, Any]  # the request as JSON, its id and response_topic filled in
    correlation_data: bytes | None
    hops: int

    @property
    def conversation(self) -> str | None:
        value = self.request.get("conversation")
        return value if isinstance(value, str) else None

    @classmethod
    def of(cls, request: Request, owner: str, hops: int = 0) -> Entry:
        body = request.model_dump(mode="json", by_alias=True, exclude_defaults=True)
        body["id"] = request.target.id
        body["response_topic"] = request.target.topic
        return cls(request.key, owner, body, request.target.correlation_data, hops)

    def assign_message(self, sender: str) -> bytes:
        corr = self.correlation_data
        return _dumps({"op": "assign", "id": self.key, "node": self.owner, "from": sender,
                       "hops": self.hops, "request": self.request,
                       "correlation_data": base64.b64encode(corr).decode() if corr else None})

    @classmethod
    def from_assign(cls, obj: dict[str, Any]) -> Entry:
        """Raises ValueError, KeyError or TypeError on a malformed ledger message."""
        request, owner, hops = obj["request"], obj["node"], obj.get("hops", 0)
        if not isinstance(request, dict) or not isinstance(owner, str) or not isinstance(hops, int):
            raise ValueError("an assign needs request (object), node (string) and hops (integer)")
        corr = obj.get("correlation_data")
        return cls(str(obj["id"]), owner, request,
                   base64.b64decode(corr) if isinstance(corr, str) else None, hops)


class PoolView:
    """What one member knows of the pool: peers, open entries, finished ids, sticky conversations.

    Plain state, no MQTT; only the service loop touches it.
    """

    def __init__(self, node: str, *, dedupe_window_s: float) -> None:
        self.node = node
        self.members: dict[str, Member] = {}
        self.entries: dict[str, Entry] = {}
        self._done = RecentIds(dedupe_window_s)
        self._sticky: OrderedDict[str, str] = OrderedDict()
        # requests seen on the pool topic that no member has taken yet: key -> (request, seen at)
        self.unclaimed: dict[str, tuple[Request, float]] = {}

    def peer(self, node: str) -> Member:
        return self.members.setdefault(node, Member(node))

    def live_peers(self) -> list[Member]:
        return [m for m in self.members.values() if m.node != self.node and m.live]

    def on_record(self, node: str, record: dict[str, Any] | None) -> None:
        """A member record (None: the member removed it)."""
        m = self.peer(node)
        if record is None:
            m.serving = False
            return
        m.serving = record.get("online") is True
        load, capacity, model = record.get("load"), record.get("capacity"), record.get("model")
        queued = record.get("queued")
        m.load = load if isinstance(load, int) else m.load
        m.queued = queued if isinstance(queued, int) else m.queued
        m.capacity = capacity if isinstance(capacity, int) else m.capacity
        m.model = model if isinstance(model, str) else m.model

    def on_status(self, node: str, online: bool) -> list[Entry]:
        """A member's availability; returns the entries this member must assign again."""
        m = self.peer(node)
        m.online = online
        if online or node == self.node:
            return []
        orphans = [e for e in self.entries.values() if e.owner == node]
        return orphans if orphans and self.is_reaper() else []

    def is_reaper(self) -> bool:
        """The live member with the smallest node id takes over from the dead."""
        return min([self.node] + [m.node for m in self.live_peers()]) == self.node

    def assigned(self, entry: Entry) -> None:
        self.entries.pop(entry.key, None)  # re-inserted last: the oldest entry is evicted first
        self.entries[entry.key] = entry
        while len(self.entries) > MAX_ENTRIES:
            del self.entries[next(iter(self.entries))]
        self.unclaimed.pop(entry.key, None)
        if entry.conversation is not None:
            self._sticky[entry.conversation] = entry.owner
            self._sticky.move_to_end(entry.conversation)
            while len(self._sticky) > MAX_STICKY:
                self._sticky.popitem(last=False)

    def finished(self, key: str) -> Entry | None:
        self._done.add(key)
        self.unclaimed.pop(key, None)
        return self.entries.pop(key, None)

    def watched(self, request: Request, seen_at: float) -> None:
        """A copy of a pool request: remembered until a member takes it."""
        if not self.duplicate(request.key):
            self.unclaimed.setdefault(request.key, (request, seen_at))

    def overdue(self, now: float) -> list[tuple[Request, float]]:
        """Requests nobody took within CLAIM_TIMEOUT_S: this member's to take when it is the reaper."""
        late = [key for key, (_, seen) in self.unclaimed.items() if now - seen >= CLAIM_TIMEOUT_S]
        taken = [self.unclaimed.pop(key) for key in late]
        return taken if self.is_reaper() else []

    def duplicate(self, key: str) -> bool:
        """Not to be taken here: open on a live member (this one included), open on a dead one
        whose entries the reaper assigns again (unless this member is the reaper), or answered
        recently. A broker that redelivers a dead member's share (EMQX may) then adds no answer."""
        entry = self.entries.get(key)
        if entry is not None:
            owner = self.peer(entry.owner)
            if entry.owner == self.node or owner.live or (owner.dead and not self.is_reaper()):
                return True
        return self._done.seen(key)

    def choose(self, own_load: int, own_capacity: int, *, conversation: str | None = None) -> str:
        """Where a request should run; `own_load` counts it as if it stayed here."""
        sticky = self._sticky.get(conversation) if conversation is not None else None
        if sticky == self.node and own_load <= own_capacity:
            return self.node
        if sticky is not None and sticky != self.node:
            m = self.members.get(sticky)
            if m is not None and m.live and m.has_room:
                return sticky
        if own_load <= own_capacity:
            return self.node
        peers = [m for m in self.live_peers() if m.has_room]
        best = min(peers, key=lambda m: (m.load, m.node), default=None)
        return self.node if best is None else best.node

    def victim(self) -> str | None:
        """The live peer with the most queued requests: whom an idle member asks for work."""
        peers = [m for m in self.live_peers() if m.queued > 0]
        return max(peers, key=lambda m: (m.queued, m.node)).node if peers else None

    def note_sent(self, node: str) -> None:
        """Count what we sent a peer until its next record says better."""
        if node != self.node:
            self.peer(node).load += 1
            self.peer(node).queued += 1


class PoolHost(Protocol):
    """What the pool needs from the service (all called on the service loop)."""

    def pool_load(self) -> tuple[int, int]:
        """(running + queued, capacity)."""
        ...

    def pool_holds(self, key: str) -> bool:
        """Running or queued here."""
        ...

    def pool_take(self, request: Request, received: float, *, force: bool = False) -> bool:
        """Queue it here (`force`: even when full); False when it was refused (and answered)."""
        ...

    def pool_queued(self) -> list[Request]:
        """The queued requests, the one that would run last first."""
        ...

    def pool_release(self, key: str) -> bool:
        """Take a queued request out of the queue, unanswered (it moves to a peer)."""
        ...

    def pool_keeps(self, request: Request) -> bool:
        """True for a request that should not move (its conversation lives here)."""
        ...

    def pool_reject(self, rejected: RequestRejected) -> None:
        ...


class PoolMember:
    """This daemon's part in a pool: subscriptions, member record, ledger, routing."""

    def __init__(self, topics: PoolTopics, *, node: str, prompt_topic: str, max_hops: int,
                 dedupe_window_s: float, mqtt: MqttClient, policy: RequestPolicy,
                 host: PoolHost, post: Callable[[Callable[[], None]], None]) -> None:
        self.topics = topics
        self.node = node
        self.prompt_topic = prompt_topic
        self.max_hops = max_hops
        self.mqtt = mqtt
        self.policy = policy
        self.host = host
        self.view = PoolView(node, dedupe_window_s=dedupe_window_s)
        self._last_record: bytes | None = None
        self._serving = True
        self._wanted_at = -WANT_RETRY_S
        self._post = post
        # A second connection with a plain subscription: a copy of every pool request, whichever
        # member the broker gives it to (one connection cannot tell the two copies apart).
        self.watch = MqttClient(mqtt.settings, client_id=f"{mqtt.settings.effective_client_id}-pool",
                                subscriptions=(topics.prompt,), on_message=self._on_watched)

    def start(self, *, attempts: int | None, stop: threading.Event | None) -> None:
        self.watch.connect(attempts=attempts, stop=stop)

    def close(self) -> None:
        self.watch.close()

    # ------------------------------------------------------------------ paho thread

    def handles(self, topic: str) -> bool:
        t = self.topics
        return (topic in (t.prompt, t.ledger) or topic.startswith(t.members + "/")
                or topic_matches_sub(t.status, topic))

    def on_message(self, msg: InMessage, received: float) -> None:
        """Parse on the network thread, act on the loop (like every other input)."""
        t, post = self.topics, self._post
        if msg.topic == t.prompt:
            if msg.retain:
                log.warning("ignored a retained message on the pool topic %s", msg.topic)
                return
            try:
                request = parse_request(msg.payload, self.policy, response_topic=msg.response_topic,
                                        correlation_data=msg.correlation_data)
            except RequestRejected as rejected:
                post(partial(self.host.pool_reject, rejected))
                return
            post(partial(self.on_request, request, received))
        elif msg.topic == t.ledger:
            obj = _loads(msg.payload)
            if obj is not None:
                post(partial(self.on_ledger, obj, received))
        elif msg.topic.startswith(t.members + "/"):
            node = msg.topic[len(t.members) + 1:]
            post(partial(self.view.on_record, node, _loads(msg.payload)))
        else:
            node = PoolTopics.node_of_status(msg.topic)
            post(partial(self.on_status, node, msg.payload.strip() == ONLINE, received))

    def _on_watched(self, msg: InMessage) -> None:
        if msg.retain or msg.topic != self.topics.prompt:
            return
        try:
            request = parse_request(msg.payload, self.policy, response_topic=msg.response_topic,
                                    correlation_data=msg.correlation_data)
        except RequestRejected:  # the member that received it answers
            return
        if request.client_id_given:  # without an id nobody could tell two answers apart
            self._post(partial(self.view.watched, request, time.monotonic()))

    # ------------------------------------------------------------------ the loop

    def tick(self, now: float) -> None:
        if not self._serving:  # leaving: the others no longer count it as live, and take over
            return
        for request, seen in self.view.overdue(now):
            if self.host.pool_holds(request.key) or self.view.duplicate(request.key):
                continue
            log.warning("no pool member took %r within %.0f s; taking it", request.key,
                        CLAIM_TIMEOUT_S)
            self._route(Entry.of(request, self.node), request, seen, accepted=True)
        self._pull(now)

    def on_request(self, request: Request, received: float) -> None:
        """A request from the pool topic."""
        if not self._serving:
            self.host.pool_take(request, received)  # answered "shutting down" by the service
            return
        if self.host.pool_holds(request.key) or self.view.duplicate(request.key):
            log.info("pool request %r is already answered or in progress; ignored", request.key)
            return
        self._route(Entry.of(request, self.node), request, received, accepted=False)

    def _route(self, entry: Entry, request: Request, received: float, *, accepted: bool) -> None:
        """Keep it or pass it on; `accepted`: a member took it before, it must not be refused now."""
        load, capacity = self.host.pool_load()
        target = self.node
        if entry.hops < self.max_hops:
            target = self.view.choose(load + 1, capacity, conversation=entry.conversation)
        if target == self.node:
            self._take(entry, request, received, announce=True, force=accepted)
        else:
            self._send(replace(entry, owner=target, hops=entry.hops + 1))

    def _take(self, entry: Entry, request: Request, received: float, *, announce: bool,
              force: bool) -> None:
        entry = replace(entry, owner=self.node)
        self.view.assigned(entry)
        if not self.host.pool_take(request, received, force=force):  # refused and answered
            return
        if announce:
            self.mqtt.publish_raw(self.topics.ledger, entry.assign_message(self.node), qos=1)
        self.mqtt.publish(reply(request.target, type="accepted"))

    def _send(self, entry: Entry) -> None:
        """Give `entry` to a peer: the ledger tells it (and everyone) it is the owner now."""
        self.view.assigned(entry)
        self.view.note_sent(entry.owner)
        log.info("passed %r on to %s (hop %d)", entry.key, entry.owner, entry.hops)
        self.mqtt.publish_raw(self.topics.ledger, entry.assign_message(self.node), qos=1)

    def on_ledger(self, obj: dict[str, Any], received: float) -> None:
        op = obj.get("op")
        if op == "done":
            self.view.finished(str(obj.get("id")))
            return
        if op == "want":
            wanter = obj.get("from")
            if obj.get("node") == self.node and isinstance(wanter, str) and wanter != self.node:
                self._give(wanter)
            return
        if op != "assign" or obj.get("from") == self.node:  # our own: already applied
            return
        try:
            entry = Entry.from_assign(obj)
        except (ValueError, KeyError, TypeError) as err:
            log.warning("ignored a malformed pool ledger message: %s", err)
            return
        mine = self.view.entries.get(entry.key)
        self.view.assigned(entry)
        if entry.owner == self.node and not self.host.pool_holds(entry.key):
            self._wanted_at = -WANT_RETRY_S
            self._adopt(entry, received)
        elif entry.owner != self.node and self.host.pool_holds(entry.key):
            self._settle(entry, mine)
        elif self._serving and self.view.peer(entry.owner).dead and self.view.is_reaper():
            # passed on to a member that had died meanwhile: nobody else will notice
            log.warning("%r was passed on to %s, which is offline; assigning it again", entry.key,
                        entry.owner)
            request = self._parse(entry)
            if request is not None:
                self._route(replace(entry, hops=0), request, received, accepted=True)

    def _settle(self, theirs: Entry, mine: Entry | None) -> None:
        """Two members took the same request (one was stalled past CLAIM_TIMEOUT_S): the smaller
        node id keeps it, the other lets go of it while it is still queued."""
        if theirs.owner < self.node:
            if self.host.pool_release(theirs.key):
                log.info("%r was taken by %s too; leaving it to them", theirs.key, theirs.owner)
        elif mine is not None:
            mine = replace(mine, owner=self.node)
            self.view.assigned(mine)
            self.mqtt.publish_raw(self.topics.ledger, mine.assign_message(self.node), qos=1)

    def _adopt(self, entry: Entry, received: float) -> None:
        """An entry that is ours now (passed on to us, or taken over from a dead member)."""
        request = self._parse(entry)
        if request is None:
            self.answered(entry.key)
            return
        if not self._serving and self._hand_over(entry):
            return
        load, capacity = self.host.pool_load()
        if load < capacity or entry.hops >= self.max_hops or not self._serving:
            self._take(entry, request, received, announce=False, force=True)
        else:
            self._route(entry, request, received, accepted=True)

    def _parse(self, entry: Entry) -> Request | None:
        try:
            return parse_request(_dumps(entry.request), self.policy,
                                 correlation_data=entry.correlation_data)
        except RequestRejected as rejected:  # another member's configuration let it through
            self.host.pool_reject(rejected)
            return None

    def on_status(self, node: str, online: bool, received: float) -> None:
        orphans = self.view.on_status(node, online)
        for entry in orphans if self._serving else ():
            log.warning("pool member %s went offline holding %r; assigning it again", node, entry.key)
            request = self._parse(entry)
            if request is None:
                self.answered(entry.key)
                continue
            self._route(replace(entry, hops=0), request, received, accepted=True)

    def answered(self, key: str) -> None:
        """A final reply went out here: an entry we owned is done."""
        entry = self.view.entries.get(key)
        if entry is None or entry.owner != self.node:
            return
        self.view.finished(key)
        self.mqtt.publish_raw(self.topics.ledger, _dumps({"op": "done", "id": key, "node": self.node}),
                              qos=1)

    def _pull(self, now: float) -> None:
        """Idle here while a peer has requests waiting: ask it for one."""
        if not self._serving or now - self._wanted_at < WANT_RETRY_S or self.host.pool_load()[0]:
            return
        victim = self.view.victim()
        if victim is None:
            return
        self._wanted_at = now
        self.mqtt.publish_raw(self.topics.ledger,
                              _dumps({"op": "want", "node": victim, "from": self.node}), qos=1)

    def _give(self, wanter: str) -> None:
        """A peer fell idle and asked us: pass it the queued request that would wait longest."""
        if not self.view.peer(wanter).live:
            return
        for request in self.host.pool_queued():
            entry = self.view.entries.get(request.key)
            if entry is None or entry.owner != self.node or self.host.pool_keeps(request):
                continue
            if self.host.pool_release(request.key):
                self._send(replace(entry, owner=wanter, hops=entry.hops + 1))
            return

    def publish_record(self, *, running: bool, queued: int, capacity: int, model: str,
                       ready: bool = True, force: bool = False) -> None:
        """The retained member record, when it changed (or after a reconnect).

        `online` is false while the model loads and once the member is leaving: peers send it
        nothing then.
        """
        record = {"node": self.node, "online": self._serving and ready, "load": int(running) + queued,
                  "running": int(running), "queued": queued, "capacity": capacity,
                  "model": model, "prompt": self.prompt_topic}
        data = _dumps(record)
        if force:  # the same bytes from every member: a discovery topic that does not churn
            self.mqtt.publish_raw(self.topics.config, _dumps({"group": self.topics.group,
                                                              "prompt": self.topics.prompt}),
                                  qos=1, retain=True)
        if force or data != self._last_record:
            self._last_record = data
            self.mqtt.publish_raw(self.topics.member(self.node), data, qos=1, retain=True)

    def leave(self) -> None:
        """Shutting down: take no more pool work and hand what is queued here to live peers."""
        self._serving = False
        self.mqtt.unsubscribe(self.topics.shared)
        for request in self.host.pool_queued()[::-1]:
            entry = self.view.entries.get(request.key)
            if entry is not None and entry.owner == self.node and self.view.live_peers() \
                    and self.host.pool_release(request.key) and not self._hand_over(entry):
                self.host.pool_take(request, time.monotonic())  # answered: shutting down

    def _hand_over(self, entry: Entry) -> bool:
        """Give `entry` to the least-loaded live peer with room; False when there is none."""
        peers = [m for m in self.view.live_peers() if m.has_room]
        if not peers:
            return False
        target = min(peers, key=lambda m: (m.load, m.node)).node
        self._send(replace(entry, owner=target, hops=entry.hops + 1))
        return True


def _dumps(obj: dict[str, Any]) -> bytes:
    return json.dumps(obj, ensure_ascii=False, separators=(",", ":")).encode("utf-8", "replace")


def _loads(payload: bytes) -> dict[str, Any] | None:
    try:
        obj = json.loads(payload) if payload else None
    except ValueError:
        return None
    return obj if isinstance(obj, dict) else None
