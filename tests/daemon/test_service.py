"""The MQTT contract, row by row, against a real Mosquitto and the real simulator library."""

from __future__ import annotations

import json
import shutil
import subprocess
import time

import pytest

from rkllm_mqtt.simulator import expected_answer

pytestmark = pytest.mark.timeout(60)


def tokens_text(replies: list[dict]) -> str:
    """Token texts by seq, each seq once (QoS 1 may deliver a token twice)."""
    by_seq = {r["seq"]: r["text"] for r in replies if r["type"] == "token"}
    assert sorted(by_seq) == list(range(len(by_seq))), "token seq must be 0..n-1 without gaps"
    return "".join(by_seq[i] for i in sorted(by_seq))


def test_json_prompt_streams_tokens_and_one_final(broker, daemon, probe_factory):
    svc = daemon(broker)
    probe = probe_factory(broker, topics=(f"{svc.prefix}/#",))
    probe.publish(svc.topics["prompt"], {"id": "r1", "prompt": "hello there", "stream": True})
    final = probe.final("r1")
    assert final["status"] == "ok" and final["text"] == expected_answer("hello there")
    assert final["finish_reason"] == "stop"
    assert set(final["usage"]) == {"prompt_tokens", "completion_tokens"}
    assert final["usage"]["completion_tokens"] > 0
    assert set(final["timing"]) == {"queue_ms", "ttft_ms", "total_ms", "tokens_per_s"}
    assert all(isinstance(v, int | float) for v in final["timing"].values())
    replies = probe.replies("r1")
    assert probe.matching(lambda m: m.payload.startswith(b'{"id":"r1","type"')
                          and m.topic != svc.topics["response"]) == []
    assert tokens_text(replies) == final["text"]
    assert replies[-1]["type"] == "final" and sum(r["type"] == "final" for r in replies) == 1

    last = probe.wait_for(lambda m: m.topic == svc.topics["last_response"])
    assert last.text == final["text"]
    attrs = probe.wait_for(lambda m: m.topic == svc.topics["attributes"]).json
    assert attrs == {"id": "r1", "finish_reason": "stop", "usage": final["usage"],
                     "timing": final["timing"], "text": final["text"], "truncated": False}
    event = probe.wait_for(lambda m: m.topic == svc.topics["event"]).json
    assert event["event_type"] == "completed" and event["id"] == "r1"
    assert event["text"] == final["text"]
    state = probe.wait_for(lambda m: m.topic == svc.topics["state"]
                           and m.json["requests_total"] == 1).json
    assert state == {"state": "idle", "busy": False, "queue": 0, "model": "model.rkllm",
                     "runtime_version": "1.2.3", "abi": "1.2", "tokens_per_second":
                     final["timing"]["tokens_per_s"], "ttft_ms": final["timing"]["ttft_ms"],
                     "requests_total": 1, "errors_total": 0,
                     "limits": {"max_prompt_chars": svc.settings.limits.max_prompt_chars,
                                "max_payload_bytes": svc.settings.limits.max_payload_bytes}}
    # retained: a client arriving later sees state, availability and the last answer at once
    late = probe_factory(broker, topics=(f"{svc.prefix}/#",))
    got = {m.topic: m for m in (late.wait_for(lambda m, t=t: m.topic == t) for t in (
        svc.topics["status"], svc.topics["state"], svc.topics["last_response"],
        svc.topics["attributes"]))}
    assert all(m.retain for m in got.values())
    assert got[svc.topics["status"]].payload == b"online"
    assert got[svc.topics["last_response"]].text == final["text"]


