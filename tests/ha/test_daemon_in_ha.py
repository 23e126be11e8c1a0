"""The real daemon in real Home Assistant: `rkllm-mqtt run` on the simulator announces itself by MQTT
discovery, and HA's own entities drive it — no hand-written payload on either side.

test_discovery_ha.py checks the discovery payload with hand-written states; here every message HA
sees comes from the daemon process (discovery, availability, `~/state`, `~/last_response`,
`~/event`), and every command the daemon gets comes from an HA service call on its entities.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

import pytest
from harness import KITCHEN_ENTITIES, OutsideClient, wait_for_mqtt_idle, wait_until
from homeassistant.config_entries import ConfigEntry
from homeassistant.const import EVENT_STATE_CHANGED, STATE_UNAVAILABLE, STATE_UNKNOWN
from homeassistant.core import Event, EventStateChangedData, HomeAssistant, State, callback
from homeassistant.helpers import device_registry as dr
from homeassistant.helpers import entity_registry as er
from integration_fixtures import NODE_ID, Daemon

from rkllm_mqtt import __version__
from rkllm_mqtt.simulator import expected_answer, sim_model_file

DISCOVERY_TOPIC = f"homeassistant/device/{NODE_ID}/config"


# Rediscovery after HA's birth message within 0.2 s instead of 0–5 s; the simulator decodes at a
# measurable speed (1000 tok/s, so 120 tokens take 0.12 s) so tokens per second is always a number.
DAEMON_ENV = {
    "RKLLM_MQTT_HOMEASSISTANT__REDISCOVERY_DELAY_MAX_S": "0.2",
    "RKLLM_SIM_DECODE_TPS": "1000",
}


def _state(hass: HomeAssistant, cid: str) -> State:
    state = hass.states.get(KITCHEN_ENTITIES[cid])
    assert state is not None, f"{KITCHEN_ENTITIES[cid]} has no state"
    return state


def _states(hass: HomeAssistant) -> dict[str, str | None]:
    return {cid: (s.state if (s := hass.states.get(eid)) else None) for cid, eid in KITCHEN_ENTITIES.items()}


def _registry_entries(hass: HomeAssistant) -> dict[str, er.RegistryEntry] | None:
    """The registry entries of every component (by the daemon's unique ids), or None while any is missing."""
    registry = er.async_get(hass)
    entity_ids = {
        cid: registry.async_get_entity_id(eid.split(".")[0], "mqtt", f"rkllm_{NODE_ID}_{cid}")
        for cid, eid in KITCHEN_ENTITIES.items()
    }
    if None in entity_ids.values():
        return None
    return {cid: registry.async_get(eid) for cid, eid in entity_ids.items()}


@dataclass
class StateLog:
    """Every state HA wrote for the daemon's entities, in order (transient ones included)."""

    states: dict[str, list[State]] = field(default_factory=lambda: {cid: [] for cid in KITCHEN_ENTITIES})

    def values(self, cid: str) -> list[str]:
        return [s.state for s in self.states[cid]]

    def events(self) -> list[State]:
        """The Response entity's firings (each one is a new state whose value is its timestamp)."""
        return [s for s in self.states["response"] if s.state not in (STATE_UNKNOWN, STATE_UNAVAILABLE)]

    def clear(self) -> None:
        for states in self.states.values():
            states.clear()


@pytest.fixture
def state_log(hass: HomeAssistant) -> Iterator[StateLog]:
    log = StateLog()
    by_entity = {eid: cid for cid, eid in KITCHEN_ENTITIES.items()}

    @callback
    def record(event: Event[EventStateChangedData]) -> None:
        cid = by_entity.get(event.data["entity_id"])
        if cid is not None and (new := event.data["new_state"]) is not None:
            log.states[cid].append(new)

    unsubscribe = hass.bus.async_listen(EVENT_STATE_CHANGED, record)
    yield log
    unsubscribe()


async def _start_in_ha(
    hass: HomeAssistant,
    start_daemon: Callable[..., Daemon],
    log_problems: Callable[[], list[str]],
) -> tuple[Daemon, dict[str, er.RegistryEntry]]:
    """Start the real daemon; return once HA made every entity, they are available and Status is idle.

    A discovery payload HA refuses shows up as a log record; that fails at once with HA's reason.
    """
    daemon = start_daemon(env=DAEMON_ENV)

    def created() -> dict[str, er.RegistryEntry] | None:
        assert log_problems() == []
        assert daemon.proc.poll() is None, daemon.log()
        return _registry_entries(hass)

    entries = await wait_until(hass, created, "every entity of the daemon's device")
    await wait_for_mqtt_idle(hass)

    def ready() -> bool:
        states = _states(hass)
        return STATE_UNAVAILABLE not in states.values() and states["status"] == "idle"

    await wait_until(hass, ready, "the daemon's entities available with Status idle")
    return daemon, entries


async def _set_prompt(hass: HomeAssistant, text: str) -> None:
    await hass.services.async_call(
        "text", "set_value", {"entity_id": KITCHEN_ENTITIES["prompt"], "value": text}, blocking=True
    )


async def test_the_daemon_appears_as_one_device_with_every_entity(
    hass: HomeAssistant,
    mqtt_ready: ConfigEntry,
    start_daemon: Callable[..., Daemon],
    mqtt_log_problems: Callable[[], list[str]],
) -> None:
    _, entries = await _start_in_ha(hass, start_daemon, mqtt_log_problems)

    assert {cid: entry.entity_id for cid, entry in entries.items()} == KITCHEN_ENTITIES
    device_ids = {entry.device_id for entry in entries.values()}
    assert len(device_ids) == 1
    device = dr.async_get(hass).async_get(device_ids.pop())
    assert device is not None
    model_file = sim_model_file().name
    assert device.identifiers == {("mqtt", f"rkllm_{NODE_ID}")}
    assert (device.name, device.manufacturer, device.model, device.sw_version) == (
        f"RKLLM {NODE_ID}",
        "rkllm-mqtt",
        model_file,
        __version__,
    )
    # Available, idle, nothing run yet: no speed figures, no answer, no event.
    assert _states(hass) == {
        "status": "idle",
        "busy": "off",
        "tokens_per_second": STATE_UNKNOWN,
        "ttft": STATE_UNKNOWN,
        "queue": "0",
        "model": model_file,
        "last_response": STATE_UNKNOWN,
        "prompt": STATE_UNKNOWN,
        "abort": STATE_UNKNOWN,
        "response": STATE_UNKNOWN,
    }
    assert mqtt_log_problems() == []


async def test_the_prompt_entity_gets_an_answer(
    hass: HomeAssistant,
    mqtt_ready: ConfigEntry,
    start_daemon: Callable[..., Daemon],
    state_log: StateLog,
    mqtt_log_problems: Callable[[], list[str]],
) -> None:
    await _start_in_ha(hass, start_daemon, mqtt_log_problems)
    state_log.clear()

    async def ask(prompt: str) -> State:
        """Set the Prompt entity; return the Response event that fires, once Status is idle again."""
        fired = len(state_log.events())
        await _set_prompt(hass, prompt)
        await wait_until(
            hass,
            lambda: len(state_log.events()) > fired and _state(hass, "status").state == "idle",
            f"the answer to {prompt!r}",
        )
        event, = state_log.events()[fired:]
        return event

    # A short answer: the sensor's state is the whole answer.
    prompt = "Wie spät ist es in der Küche?"
    answer = expected_answer(prompt)
    event = await ask(prompt)
    assert event.attributes["event_type"] == "completed"
    assert event.attributes["finish_reason"] == "stop"
    assert event.attributes["text"] == answer
    # While it ran, HA saw the daemon busy; afterwards idle, with speed figures.
    assert state_log.values("status") == ["generating", "idle"]
    assert state_log.values("busy") == ["on", "off"]
    last = await wait_until(
        hass,
        lambda: (s := _state(hass, "last_response")).attributes.get("id") == event.attributes["id"]
        and s,
        "the Last response attributes",
    )
    assert last.state == answer
    assert last.attributes["text"] == answer
    assert last.attributes["truncated"] is False
    # The speed figures are numbers, the same the daemon reported for this run.
    timing = event.attributes["timing"]
    assert float(_state(hass, "tokens_per_second").state) == timing["tokens_per_s"] > 0
    assert float(_state(hass, "ttft").state) == timing["ttft_ms"] >= 0
    assert (_state(hass, "busy").state, _state(hass, "queue").state) == ("off", "0")

    # A 729-character answer: the state is cut to 255 characters, the attributes keep all of it.
    prompt = "Count for me [sim:tokens=120]"
    answer = " ".join(f"tok{i}" for i in range(120))
    assert len(answer) > 255
    event = await ask(prompt)
    assert (event.attributes["event_type"], event.attributes["text"]) == ("completed", answer)
    last = await wait_until(
        hass,
        lambda: (s := _state(hass, "last_response")).attributes.get("id") == event.attributes["id"]
        and s,
        "the long Last response attributes",
    )
    assert len(last.state) <= 255
    assert last.state == answer[:254] + "…"
    assert last.attributes["text"] == answer
    assert last.attributes["usage"]["completion_tokens"] == 120
    assert (_state(hass, "status").state, _state(hass, "busy").state) == ("idle", "off")
    assert mqtt_log_problems() == []


async def test_an_answer_that_only_calls_tools_is_readable_in_ha(
    hass: HomeAssistant,
    mqtt_ready: ConfigEntry,
    start_daemon: Callable[..., Daemon],
    outside_client: Callable[[], OutsideClient],
    state_log: StateLog,
    mqtt_log_problems: Callable[[], list[str]],
) -> None:
    """A client's request with tools: Last response says what was called (not an empty state),
    and its attributes and the Response event carry the calls."""
    daemon, _ = await _start_in_ha(hass, start_daemon, mqtt_log_problems)
    state_log.clear()
    tools = [{"type": "function", "function": {"name": "HassTurnOn", "parameters": {
        "type": "object", "properties": {"name": {"type": "string"}}}}}]
    client = outside_client()
    client.publish(f"{daemon.prefix}/prompt", json.dumps(
        {"id": "tool-1", "prompt": "Turn on the kitchen light.", "tools": tools}))
    last = await wait_until(
        hass,
        lambda: (s := _state(hass, "last_response")).attributes.get("id") == "tool-1" and s,
        "the Last response of the tool call",
    )
    assert last.state == "called HassTurnOn"
    [call] = last.attributes["tool_calls"]
    assert (call["name"], call["arguments"]) == ("HassTurnOn", {"name": "kitchen light"})
    assert (last.attributes["text"], last.attributes["finish_reason"]) == ("", "tool_calls")
    await wait_until(hass, lambda: state_log.events(), "the Response event")
    event, = state_log.events()
    assert event.attributes["event_type"] == "completed"
    assert event.attributes["tool_calls"] == last.attributes["tool_calls"]
    assert mqtt_log_problems() == []


async def test_the_abort_button_ends_a_run(
    hass: HomeAssistant,
    mqtt_ready: ConfigEntry,
    start_daemon: Callable[..., Daemon],
    state_log: StateLog,
    mqtt_log_problems: Callable[[], list[str]],
) -> None:
    await _start_in_ha(hass, start_daemon, mqtt_log_problems)
    state_log.clear()

    # [sim:hang] streams one token, then runs until it is aborted.
    await _set_prompt(hass, "Think forever [sim:hang]")
    await wait_until(hass, lambda: _state(hass, "status").state == "generating", "generating")
    assert _state(hass, "busy").state == "on"
    assert state_log.events() == []

    await hass.services.async_call("button", "press", {"entity_id": KITCHEN_ENTITIES["abort"]}, blocking=True)
    await wait_until(
        hass,
        lambda: state_log.events() and _state(hass, "status").state == "idle",
        "the aborted event and Status idle",
    )
    event, = state_log.events()
    assert event.attributes["event_type"] == "aborted"
    assert event.attributes["message"] == "aborted on request"
    assert state_log.values("status") == ["generating", "idle"]
    assert _state(hass, "busy").state == "off"
    # An aborted run is no answer: Last response stays as it was.
    assert _state(hass, "last_response").state == STATE_UNKNOWN
    assert mqtt_log_problems() == []


async def test_stopping_makes_everything_unavailable_and_ha_online_brings_rediscovery(
    hass: HomeAssistant,
    mqtt_ready: ConfigEntry,
    start_daemon: Callable[..., Daemon],
    outside_client: Callable[[], OutsideClient],
    state_log: StateLog,
    mqtt_log_problems: Callable[[], list[str]],
) -> None:
    daemon, _ = await _start_in_ha(hass, start_daemon, mqtt_log_problems)

    # SIGTERM: the daemon publishes `offline` (also its will) and every entity goes unavailable.
    daemon.stop()
    assert daemon.proc.returncode == 0, daemon.log()
    await wait_until(
        hass, lambda: set(_states(hass).values()) == {STATE_UNAVAILABLE}, "every entity unavailable"
    )

    # Started again, it is back. HA shows the old retained `idle` as soon as `online` arrives, so
    # wait for this start's own `loading` → `idle`: everything it announces at start is in by then.
    state_log.clear()
    daemon, _ = await _start_in_ha(hass, start_daemon, mqtt_log_problems)
    await wait_until(
        hass,
        lambda: "loading" in (seen := state_log.values("status")) and seen[-1] == "idle",
        "the restarted daemon's loading → idle",
    )

    # The broker loses the retained discovery (as after a broker reset without persistence);
    # HA forgets the device.
    ha = outside_client()
    ha.subscribe(DISCOVERY_TOPIC)
    retained = await ha.next_message(DISCOVERY_TOPIC)
    assert retained.retain and json.loads(retained.payload)["dev"]["ids"] == [f"rkllm_{NODE_ID}"]
    ha.publish(DISCOVERY_TOPIC, "", retain=True)
    assert (await ha.next_message(DISCOVERY_TOPIC)).payload == b""
    await wait_until(
        hass,
        lambda: _registry_entries(hass) is None
        and not any(hass.states.get(eid) for eid in KITCHEN_ENTITIES.values()),
        "HA to remove the device's entities",
    )
    assert "re-sending discovery" not in daemon.log()

    # HA's birth message: the daemon re-sends discovery, and HA has the device again, available.
    ha.publish("homeassistant/status", "online")
    resent = await ha.next_message(DISCOVERY_TOPIC)
    assert json.loads(resent.payload)["dev"]["ids"] == [f"rkllm_{NODE_ID}"]
    entries = await wait_until(hass, lambda: _registry_entries(hass), "the device rediscovered")
    assert {cid: entry.entity_id for cid, entry in entries.items()} == KITCHEN_ENTITIES
    await wait_until(
        hass,
        lambda: STATE_UNAVAILABLE not in (states := _states(hass)).values()
        and states["status"] == "idle",
        "the rediscovered entities available with Status idle",
    )
    assert "Home Assistant came online; re-sending discovery" in daemon.log()
    assert mqtt_log_problems() == []
