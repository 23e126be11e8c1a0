"""Device control: the `llm_hass_api` option, the CONTROL feature, and the tool rounds of a turn.

The main case runs end to end: Home Assistant's Assist API with a light exposed to Assist, the real
daemon on the simulator (whose model calls a tool when asked to turn something on), a real broker.
What the simulator cannot be made to do (a tool that fails, a model that never stops calling tools)
is played by `ScriptedDaemon`, an outside client that answers the way the daemon's contract says,
against an LLM API registered by the test whose tools and prompt the test controls.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import pytest
from harness import OutsideClient, wait_until
from homeassistant.components import conversation
from homeassistant.components.conversation import trace as conversation_trace
from homeassistant.components.conversation.trace import ConversationTraceEventType
from homeassistant.components.homeassistant.exposed_entities import async_expose_entity
from homeassistant.components.light import ColorMode, LightEntity
from homeassistant.const import (
    ATTR_SUPPORTED_FEATURES,
    CONF_LLM_HASS_API,
    STATE_OFF,
    STATE_ON,
    STATE_UNAVAILABLE,
)
from homeassistant.core import Context, HomeAssistant
from homeassistant.exceptions import HomeAssistantError
from homeassistant.helpers import intent, llm
from homeassistant.setup import async_setup_component
from integration_fixtures import (
    BASE_TOPIC,
    ENTITY_ID,
    NODE_ID,
    Daemon,
    rkllm_const,
    rkllm_llm_api,
    setup_entry,
    wait_for_state,
)
from pytest_homeassistant_custom_component.common import MockPlatform, mock_platform

from rkllm_mqtt.simulator import ABIS, expected_answer

try:  # Home Assistant 2026.x: tool schemas are probatio's (voluptuous's successor, same names)
    import probatio as vol
except ImportError:
    import voluptuous as vol

PREFIX = f"{BASE_TOPIC}/{NODE_ID}"
QWEN_TEMPLATE = {
    "prompt_prefix": "<|im_start|>user\n",
    "prompt_postfix": "<|im_end|>\n<|im_start|>assistant\n",
}
KITCHEN_LIGHT = "light.kitchen_light"
# Whether this Home Assistant stores the option as a list (several APIs per agent).
SEVERAL_APIS = hasattr(llm, "MergedAPI")
CONTROL = conversation.ConversationEntityFeature.CONTROL


def api_option(*api_ids: str) -> dict[str, Any]:
    """The option as this Home Assistant's options flow stores it."""
    return {CONF_LLM_HASS_API: list(api_ids) if SEVERAL_APIS else api_ids[0]}


class KitchenLight(LightEntity):
    """An on/off light, the kind of entity Assist's intents switch."""

    _attr_name = "Kitchen light"
    _attr_unique_id = "kitchen-light"
    _attr_should_poll = False
    _attr_color_mode = ColorMode.ONOFF
    _attr_is_on = False

    def __init__(self) -> None:
        self._attr_supported_color_modes = {ColorMode.ONOFF}

    async def async_turn_on(self, **kwargs: Any) -> None:
        self._attr_is_on = True
        self.async_write_ha_state()

    async def async_turn_off(self, **kwargs: Any) -> None:
        self._attr_is_on = False
        self.async_write_ha_state()


@pytest.fixture
async def kitchen_light(ha_with_mqtt: HomeAssistant) -> str:
    """A light entity `light.kitchen_light`, off, exposed to Assist."""
    hass = ha_with_mqtt

    async def setup_platform(hass: HomeAssistant, _config: Any, add_entities: Any, _info: Any = None) -> None:
        add_entities([KitchenLight()])

    mock_platform(hass, "test.light", MockPlatform(async_setup_platform=setup_platform))
    assert await async_setup_component(hass, "light", {"light": [{"platform": "test"}]})
    await hass.async_block_till_done()
    async_expose_entity(hass, conversation.DOMAIN, KITCHEN_LIGHT, True)
    assert hass.states.get(KITCHEN_LIGHT).state == STATE_OFF
    return KITCHEN_LIGHT