def test_plain_text_prompt_and_stream_false(broker, daemon, probe_factory):
    svc = daemon(broker)
    probe = probe_factory(broker, topics=(svc.topics["response"],))
    probe.publish(svc.topics["prompt"], "What time is it?")
    final = probe.wait_for(lambda m: m.json.get("type") == "final").json
    assert final["id"].startswith("auto-") and final["text"] == expected_answer("What time is it?")
    assert tokens_text(probe.replies(final["id"])) == final["text"]
    probe.publish(svc.topics["prompt"], {"id": "quiet", "prompt": "shh", "stream": False})
    assert probe.final("quiet")["text"] == expected_answer("shh")
    assert probe.replies("quiet", "token") == []


def test_malformed_payloads_each_get_an_error_and_the_daemon_keeps_serving(
        broker, daemon, probe_factory):
    svc = daemon(broker, limits={"max_payload_bytes": 1000, "max_prompt_chars": 50})
    probe = probe_factory(broker, topics=(svc.topics["response"], svc.topics["event"]))
    cases = [
        (b'{"prompt": "x"', None, "invalid_json"),
        (b"{" + b"x" * 2000, None, "payload_too_large"),
        (b"", None, "invalid_request"),
        (b"\xff\xfe", None, "invalid_request"),
        (json.dumps({"id": "m1", "prompt": 42}).encode(), "m1", "invalid_request"),
        (json.dumps({"id": "m2", "prompt": "x" * 51}).encode(), "m2", "invalid_request"),
        (json.dumps({"id": "m3", "prompt": "x", "temperature": "hot"}).encode(), "m3",
         "invalid_request"),
        (json.dumps({"id": "m4"}).encode(), "m4", "invalid_request"),
        (json.dumps({"id": ["x"], "prompt": "x"}).encode(), None, "invalid_request"),
    ]
    for payload, _, _ in cases:
        probe.publish(svc.topics["prompt"], payload)
    probe.publish(svc.topics["prompt"], {"id": "after", "prompt": "still there?"})
    assert probe.final("after")["text"] == expected_answer("still there?")
    errors = [m.json for m in probe.matching(lambda m: m.topic == svc.topics["response"])
              if m.json.get("status") == "error"]
    assert [(e["id"], e["error"]["code"]) for e in errors] == [(i, c) for _, i, c in cases]
    assert "temperature" in errors[6]["error"]["message"]
    probe.wait_for(lambda m: m.topic == svc.topics["event"] and m.json["id"] == "after")
    events = [m.json for m in probe.matching(lambda m: m.topic == svc.topics["event"])]
    assert [e["event_type"] for e in events] == ["error"] * len(cases) + ["completed"]
    assert svc.state_payload()["errors_total"] == len(cases)
    assert svc.state_payload()["requests_total"] == len(cases) + 1


@pytest.mark.skipif(shutil.which("mosquitto_pub") is None, reason="mosquitto-clients not installed")
def test_mosquitto_pub_prompt(broker, daemon, probe_factory):
    svc = daemon(broker)
    probe = probe_factory(broker, topics=(svc.topics["response"],))
    subprocess.run(["mosquitto_pub", "-h", broker.host, "-p", str(broker.port), "-q", "1",
                    "-t", svc.topics["prompt"], "-m", "Turn on the lights"], check=True, timeout=10)
    final = probe.wait_for(lambda m: m.json.get("type") == "final").json
    assert final["status"] == "ok" and tokens_text(probe.replies(final["id"])) == final["text"]


def test_retained_prompts_are_not_replayed(broker, daemon, daemon_settings, probe_factory):
    node = daemon_settings(broker).mqtt.node_id
    setter = probe_factory(broker)
    setter.publish(f"rkllm/{node}/prompt", {"id": "stale", "prompt": "old"}, retain=True)
    try:
        probe = probe_factory(broker, topics=(f"rkllm/{node}/response",))  # before the daemon
        svc = daemon(broker, mqtt={"node_id": node})
        probe.publish(svc.topics["prompt"], {"id": "live", "prompt": "new"})
        assert probe.final("live")["status"] == "ok"
        assert probe.replies("stale") == []
    finally:
        setter.publish(f"rkllm/{node}/prompt", b"", retain=True)


