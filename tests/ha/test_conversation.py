"""Assist through the integration: Home Assistant's own conversation API, answered by the real
daemon on the simulator over a real broker.

The daemon runs with a chat template (prefix + postfix), so the system prompt goes into the template
and the simulator's prompt is exactly the user text, or the transcript when the history is sent:
`expected_answer` then says which of the two the daemon got.
"""

from __future__ import annotations

import asyncio
import itertools
import json
import logging
from collections.abc import Callable
from typing import Any

import pytest
from harness import OutsideClient, wait_until
from homeassistant.components import conversation
from homeassistant.const import STATE_UNAVAILABLE
from homeassistant.core import Context, HomeAssistant
from homeassistant.helpers import device_registry as dr
from homeassistant.helpers import entity_registry as er
from homeassistant.helpers import intent
from integration_fixtures import (
    BASE_TOPIC,
    ENTITY_ID,
    NODE_ID,
    Daemon,
    rkllm_const,
    setup_entry,
    wait_for_state,
)

from rkllm_mqtt.simulator import expected_answer

QWEN_TEMPLATE = {
    "prompt_prefix": "<|im_start|>user\n",
    "prompt_postfix": "<|im_end|>\n<|im_start|>assistant\n",
}
PREFIX = f"{BASE_TOPIC}/{NODE_ID}"


class Spy:
    """An outside client that sees the requests HA sends and the replies the daemon gives."""

    def __init__(self, client: OutsideClient) -> None:
        self.client = client
        client.subscribe(f"{PREFIX}/prompt")
        client.subscribe(f"{PREFIX}/abort")
        client.subscribe(f"{BASE_TOPIC}/reply/#")

    async def request(self) -> dict[str, Any]:
        return json.loads((await self.client.next_message(f"{PREFIX}/prompt")).payload)

    async def final(self, request: dict[str, Any]) -> dict[str, Any]:
        while True:
            reply = json.loads((await self.client.next_message(request["response_topic"])).payload)
            if reply["id"] == request["id"] and reply["type"] == "final":
                return reply

    async def abort(self) -> str:
        return (await self.client.next_message(f"{PREFIX}/abort")).payload.decode()


@pytest.fixture
def spy(outside_client: Callable[[], OutsideClient]) -> Spy:
    return Spy(outside_client())


class DeltaRecorder:
    """A chat-log delta listener, the hook Assist pipelines use to stream the answer to a satellite."""

    def __init__(self) -> None:
        self.deltas: list[dict[str, Any]] = []

    def __call__(self, _chat_log: conversation.ChatLog, delta: dict[str, Any]) -> None:
        self.deltas.append(delta)


async def converse(
    hass: HomeAssistant, text: str, conversation_id: str | None = None,
    recorder: DeltaRecorder | None = None,
) -> conversation.ConversationResult:
    """One turn through `conversation.async_converse`; with `recorder`, Assist's delta hook is set
    the way assist_pipeline sets it (by opening the chat log first with a delta listener)."""
    from homeassistant.helpers.chat_session import async_get_chat_session

    if recorder is None:
        return await conversation.async_converse(
            hass, text, conversation_id, Context(), language="en", agent_id=ENTITY_ID
        )
    with (
        async_get_chat_session(hass, conversation_id) as session,
        conversation.async_get_chat_log(hass, session, chat_log_delta_listener=recorder),
    ):
        return await conversation.async_converse(
            hass, text, session.conversation_id, Context(), language="en", agent_id=ENTITY_ID
        )