# --- an LLM API the test controls ---------------------------------------------------------------

DESK_PROMPT = "Call SetLight to switch a light; the only light is the desk lamp."


class SetLightTool(llm.Tool):
    """Switches the desk lamp; any other name fails the way a real tool fails (an exception)."""

    name = "SetLight"
    integration = "test"  # 2026.x wants to know which integration provides a tool
    description = "Switch a light on or off"
    parameters = vol.Schema(
        {
            vol.Required("name"): str,
            vol.Optional("brightness"): vol.All(vol.Coerce(int), vol.Range(min=0, max=100)),
        }
    )

    def __init__(self, calls: list[dict[str, Any]]) -> None:
        self.calls = calls

    async def async_call(self, _hass: HomeAssistant, tool_input: llm.ToolInput, _ctx: llm.LLMContext) -> Any:
        self.calls.append(tool_input.tool_args)
        if tool_input.tool_args.get("name") != "desk lamp":
            raise HomeAssistantError(f"No light is called {tool_input.tool_args.get('name')}")
        data = {"success": True, "state": "on"}
        # 2026.x tools return llm.ToolResult (a JSON object is deprecated there).
        return llm.ToolResult(data=data) if hasattr(llm, "ToolResult") else data


@dataclass(slots=True, kw_only=True)
class DeskAPI(llm.API):
    calls: list[dict[str, Any]] = field(default_factory=list)

    async def async_get_api_instance(self, llm_context: llm.LLMContext) -> llm.APIInstance:
        return llm.APIInstance(
            api=self, api_prompt=DESK_PROMPT, llm_context=llm_context, tools=[SetLightTool(self.calls)]
        )


@pytest.fixture
def desk_api(ha_with_mqtt: HomeAssistant) -> DeskAPI:
    api = DeskAPI(hass=ha_with_mqtt, id="desk", name="Desk")
    llm.async_register_api(ha_with_mqtt, api)
    return api


class ScriptedDaemon:
    """Plays the daemon on the broker: online, and each request answered as the test says."""

    def __init__(self, client: OutsideClient) -> None:
        self.client = client
        client.subscribe(f"{PREFIX}/prompt")
        client.publish(f"{PREFIX}/status", "online", retain=True)

    async def answer(
        self, text: str = "", tool_calls: Callable[[dict[str, Any]], list[dict[str, Any]]] | None = None
    ) -> dict[str, Any]:
        """Wait for the next request and answer it: `text` as two token messages, then the final,
        with the calls `tool_calls` makes of the request."""
        request = json.loads((await self.client.next_message(f"{PREFIX}/prompt")).payload)
        calls = tool_calls(request) if tool_calls else None
        topic = request["response_topic"]
        half = len(text) // 2
        for seq, piece in enumerate(part for part in (text[:half], text[half:]) if part):
            token = {"id": request["id"], "type": "token", "seq": seq, "text": piece}
            self.client.publish(topic, json.dumps(token))
        final: dict[str, Any] = {
            "id": request["id"], "type": "final", "status": "ok", "text": text,
            "finish_reason": "tool_calls" if calls else "stop",
            "usage": {"prompt_tokens": 1, "completion_tokens": 1}, "timing": {},
        }
        if calls:
            final["tool_calls"] = calls
        self.client.publish(topic, json.dumps(final))
        return request


def offered(request: dict[str, Any], name: str) -> str:
    """The name the request offers a tool under (a release may put a namespace before it)."""
    names = [tool["function"]["name"] for tool in request.get("tools", [])]
    return next(offered for offered in names if offered.rpartition("__")[2] == name)


@pytest.fixture
def scripted_daemon(outside_client: Callable[[], OutsideClient]) -> ScriptedDaemon:
    return ScriptedDaemon(outside_client())