def test_response_topic_allow_list(broker, daemon, probe_factory):
    svc = daemon(broker)
    probe = probe_factory(broker, topics=("rkllm/reply/#", svc.topics["response"], "elsewhere/#"))
    probe.publish(svc.topics["prompt"], {"id": "rt", "prompt": "hi",
                                         "response_topic": "rkllm/reply/panel1"})
    final = probe.final("rt", topic="rkllm/reply/panel1")
    assert final["status"] == "ok"
    assert all(m.topic == "rkllm/reply/panel1" for m in probe.matching(
        lambda m: m.payload.startswith(b'{"id":"rt"')))
    probe.publish(svc.topics["prompt"], {"id": "bad", "prompt": "hi",
                                         "response_topic": "elsewhere/x"})
    err = probe.final("bad", topic=svc.topics["response"])
    assert err["status"] == "error" and err["error"]["code"] == "forbidden_topic"
    probe.publish(svc.topics["prompt"], {"id": "loop", "prompt": "hi",
                                         "response_topic": svc.topics["prompt"]})
    assert probe.final("loop", topic=svc.topics["response"])["error"]["code"] == "forbidden_topic"
    assert probe.matching(lambda m: m.topic.startswith("elsewhere/")) == []


def test_mqtt5_response_topic_and_correlation_data(broker, daemon, probe_factory):
    svc = daemon(broker)
    probe = probe_factory(broker, topics=("rkllm/reply/#", svc.topics["response"]))
    probe.publish(svc.topics["prompt"], "v5 question", response_topic="rkllm/reply/v5",
                  correlation_data=b"\x00\x01corr")
    final = probe.wait_for(lambda m: m.topic == "rkllm/reply/v5" and m.json["type"] == "final")
    msgs = probe.matching(lambda m: m.topic == "rkllm/reply/v5")
    assert len(msgs) > 1 and all(m.correlation_data == b"\x00\x01corr" for m in msgs)
    assert final.json["text"] == expected_answer("v5 question")
    # a forbidden Response Topic property is refused on ~/response, correlation data still copied
    probe.publish(svc.topics["prompt"], {"id": "p5", "prompt": "x"},
                  response_topic="homeassistant/x", correlation_data=b"cd")
    refused = probe.wait_for(lambda m: m.topic == svc.topics["response"] and m.json["id"] is None)
    assert refused.json["error"]["code"] == "forbidden_topic" and refused.correlation_data == b"cd"


def test_mqtt_311_daemon_and_client(broker, daemon, probe_factory):
    svc = daemon(broker, mqtt={"protocol": "3.1.1"})
    probe = probe_factory(broker, protocol="3.1.1", topics=(svc.topics["response"],))
    probe.publish(svc.topics["prompt"], {"id": 311, "prompt": "old protocol"})
    final = probe.final(311)
    assert final["text"] == expected_answer("old protocol")
    assert tokens_text(probe.replies(311)) == final["text"]


