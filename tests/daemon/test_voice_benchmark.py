"""The voice benchmark runs (at unlimited simulator speed) and meets its goal.

The figures are simulated NPU time computed from the tokens the simulator says it prefilled, not
wall time, so this asserts counts, not speed: after a prefix's first use (and after the restart)
every voice turn prefills only its own words, while the peers' way prefills the whole prompt.
"""

from __future__ import annotations

import pytest

from benchmarks import voice

pytestmark = pytest.mark.timeout(120)


def test_voice_turns_meet_the_goal_and_the_peer_way_does_not() -> None:
    turns, fixture = voice.run(real_time=False)
    assert len(turns) == 3 * (voice.SESSIONS + 1)
    assert "Home Assistant 2025.4.4" in fixture["source"]
    first, later = turns[0], turns[1:]
    assert first.cached == 0 and first.prefill > 1500  # the Assist prompt and tools, once
    assert all(t.ttft_s <= voice.GOAL_S for t in later)
    restart = next(t for t in turns if t.session == "after restart")
    assert restart.cached >= first.prefill - 10  # from the prompt cache file
    assert all(t.peer_prefill >= first.prefill for t in turns)
    assert all(t.peer_ttft_s > 10 * t.ttft_s for t in later)
    assert {t.source for t in turns} == {"runtime"}
    _, met = voice.summary(turns)
    assert met