async def test_turns_stream_and_continue_the_conversation(
    ha_with_mqtt: HomeAssistant, start_daemon: Callable[..., Daemon], spy: Spy
) -> None:
    hass = ha_with_mqtt
    start_daemon(**QWEN_TEMPLATE)
    await setup_entry(hass)
    await wait_for_state(hass, ENTITY_ID, lambda state: state != STATE_UNAVAILABLE)

    recorder = DeltaRecorder()
    result = await converse(hass, "What is the capital of France?", recorder=recorder)
    request, = [await spy.request()]
    final = await spy.final(request)

    # The answer is the one the simulator produced for this prompt, sent back by the daemon.
    assert result.response.response_type is intent.IntentResponseType.ACTION_DONE
    speech = result.response.speech["plain"]["speech"]
    assert speech == final["text"] == expected_answer("What is the capital of France?")
    # It arrived as a stream: the role first, then several pieces that add up to the answer.
    assert recorder.deltas[0] == {"role": "assistant"}
    pieces = [delta["content"] for delta in recorder.deltas[1:]]
    assert len(pieces) > 5
    assert "".join(pieces) == speech

    # The request: the conversation is HA's conversation id, the instructions are the system
    # prompt, tokens are asked for, replies come to this entry's topic under rkllm/reply/.
    conversation_id = result.conversation_id
    assert conversation_id
    assert request["conversation"] == conversation_id
    assert request["messages"] == [{"role": "user", "content": "What is the capital of France?"}]
    assert request["system"].startswith("You are a voice assistant for Home Assistant.")
    assert request["stream"] is True
    assert request["priority"] == "interactive"
    assert request["response_topic"].startswith(f"{BASE_TOPIC}/reply/ha_")

    # Second turn, same conversation: the whole chat goes out; the daemon already holds the first
    # turn, so the simulator sees only the new one (the KV cache continues).
    second = await converse(hass, "And of Italy?", conversation_id)
    request2 = await spy.request()
    assert second.conversation_id == conversation_id
    assert request2["conversation"] == conversation_id
    assert request2["messages"] == [
        {"role": "user", "content": "What is the capital of France?"},
        {"role": "assistant", "content": speech},
        {"role": "user", "content": "And of Italy?"},
    ]
    assert second.response.speech["plain"]["speech"] == (await spy.final(request2))["text"]
    assert second.response.speech["plain"]["speech"] == expected_answer("And of Italy?")


async def test_a_restarted_daemon_gets_the_history_again(
    ha_with_mqtt: HomeAssistant, start_daemon: Callable[..., Daemon], spy: Spy
) -> None:
    hass = ha_with_mqtt
    daemon = start_daemon(**QWEN_TEMPLATE)
    await setup_entry(hass)
    await wait_for_state(hass, ENTITY_ID, lambda state: state != STATE_UNAVAILABLE)
    first = await converse(hass, "Hello")
    first_request = await spy.request()
    answer = first.response.speech["plain"]["speech"]

    daemon.stop()
    await wait_for_state(hass, ENTITY_ID, lambda state: state == STATE_UNAVAILABLE)
    start_daemon(**QWEN_TEMPLATE)
    await wait_for_state(hass, ENTITY_ID, lambda state: state != STATE_UNAVAILABLE)

    second = await converse(hass, "Again", first.conversation_id)
    request = await spy.request()
    # The new daemon never saw the first turn: it replays the chat it was sent.
    assert request["conversation"] == first_request["conversation"] == first.conversation_id
    assert request["messages"] == [
        {"role": "user", "content": "Hello"},
        {"role": "assistant", "content": answer},
        {"role": "user", "content": "Again"},
    ]
    transcript = f"User: Hello\nAssistant: {answer}\nUser: Again"
    assert second.response.speech["plain"]["speech"] == expected_answer(transcript)


async def test_history_length_option_cuts_what_is_sent(
    ha_with_mqtt: HomeAssistant, start_daemon: Callable[..., Daemon], spy: Spy
) -> None:
    hass = ha_with_mqtt
    daemon = start_daemon(**QWEN_TEMPLATE)
    await setup_entry(hass, **{rkllm_const.CONF_MAX_HISTORY: 1})
    await wait_for_state(hass, ENTITY_ID, lambda state: state != STATE_UNAVAILABLE)
    first = await converse(hass, "one")
    conversation_id = first.conversation_id
    second = await converse(hass, "two", conversation_id)
    for _ in range(2):
        await spy.request()

    daemon.stop()  # forces the history to be sent again on the next turn
    await wait_for_state(hass, ENTITY_ID, lambda state: state == STATE_UNAVAILABLE)
    start_daemon(**QWEN_TEMPLATE)
    await wait_for_state(hass, ENTITY_ID, lambda state: state != STATE_UNAVAILABLE)
    await converse(hass, "three", conversation_id)
    request = await spy.request()
    # One earlier user turn (with its answer) plus the new one.
    assert request["messages"] == [
        {"role": "user", "content": "two"},
        {"role": "assistant", "content": second.response.speech["plain"]["speech"]},
        {"role": "user", "content": "three"},
    ]


