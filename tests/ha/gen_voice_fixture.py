"""Writes benchmarks/fixtures/assist_voice.json: a real Assist prompt and its tools from real Home Assistant.

Not collected by `make test` (its name does not start with test_); run it by hand in the HA tier:

    RKLLM_WRITE_VOICE_FIXTURE=benchmarks/fixtures/assist_voice.json \
        .venv-ha/bin/pytest tests/ha/gen_voice_fixture.py -p no:cacheprovider

A house of 20 exposed entities in 6 areas; the system prompt is what a conversation agent with the
Assist LLM API gives its model in Home Assistant's own way (llm.DEFAULT_INSTRUCTIONS_PROMPT, then
the API's prompt), without the time line: the integration keeps that out of the cached prefix.
The tools are the Assist API's, in the OpenAI form the daemon takes (schemas converted with
voluptuous_openapi and the API's own serializer, as core's LLM integrations do in this release).
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
from homeassistant.components.homeassistant.exposed_entities import async_expose_entity
from homeassistant.const import __version__ as HA_VERSION
from homeassistant.core import Context, HomeAssistant
from homeassistant.helpers import area_registry as ar
from homeassistant.helpers import entity_registry as er
from homeassistant.helpers import llm
from homeassistant.setup import async_setup_component

HOUSE = {
    "Kitchen": [("light", "ceiling", "Kitchen ceiling", "on"),
                ("light", "counter", "Counter lights", "off"),
                ("switch", "coffee", "Coffee maker", "off"),
                ("sensor", "kitchen_temp", "Kitchen temperature", "21.5")],
    "Living Room": [("light", "sofa", "Sofa lamp", "on"), ("media_player", "tv", "Living room TV", "idle"),
                    ("cover", "living_blinds", "Living room blinds", "open"),
                    ("climate", "living_thermostat", "Thermostat", "heat")],
    "Bedroom": [("light", "bedside", "Bedside lamp", "off"), ("fan", "bedroom_fan", "Bedroom fan", "off"),
                ("cover", "bedroom_blinds", "Bedroom blinds", "closed")],
    "Hallway": [("light", "hall", "Hall light", "off"), ("lock", "front_door", "Front door", "locked")],
    "Garage": [("cover", "garage_door", "Garage door", "closed"), ("light", "garage", "Garage light", "off"),
               ("switch", "charger", "Car charger", "on")],
    "Garden": [("light", "porch", "Porch light", "off"), ("switch", "sprinkler", "Sprinkler", "off"),
               ("sensor", "outdoor_temp", "Outdoor temperature", "7.0"),
               ("binary_sensor", "gate", "Garden gate", "off")],
}


async def _build_house(hass: HomeAssistant) -> int:
    areas, entities = ar.async_get(hass), er.async_get(hass)
    count = 0
    for area_name, devices in HOUSE.items():
        area = areas.async_create(area_name)
        for domain, object_id, name, state in devices:
            entry = entities.async_get_or_create(domain, "voice_bench", object_id,
                                                 suggested_object_id=object_id, original_name=name)
            entities.async_update_entity(entry.entity_id, area_id=area.id)
            attributes = {"friendly_name": name}
            if domain == "sensor":
                attributes |= {"unit_of_measurement": "°C", "device_class": "temperature"}
            hass.states.async_set(entry.entity_id, state, attributes)
            async_expose_entity(hass, "conversation", entry.entity_id, True)
            count += 1
    return count


def _openai_tool(tool: llm.Tool, serializer: object) -> dict[str, object]:
    from voluptuous_openapi import convert

    function: dict[str, object] = {"name": tool.name,
                                   "parameters": convert(tool.parameters, custom_serializer=serializer)}
    if tool.description:
        function["description"] = tool.description
    return {"type": "function", "function": function}


@pytest.mark.skipif(not os.environ.get("RKLLM_WRITE_VOICE_FIXTURE"),
                    reason="set RKLLM_WRITE_VOICE_FIXTURE=<path> to write the fixture")
async def test_write_voice_fixture(hass: HomeAssistant) -> None:
    assert await async_setup_component(hass, "homeassistant", {})
    assert await async_setup_component(hass, "conversation", {})
    assert await async_setup_component(hass, "intent", {})
    for domain in ("light", "switch", "cover", "fan", "climate", "lock", "media_player", "sensor",
                   "binary_sensor", "weather", "todo", "timer"):
        assert await async_setup_component(hass, domain, {})  # each registers its intents
    exposed = await _build_house(hass)
    context = llm.LLMContext(platform="rkllm_mqtt", context=Context(), user_prompt="",
                             language="en", assistant="conversation", device_id=None)
    api = await llm.async_get_api(hass, llm.LLM_API_ASSIST, context)
    system = "\n".join([llm.DEFAULT_INSTRUCTIONS_PROMPT.strip(), api.api_prompt])
    tools = [_openai_tool(tool, api.custom_serializer) for tool in api.tools]
    fixture = {
        "source": f"Home Assistant {HA_VERSION}, Assist LLM API, {exposed} exposed entities "
                  f"in {len(HOUSE)} areas (tests/ha/gen_voice_fixture.py)",
        "system": system,
        "tools": tools,
    }
    path = Path(os.environ["RKLLM_WRITE_VOICE_FIXTURE"])
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(fixture, indent=1, ensure_ascii=False) + "\n", encoding="utf-8")
    assert exposed == 20 and "Static Context" in system and len(tools) > 5