def test_queue_full_priority_abort_and_queued_abort(broker, daemon, probe_factory):
    svc = daemon(broker, queue={"max_pending": 3})
    probe = probe_factory(broker, topics=(svc.topics["response"], svc.topics["event"]))
    prompt = svc.topics["prompt"]
    probe.publish(prompt, {"id": "hang", "prompt": "[sim:hang] wait"})
    probe.wait_for(lambda m: m.payload.startswith(b'{"id":"hang","type":"token"'))
    probe.publish(prompt, {"id": "bg", "prompt": "background", "priority": "background"})
    probe.publish(prompt, {"id": "i1", "prompt": "first interactive"})
    probe.publish(prompt, {"id": "gone", "prompt": "never runs"})
    probe.publish(prompt, {"id": "full", "prompt": "no room"})
    assert probe.final("full")["error"]["code"] == "queue_full"
    probe.publish(svc.topics["abort"], "gone")
    gone = probe.final("gone")
    assert gone["error"]["code"] == "aborted" and probe.replies("gone", "token") == []
    assert svc.state_payload()["queue"] == 2 and svc.state_payload()["busy"] is True
    probe.publish(svc.topics["abort"], b"")  # empty: the running request
    hang = probe.final("hang")
    assert hang["status"] == "error" and hang["error"]["code"] == "aborted"
    assert hang["finish_reason"] == "abort" and hang["text"] == tokens_text(probe.replies("hang"))
    assert probe.final("bg")["status"] == "ok" and probe.final("i1")["status"] == "ok"
    order = [m.json["id"] for m in probe.matching(lambda m: m.topic == svc.topics["response"]
                                                  and m.json.get("type") == "final")]
    assert order == ["full", "gone", "hang", "i1", "bg"]
    probe.wait_for(lambda m: m.topic == svc.topics["event"] and m.json["id"] == "bg")
    events = [m.json for m in probe.matching(lambda m: m.topic == svc.topics["event"])]
    assert [(e["event_type"], e["id"]) for e in events] == [
        ("error", "full"), ("aborted", "gone"), ("aborted", "hang"), ("completed", "i1"),
        ("completed", "bg")]


def test_ttl_expires_in_the_queue_and_while_running(broker, daemon, probe_factory):
    svc = daemon(broker)
    probe = probe_factory(broker, topics=(svc.topics["response"],))
    probe.publish(svc.topics["prompt"], {"id": "long", "prompt": "[sim:hang]", "ttl_s": 1.5})
    probe.wait_for(lambda m: m.payload.startswith(b'{"id":"long","type":"token"'))
    probe.publish(svc.topics["prompt"], {"id": "short", "prompt": "x", "ttl_s": 0.2})
    short = probe.final("short")
    assert short["error"]["code"] == "deadline_exceeded" and short["finish_reason"] == "deadline"
    assert probe.replies("short", "token") == []
    assert svc.state_payload()["busy"] is True  # expired in the queue while "long" still runs
    long = probe.final("long")
    assert long["error"]["code"] == "deadline_exceeded" and long["finish_reason"] == "deadline"
    assert "ttl_s" in long["error"]["message"]


def test_request_timeout_aborts_a_run_that_does_not_end(broker, daemon, probe_factory):
    svc = daemon(broker, queue={"request_timeout_s": 0.5})
    probe = probe_factory(broker, topics=(svc.topics["response"],))
    probe.publish(svc.topics["prompt"], {"id": "stuck", "prompt": "[sim:hang]"})
    final = probe.final("stuck")
    assert final["error"]["code"] == "deadline_exceeded"
    assert "request_timeout_s" in final["error"]["message"]
    probe.publish(svc.topics["prompt"], {"id": "next", "prompt": "fine"})
    assert probe.final("next")["status"] == "ok"


def test_duplicate_ids_are_answered_once(broker, daemon, probe_factory):
    svc = daemon(broker)
    probe = probe_factory(broker, topics=(svc.topics["response"],))
    slow = {"id": "dup", "prompt": "[sim:tokens=5][sim:delay_ms=40] once"}
    probe.publish(svc.topics["prompt"], slow)
    probe.publish(svc.topics["prompt"], slow)  # while it runs
    probe.final("dup")
    probe.publish(svc.topics["prompt"], slow)  # after it finished, within the window
    probe.publish(svc.topics["prompt"], {"id": "marker", "prompt": "m"})
    probe.final("marker")  # the loop handled everything before the marker
    assert len(probe.replies("dup", "final")) == 1
    assert len(probe.replies("dup", "token")) == 5


