"""A pool of three `rkllm-mqtt run` processes on one real Mosquitto, driven by plain MQTT clients.

The clients here never retry: what they prove (every request answered once, a SIGKILLed member's
work answered by another) rests on the members alone.
"""

from __future__ import annotations

import io
import json
import os
import signal
import subprocess
import sys
import threading
import time
import uuid
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from rkllm_mqtt.commands.ask import ask
from rkllm_mqtt.pool import Entry, PoolView
from rkllm_mqtt.protocol import RequestPolicy, parse_request

pytestmark = pytest.mark.timeout(120)

REPO = Path(__file__).resolve().parents[2]


@dataclass
class Pool:
    base: str
    group: str
    nodes: list[str]
    procs: dict[str, subprocess.Popen[bytes]]
    logs: dict[str, Path]

    @property
    def prompt(self) -> str:
        return f"{self.base}/pool/{self.group}/prompt"

    @property
    def reply(self) -> str:
        return f"{self.base}/reply/test"

    def kill(self, node: str) -> None:
        self.procs[node].send_signal(signal.SIGKILL)
        self.procs[node].wait(10)

    def log(self, node: str) -> str:
        return self.logs[node].read_text(errors="replace")


@pytest.fixture
def start_pool(broker, probe_factory, sim_library, sim_model,
               tmp_path) -> Iterator[Callable[..., Pool]]:
    """Three members (`a`, `b`, `c`) of one group, each its own process; `env` per node."""
    started: list[subprocess.Popen[bytes]] = []

    def start(max_pending: int = 8, env: dict[str, dict[str, str]] | None = None) -> Pool:
        base, group = f"b{uuid.uuid4().hex[:8]}", "g1"
        nodes = ["a", "b", "c"]
        watcher = probe_factory(broker, topics=(f"{base}/pool/{group}/members/+",))
        pool = Pool(base, group, nodes, {}, {})
        for node in nodes:
            config = tmp_path / f"{node}.toml"
            config.write_text(f"""
[mqtt]
host = "{broker.host}"
port = {broker.port}
base_topic = "{base}"
node_id = "{node}"

[runtime]
library = "{sim_library}"
abi = "1.2"
model = "{sim_model}"

[queue]
max_pending = {max_pending}

[homeassistant]
discovery = false

[pool]
group = "{group}"
""")
            log = tmp_path / f"{node}.log"
            proc_env = {**os.environ, **((env or {}).get(node, {}))}
            with log.open("wb") as out:
                proc = subprocess.Popen([sys.executable, "-m", "rkllm_mqtt", "run", "--config",
                                         str(config)], env=proc_env, stdout=out,
                                        stderr=subprocess.STDOUT, cwd=REPO)
            started.append(proc)
            pool.procs[node], pool.logs[node] = proc, log
        for node in nodes:
            watcher.wait_for(lambda m, n=node: m.topic.endswith(f"/members/{n}") and m.payload
                             and m.json["online"] is True, timeout=30)
        return pool

    yield start
    for proc in started:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
    for proc in started:
        try:
            proc.wait(20)
        except subprocess.TimeoutExpired:
            proc.kill()


def _finals(probe: Any, ids: list[str]) -> dict[str, list[dict[str, Any]]]:
    return {i: probe.replies(i, "final") for i in ids}


def _wait_all(probe: Any, ids: list[str], timeout: float) -> dict[str, list[dict[str, Any]]]:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        finals = _finals(probe, ids)
        if all(finals.values()):
            time.sleep(1.0)  # a second final would arrive now
            return _finals(probe, ids)
        time.sleep(0.05)
    missing = [i for i, f in _finals(probe, ids).items() if not f]
    raise AssertionError(f"{len(missing)} requests unanswered: {missing[:10]}")