def _error_speech(result: conversation.ConversationResult) -> str:
    assert result.response.response_type is intent.IntentResponseType.ERROR
    assert result.response.error_code is intent.IntentResponseErrorCode.UNKNOWN
    return result.response.speech["plain"]["speech"]


async def test_daemon_offline_is_an_error_reply(
    ha_with_mqtt: HomeAssistant, outside_client: Callable[[], OutsideClient]
) -> None:
    hass = ha_with_mqtt
    outside_client().publish(f"{PREFIX}/status", "offline", retain=True)
    await setup_entry(hass)
    assert hass.states.get(ENTITY_ID).state == STATE_UNAVAILABLE

    result = await converse(hass, "Anyone there?")
    assert _error_speech(result) == f"The RKLLM daemon {NODE_ID} is offline."


async def test_timeout_aborts_the_request_and_is_an_error_reply(
    ha_with_mqtt: HomeAssistant, start_daemon: Callable[..., Daemon], spy: Spy
) -> None:
    hass = ha_with_mqtt
    start_daemon(**QWEN_TEMPLATE)
    await setup_entry(hass, **{rkllm_const.CONF_TIMEOUT: 1.5})
    await wait_for_state(hass, ENTITY_ID, lambda state: state != STATE_UNAVAILABLE)

    # [sim:hang] streams one token, then waits until it is aborted.
    result = await converse(hass, "Think forever [sim:hang]")
    assert _error_speech(result) == f"The RKLLM daemon {NODE_ID} did not answer within 1.5 seconds."
    request = await spy.request()
    assert request["ttl_s"] == 2.5  # the daemon's own deadline, a second after the timeout here
    assert await spy.abort() == request["id"]
    # The daemon stopped the run: by our abort, or (were this Home Assistant gone) by its ttl_s.
    final = await spy.final(request)
    assert final["status"] == "error"
    assert (final["error"]["code"], final["finish_reason"]) in {
        ("aborted", "abort"), ("deadline_exceeded", "deadline")
    }


async def test_daemon_error_is_an_error_reply(
    ha_with_mqtt: HomeAssistant, start_daemon: Callable[..., Daemon], spy: Spy
) -> None:
    hass = ha_with_mqtt
    start_daemon(**QWEN_TEMPLATE)
    await setup_entry(hass)
    await wait_for_state(hass, ENTITY_ID, lambda state: state != STATE_UNAVAILABLE)

    result = await converse(hass, "Break please [sim:error]")
    final = await spy.final(await spy.request())
    assert final["status"] == "error"
    assert _error_speech(result) == (
        f"The RKLLM daemon {NODE_ID} could not answer ({final['error']['code']}): {final['error']['message']}"
    )


async def test_an_abort_from_elsewhere_is_an_error_reply(
    ha_with_mqtt: HomeAssistant, start_daemon: Callable[..., Daemon], spy: Spy
) -> None:
    hass = ha_with_mqtt
    start_daemon(**QWEN_TEMPLATE)
    await setup_entry(hass)
    await wait_for_state(hass, ENTITY_ID, lambda state: state != STATE_UNAVAILABLE)

    task = hass.async_create_task(converse(hass, "Long story [sim:hang]"))
    request = await spy.request()
    await spy.client.next_message(request["response_topic"])  # the first token: it is running
    # What the daemon's Abort button (its MQTT button entity) publishes: an empty ~/abort.
    spy.client.publish(f"{PREFIX}/abort", "")
    result = await task
    assert _error_speech(result) == "The answer was stopped before it was finished."


async def test_a_cancelled_turn_aborts_the_request(
    ha_with_mqtt: HomeAssistant, start_daemon: Callable[..., Daemon], spy: Spy
) -> None:
    """A voice pipeline that gives up cancels the turn; the NPU must not keep working for nobody."""
    hass = ha_with_mqtt
    start_daemon(**QWEN_TEMPLATE)
    await setup_entry(hass)
    await wait_for_state(hass, ENTITY_ID, lambda state: state != STATE_UNAVAILABLE)

    task = hass.async_create_task(converse(hass, "Long story [sim:hang]"))
    request = await spy.request()
    await spy.client.next_message(request["response_topic"])  # the first token: it is running
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert await spy.abort() == request["id"]
    final = await spy.final(request)
    assert (final["error"]["code"], final["finish_reason"]) == ("aborted", "abort")


