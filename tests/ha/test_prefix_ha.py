"""The cached prefix from Home Assistant's side: per-turn text stays out of the system prompt.

Real Home Assistant, the real daemon on the simulator, a real broker. The daemon keeps one system
prompt prefilled for every conversation, so two voice sessions a minute apart must send the same
system text; the time (and the speaking device's lines) travel with the user turn instead.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from datetime import datetime, timedelta
from typing import Any

import pytest
from homeassistant.const import STATE_UNAVAILABLE
from homeassistant.core import HomeAssistant
from homeassistant.util import dt as dt_util
from integration_fixtures import ENTITY_ID, Daemon, rkllm_const, setup_entry, wait_for_state
from test_conversation import QWEN_TEMPLATE, Spy, _error_speech, converse, spy  # noqa: F401

from rkllm_mqtt.simulator import expected_answer

# Home Assistant's own time line (homeassistant.helpers.llm.BASE_PROMPT) in front of the default
# instructions, the way ChatLog.async_update_llm_data builds a prompt.
TIMED_PROMPT = (
    'Current time is {{ now().strftime("%H:%M:%S") }}. '
    'Today\'s date is {{ now().strftime("%Y-%m-%d") }}.\n'
    "You are a voice assistant for Home Assistant.\nAnswer in plain text. Keep it simple.\n"
    + "The house has a kitchen, a hallway and a garden. " * 20
)


@pytest.fixture
def clock(monkeypatch: pytest.MonkeyPatch) -> list[datetime]:
    """The time templates render (`now()`); the test moves it."""
    moment = [datetime(2026, 12, 1, 7, 30, 5, tzinfo=dt_util.get_default_time_zone())]
    real_now = dt_util.now

    def fake_now(time_zone: Any = None) -> datetime:
        return moment[0] if time_zone is None else moment[0].astimezone(time_zone)

    monkeypatch.setattr(dt_util, "now", fake_now)
    assert real_now  # restored by monkeypatch
    return moment


async def test_two_voice_sessions_a_minute_apart_share_one_prefix(
    ha_with_mqtt: HomeAssistant, start_daemon: Callable[..., Daemon], spy: Spy,  # noqa: F811
    clock: list[datetime],
) -> None:
    hass = ha_with_mqtt
    start_daemon(**QWEN_TEMPLATE)
    await setup_entry(hass, **{rkllm_const.CONF_PROMPT: TIMED_PROMPT})
    await wait_for_state(hass, ENTITY_ID, lambda state: state != STATE_UNAVAILABLE)

    first = await converse(hass, "Turn off the hallway light")  # a new conversation id each time
    request1 = await spy.request()
    final1 = await spy.final(request1)
    clock[0] += timedelta(minutes=1, seconds=2)
    second = await converse(hass, "What is on in the garden?")
    request2 = await spy.request()
    final2 = await spy.final(request2)

    assert first.conversation_id != second.conversation_id
    assert request1["system"] == request2["system"]  # one prefix for both sessions
    assert "Current time" not in request1["system"]
    assert request1["system"].startswith("You are a voice assistant for Home Assistant.")
    # The model still reads the time: after the user's words, in the user turn.
    assert request1["messages"] == [{"role": "user", "content": (
        "Turn off the hallway light\n\n(Current time is 07:30:05. Today's date is 2026-12-01.)")}]
    assert request2["messages"][-1]["content"].endswith(
        "(Current time is 07:31:07. Today's date is 2026-12-01.)")
    # The daemon prefilled the prefix for the first session only.
    system_tokens = len(request1["system"]) // 4
    assert final1["usage"]["cached_tokens"] == 0
    assert final2["usage"]["cached_tokens"] >= system_tokens
    assert final2["usage"]["prefill_tokens"] < 40
    assert second.response.speech["plain"]["speech"] == expected_answer(
        request2["messages"][-1]["content"])


async def test_a_later_turn_resends_the_earlier_turns_as_they_were_sent(
    ha_with_mqtt: HomeAssistant, start_daemon: Callable[..., Daemon], spy: Spy,  # noqa: F811
    clock: list[datetime],
) -> None:
    hass = ha_with_mqtt
    start_daemon(**QWEN_TEMPLATE)
    await setup_entry(hass, **{rkllm_const.CONF_PROMPT: TIMED_PROMPT})
    await wait_for_state(hass, ENTITY_ID, lambda state: state != STATE_UNAVAILABLE)
    first = await converse(hass, "Hello")
    request1 = await spy.request()
    await spy.final(request1)
    clock[0] += timedelta(seconds=30)
    await converse(hass, "And now?", first.conversation_id)
    request2 = await spy.request()
    final2 = await spy.final(request2)
    # The first turn goes out exactly as before, so the daemon continues its KV cache: the
    # simulator saw only the new turn.
    assert request2["messages"][0] == request1["messages"][0]
    assert request2["messages"][-1]["content"].startswith("And now?\n\n(Current time is 07:30:35.")
    assert final2["text"] == expected_answer(request2["messages"][-1]["content"])


async def test_the_prefix_alone_too_long_for_the_context_fails_clearly(
    ha_with_mqtt: HomeAssistant, start_daemon: Callable[..., Daemon], spy: Spy,  # noqa: F811
) -> None:
    hass = ha_with_mqtt
    start_daemon(max_context_len=512, **QWEN_TEMPLATE)
    await setup_entry(hass, **{rkllm_const.CONF_PROMPT: "Be brief. " * 300})
    await wait_for_state(hass, ENTITY_ID, lambda state: state != STATE_UNAVAILABLE)
    client = hass.config_entries.async_entries(rkllm_const.DOMAIN)[0].runtime_data
    await _wait_for_limits(hass, client)
    result = await converse(hass, "Hello")
    speech = _error_speech(result)
    assert "instructions and tools alone need about" in speech
    assert "(512 tokens)" in speech


async def test_history_is_cut_to_the_model_context_before_the_daemon_refuses_it(
    ha_with_mqtt: HomeAssistant, start_daemon: Callable[..., Daemon], spy: Spy,  # noqa: F811
) -> None:
    hass = ha_with_mqtt
    start_daemon(max_context_len=1024, **QWEN_TEMPLATE)
    await setup_entry(hass)
    await wait_for_state(hass, ENTITY_ID, lambda state: state != STATE_UNAVAILABLE)
    client = hass.config_entries.async_entries(rkllm_const.DOMAIN)[0].runtime_data
    await _wait_for_limits(hass, client)
    conversation_id = None
    sent: list[dict[str, Any]] = []
    for n in range(8):
        result = await converse(hass, f"Turn {n}: " + "tell me more about the garden. " * 12,
                                conversation_id)
        conversation_id = result.conversation_id
        request = await spy.request()
        final = await spy.final(request)
        assert final["status"] == "ok", final  # never context_too_long
        sent.append(request)
    chars = sum(len(m["content"]) for m in sent[-1]["messages"]) + len(sent[-1]["system"])
    assert chars <= (1024 - 256) * 3
    assert len(sent[-1]["messages"]) < 2 * 8 - 1  # the history was cut
    assert json.dumps(sent[-1])


async def _wait_for_limits(hass: HomeAssistant, client: Any) -> None:
    from harness import wait_until

    await wait_until(hass, lambda: client.limits.max_context_tokens is not None,
                     "the daemon's announced max_context_tokens")