def test_runtime_errors(broker, daemon, probe_factory):
    svc = daemon(broker, runtime={"max_context_len": 64})
    probe = probe_factory(broker, topics=(svc.topics["response"],))
    probe.publish(svc.topics["prompt"], {"id": "boom", "prompt": "[sim:error]"})
    boom = probe.final("boom")
    assert boom["error"]["code"] == "runtime_error" and boom["finish_reason"] == "error"
    probe.publish(svc.topics["prompt"], {"id": "big", "prompt": "word " * 200})
    assert probe.final("big")["error"]["code"] == "context_too_long"
    probe.publish(svc.topics["prompt"], {"id": "ok", "prompt": "fine"})
    assert probe.final("ok")["status"] == "ok"


def test_conversations_keep_the_cache_for_the_latest_and_rebuild_others(broker, daemon,
                                                                        probe_factory):
    svc = daemon(broker)
    probe = probe_factory(broker, topics=(svc.topics["response"],))

    def say(rid: str, conv: str | None, text: str) -> str:
        payload = {"id": rid, "prompt": text, "stream": False}
        if conv:
            payload["conversation"] = conv
        probe.publish(svc.topics["prompt"], payload)
        final = probe.final(rid)
        assert final["status"] == "ok", final
        return final["text"]

    a1 = say("a1", "A", "alpha one")
    assert a1 == expected_answer("alpha one")
    assert say("a2", "A", "alpha two") == expected_answer("alpha two")  # only the new turn sent
    assert say("b1", "B", "beta one") == expected_answer("beta one")
    # back to A: the cache held B, so A's history is replayed as one transcript
    replay = f"User: alpha one\nAssistant: {a1}\nUser: alpha two"
    assert say("a3", "A", "alpha three").startswith(expected_answer(replay)[:40])
    assert say("a4", "A", "alpha four") == expected_answer("alpha four")
    history = svc.engine.session.call_native(_sim_history)
    assert history[-2:] == ["alpha four", expected_answer("alpha four")]
    assert history[0].startswith("User: alpha one")
    say("x", None, "no conversation")  # clears the cache
    assert svc.engine.session.call_native(_sim_history) == []


def _sim_history(lib, handle) -> list[str]:
    import ctypes

    fn = lib["rkllm_sim_inspect"]
    fn.argtypes = [ctypes.c_void_p]
    fn.restype = ctypes.c_char_p
    return json.loads(fn(handle))["history"]


def test_discovery_published_and_resent_when_home_assistant_comes_online(
        broker, daemon, probe_factory):
    svc = daemon(broker, homeassistant={"discovery": True, "rediscovery_delay_max_s": 0.0,
                                        "discovery_prefix": "hatest"})
    topic = f"hatest/device/{svc.settings.mqtt.node_id}/config"
    probe = probe_factory(broker, topics=(topic, svc.topics["state"]))
    first = probe.wait_for(lambda m: m.topic == topic)
    assert first.retain and first.json["dev"]["mdl"] == "model.rkllm"
    assert first.json["avty_t"] == svc.topics["status"]
    n_config = len(probe.matching(lambda m: m.topic == topic))
    n_state = len(probe.matching(lambda m: m.topic == svc.topics["state"]))
    probe.publish("homeassistant/status", b"online")
    probe.wait_for(lambda m: m.topic == topic and not m.retain)
    probe.wait_for(lambda m: m.topic == svc.topics["state"] and not m.retain)
    assert len(probe.matching(lambda m: m.topic == topic)) == n_config + 1
    assert len(probe.matching(lambda m: m.topic == svc.topics["state"])) >= n_state + 1


def test_discovery_disabled_removes_the_retained_config(broker, daemon, probe_factory,
                                                        daemon_settings):
    settings = daemon_settings(broker, homeassistant={"discovery_prefix": "harm"})
    node = settings.mqtt.node_id
    topic = f"harm/device/{node}/config"
    probe_factory(broker).publish(topic, b'{"old": true}', retain=True)
    daemon(broker, mqtt={"node_id": node}, homeassistant={"discovery": False,
                                                          "discovery_prefix": "harm"})
    probe = probe_factory(broker, topics=(f"harm/device/{node}/#", f"rkllm/{node}/status"))
    probe.wait_for(lambda m: m.topic == f"rkllm/{node}/status")
    assert probe.matching(lambda m: m.topic == topic) == []  # no retained config left