async def test_without_streaming_the_final_text_is_the_answer(
    ha_with_mqtt: HomeAssistant, start_daemon: Callable[..., Daemon], spy: Spy,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A Home Assistant whose ChatLog cannot take a delta stream gets the final text at once."""
    hass = ha_with_mqtt
    monkeypatch.delattr(conversation.ChatLog, "async_add_delta_content_stream")
    start_daemon(**QWEN_TEMPLATE)
    await setup_entry(hass)
    await wait_for_state(hass, ENTITY_ID, lambda state: state != STATE_UNAVAILABLE)

    recorder = DeltaRecorder()
    result = await converse(hass, "No stream here", recorder=recorder)
    request = await spy.request()
    assert request["stream"] is False
    assert result.response.speech["plain"]["speech"] == expected_answer("No stream here")
    assert recorder.deltas == []


async def test_an_empty_answer_keeps_the_conversation_consistent(
    ha_with_mqtt: HomeAssistant, start_daemon: Callable[..., Daemon], spy: Spy
) -> None:
    """No tokens means no streamed message; the turn still gets its (empty) assistant message, so
    the chat the next turn sends begins with what the daemon holds and its KV cache continues."""
    hass = ha_with_mqtt
    start_daemon(**QWEN_TEMPLATE)
    await setup_entry(hass)
    await wait_for_state(hass, ENTITY_ID, lambda state: state != STATE_UNAVAILABLE)

    first = await converse(hass, "Say nothing [sim:tokens=0]")
    request = await spy.request()
    assert (await spy.final(request))["text"] == ""
    assert first.response.speech["plain"]["speech"] == ""

    second = await converse(hass, "Now speak", first.conversation_id)
    request2 = await spy.request()
    assert request2["conversation"] == request["conversation"]
    assert request2["messages"] == [
        {"role": "user", "content": "Say nothing [sim:tokens=0]"},
        {"role": "assistant", "content": ""},
        {"role": "user", "content": "Now speak"},
    ]
    assert second.response.speech["plain"]["speech"] == expected_answer("Now speak")


MQTT_DEVICE = ("mqtt", f"rkllm_{NODE_ID}")  # the identifier of the daemon's discovery device


def _agent_device(hass: HomeAssistant, entity_id: str = ENTITY_ID) -> dr.DeviceEntry:
    device_id = er.async_get(hass).async_get(entity_id).device_id
    assert device_id is not None
    return dr.async_get(hass).async_get(device_id)


def _mqtt_device(hass: HomeAssistant) -> dr.DeviceEntry | None:
    from custom_components.rkllm_mqtt.entity import find_daemon_device

    return find_daemon_device(hass, NODE_ID)


def _owner(device: dr.DeviceEntry) -> str | None:
    """The config entry a device belongs to (HA 2026.x has one per device; older ones a primary)."""
    if hasattr(dr.DeviceInfo, "__annotations__") and "via_device_id" in dr.DeviceInfo.__annotations__:
        return device.config_entry_id
    return device.primary_config_entry


def _assert_agent_device(hass: HomeAssistant, entry_id: str, device: dr.DeviceEntry) -> None:
    """The agent's own device: a service of this entry, named after it, nothing else in it."""
    assert device.identifiers == {(rkllm_const.DOMAIN, entry_id)}
    assert device.entry_type is dr.DeviceEntryType.SERVICE
    assert device.name == f"RKLLM {NODE_ID}"
    assert _owner(device) == entry_id
    assert [d.id for d in dr.async_entries_for_config_entry(dr.async_get(hass), entry_id)] == [device.id]


async def test_the_agent_has_its_own_device_linked_to_the_daemons(
    ha_with_mqtt: HomeAssistant, start_daemon: Callable[..., Daemon]
) -> None:
    hass = ha_with_mqtt
    start_daemon(**QWEN_TEMPLATE)
    daemon_device = await wait_until(hass, lambda: _mqtt_device(hass), "the daemon's MQTT device")
    entry = await setup_entry(hass)

    device = _agent_device(hass)
    _assert_agent_device(hass, entry.entry_id, device)
    assert device.via_device_id == daemon_device.id
    # The daemon's device is left as its discovery made it: the mqtt entry's, with its name and model.
    daemon_device = dr.async_get(hass).async_get(daemon_device.id)
    assert _owner(daemon_device) == hass.config_entries.async_entries("mqtt")[0].entry_id
    assert daemon_device.name == f"RKLLM {NODE_ID}"
    assert daemon_device.model


async def test_the_link_is_made_when_the_daemons_discovery_comes_later(
    ha_with_mqtt: HomeAssistant, start_daemon: Callable[..., Daemon]
) -> None:
    hass = ha_with_mqtt
    entry = await setup_entry(hass)
    device = _agent_device(hass)
    _assert_agent_device(hass, entry.entry_id, device)
    assert device.via_device_id is None

    start_daemon(**QWEN_TEMPLATE)
    daemon_device = await wait_until(hass, lambda: _mqtt_device(hass), "the daemon's MQTT device")
    await wait_until(
        hass, lambda: dr.async_get(hass).async_get(device.id).via_device_id == daemon_device.id,
        "the agent's device to link to the daemon's",
    )
    assert await hass.config_entries.async_reload(entry.entry_id)
    await hass.async_block_till_done()
    assert _agent_device(hass).id == device.id
    assert _agent_device(hass).via_device_id == daemon_device.id


async def test_two_daemons_with_one_node_id_under_two_base_topics_get_two_devices(
    ha_with_mqtt: HomeAssistant,
) -> None:
    hass = ha_with_mqtt
    first = await setup_entry(hass)
    second = await setup_entry(hass, base_topic="lab")
    devices = {_agent_device(hass, entity.entity_id).id
               for entity in er.async_get(hass).entities.values() if entity.platform == rkllm_const.DOMAIN}
    assert len(devices) == 2
    for entry in (first, second):
        assert len(dr.async_entries_for_config_entry(dr.async_get(hass), entry.entry_id)) == 1


async def test_an_entry_of_release_0_1_moves_to_its_own_device(ha_with_mqtt: HomeAssistant) -> None:
    """Release 0.1.0 put the agent on the daemon's MQTT device (the entry was then version 1.1)."""
    from pytest_homeassistant_custom_component.common import MockConfigEntry

    hass = ha_with_mqtt
    entry = MockConfigEntry(
        domain=rkllm_const.DOMAIN, title=f"RKLLM {NODE_ID}", unique_id=f"{BASE_TOPIC}/{NODE_ID}",
        data={rkllm_const.CONF_BASE_TOPIC: BASE_TOPIC, rkllm_const.CONF_NODE_ID: NODE_ID},
        version=1, minor_version=1,
    )
    entry.add_to_hass(hass)
    old_device = dr.async_get(hass).async_get_or_create(
        config_entry_id=entry.entry_id, identifiers={MQTT_DEVICE}, manufacturer="rkllm-mqtt",
        name=f"RKLLM {NODE_ID}",
    )
    er.async_get(hass).async_get_or_create(
        "conversation", rkllm_const.DOMAIN, entry.entry_id, config_entry=entry, device_id=old_device.id,
        suggested_object_id=f"rkllm_{NODE_ID}",
    )
    assert await hass.config_entries.async_setup(entry.entry_id)
    await hass.async_block_till_done()

    assert (entry.version, entry.minor_version) == (1, 2)
    entities = er.async_get(hass)
    assert entities.async_get_entity_id("conversation", rkllm_const.DOMAIN, entry.entry_id) == ENTITY_ID
    _assert_agent_device(hass, entry.entry_id, _agent_device(hass))
    assert dr.async_get(hass).async_get(old_device.id) is None  # it was this entry's alone


async def test_a_conversation_the_daemon_evicted_keeps_its_context(
    ha_with_mqtt: HomeAssistant, start_daemon: Callable[..., Daemon], spy: Spy
) -> None:
    """The daemon forgets a conversation when others push it out (`max_conversations`); the next
    turn must still carry the earlier ones: the whole chat goes out and the daemon replays it."""
    hass = ha_with_mqtt
    start_daemon(env={"RKLLM_MQTT_CONVERSATION__MAX_CONVERSATIONS": "1"}, **QWEN_TEMPLATE)
    await setup_entry(hass)
    await wait_for_state(hass, ENTITY_ID, lambda state: state != STATE_UNAVAILABLE)

    first = await converse(hass, "My name is Ada")
    answer = first.response.speech["plain"]["speech"]
    await converse(hass, "Something else entirely")  # conversation B evicts A on the daemon
    second = await converse(hass, "What is my name?", first.conversation_id)
    requests = [await spy.request() for _ in range(3)]

    assert requests[2]["conversation"] == requests[0]["conversation"] == first.conversation_id
    assert requests[2]["messages"] == [
        {"role": "user", "content": "My name is Ada"},
        {"role": "assistant", "content": answer},
        {"role": "user", "content": "What is my name?"},
    ]
    transcript = f"User: My name is Ada\nAssistant: {answer}\nUser: What is my name?"
    assert second.response.speech["plain"]["speech"] == expected_answer(transcript)


async def test_a_reload_during_an_answer_aborts_it(
    ha_with_mqtt: HomeAssistant, start_daemon: Callable[..., Daemon], spy: Spy
) -> None:
    """Reloading (or removing) the entry while an answer runs frees the NPU and says why it stopped."""
    hass = ha_with_mqtt
    start_daemon(**QWEN_TEMPLATE)
    entry = await setup_entry(hass)
    await wait_for_state(hass, ENTITY_ID, lambda state: state != STATE_UNAVAILABLE)

    task = hass.async_create_task(converse(hass, "Long story [sim:hang]"))
    request = await spy.request()
    await spy.client.next_message(request["response_topic"])  # the first token: it is running
    assert await hass.config_entries.async_reload(entry.entry_id)
    result = await task
    assert _error_speech(result) == (
        "The RKLLM over MQTT integration was unloaded or is reloading, so the answer was abandoned."
    )
    assert await spy.abort() == request["id"]
    final = await spy.final(request)
    assert (final["error"]["code"], final["finish_reason"]) == ("aborted", "abort")


async def test_the_config_entry_id_is_an_agent_id(
    ha_with_mqtt: HomeAssistant, start_daemon: Callable[..., Daemon]
) -> None:
    """Like core's LLM integrations, the agent answers to its config entry id as well as its entity id."""
    hass = ha_with_mqtt
    start_daemon(**QWEN_TEMPLATE)
    entry = await setup_entry(hass)
    await wait_for_state(hass, ENTITY_ID, lambda state: state != STATE_UNAVAILABLE)

    result = await conversation.async_converse(
        hass, "Who are you?", None, Context(), language="en", agent_id=entry.entry_id
    )
    assert result.response.speech["plain"]["speech"] == expected_answer("Who are you?")

    assert await hass.config_entries.async_unload(entry.entry_id)
    assert conversation.async_get_agent_info(hass, entry.entry_id) is None


def test_the_history_window_moves_half_a_window_at_a_time() -> None:
    from custom_components.rkllm_mqtt.history import Budget, window_start

    def chat(earlier: int) -> list[dict[str, str]]:
        turns = [m for i in range(earlier) for m in ({"role": "user", "content": f"u{i}"},
                                                     {"role": "assistant", "content": f"a{i}"})]
        return [*turns, {"role": "user", "content": f"u{earlier}"}]

    roomy = Budget(chars=10**6, payload_bytes=10**6)

    def first(messages: list[dict[str, str]], **kwargs: object) -> str:
        return messages[window_start(messages, budget=kwargs.pop("budget", roomy), **kwargs)]["content"]

    starts = [first(chat(earlier), max_history=10) for earlier in range(9, 18)]
    # the start stays put for five turns at a time, so the daemon keeps its cache between moves
    assert starts == ["u0", "u0", "u5", "u5", "u5", "u5", "u5", "u10", "u10"]
    assert len(chat(17)) - window_start(chat(17), budget=roomy, max_history=10) == 2 * 7 + 1
    assert first(chat(3), max_history=1) == "u2"
    assert window_start(chat(3), budget=roomy) == 0

    # Measured in characters: each message here is 2 characters, so 12 characters hold 6 messages;
    # when the window is full its start jumps to keep half of it, then stays while it fits.
    small = Budget(chars=12, payload_bytes=10**6)
    starts = [first(chat(earlier), budget=small) for earlier in range(1, 9)]
    assert starts == ["u0", "u0", "u2", "u2", "u4", "u4", "u6", "u6"]


async def test_thirty_turns_of_long_answers_are_all_answered(
    ha_with_mqtt: HomeAssistant, start_daemon: Callable[..., Daemon], spy: Spy
) -> None:
    """A long chat outgrows the daemon's limits; the history is cut to fit them, every turn is
    answered, and the window moves in jumps (the daemon's cache continues between them)."""
    hass = ha_with_mqtt
    max_prompt_chars = 8000
    start_daemon(env={"RKLLM_MQTT_LIMITS__MAX_PROMPT_CHARS": str(max_prompt_chars)},
                 max_context_len=4096, **QWEN_TEMPLATE)
    await setup_entry(hass)
    await wait_for_state(hass, ENTITY_ID, lambda state: state != STATE_UNAVAILABLE)
    await wait_until(
        hass, lambda: hass.config_entries.async_entries(rkllm_const.DOMAIN)[0].runtime_data.limits
        .max_prompt_chars == max_prompt_chars, "the daemon's announced limits",
    )

    conversation_id = None
    firsts: list[str] = []
    for turn in range(30):
        result = await converse(hass, f"Turn {turn}: tell me more [sim:tokens=330]", conversation_id)
        conversation_id = result.conversation_id
        request = await spy.request()
        final = await spy.final(request)
        assert final["status"] == "ok", (turn, final)
        assert result.response.response_type is intent.IntentResponseType.ACTION_DONE, turn
        speech = result.response.speech["plain"]["speech"]
        assert speech == final["text"] and len(speech) > 1900
        size = sum(len(m["content"]) for m in request["messages"]) + len(request["system"])
        assert size <= max_prompt_chars
        firsts.append(request["messages"][0]["content"])
    # The window moved a few times, not every turn, and always kept more than the newest turn.
    moves = sum(a != b for a, b in itertools.pairwise(firsts))
    assert 3 <= moves <= 15
    assert firsts[-1] != "Turn 29: tell me more [sim:tokens=330]"


class FakeDaemon:
    """An outside client playing the daemon, for replies the real one never sends (a lost token,
    a refusal despite its announced limits, going offline mid-answer)."""

    def __init__(self, client: OutsideClient, limits: dict[str, int] | None = None) -> None:
        self.client = client
        client.subscribe(f"{PREFIX}/prompt")
        if limits is not None:
            client.publish(f"{PREFIX}/state", json.dumps({"state": "idle", "limits": limits}), retain=True)
        client.publish(f"{PREFIX}/status", "online", retain=True)

    async def request(self) -> dict[str, Any]:
        return json.loads((await self.client.next_message(f"{PREFIX}/prompt")).payload)

    def reply(self, request: dict[str, Any], **reply: Any) -> None:
        self.client.publish(request["response_topic"], json.dumps({"id": request["id"], **reply}))


async def test_the_final_text_wins_over_a_lost_token(
    ha_with_mqtt: HomeAssistant, outside_client: Callable[[], OutsideClient]
) -> None:
    hass = ha_with_mqtt
    daemon = FakeDaemon(outside_client())
    await setup_entry(hass)
    await wait_for_state(hass, ENTITY_ID, lambda state: state != STATE_UNAVAILABLE)

    recorder = DeltaRecorder()
    task = hass.async_create_task(converse(hass, "Say hello", recorder=recorder))
    request = await daemon.request()
    daemon.reply(request, type="token", seq=0, text="Hel")
    daemon.reply(request, type="token", seq=2, text=" world")  # seq 1 ("lo") never arrives
    daemon.reply(request, type="final", status="ok", text="Hello world", finish_reason="stop")
    result = await task

    assert "".join(d.get("content", "") for d in recorder.deltas) == "Hel world"  # what streamed
    assert result.response.speech["plain"]["speech"] == "Hello world"
    # The chat log holds the final text: the next turn sends it as the answer.
    task = hass.async_create_task(converse(hass, "Again", result.conversation_id))
    request = await daemon.request()
    assert request["messages"][1] == {"role": "assistant", "content": "Hello world"}
    daemon.reply(request, type="final", status="ok", text="Hi", finish_reason="stop")
    assert (await task).response.speech["plain"]["speech"] == "Hi"


async def test_offline_in_the_middle_of_an_answer_ends_with_a_spoken_error(
    ha_with_mqtt: HomeAssistant, outside_client: Callable[[], OutsideClient]
) -> None:
    """Newer Home Assistant speaks the streamed text as it comes, and nothing after it: the error
    sentence must be in the stream, and the turn is an error, not a cut-off answer."""
    hass = ha_with_mqtt
    daemon = FakeDaemon(outside_client())
    await setup_entry(hass)
    await wait_for_state(hass, ENTITY_ID, lambda state: state != STATE_UNAVAILABLE)

    recorder = DeltaRecorder()
    task = hass.async_create_task(converse(hass, "Tell me a story", recorder=recorder))
    request = await daemon.request()
    story = "Once upon a time, in a kitchen far away, there lived a small NPU that "
    for seq, word in enumerate(story.split(" ")):
        daemon.reply(request, type="token", seq=seq, text=f"{word} ")
    for _ in range(500):  # not wait_until: blocking till done would wait for the turn itself
        if len(recorder.deltas) > 10:
            break
        await asyncio.sleep(0.01)
    daemon.client.publish(f"{PREFIX}/status", "offline", retain=True)
    result = await task

    sentence = f"The RKLLM daemon {NODE_ID} went offline while answering."
    assert _error_speech(result) == sentence
    heard = "".join(d.get("content", "") for d in recorder.deltas)
    assert heard.startswith("Once upon a time")
    assert heard.endswith(sentence)


async def test_a_chat_refused_for_its_size_is_sent_again_shorter(
    ha_with_mqtt: HomeAssistant, outside_client: Callable[[], OutsideClient]
) -> None:
    """A daemon may refuse what its announced limits allow (its configuration changed since):
    the turn is sent once more with less history, and later turns keep the shorter window."""
    hass = ha_with_mqtt
    daemon = FakeDaemon(outside_client(), limits={"max_prompt_chars": 100000, "max_payload_bytes": 200000})
    await setup_entry(hass, **{rkllm_const.CONF_MAX_HISTORY: 0})
    await wait_for_state(hass, ENTITY_ID, lambda state: state != STATE_UNAVAILABLE)

    conversation_id = None
    for turn in range(4):
        task = hass.async_create_task(converse(hass, f"Question {turn}", conversation_id))
        request = await daemon.request()
        daemon.reply(request, type="final", status="ok", text=f"Answer {turn} " + "x" * 3000,
                     finish_reason="stop")
        conversation_id = (await task).conversation_id
    assert len(request["messages"]) == 7

    task = hass.async_create_task(converse(hass, "Question 4", conversation_id))
    refused = await daemon.request()
    assert len(refused["messages"]) == 9
    message = "prompt: 12100 characters, over limits.max_prompt_chars (8000)"
    daemon.reply(refused, type="final", status="error", error={"code": "invalid_request", "message": message})
    retry = await daemon.request()
    assert retry["id"] != refused["id"]
    assert 1 <= len(retry["messages"]) < len(refused["messages"])
    assert retry["messages"][-1] == {"role": "user", "content": "Question 4"}
    daemon.reply(retry, type="final", status="ok", text="Answer 4", finish_reason="stop")
    result = await task
    assert result.response.speech["plain"]["speech"] == "Answer 4"

    task = hass.async_create_task(converse(hass, "Question 5", conversation_id))
    following = await daemon.request()
    assert following["messages"][0] == retry["messages"][0]  # the window stays where it moved
    daemon.reply(following, type="final", status="ok", text="Answer 5", finish_reason="stop")
    await task


async def test_losing_and_regaining_the_daemon_is_logged_once_each(
    ha_with_mqtt: HomeAssistant, start_daemon: Callable[..., Daemon], caplog: pytest.LogCaptureFixture
) -> None:
    hass = ha_with_mqtt
    daemon = start_daemon(**QWEN_TEMPLATE)
    await setup_entry(hass)
    await wait_for_state(hass, ENTITY_ID, lambda state: state != STATE_UNAVAILABLE)
    daemon.stop()
    await wait_for_state(hass, ENTITY_ID, lambda state: state == STATE_UNAVAILABLE)
    start_daemon(**QWEN_TEMPLATE)
    await wait_for_state(hass, ENTITY_ID, lambda state: state != STATE_UNAVAILABLE)

    lines = [(r.levelname, r.getMessage()) for r in caplog.records
             if r.name.startswith("custom_components.rkllm_mqtt") and r.levelno >= logging.INFO]
    assert lines == [
        ("INFO", f"The RKLLM daemon {PREFIX} is unavailable (offline, or MQTT disconnected)"),
        ("INFO", f"The RKLLM daemon {PREFIX} is back online"),
    ]
