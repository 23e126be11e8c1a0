"""The one simulator build of a test run: every tier loads libraries from the same cache."""

from __future__ import annotations

from pathlib import Path

import pytest

from rkllm_mqtt.simulator import ABIS, build_simulator, sim_model_file


@pytest.fixture(scope="session")
def sim_cache(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A fresh cache per run (so a stale binary never hides a change), shared by every test."""
    return tmp_path_factory.mktemp("sim-cache")


@pytest.fixture(scope="session")
def sim_libraries(sim_cache: Path) -> dict[str, Path]:
    """The simulator of every ABI family."""
    return {abi: build_simulator(abi, cache_dir=sim_cache) for abi in ABIS}


@pytest.fixture(scope="session")
def sim_library(sim_cache: Path) -> Path:
    """The simulator the daemon tests run on (1.2; built alone when only they run)."""
    return build_simulator("1.2", cache_dir=sim_cache)


@pytest.fixture(scope="session")
def sim_model(sim_cache: Path) -> Path:
    return sim_model_file(sim_cache)
