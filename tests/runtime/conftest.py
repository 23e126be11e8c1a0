"""Fixtures for the binding's tests: the real simulator libraries, loaded through our ctypes code."""

from __future__ import annotations

import ctypes
import json
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from rkllm_mqtt.config import RuntimeSettings
from rkllm_mqtt.runtime import Session
from rkllm_mqtt.simulator import ABIS


@pytest.fixture(params=ABIS)
def family(request: pytest.FixtureRequest) -> str:
    return request.param


@pytest.fixture
def settings_for(
    sim_libraries: dict[str, Path], sim_model: Path
) -> Callable[..., RuntimeSettings]:
    """RuntimeSettings for the simulator of one family; keyword arguments override keys."""

    def make(abi: str, /, **keys: Any) -> RuntimeSettings:
        base: dict[str, Any] = {"library": str(sim_libraries[abi]), "abi": abi,
                                "model": str(sim_model)}
        return RuntimeSettings(**(base | keys))

    return make


@pytest.fixture
def open_session(settings_for: Callable[..., RuntimeSettings]) -> Iterator[Callable[..., Session]]:
    """Factory: an opened Session on the simulator of `abi`; every one is closed at teardown."""
    sessions: list[Session] = []

    def make(abi: str, /, **keys: Any) -> Session:
        session = Session(settings_for(abi, **keys))
        sessions.append(session)
        session.open()
        return session

    yield make
    for session in sessions:
        session.close()


def _sim_inspect(lib: ctypes.CDLL, handle: Any) -> dict[str, Any]:
    fn = lib["rkllm_sim_inspect"]
    fn.argtypes = [ctypes.c_void_p]
    fn.restype = ctypes.c_char_p
    return json.loads(fn(handle))


@pytest.fixture
def inspect() -> Callable[[Session], dict[str, Any]]:
    """What the simulator read, as JSON (called on the session's worker thread, between runs)."""
    return lambda session: session.call_native(_sim_inspect)


@pytest.fixture
def inspect_now() -> Callable[[Session], Callable[[], dict[str, Any]]]:
    """A function that reads the simulator's record at once, from any thread (e.g. mid-run)."""

    def bind(session: Session) -> Callable[[], dict[str, Any]]:
        lib, handle = session.call_native(lambda lib, handle: (lib, handle.value))
        return lambda: _sim_inspect(lib, handle)

    return bind