class RequestSpy:
    """Sees the requests HA sends to the real daemon."""

    def __init__(self, client: OutsideClient) -> None:
        self.client = client
        client.subscribe(f"{PREFIX}/prompt")
        client.subscribe(f"{BASE_TOPIC}/reply/#")

    async def request(self) -> dict[str, Any]:
        return json.loads((await self.client.next_message(f"{PREFIX}/prompt")).payload)

    async def final(self, request: dict[str, Any]) -> dict[str, Any]:
        while True:
            reply = json.loads((await self.client.next_message(request["response_topic"])).payload)
            if reply["id"] == request["id"] and reply["type"] == "final":
                return reply


@pytest.fixture
def spy(outside_client: Callable[[], OutsideClient]) -> RequestSpy:
    return RequestSpy(outside_client())


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
    """One turn through Home Assistant's conversation API, optionally with Assist's delta hook."""
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


def speech(result: conversation.ConversationResult) -> str:
    return result.response.speech["plain"]["speech"]


# --- the option and the feature -----------------------------------------------------------------


async def test_the_option_offers_every_llm_api_and_stores_the_choice(
    ha_with_mqtt: HomeAssistant, desk_api: DeskAPI, scripted_daemon: ScriptedDaemon
) -> None:
    hass = ha_with_mqtt
    entry = await setup_entry(hass)

    flow = await hass.config_entries.options.async_init(entry.entry_id)
    field_key = next(key for key in flow["data_schema"].schema if key == CONF_LLM_HASS_API)
    selector_config = flow["data_schema"].schema[field_key].config
    offered = {option["value"] for option in selector_config["options"]}
    # Assist and the API another integration registered; on 2025.4 also "No control".
    assert {llm.LLM_API_ASSIST, "desk"} <= offered
    assert selector_config.get("multiple", False) is SEVERAL_APIS

    choice = [llm.LLM_API_ASSIST, "desk"] if SEVERAL_APIS else "desk"
    done = await hass.config_entries.options.async_configure(flow["flow_id"], {CONF_LLM_HASS_API: choice})
    assert done["type"] == "create_entry"
    assert entry.options[CONF_LLM_HASS_API] == choice

    # No API chosen stores nothing, as core's integrations do.
    flow = await hass.config_entries.options.async_init(entry.entry_id)
    nothing = [] if SEVERAL_APIS else "none"
    await hass.config_entries.options.async_configure(flow["flow_id"], {CONF_LLM_HASS_API: nothing})
    assert CONF_LLM_HASS_API not in entry.options


async def test_control_is_supported_while_an_api_is_chosen(
    ha_with_mqtt: HomeAssistant, desk_api: DeskAPI, scripted_daemon: ScriptedDaemon
) -> None:
    """Assist pipelines read CONTROL from the state, so an options change writes the state again
    (without a reload: options are read at every request)."""
    hass = ha_with_mqtt
    entry = await setup_entry(hass)
    state = await wait_for_state(hass, ENTITY_ID, lambda s: s != STATE_UNAVAILABLE)
    assert state
    assert not hass.states.get(ENTITY_ID).attributes.get(ATTR_SUPPORTED_FEATURES, 0) & CONTROL

    hass.config_entries.async_update_entry(entry, options={**entry.options, **api_option("desk")})
    await wait_until(
        hass, lambda: hass.states.get(ENTITY_ID).attributes.get(ATTR_SUPPORTED_FEATURES, 0) & CONTROL,
        "CONTROL in the agent's supported features",
    )
    hass.config_entries.async_update_entry(
        entry, options={k: v for k, v in entry.options.items() if k != CONF_LLM_HASS_API}
    )
    await wait_until(
        hass, lambda: not hass.states.get(ENTITY_ID).attributes.get(ATTR_SUPPORTED_FEATURES, 0) & CONTROL,
        "CONTROL gone from the agent's supported features",
    )


# --- tool rounds against a scripted daemon ------------------------------------------------------


