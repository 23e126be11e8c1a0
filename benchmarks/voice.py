"""`python -m benchmarks.voice`: time to first token of Assist voice turns, this daemon against a
server that prefills the whole prompt every turn (the peers' way), in one run.

The prompt is a real Assist prompt with the LLM API and 20 exposed entities, and the Assist API's
tools, taken from Home Assistant 2025.4.4 (benchmarks/fixtures/assist_voice.json, written by
tests/ha/gen_voice_fixture.py). Five voice sessions of three turns, each a new conversation id as
Assist makes them, sent the way the Home Assistant integration sends them (the whole chat under
the conversation id, the tools with every request; a tool call answered with its result); then
the daemon restarts (same prompt cache directory) and one more session runs.

Times are simulated NPU time at RK3588 rates for Qwen2.5-1.5B w8a8 (Rockchip's v1.3.0
benchmark.md: 128 prompt tokens in 378.31 ms to the first token, i.e. 338.3 prefill tokens/s):
first-token time = tokens prefilled ÷ 338.3, with the tokens the simulator reports it prefilled
(RKLLMPerfStat.prefill_tokens, passed on in the daemon's `usage.prefill_tokens`). The simulator
runs at unlimited speed, so the run takes about a second; `--real-time` makes it sleep for every
prefill at that rate (about two minutes, most of it the peer's) and adds the daemon's measured
`timing.ttft_ms` beside the computed figure.

The peer column is the same turns through the same runtime binding the way Rockchip's demo
server and the other peers run it: keep_history = 0, the KV cache cleared, and the system prompt,
the tools and the whole chat in the prompt text every turn.

Goal (issue "Voice first token"): every turn after the first use of a prefix ≤ 0.5 s, and so the
first turn after the restart.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from benchmarks import harness
from rkllm_mqtt.runtime import Session
from rkllm_mqtt.runtime.contract import Message
from rkllm_mqtt.runtime.events import FinalEvent, GenerationRequest
from rkllm_mqtt.runtime.options import RuntimeOptions

FIXTURE = Path(__file__).with_name("fixtures") / "assist_voice.json"
PREFILL_TPS = 128 / 0.37831  # RK3588, Qwen2.5-1.5B w8a8, v1.3.0 benchmark.md
GOAL_S = 0.5
ABI = "1.3"
SESSIONS = 5
# Per session: a question, a command (the simulated model calls HassTurnOn with the name, and the
# result goes back as HA's tool loop sends it), a thank-you. Each session asks about another room.
ROOMS = ("kitchen", "living room", "bedroom", "hallway", "garage", "garden")
DEVICES = ("Kitchen ceiling", "Sofa lamp", "Bedside lamp", "Hall light", "Garage light", "Porch light")


def turns_for(session: int) -> tuple[str, str, str]:
    return (f"What is the temperature in the {ROOMS[session]}?",
            f"Turn on the {DEVICES[session]}",
            "Thanks, that is all.")
TOOL_RESULT = json.dumps({"success": True, "targets": ["light.kitchen_ceiling"]})


@dataclass
class Turn:
    session: str
    turn: int
    prefill: int  # tokens this daemon prefilled before the first token of the turn
    cached: int
    source: str
    peer_prefill: int
    measured_ttft_ms: float | None = None

    @property
    def ttft_s(self) -> float:
        return self.prefill / PREFILL_TPS

    @property
    def peer_ttft_s(self) -> float:
        return self.peer_prefill / PREFILL_TPS


def _load_fixture() -> dict[str, Any]:
    data: dict[str, Any] = json.loads(FIXTURE.read_text(encoding="utf-8"))
    return data


class Peer:
    """The peers' way through our own binding: everything in the prompt text, nothing kept."""

    def __init__(self, sim: harness.Simulator, system: str, tools: list[dict[str, Any]]) -> None:
        # chat_template "model": the model's own template, the system text in the prompt text
        options = RuntimeOptions(library=str(sim.library), abi=ABI, model=str(sim.model),
                                 max_context_len=harness.MAX_CONTEXT, chat_template="model")
        self.session = Session(options)
        self.session.open()
        self.system = f"{system}\n\n# Tools\n{json.dumps(tools, ensure_ascii=False)}"

    def turn(self, chat: list[Message]) -> int:
        self.session.clear(keep_system_prompt=False)
        request = GenerationRequest(messages=tuple(chat), system=self.system, keep_history=False)
        outcome = self.session.generate(request).result(120)
        if not isinstance(outcome, FinalEvent) or outcome.stats.prefill_tokens is None:
            raise RuntimeError(f"the peer run failed: {outcome}")
        return outcome.stats.prefill_tokens

    def close(self) -> None:
        self.session.close()