def test_shutdown_answers_queued_and_publishes_offline(broker, daemon_settings, probe_factory):
    from rkllm_mqtt.service import Service

    svc = Service(daemon_settings(broker, queue={"on_shutdown": "finish"}))
    svc.start(connect_attempts=3)
    probe = probe_factory(broker, topics=(f"{svc.prefix}/#",))
    probe.publish(svc.topics["prompt"], {"id": "run", "prompt": "[sim:tokens=6][sim:delay_ms=50]"})
    probe.wait_for(lambda m: m.payload.startswith(b'{"id":"run","type":"token"'))
    probe.publish(svc.topics["prompt"], {"id": "waiting", "prompt": "x"})
    deadline = time.monotonic() + 10
    while svc.state_payload()["queue"] != 1 and time.monotonic() < deadline:
        time.sleep(0.01)
    svc.stop()
    assert probe.final("run")["status"] == "ok"  # finished, since on_shutdown = "finish"
    assert probe.final("waiting")["error"]["code"] == "aborted"
    offline = probe.wait_for(lambda m: m.topic == svc.topics["status"] and m.payload == b"offline")
    finals = probe.matching(lambda m: m.topic == svc.topics["response"]
                            and m.json.get("type") == "final")
    assert len(finals) == 2 and all(m.at <= offline.at for m in finals)


def test_long_answers_are_bounded_for_home_assistant(broker, daemon, probe_factory):
    svc = daemon(broker, runtime={"max_context_len": 4096})
    probe = probe_factory(broker, topics=(f"{svc.prefix}/#",))
    probe.publish(svc.topics["prompt"], {"id": "long", "prompt": "[sim:tokens=3500]",
                                         "stream": False})
    final = probe.final("long")
    assert len(final["text"]) > 16384  # the reply itself is never cut
    short = probe.wait_for(lambda m: m.topic == svc.topics["last_response"]).text
    assert len(short) == 255 and short.endswith("…") and final["text"].startswith(short[:-1])
    attrs = probe.wait_for(lambda m: m.topic == svc.topics["attributes"])
    assert len(attrs.payload) <= 16000 and attrs.json["truncated"] is True
    assert final["text"].startswith(attrs.json["text"]) and len(attrs.json["text"]) > 15000
    event = probe.wait_for(lambda m: m.topic == svc.topics["event"])
    assert len(event.payload) <= 16000 and event.json["truncated"] is True


def test_model_that_does_not_load_reports_error_and_goes_offline(broker, daemon_settings,
                                                                 probe_factory, tmp_path):
    from rkllm_mqtt.errors import RuntimeInitError
    from rkllm_mqtt.service import Service

    settings = daemon_settings(broker, runtime={"model": str(tmp_path / "missing.rkllm")})
    prefix = settings.mqtt.prefix
    probe = probe_factory(broker, topics=(f"{prefix}/#",))
    with pytest.raises(RuntimeInitError):
        Service(settings).start(connect_attempts=3)
    probe.wait_for(lambda m: m.topic == f"{prefix}/state" and m.json["state"] == "error")
    probe.wait_for(lambda m: m.topic == f"{prefix}/status" and m.payload == b"offline")
    states = [m.json["state"] for m in probe.matching(lambda m: m.topic == f"{prefix}/state")]
    assert states == ["loading", "error"]