async def test_tools_and_prompt_go_with_the_request_and_results_come_back_as_tool_messages(
    ha_with_mqtt: HomeAssistant, desk_api: DeskAPI, scripted_daemon: ScriptedDaemon
) -> None:
    hass = ha_with_mqtt
    await setup_entry(hass, **api_option("desk"))
    await wait_for_state(hass, ENTITY_ID, lambda s: s != STATE_UNAVAILABLE)

    recorder = DeltaRecorder()
    turn = hass.async_create_task(converse(hass, "Desk lamp on, and the hall light too", recorder=recorder))
    calls: list[dict[str, Any]] = []

    def two_calls(request: dict[str, Any]) -> list[dict[str, Any]]:
        name = offered(request, "SetLight")
        calls.extend([
            {"id": "call-1", "name": name, "arguments": {"name": "desk lamp"}},
            {"id": "call-2", "name": name, "arguments": {"name": "hall light"}},
        ])
        return calls

    first = await scripted_daemon.answer("Switching. ", tool_calls=two_calls)
    second = await scripted_daemon.answer("The desk lamp is on; there is no hall light.")
    result = await turn

    # The API's prompt joins the instructions; its tools are OpenAI function definitions whose
    # parameters are the voluptuous schema as JSON schema.
    assert first["system"].startswith("You are a voice assistant for Home Assistant.")
    assert DESK_PROMPT in first["system"]
    tool, = first["tools"]
    assert tool["type"] == "function"
    function = tool["function"]
    assert function["name"] == offered(first, "SetLight")
    assert function["description"] == "Switch a light on or off"
    parameters = function["parameters"]
    assert parameters["type"] == "object"
    assert parameters["required"] == ["name"]
    assert parameters["properties"]["name"] == {"type": "string"}
    assert parameters["properties"]["brightness"]["type"] == "integer"
    assert (parameters["properties"]["brightness"]["minimum"],
            parameters["properties"]["brightness"]["maximum"]) == (0, 100)

    # Home Assistant ran both calls; the one that raised came back to the model as its result.
    assert desk_api.calls == [{"name": "desk lamp"}, {"name": "hall light"}]
    assert second["tools"] == first["tools"]
    assert second["system"] == first["system"]
    assert second["conversation"] == first["conversation"] == result.conversation_id
    user, assistant, ok, failed = second["messages"]
    assert user == {"role": "user", "content": "Desk lamp on, and the hall light too"}
    assert assistant == {"role": "assistant", "content": "Switching. ", "tool_calls": calls}
    assert (ok["role"], ok["tool_call_id"], ok["name"]) == ("tool", "call-1", function["name"])
    assert json.loads(ok["content"]) == {"success": True, "state": "on"}
    assert (failed["role"], failed["tool_call_id"], failed["name"]) == ("tool", "call-2", function["name"])
    assert json.loads(failed["content"]) == {
        "error": "HomeAssistantError", "error_text": "No light is called hall light"
    }

    # The conversation trace (Settings → Voice assistants → Debug) shows what was offered, and the
    # calls Home Assistant ran.
    events = [event for trace in conversation_trace.async_get_traces() for event in trace.as_dict()["events"]]
    details = [e["data"] for e in events if e["event_type"] == ConversationTraceEventType.AGENT_DETAIL]
    assert {"system": first["system"], "tools": first["tools"]} in details
    ran = [e["data"] for e in events if e["event_type"] == ConversationTraceEventType.TOOL_CALL]
    assert {"tool_name": function["name"], "tool_args": {"name": "hall light"}} in ran

    # The turn's answer is the text after the tool round, and both rounds streamed.
    assert result.response.response_type is intent.IntentResponseType.ACTION_DONE
    assert speech(result) == "The desk lamp is on; there is no hall light."
    texts = [delta["content"] for delta in recorder.deltas if delta.get("content")]
    assert "".join(texts) == "Switching. The desk lamp is on; there is no hall light."