class Voice:
    """The daemon side: one Assist voice session after another, as the HA integration sends them."""

    def __init__(self, b: Any, sim: harness.Simulator, cache_dir: Path, fixture: dict[str, Any],
                 peer: Peer) -> None:
        self.b, self.sim, self.cache_dir = b, sim, cache_dir
        self.system, self.tools = fixture["system"], fixture["tools"]
        self.peer = peer
        self.node = f"voice{uuid.uuid4().hex[:6]}"
        self.turns: list[Turn] = []

    def settings(self) -> Any:
        return harness.settings_for(self.b, self.sim, mqtt={"node_id": self.node},
                                    runtime={"abi": ABI, "prompt_cache_dir": str(self.cache_dir)})

    def session(self, index: int, name: str, service: Any, sub: harness.Subscriber) -> None:
        conversation = f"{name}-{uuid.uuid4().hex[:8]}"  # Assist: a new id for each voice session
        chat: list[dict[str, Any]] = []
        prompt_topic = f"{service.settings.mqtt.base_topic}/{self.node}/prompt"
        for n, text in enumerate(turns_for(index), start=1):
            chat.append({"role": "user", "content": text})
            final = self._ask(sub, prompt_topic, conversation, chat, f"{conversation}-{n}")
            usage = final["usage"]
            peer_chat = [Message(m["role"], m["content"] or "") for m in chat if m["role"] != "tool"]
            turn = Turn(name, n, usage["prefill_tokens"], usage["cached_tokens"],
                        usage["tokens_source"], self.peer.turn(peer_chat),
                        final["timing"]["ttft_ms"])
            self.turns.append(turn)
            if final.get("tool_calls"):
                calls = final["tool_calls"]
                chat.append({"role": "assistant", "content": None, "tool_calls": calls})
                chat += [{"role": "tool", "tool_call_id": c["id"], "name": c["name"],
                          "content": TOOL_RESULT} for c in calls]
                final = self._ask(sub, prompt_topic, conversation, chat, f"{conversation}-{n}r")
            chat.append({"role": "assistant", "content": final["text"]})

    def _ask(self, sub: harness.Subscriber, topic: str, conversation: str,
             chat: list[dict[str, Any]], rid: str) -> dict[str, Any]:
        sub.request_json(topic, {"id": rid, "conversation": conversation, "system": self.system,
                                 "messages": chat, "tools": self.tools, "stream": True})
        sub.wait_final(rid, 120)
        _, final, _ = sub.parsed(rid)
        if final is None or final.get("status") != "ok":
            raise RuntimeError(f"{rid}: {final}")
        return final


def run(real_time: bool) -> tuple[list[Turn], dict[str, Any]]:
    fixture = _load_fixture()
    sim = harness.simulator_for(ABI)
    speed = {"RKLLM_SIM_PREFILL_TPS": f"{PREFILL_TPS:.3f}", "RKLLM_SIM_DECODE_TPS": "1000"}
    with tempfile.TemporaryDirectory(prefix="rkllm-voice-") as tmp, harness.sim_env(), \
            harness.broker() as b:
        peer = Peer(sim, fixture["system"], fixture["tools"])
        voice = Voice(b, sim, Path(tmp) / "cache", fixture, peer)
        try:
            for restart in (False, True):
                with harness.sim_env(**(speed if real_time else {})), \
                        harness.daemon(voice.settings()) as (service, _times):
                    sub = harness.Subscriber(b, f"{service.settings.mqtt.base_topic}/{voice.node}/response")
                    try:
                        if restart:
                            voice.session(SESSIONS, "after restart", service, sub)
                        else:
                            for i in range(SESSIONS):
                                voice.session(i, f"session {i + 1}", service, sub)
                    finally:
                        sub.close()
        finally:
            peer.close()
    return voice.turns, fixture


