"""The heap trimmer gives freed memory back only when enough payload bytes came in."""

from __future__ import annotations

import pytest

from rkllm_mqtt.memory import HeapTrimmer


def test_trims_after_enough_payload_bytes_and_not_before():
    trimmer = HeapTrimmer(every_bytes=1000)
    if trimmer._trim is None:
        pytest.skip("no glibc malloc_trim here")
    trimmer.received += 999
    trimmer.maybe_trim()
    assert trimmer.trims == 0
    trimmer.received += 1
    trimmer.maybe_trim()
    assert trimmer.trims == 1 and trimmer.received == 0
    trimmer.maybe_trim()
    assert trimmer.trims == 1


def test_the_service_counts_what_it_receives(broker, daemon, probe_factory):
    svc = daemon(broker)
    if svc._heap._trim is not None:
        assert svc._heap.trims >= 1  # once when start-up was done
    probe = probe_factory(broker, topics=(svc.topics.response,))
    probe.publish(svc.topics.prompt, {"id": "big", "prompt": "x" * 5000})
    probe.final("big")
    assert svc._heap.received + svc._heap.trims * svc._heap.every_bytes >= 5000