async def test_tool_rounds_stop_after_ten_requests(
    ha_with_mqtt: HomeAssistant, desk_api: DeskAPI, scripted_daemon: ScriptedDaemon
) -> None:
    hass = ha_with_mqtt
    await setup_entry(hass, **api_option("desk"))
    await wait_for_state(hass, ENTITY_ID, lambda s: s != STATE_UNAVAILABLE)

    turn = hass.async_create_task(converse(hass, "Keep switching"))
    for n in range(10):
        request = await scripted_daemon.answer(tool_calls=lambda request, n=n: [
            {"id": f"call-{n}", "name": offered(request, "SetLight"), "arguments": {"name": "desk lamp"}}
        ])
        assert len([m for m in request["messages"] if m["role"] == "tool"]) == n
    result = await turn
    assert result.response.response_type is intent.IntentResponseType.ERROR
    assert speech(result) == "Sorry, the model kept calling tools without answering (10 rounds)."
    assert len(desk_api.calls) == 10
    await asyncio.sleep(0.3)
    assert scripted_daemon.client.messages.empty(), "an eleventh request was sent"


async def test_an_api_that_is_gone_is_an_error_reply(
    ha_with_mqtt: HomeAssistant, scripted_daemon: ScriptedDaemon
) -> None:
    hass = ha_with_mqtt
    await setup_entry(hass, **api_option("removed_api"))
    await wait_for_state(hass, ENTITY_ID, lambda s: s != STATE_UNAVAILABLE)

    result = await converse(hass, "Lights on")
    assert result.response.response_type is intent.IntentResponseType.ERROR
    assert speech(result) == (
        "Sorry, I could not prepare the Home Assistant control (removed_api) for this conversation."
    )
    await asyncio.sleep(0.3)
    assert scripted_daemon.client.messages.empty(), "a request was sent without its tools"


async def test_without_an_api_no_tools_are_sent(
    ha_with_mqtt: HomeAssistant, desk_api: DeskAPI, scripted_daemon: ScriptedDaemon
) -> None:
    hass = ha_with_mqtt
    await setup_entry(hass)
    await wait_for_state(hass, ENTITY_ID, lambda s: s != STATE_UNAVAILABLE)

    turn = hass.async_create_task(converse(hass, "Desk lamp on"))
    request = await scripted_daemon.answer("I cannot switch lights.")
    assert speech(await turn) == "I cannot switch lights."
    assert "tools" not in request
    assert DESK_PROMPT not in request["system"]
    assert desk_api.calls == []


# --- end to end: Assist, a light, the real daemon ----------------------------------------------


