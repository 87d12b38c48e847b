"""Small pure pieces of the poller: slot identity, plausibility, request budget."""

from __future__ import annotations

import asyncio
import datetime as dt
import time

import pytest

from services.poller.judge import judge
from services.poller.ratelimit import RequestBudget
from services.poller.slots import parse_local_start
from shared.slots import slot_id_for


@pytest.mark.parametrize(
    "raw", ["2026-12-03 19:30:00", "2026-12-03T19:30:00", "2026-12-03 19:30", " 2026-12-03T19:30 "]
)
def test_slot_id_is_stable_across_time_formats(raw: str) -> None:
    start = parse_local_start(raw)
    assert start == dt.datetime(2026, 12, 3, 19, 30)
    assert slot_id_for("resy", 7, start, "Dining  room") == slot_id_for(
        "resy", 7, dt.datetime(2026, 12, 3, 19, 30), "Dining Room"
    )


def test_slot_id_differs_by_venue_time_and_seating() -> None:
    t = dt.datetime(2026, 12, 3, 19, 30)
    ids = {
        slot_id_for("resy", 7, t, "Dining Room"),
        slot_id_for("resy", 8, t, "Dining Room"),
        slot_id_for("resy", 7, t + dt.timedelta(minutes=15), "Dining Room"),
        slot_id_for("resy", 7, t, "Bar"),
    }
    assert len(ids) == 4


def test_unparseable_start_is_rejected() -> None:
    with pytest.raises(ValueError):
        parse_local_start("tomorrow at 7")


@pytest.mark.parametrize(
    ("count", "previous", "suspects", "apply", "outcome"),
    [
        (40, None, 0, True, "healthy"),
        (0, 5, 0, True, "healthy"),  # small buckets may legitimately empty out
        (0, 40, 0, False, "suspect_soft_block"),
        (19, 40, 0, False, "suspect_soft_block"),
        (21, 40, 0, True, "healthy"),
        (3, 40, 1, True, "confirmed_shrink"),
    ],
)
def test_judge(count: int, previous: int | None, suspects: int, apply: bool, outcome: str) -> None:
    verdict = judge(count, previous, suspects, min_previous=10, shrink_ratio=0.5)
    assert (verdict.apply, verdict.outcome) == (apply, outcome)


async def test_request_budget_is_shared_and_bounded_by_the_deadline() -> None:
    budget = RequestBudget(rate=20, burst=1)
    started = time.monotonic()
    results = await asyncio.gather(*(budget.acquire(started + 5) for _ in range(6)))
    elapsed = time.monotonic() - started
    assert all(results)
    assert 0.2 <= elapsed < 1.0  # 1 immediately, 5 more at 20/s
    assert not await budget.acquire(time.monotonic() + 0.001)  # cannot come in time