def table(turns: list[Turn], fixture: dict[str, Any], real_time: bool) -> str:
    head = ["session", "turn", "prefilled", "from cache", "TTFT (NPU s)", "peer prefilled",
            "peer TTFT (NPU s)", "ratio", "goal ≤ 0.5 s"]
    if real_time:
        head.insert(5, "measured ttft_ms")
    rows = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for i, t in enumerate(turns):
        first_use = i == 0
        goal = "first use" if first_use else ("met" if t.ttft_s <= GOAL_S else "MISSED")
        cells = [t.session, str(t.turn), str(t.prefill), str(t.cached), f"{t.ttft_s:.3f}",
                 str(t.peer_prefill), f"{t.peer_ttft_s:.2f}",
                 f"{t.peer_ttft_s / t.ttft_s:.0f}×" if t.ttft_s else "–", goal]
        if real_time:
            cells.insert(5, f"{t.measured_ttft_ms:.0f}" if t.measured_ttft_ms is not None else "–")
        rows.append("| " + " | ".join(cells) + " |")
    return "\n".join(rows)


def summary(turns: list[Turn]) -> tuple[str, bool]:
    later = turns[1:]
    worst = max(t.ttft_s for t in later)
    met = worst <= GOAL_S
    restart = next(t for t in turns if t.session == "after restart")
    peer = sum(t.peer_ttft_s for t in turns) / len(turns)
    mine = sum(t.ttft_s for t in later) / len(later)
    return (f"Every turn after the prefix's first use: worst {worst:.3f} s, mean {mine:.3f} s "
            f"(goal ≤ {GOAL_S} s: {'met' if met else 'MISSED'}); first turn after the restart "
            f"{restart.ttft_s:.3f} s; full re-prefill every turn: mean {peer:.2f} s "
            f"({peer / mine:.0f}× longer)."), met


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.voice", description=__doc__.splitlines()[0])
    parser.add_argument("--real-time", action="store_true",
                        help="let the simulator sleep for the daemon's prefill (and show timing.ttft_ms)")
    parser.add_argument("--output", type=Path, default=Path(__file__).with_name("voice_results.md"))
    parser.add_argument("--no-write", action="store_true", help="print only")
    args = parser.parse_args(argv)
    started = time.monotonic()
    turns, fixture = run(args.real_time)
    text, met = summary(turns)
    prefix_chars = len(fixture["system"]) + len(json.dumps(fixture["tools"], ensure_ascii=False))
    doc = "\n".join([
        "# Voice benchmark (`python -m benchmarks.voice`)", "",
        f"Prompt: {fixture['source']}; system prompt {len(fixture['system'])} characters, "
        f"{len(fixture['tools'])} tools ({prefix_chars} characters with the system prompt). "
        f"Runtime ABI {ABI} (simulator); NPU time at {PREFILL_TPS:.1f} prefill tokens/s "
        "(RK3588, Qwen2.5-1.5B w8a8). Token counts are the simulator's (1 token per 4 bytes).", "",
        table(turns, fixture, args.real_time), "", text, "",
        f"Run took {time.monotonic() - started:.1f} s of wall time.", ""])
    print(doc)
    if not args.no_write:
        args.output.write_text(doc, encoding="utf-8")
        print(f"written to {args.output}", file=sys.stderr)
    return 0 if met else 1


if __name__ == "__main__":
    sys.exit(main())