@pytest.mark.parametrize("abi", ABIS)
async def test_turn_on_the_kitchen_light(
    ha_with_mqtt: HomeAssistant, kitchen_light: str, start_daemon: Callable[..., Daemon], spy: RequestSpy,
    abi: str,
) -> None:
    """On every runtime family: 1.2.1+ take the tools through rkllm_set_function_tools and the results
    as role "tool"; 1.1 and 1.2.0 read both as text the daemon writes into the prompt."""
    hass = ha_with_mqtt
    # 1.1 has no chat template in the runtime: the instructions and the tools are prompt text there,
    # longer than the simulator's default context (512), as they would be on a board.
    start_daemon(abi=abi, max_context_len=4096, **QWEN_TEMPLATE)
    await setup_entry(hass, **api_option(llm.LLM_API_ASSIST))
    await wait_for_state(hass, ENTITY_ID, lambda s: s != STATE_UNAVAILABLE)

    recorder = DeltaRecorder()
    result = await converse(hass, "Turn on the kitchen light", recorder=recorder)
    assert hass.states.get(KITCHEN_LIGHT).state == STATE_ON

    first = await spy.request()
    first_final = await spy.final(first)
    second = await spy.request()
    second_final = await spy.final(second)
    # The model saw Assist's tools and called the one that switches things on.
    names = [tool["function"]["name"] for tool in first["tools"]]
    call, = first_final["tool_calls"]
    assert first_final["finish_reason"] == "tool_calls"
    assert call["name"] in names and call["name"].endswith("HassTurnOn")
    assert call["arguments"] == {"name": "kitchen light"}
    # Its result went back as a tool message, and the model answered it in text.
    user, assistant, tool_result = second["messages"]
    # What varies per turn and device (Assist's per-device lines) follows the words, out of the
    # cached system prompt (prefix.py).
    assert user["role"] == "user" and user["content"].startswith("Turn on the kitchen light")
    assert assistant["tool_calls"] == [call]
    assert (tool_result["role"], tool_result["tool_call_id"]) == ("tool", call["id"])
    result_data = json.loads(tool_result["content"])
    assert result_data["response_type"] == "action_done"
    assert result_data["data"]["success"] == [
        {"name": "Kitchen light", "type": "entity", "id": KITCHEN_LIGHT}
    ]
    # The daemon continued the conversation's KV cache: the simulated model read the round's
    # results and nothing else of the chat it was sent; its answer echoes what it read. On 1.2.1+
    # that is one JSON array with role "tool" (as Rockchip's demo sends results); on 1.2.0 the
    # results in the <tool_response> text of Qwen's template. 1.1 has no KV-cache control, so the
    # daemon gives it the whole chat, instructions first, at every request.
    assert second_final["finish_reason"] == "stop"
    if abi in ("1.2", "1.3"):
        assert second_final["text"] == expected_answer(json.dumps([result_data]))
    elif abi == "1.2.0":
        assert second_final["text"].startswith("You said: <tool_response>\n{")
    else:
        assert second_final["text"].startswith("You said: You are a voice assistant")
    assert speech(result) == second_final["text"]
    if hasattr(llm, "IntentResponseDict"):
        # Where tool results keep the intent response (2026.x), the turn answers with it, as core's
        # agents do: its targets tell Assist what was switched.
        assert [target.id for target in result.response.success_results] == [KITCHEN_LIGHT]
    # The answer streamed, and no tool-call markup reached it.
    texts = "".join(delta.get("content") or "" for delta in recorder.deltas)
    assert texts == second_final["text"]
    assert "tool_call" not in texts

    # The next turn continues the conversation: the whole chat is sent, the daemon holds all of
    # it, so the simulated model reads only the new question (1.1: the whole chat again).
    third_result = await converse(hass, "Thanks! What is the capital of France?", result.conversation_id)
    third = await spy.request()
    assert third["conversation"] == first["conversation"] == result.conversation_id
    assert third["messages"][:3] == second["messages"]
    answer, question = third["messages"][3:]
    assert answer == {"role": "assistant", "content": second_final["text"]}
    assert question["role"] == "user"
    assert question["content"].startswith("Thanks! What is the capital of France?")
    if abi == "1.1":
        assert speech(third_result).startswith("You said: You are a voice assistant")
    else:
        assert speech(third_result) == expected_answer(question["content"])


async def test_options_apply_to_the_next_turn(
    ha_with_mqtt: HomeAssistant, kitchen_light: str, start_daemon: Callable[..., Daemon], spy: RequestSpy
) -> None:
    """Without an API the same words switch nothing; choosing Assist needs no reload."""
    hass = ha_with_mqtt
    start_daemon(max_context_len=4096, **QWEN_TEMPLATE)  # Assist's prompt and tools need it
    entry = await setup_entry(hass)
    await wait_for_state(hass, ENTITY_ID, lambda s: s != STATE_UNAVAILABLE)

    result = await converse(hass, "Turn on the kitchen light")
    assert speech(result) == expected_answer("Turn on the kitchen light")
    assert "tools" not in await spy.request()
    assert hass.states.get(KITCHEN_LIGHT).state == STATE_OFF

    hass.config_entries.async_update_entry(
        entry, options={**entry.options, **api_option(llm.LLM_API_ASSIST),
                        rkllm_const.CONF_TIMEOUT: 30.0}
    )
    await converse(hass, "Turn on the kitchen light")
    assert hass.states.get(KITCHEN_LIGHT).state == STATE_ON