def test_sixty_requests_go_where_there_is_room_each_answered_once(start_pool, broker,
                                                                    probe_factory):
    # Member c decodes 20 times slower than a and b. Round-robin alone would give it 20 of the 60
    # and overflow its queue (max_pending 3); the members pass work on instead.
    pool = start_pool(max_pending=3, env={"a": {"RKLLM_SIM_DECODE_TPS": "400"},
                                          "b": {"RKLLM_SIM_DECODE_TPS": "400"},
                                          "c": {"RKLLM_SIM_DECODE_TPS": "20"}})
    probe = probe_factory(broker, topics=(pool.reply,))
    ids = [f"r{i}" for i in range(60)]
    for i in ids:
        probe.publish(pool.prompt, {"id": i, "prompt": f"[sim:tokens=6] {i}", "stream": False,
                                    "response_topic": pool.reply})
        time.sleep(0.02)
    finals = _wait_all(probe, ids, timeout=60)

    assert {i: len(f) for i, f in finals.items() if len(f) != 1} == {}
    errors = {i: f[0]["error"] for i, f in finals.items() if f[0]["status"] != "ok"}
    assert errors == {}  # no queue_full: a and b always had room
    by_node = Counter(f[0]["node"] for f in finals.values())
    assert set(by_node) <= {"a", "b", "c"} and len(by_node) >= 2
    assert by_node["c"] < 20, by_node  # less than its round-robin share: work went to a and b
    for i, f in finals.items():
        accepted = [r["node"] for r in probe.replies(i, "accepted")]
        assert accepted and accepted[-1] == f[0]["node"]  # the client learns who took it


def test_a_member_killed_mid_run_loses_nothing(start_pool, broker, probe_factory):
    pool = start_pool(max_pending=10, env={n: {"RKLLM_SIM_DECODE_TPS": "50"} for n in "abc"})
    probe = probe_factory(broker, topics=(pool.reply,))
    ids = [f"k{i}" for i in range(30)]
    for i in ids:
        probe.publish(pool.prompt, {"id": i, "prompt": f"[sim:tokens=12] {i}",
                                    "response_topic": pool.reply})
    # a runs something: kill it in the middle of that run
    token = probe.wait_for(lambda m: m.payload.startswith(b'{"id":') and b'"type":"token"' in m.payload
                           and m.json.get("node") == "a" and m.json["seq"] >= 2)
    running = token.json["id"]
    pool.kill("a")
    try:
        finals = _wait_all(probe, ids, timeout=60)
    except AssertionError:
        for node in pool.nodes:
            print(f"==== {node}\n{pool.log(node)}")
        raise

    assert {i: len(f) for i, f in finals.items() if len(f) != 1} == {}
    assert {i: f[0]["error"] for i, f in finals.items() if f[0]["status"] != "ok"} == {}
    assert finals[running][0]["node"] in {"b", "c"}
    assert finals[running][0]["text"] == " ".join(f"tok{n}" for n in range(12))
    taken_over = [i for i, f in finals.items()
                  if "a" in [r["node"] for r in probe.replies(i, "accepted")]
                  and f[0]["node"] != "a"]
    assert running in taken_over
    assert "went offline holding" in pool.log("b") + pool.log("c")


def test_a_five_turn_conversation_stays_on_one_member(start_pool, broker, probe_factory):
    pool = start_pool()
    probe = probe_factory(broker, topics=(pool.reply,))
    nodes, chat = [], []
    for turn in range(5):
        chat.append({"role": "user", "content": f"turn {turn}"})
        rid = f"c{turn}"
        probe.publish(pool.prompt, {"id": rid, "conversation": "kitchen-chat", "messages": chat,
                                    "stream": False, "response_topic": pool.reply})
        final = probe.final(rid)
        assert final["status"] == "ok", final
        chat.append({"role": "assistant", "content": final["text"]})
        nodes.append(final["node"])
    assert len(set(nodes)) == 1, nodes
    # the later turns continued the member's KV cache: only the new turn (its words and the chat
    # template's markup around them) was prefilled, the rest of the prompt was already cached
    usages = [probe.final(f"c{t}")["usage"] for t in range(1, 5)]
    assert all(u["prefill_tokens"] < 20 < u["cached_tokens"] for u in usages), usages
    assert len({u["prefill_tokens"] for u in usages}) == 1, usages  # the same for every turn


def test_the_follow_up_of_a_dead_members_conversation_is_replayed_elsewhere(start_pool, broker,
                                                                             probe_factory):
    pool = start_pool()
    probe = probe_factory(broker, topics=(pool.reply,))
    chat = [{"role": "user", "content": "remember the number 42"}]
    probe.publish(pool.prompt, {"id": "t0", "conversation": "c", "messages": chat,
                                "response_topic": pool.reply})
    first = probe.final("t0")
    pool.kill(first["node"])
    chat += [{"role": "assistant", "content": first["text"]}, {"role": "user", "content": "and?"}]
    probe.publish(pool.prompt, {"id": "t1", "conversation": "c", "messages": chat,
                                "response_topic": pool.reply})
    second = probe.final("t1")
    assert second["status"] == "ok" and second["node"] != first["node"]
    assert second["usage"]["prompt_tokens"] > first["usage"]["prompt_tokens"]  # history replayed


