"""Small pure pieces of the poller: slot identity, plausibility, request budget."""

from __future__ import annotations

import asyncio
import datetime as dt
import time

import pytest

from services.poller.judge import Thresholds, judge
from services.poller.ratelimit import RequestBudget
from services.poller.settings import PollerSettings
from services.poller.slots import parse_local_start
from shared.errors import ConfigError
from shared.settings import load_settings
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


T0 = dt.datetime(2026, 12, 1, 12, 0, tzinfo=dt.UTC)
LIMITS = Thresholds(
    min_previous=10, shrink_ratio=0.5, sellout_confirm_seconds=1800, sellout_confirm_polls=3
)


def _hold(why: str, polls: int, minutes_ago: int = 60) -> dict[str, object]:
    return {
        "since": (T0 - dt.timedelta(minutes=minutes_ago)).isoformat(),
        "polls": polls,
        "why": why,
    }


@pytest.mark.parametrize(
    ("count", "previous", "hold", "evidence", "verdict"),
    [
        (40, 0, None, None, "healthy"),
        (0, 0, None, None, "idle"),
        (0, 5, None, None, "blocked"),  # even a small kind is blocked when it empties
        (0, 40, _hold("empty", 9), None, "blocked"),  # no evidence: a block however long
        (0, 40, _hold("empty", 9, 10), T0, "blocked"),  # too recent
        (0, 40, _hold("empty", 1), T0, "blocked"),  # too few polls
        (0, 40, _hold("empty", 2), T0, "confirmed_sellout"),
        (0, 40, _hold("empty", 9), T0 - dt.timedelta(hours=2), "blocked"),  # stale evidence
        (19, 40, None, None, "suspect_soft_block"),
        (21, 40, None, None, "healthy"),
        (3, 40, _hold("shrunk", 1), None, "confirmed_shrink"),
        (3, 40, _hold("empty", 3), None, "suspect_soft_block"),  # a block lifting part-way
        (5, 9, None, None, "healthy"),  # shrinks of small kinds are not suspect
    ],
)
def test_judge_one_kind(
    count: int,
    previous: int,
    hold: dict[str, object] | None,
    evidence: dt.datetime | None,
    verdict: str,
) -> None:
    held = {"4": hold} if hold else {}
    judgement = judge(
        {4: count}, {4: previous}, held, now=T0, evidence_at=evidence, thresholds=LIMITS
    )
    assert judgement.kinds == {4: verdict}
    assert ("4" in judgement.held) == (verdict in ("blocked", "suspect_soft_block"))


def test_judge_holds_only_the_blocked_kind() -> None:
    judgement = judge(
        {2: 30, 4: 0}, {2: 28, 4: 25}, {}, now=T0, evidence_at=None, thresholds=LIMITS
    )
    assert (judgement.outcome, judgement.apply, judgement.held_sizes) == (
        "partial_block",
        True,
        [4],
    )
    everything = judge(
        {2: 0, 4: 0, 6: 0}, {2: 28, 4: 25}, {}, now=T0, evidence_at=None, thresholds=LIMITS
    )
    assert (everything.outcome, everything.apply) == ("blocked", False)


async def test_request_budget_is_shared_and_bounded_by_the_deadline() -> None:
    budget = RequestBudget(rate=20, burst=1)
    started = time.monotonic()
    results = await asyncio.gather(*(budget.acquire(started + 5) for _ in range(6)))
    elapsed = time.monotonic() - started
    assert all(results)
    assert 0.2 <= elapsed < 1.0  # 1 immediately, 5 more at 20/s
    assert not await budget.acquire(time.monotonic() + 0.001)  # cannot come in time


@pytest.mark.parametrize(
    "url",
    [
        "http://api.resy.com",
        "http://10.0.0.5:8080",
        "ftp://api.resy.com",
        "https://",
        "api.resy.com",
    ],
)
def test_a_provider_url_must_be_https_unless_loopback(url: str) -> None:
    with pytest.raises(ConfigError) as info:
        load_settings(PollerSettings, resy_base_url=url)
    assert info.value.variable == "DROPWATCH_RESY_BASE_URL"
    assert "https" in info.value.problem or "host" in info.value.problem


@pytest.mark.parametrize(
    "url", ["https://api.resy.com", "http://127.0.0.1:8080", "http://localhost:9", "http://[::1]:9"]
)
def test_https_or_loopback_provider_urls_are_accepted(url: str) -> None:
    assert load_settings(PollerSettings, resy_base_url=url).resy_base_url == url
