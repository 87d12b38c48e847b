"""Fixtures of the simulator tests: a simulator on a hand-moved clock and a client for it."""

from __future__ import annotations

from collections.abc import Iterator

import httpx
import pytest

from tests.tools.simulating import (
    FakeClock,
    http,
)
from tools.simulator.server import Simulator


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
def sim(clock: FakeClock) -> Iterator[Simulator]:
    simulator = Simulator(venues=300, seed=7, clock=clock)
    simulator.start()
    try:
        yield simulator
    finally:
        simulator.stop()


@pytest.fixture
def client(sim: Simulator) -> Iterator[httpx.Client]:
    with http(sim.base_url, timeout=5) as c:
        yield c