def test_a_repeated_id_is_answered_once_across_the_pool(start_pool, broker, probe_factory):
    pool = start_pool()
    probe = probe_factory(broker, topics=(pool.reply,))
    request = {"id": "again", "prompt": "[sim:tokens=3] once", "response_topic": pool.reply}
    probe.publish(pool.prompt, request)
    assert probe.final("again")["status"] == "ok"
    for _ in range(3):  # round-robin gives each copy to another member
        probe.publish(pool.prompt, request)
    time.sleep(3.0)  # past the take-over of requests nobody took
    assert len(probe.replies("again", "final")) == 1


def test_the_member_records_show_node_load_and_model(start_pool, broker, probe_factory):
    pool = start_pool(max_pending=5)
    probe = probe_factory(broker, topics=(f"{pool.base}/pool/{pool.group}/members/+",
                                          f"{pool.base}/pool/{pool.group}/config"))
    record = probe.wait_for(lambda m: m.topic.endswith("/members/b")).json
    config = probe.wait_for(lambda m: m.topic.endswith("/config"))
    assert config.retain and config.json == {"group": pool.group, "prompt": pool.prompt}
    assert record == {"node": "b", "online": True, "load": 0, "running": 0, "queued": 0,
                      "capacity": 6, "model": record["model"], "prompt": f"{pool.base}/b/prompt"}
    assert record["model"].endswith(".rkllm")


def test_a_request_without_response_topic_is_answered_on_the_pools_response_topic(
        start_pool, broker, probe_factory):
    pool = start_pool()
    probe = probe_factory(broker, topics=(f"{pool.base}/pool/{pool.group}/response",))
    probe.publish(pool.prompt, "plain text to the pool")
    final = probe.wait_for(lambda m: b'"type":"final"' in m.payload).json
    assert final["status"] == "ok" and final["node"] in pool.nodes


