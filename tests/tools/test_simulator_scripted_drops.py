"""Scripted short-lived drops: a scripted slot open only during given intervals of the clock."""

from __future__ import annotations

from datetime import UTC, datetime

import httpx
import pytest

from tests.tools.simulating import SCRIPTED_DAY, FakeClock, search, slot_ids
from tools.simulator.server import ScriptedSlot, ScriptedVenue, Simulator


def test_a_timed_slot_is_served_only_inside_its_intervals(
    sim: Simulator, client: httpx.Client, clock: FakeClock
) -> None:
    t0 = clock.now.timestamp()
    sim.script_day(
        SCRIPTED_DAY,
        [
            ScriptedVenue(
                501,
                "Churn Room",
                [
                    ScriptedSlot("19:00"),  # always open
                    ScriptedSlot("19:30", open_during=((t0 + 5, t0 + 8), (t0 + 20, t0 + 21.5))),
                ],
            )
        ],
    )

    def times_open() -> set[str]:
        return {
            start.strftime("%H:%M")
            for _, start, _ in slot_ids(search(client, day=SCRIPTED_DAY).json())
        }

    seen = []
    for offset in (0, 4.9, 5, 7.9, 8, 19.99, 20, 21.49, 21.5, 60):
        clock.now = datetime.fromtimestamp(t0 + offset, UTC)
        seen.append((offset, "19:30" in times_open()))
    assert seen == [
        (0, False),
        (4.9, False),
        (5, True),  # start inclusive
        (7.9, True),
        (8, False),  # end exclusive
        (19.99, False),
        (20, True),  # a second interval: the same table reopens
        (21.49, True),
        (21.5, False),
        (60, False),
    ]
    assert times_open() == {"19:00"}  # the untimed slot never closed


def test_an_empty_or_reversed_interval_is_refused() -> None:
    with pytest.raises(ValueError, match="open_during"):
        ScriptedSlot("19:30", open_during=((10.0, 10.0),))
    with pytest.raises(ValueError, match="open_during"):
        ScriptedSlot("19:30", open_during=((10.0, 5.0),))
    assert ScriptedSlot("19:30").is_open_at(0.0)