def test_system_prompt_enters_the_cache_once_per_conversation(broker, daemon, probe_factory):
    svc = daemon(broker, runtime={"system_prompt": "SYS"})
    probe = probe_factory(broker, topics=(svc.topics["response"],))
    for rid, text in (("s1", "first"), ("s2", "second"), ("s3", "third")):
        probe.publish(svc.topics["prompt"], {"id": rid, "prompt": text, "conversation": "C"})
        assert probe.final(rid)["status"] == "ok"
    history = svc.engine.session.call_native(_sim_history)
    prompts = history[0::2]
    # the first turn carries the system text; later turns continue the KV cache without it
    assert prompts == ["SYS\n\nfirst", "second", "third"]


def test_discovery_cli_publishes_and_removes_the_retained_config(broker, probe_factory):
    import os
    import subprocess
    import sys

    env = {**os.environ, "RKLLM_MQTT_MQTT__HOST": broker.host,
           "RKLLM_MQTT_MQTT__PORT": str(broker.port), "RKLLM_MQTT_MQTT__NODE_ID": "clinode",
           "RKLLM_MQTT_HOMEASSISTANT__DISCOVERY_PREFIX": "hacli"}
    topic = "hacli/device/clinode/config"

    def cli(*args: str) -> None:
        proc = subprocess.run([sys.executable, "-m", "rkllm_mqtt", "discovery", *args], env=env,
                              capture_output=True, text=True, timeout=60)
        assert proc.returncode == 0, proc.stderr

    cli()
    published = probe_factory(broker, topics=(topic,)).wait_for(lambda m: m.topic == topic)
    assert published.retain and published.json["cmps"]["status"]["p"] == "sensor"
    cli("--remove")
    probe = probe_factory(broker, topics=(topic, "rkllm/clinode/status"))
    probe.publish("rkllm/clinode/status", b"marker", retain=False)
    probe.wait_for(lambda m: m.topic == "rkllm/clinode/status")
    assert probe.matching(lambda m: m.topic == topic) == []  # the retained config is gone


def test_a_start_announces_discovery_once(broker, daemon, daemon_settings, probe_factory):
    node = daemon_settings(broker).mqtt.node_id
    topic = f"haonce/device/{node}/config"
    state = f"rkllm/{node}/state"
    probe = probe_factory(broker, topics=(topic, state))
    svc = daemon(broker, mqtt={"node_id": node}, homeassistant={"discovery_prefix": "haonce"})
    probe.publish(svc.topics["prompt"], {"id": "once", "prompt": "after start"})
    probe.wait_for(lambda m: m.topic == state and m.json["requests_total"] == 1)
    assert len(probe.matching(lambda m: m.topic == topic)) == 1


def test_a_chat_client_sending_its_whole_history_continues_the_cache(broker, daemon,
                                                                     probe_factory):
    svc = daemon(broker)
    probe = probe_factory(broker, topics=(svc.topics["response"],))

    def say(rid: str, messages: list[dict[str, str]]) -> str:
        probe.publish(svc.topics["prompt"], {"id": rid, "conversation": "ha-1",
                                             "messages": messages, "stream": False})
        final = probe.final(rid)
        assert final["status"] == "ok", final
        return final["text"]

    first = say("h1", [{"role": "user", "content": "one"}])
    second = say("h2", [{"role": "user", "content": "one"},
                        {"role": "assistant", "content": first},
                        {"role": "user", "content": "two"}])
    assert second == expected_answer("two")  # only the new turn went to the model
    assert svc.engine.session.call_native(_sim_history) == ["one", first, "two", second]


def test_many_home_assistant_births_give_one_re_announcement(broker, daemon_settings):
    from rkllm_mqtt.service import Service

    svc = Service(daemon_settings(broker, homeassistant={"discovery": True}))  # not started
    for _ in range(5):
        svc._on_ha_online()
    assert len(svc._timers) == 1  # one re-announcement is scheduled, however many births
    _, announce = svc._timers.pop()
    announced: list[bool] = []
    svc._announce = lambda: announced.append(True)
    announce()
    svc._on_ha_online()  # a later birth schedules the next one
    assert announced == [True] and len(svc._timers) == 1