def test_ask_pool_streams_the_answer_and_names_the_node(start_pool, broker, tmp_path):
    pool = start_pool()
    env = {**os.environ, "RKLLM_MQTT_MQTT__HOST": broker.host,
           "RKLLM_MQTT_MQTT__PORT": str(broker.port), "RKLLM_MQTT_MQTT__BASE_TOPIC": pool.base}
    done = subprocess.run([sys.executable, "-m", "rkllm_mqtt", "ask", "--pool", pool.group,
                           "--timeout", "30", "[sim:tokens=3] hi"], env=env, cwd=tmp_path,
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    assert done.stdout == "tok0 tok1 tok2\n"
    assert any(f", node {n}]" in done.stderr for n in pool.nodes), done.stderr


def test_ask_pool_sends_again_what_no_member_took(broker, daemon, daemon_settings):
    base, group = f"b{uuid.uuid4().hex[:8]}", "late"
    client_settings = daemon_settings(broker, mqtt={"base_topic": base})
    out, err = io.StringIO(), io.StringIO()
    result: list[int] = []
    asking = threading.Thread(target=lambda: result.append(ask(
        client_settings, "[sim:tokens=2] anyone?", pool=group, timeout=30, stream_to=out,
        errors_to=err)))
    asking.start()  # the first copy reaches no member: none is up yet
    time.sleep(1.0)
    member = daemon(broker, mqtt={"base_topic": base}, pool={"group": group})
    asking.join(40)
    assert result == [0], err.getvalue()
    assert out.getvalue() == "tok0 tok1\n"
    assert f", node {member.settings.mqtt.node_id}]" in err.getvalue()


# ----------------------------------------------------------------------------- the view alone


POLICY = RequestPolicy(default_topic="r/pool/g/response", allowed_response_topics=("r/reply/#",),
                       node="a")


def _view(**peers: tuple[int, int]) -> PoolView:
    view = PoolView("a", dedupe_window_s=60)
    for node, (load, capacity) in peers.items():
        view.on_record(node, {"online": True, "load": load, "capacity": capacity})
        view.on_status(node, True)
    return view


def test_a_member_with_room_keeps_its_request_a_full_one_passes_it_to_the_least_loaded():
    view = _view(b=(1, 3), c=(0, 3))
    assert view.choose(1, 3) == "a"  # idle here (the request itself is the 1)
    assert view.choose(3, 3) == "a"  # busy, but there is room: the broker's spread stands
    assert view.choose(4, 3) == "c"  # no room here
    view.note_sent("c")
    assert view.choose(4, 3) == "b"  # b and c now hold one each: by name


def test_a_full_peer_or_a_dead_one_gets_nothing():
    view = _view(b=(3, 3), c=(0, 3))
    view.on_status("c", False)
    assert view.choose(4, 3) == "a"  # nobody has room: the request is refused here, as before


def test_an_idle_member_asks_the_peer_with_the_most_queued():
    view = _view(b=(2, 3), c=(3, 3))
    assert view.victim() is None  # records without "queued": nothing is known to wait
    view.on_record("b", {"online": True, "load": 2, "queued": 1, "capacity": 3})
    view.on_record("c", {"online": True, "load": 3, "queued": 2, "capacity": 3})
    assert view.victim() == "c"
    view.on_status("c", False)
    assert view.victim() == "b"


def test_the_smallest_live_node_takes_over_a_dead_members_entries():
    request = parse_request(b'{"id": "x", "prompt": "hi"}', POLICY)
    view = _view(b=(0, 3), c=(0, 3))
    view.assigned(Entry.of(request, "c"))
    assert view.duplicate("x")
    assert [e.key for e in view.on_status("c", False)] == ["x"]  # a < b
    assert not view.duplicate("x")  # its owner is dead and a is the reaper: a may take a copy
    other = _view(b=(0, 3))
    other.node = "b"
    other.on_record("a", {"online": True, "load": 0, "capacity": 3})
    other.on_status("a", True)
    other.assigned(Entry.of(request, "c"))
    assert other.on_status("c", False) == []  # b leaves it to a
    assert other.duplicate("x")  # and a copy of it, redelivered or repeated, too


def test_a_conversation_goes_back_to_the_member_that_took_its_last_turn():
    request = parse_request(b'{"id": "x", "prompt": "hi", "conversation": "k"}', POLICY)
    view = _view(b=(2, 3), c=(0, 3))
    view.assigned(Entry.of(request, "b"))
    assert view.choose(1, 3, conversation="k") == "b"  # b has room, even though a is idle
    view.on_record("b", {"online": True, "load": 3, "capacity": 3})
    assert view.choose(1, 3, conversation="k") == "a"  # b is full: by room


def test_an_entry_carries_the_whole_request_to_the_next_member():
    request = parse_request(b'{"id": 7, "messages": [{"role": "user", "content": "hi"}], '
                            b'"response_topic": "r/reply/me", "stop": "x", "priority": "background"}',
                            POLICY, correlation_data=b"\x00\x01")
    entry = Entry.of(request, "a")
    again = Entry.from_assign(json.loads(entry.assign_message("a")))
    assert again == entry
    copy = parse_request(json.dumps(again.request).encode(), POLICY,
                         correlation_data=again.correlation_data)
    assert copy.target == request.target
    assert copy.messages == request.messages and copy.stop == ("x",)
    assert copy.priority == request.priority


def test_an_entry_carries_tools_and_tool_turns_to_the_next_member():
    """A passed-on or taken-over request is parsed again from the ledger: its tools must survive."""
    tools = [{"type": "function", "function": {"name": "HassTurnOn", "description": "Turn on",
                                               "parameters": {"type": "object", "properties": {
                                                   "name": {"type": "string"}}}}}]
    chat = [{"role": "user", "content": "Light on"},
            {"role": "assistant", "content": None, "tool_calls": [
                {"id": "call1", "type": "function",
                 "function": {"name": "HassTurnOn", "arguments": '{"name": "lamp"}'}}]},
            {"role": "tool", "tool_call_id": "call1", "name": "HassTurnOn", "content": '{"ok": true}'}]
    request = parse_request(json.dumps({"id": "t1", "messages": chat, "tools": tools,
                                        "response_topic": "r/reply/me"}).encode(), POLICY)
    entry = Entry.from_assign(json.loads(Entry.of(request, "a").assign_message("a")))
    copy = parse_request(json.dumps(entry.request).encode(), POLICY)
    assert copy.tools == request.tools and copy.tools is not None
    assert copy.tools.names == ("HassTurnOn",)
    assert copy.messages == request.messages
    assert copy.messages[1].tool_calls[0].arguments == {"name": "lamp"}