async def test_without_streaming_tool_rounds_still_run(
    ha_with_mqtt: HomeAssistant, desk_api: DeskAPI, scripted_daemon: ScriptedDaemon,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A Home Assistant whose ChatLog cannot take a delta stream adds each final reply at once;
    its tool calls still run, and their results still go back."""
    hass = ha_with_mqtt
    monkeypatch.delattr(conversation.ChatLog, "async_add_delta_content_stream")
    await setup_entry(hass, **api_option("desk"))
    await wait_for_state(hass, ENTITY_ID, lambda s: s != STATE_UNAVAILABLE)

    turn = hass.async_create_task(converse(hass, "Desk lamp on"))
    first = await scripted_daemon.answer(tool_calls=lambda request: [
        {"id": "c1", "name": offered(request, "SetLight"), "arguments": {"name": "desk lamp"}}
    ])
    second = await scripted_daemon.answer("It is on.")
    assert speech(await turn) == "It is on."
    assert first["stream"] is second["stream"] is False
    assert desk_api.calls == [{"name": "desk lamp"}]
    assert [m["role"] for m in second["messages"]] == ["user", "assistant", "tool"]
    assert json.loads(second["messages"][2]["content"]) == {"success": True, "state": "on"}


def test_the_option_reads_what_any_release_stored() -> None:
    """2025.4 stores one id, later releases a list; a downgrade or upgrade keeps the choice."""
    read = rkllm_llm_api.llm_api_ids
    assert read({}) == []
    assert read({CONF_LLM_HASS_API: "assist"}) == ["assist"]
    assert read({CONF_LLM_HASS_API: ["assist", "desk"]}) == ["assist", "desk"]
    assert read({CONF_LLM_HASS_API: "none"}) == read({CONF_LLM_HASS_API: []}) == []


@pytest.mark.skipif(not SEVERAL_APIS, reason="this Home Assistant gives an agent one LLM API")
async def test_several_apis_offer_all_their_tools(
    ha_with_mqtt: HomeAssistant, kitchen_light: str, desk_api: DeskAPI, scripted_daemon: ScriptedDaemon
) -> None:
    """Where Home Assistant merges APIs, Assist's and another API's tools go together, and a call
    to either runs."""
    hass = ha_with_mqtt
    await setup_entry(hass, **api_option(llm.LLM_API_ASSIST, "desk"))
    await wait_for_state(hass, ENTITY_ID, lambda s: s != STATE_UNAVAILABLE)

    turn = hass.async_create_task(converse(hass, "Kitchen light and desk lamp on"))
    first = await scripted_daemon.answer(tool_calls=lambda request: [
        {"id": "a", "name": offered(request, "HassTurnOn"), "arguments": {"name": "Kitchen light"}},
        {"id": "b", "name": offered(request, "SetLight"), "arguments": {"name": "desk lamp"}},
    ])
    await scripted_daemon.answer("Both are on.")
    assert speech(await turn) == "Both are on."
    assert DESK_PROMPT in first["system"]
    assert hass.states.get(KITCHEN_LIGHT).state == STATE_ON
    assert desk_api.calls == [{"name": "desk lamp"}]



async def test_a_device_that_does_not_exist_is_a_tool_error_the_model_reads(
    ha_with_mqtt: HomeAssistant, kitchen_light: str, start_daemon: Callable[..., Daemon], spy: RequestSpy
) -> None:
    """Assist's intent fails (no such device); its error is the call's result, and the turn still
    ends with the model's answer."""
    hass = ha_with_mqtt
    start_daemon(max_context_len=4096, **QWEN_TEMPLATE)
    await setup_entry(hass, **api_option(llm.LLM_API_ASSIST))
    await wait_for_state(hass, ENTITY_ID, lambda s: s != STATE_UNAVAILABLE)

    result = await converse(hass, "Turn on the garage door")
    first = await spy.request()
    call, = (await spy.final(first))["tool_calls"]
    assert call["arguments"] == {"name": "garage door"}
    second = await spy.request()
    final = await spy.final(second)
    tool_result = second["messages"][-1]
    assert (tool_result["role"], tool_result["tool_call_id"]) == ("tool", call["id"])
    error = json.loads(tool_result["content"])
    assert error["error"] == "MatchFailedError"
    assert error["error_text"]
    assert final["finish_reason"] == "stop"
    assert speech(result) == final["text"]
    assert hass.states.get(KITCHEN_LIGHT).state == STATE_OFF
