"""Release windows learned from the retained NEW_DROP events (one statement, real PostgreSQL)."""

from __future__ import annotations

import datetime as dt
import random
import threading
from concurrent.futures import ThreadPoolExecutor
from typing import Any
from zoneinfo import ZoneInfo

from pydantic import SecretStr
from sqlalchemy import Engine, text

from services.maintenance import store
from services.maintenance.settings import MaintenanceSettings
from services.maintenance.store import WindowParams
from tests.maintenance.helpers import run_at
from tests.maintenance.releases import NEW_YORK, Drop, insert_drops, release

TODAY = dt.date(2026, 12, 10)
DAYS = [TODAY - dt.timedelta(days=n) for n in (3, 2, 1, 0)]


def learn(
    engine: Engine,
    today: dt.date = TODAY,
    zone: str = "America/New_York",
    market: str = "nyc",
    **params: Any,
) -> store.WindowsLearned:
    with engine.begin() as conn:
        return store.learn_release_windows(
            conn, market=market, zone=zone, today=today, params=WindowParams(**params)
        )


def windows(engine: Engine, market: str = "nyc") -> list[dict[str, Any]]:
    with engine.connect() as conn:
        rows = conn.execute(
            text(
                "SELECT venue_id, lead_days, release_minute, time_slots, days_seen, first_seen,"
                " last_seen, slots_per_release FROM release_windows WHERE market = :m"
                " ORDER BY venue_id, lead_days, release_minute"
            ),
            {"m": market},
        )
        return [dict(r._mapping) for r in rows]


def hhmm(minute: int) -> str:
    return f"{minute // 60:02d}:{minute % 60:02d}"


def test_a_daily_release_is_one_window(engine: Engine) -> None:
    """09:00 local, 7 days ahead, seen on 4 days: one window with what the scheduler needs."""
    drops = [
        d for day in DAYS for d in release(1, day, dt.time(9, 0, 3), 7, anchors=("15:00", "19:00"))
    ]
    insert_drops(engine, drops)
    assert learn(engine) == store.WindowsLearned(windows=1, removed=0)
    (window,) = windows(engine)
    assert window == {
        "venue_id": 1,
        "lead_days": 7,
        "release_minute": 9 * 60,
        "time_slots": ["15:00", "19:00"],
        "days_seen": 4,
        "first_seen": DAYS[0],
        "last_seen": TODAY,
        "slots_per_release": 4.0,
    }


def test_a_drifting_release_is_one_window_at_its_median_minute(engine: Engine) -> None:
    times = [dt.time(10, 14), dt.time(10, 16), dt.time(10, 15), dt.time(10, 16)]
    insert_drops(
        engine, [d for day, at in zip(DAYS, times, strict=True) for d in release(2, day, at, 14)]
    )
    learn(engine)
    (window,) = windows(engine)
    assert (window["lead_days"], hhmm(window["release_minute"]), window["days_seen"]) == (
        14,
        "10:15",
        4,
    )


def test_far_apart_moments_of_one_venue_and_lead_are_two_windows(engine: Engine) -> None:
    drops = [d for day in DAYS for at in (dt.time(9), dt.time(21)) for d in release(3, day, at, 7)]
    # And another lead of the same venue at 09:00.
    drops += [d for day in DAYS[1:] for d in release(3, day, dt.time(9), 10)]
    insert_drops(engine, drops)
    learn(engine)
    found = [(w["lead_days"], hhmm(w["release_minute"]), w["days_seen"]) for w in windows(engine)]
    assert found == [(7, "09:00", 4), (7, "21:00", 4), (10, "09:00", 3)]


def test_scattered_cancellations_and_thin_evidence_make_no_window(engine: Engine) -> None:
    rng = random.Random(7)
    drops: list[Drop] = []
    for n in range(14):  # cancellations: one drop now and then, any lead, any time
        day = TODAY - dt.timedelta(days=n)
        for _ in range(6):
            at = dt.datetime.combine(day, dt.time(rng.randrange(24), rng.randrange(60)), NEW_YORK)
            drops.append(Drop(4, at, day + dt.timedelta(days=rng.randrange(1, 14))))
    # A burst of two (below 3) every day; a burst of four on two days only (below 3 days);
    # four drops a day spread 10 minutes apart (no burst: more than 5 minutes between them).
    drops += [d for day in DAYS for d in release(5, day, dt.time(9), 7, slots=2)]
    drops += [d for day in DAYS[:2] for d in release(6, day, dt.time(9), 7)]
    drops += [d for day in DAYS for d in release(7, day, dt.time(9), 7, spacing_seconds=600)]
    insert_drops(engine, drops)
    assert learn(engine).windows == 0
    assert windows(engine) == []


def test_the_minute_is_market_local_across_a_dst_change(engine: Engine) -> None:
    """New York leaves daylight time on 2026-11-01: 09:00 local is 13:00 UTC before, 14:00
    after. One window at 09:00; in a market on Los Angeles time the same moments are 06:00."""
    today = dt.date(2026, 11, 3)
    days = [dt.date(2026, 10, 30), dt.date(2026, 10, 31), dt.date(2026, 11, 1), today]
    insert_drops(engine, [d for day in days for d in release(8, day, dt.time(9), 7)])
    utc_hours = {d.opened_at.astimezone(dt.UTC).hour for d in release(8, days[0], dt.time(9), 7)}
    utc_hours |= {d.opened_at.astimezone(dt.UTC).hour for d in release(8, today, dt.time(9), 7)}
    assert utc_hours == {13, 14}
    learn(engine, today=today)
    (window,) = windows(engine)
    assert (hhmm(window["release_minute"]), window["days_seen"]) == ("09:00", 4)
    learn(engine, today=today, zone="America/Los_Angeles")
    (window,) = windows(engine)
    assert (hhmm(window["release_minute"]), window["days_seen"]) == ("06:00", 4)


def test_the_lead_counts_from_the_local_date_of_the_release(engine: Engine) -> None:
    """At 23:30 in New York it is already tomorrow in UTC: the lead is from the local date."""
    insert_drops(engine, [d for day in DAYS for d in release(9, day, dt.time(23, 30), 7)])
    learn(engine)
    (window,) = windows(engine)
    assert (window["lead_days"], hhmm(window["release_minute"])) == (7, "23:30")


def test_a_window_no_longer_seen_disappears(engine: Engine) -> None:
    insert_drops(engine, [d for day in DAYS for d in release(1, day, dt.time(9), 7)])
    learn(engine)
    assert len(windows(engine)) == 1
    # The history moves past it (nothing seen within the last 28 days of a later today) ...
    assert learn(engine, today=TODAY + dt.timedelta(days=40)) == store.WindowsLearned(0, 1)
    assert windows(engine) == []
    # ... or its events are dropped with their reservation days' partitions.
    learn(engine)
    with engine.begin() as conn:
        conn.execute(text("DELETE FROM drop_events WHERE venue_id = 1"))
    assert learn(engine) == store.WindowsLearned(0, 1)


def test_a_relearned_window_moves_with_its_median_and_other_markets_are_untouched(
    engine: Engine,
) -> None:
    insert_drops(engine, [d for day in DAYS for d in release(1, day, dt.time(9), 7)])
    insert_drops(
        engine,
        [
            Drop(1, d.opened_at, d.slot_date, market="sf")
            for day in DAYS
            for d in release(1, day, dt.time(12), 7)
        ],
    )
    learn(engine, market="sf", zone="America/Los_Angeles")
    learn(engine)
    assert [hhmm(w["release_minute"]) for w in windows(engine)] == ["09:00"]
    # Five later days at 09:04: the median moves to 09:04, the old row goes, one window stays.
    later = [TODAY + dt.timedelta(days=n) for n in range(1, 6)]
    insert_drops(engine, [d for day in later for d in release(1, day, dt.time(9, 4), 7)])
    assert learn(engine, today=later[-1]) == store.WindowsLearned(1, 1)
    assert [(hhmm(w["release_minute"]), w["days_seen"]) for w in windows(engine)] == [("09:04", 9)]
    assert [hhmm(w["release_minute"]) for w in windows(engine, "sf")] == ["09:00"]


def test_events_after_today_are_not_learned(engine: Engine) -> None:
    """A run dated in the past (--now) learns only what it would have seen then."""
    insert_drops(engine, [d for day in DAYS for d in release(1, day, dt.time(9), 7)])
    assert learn(engine, today=DAYS[1]).windows == 0  # two days seen by then
    assert learn(engine, today=DAYS[2]).windows == 1


def test_the_maintenance_run_learns_and_reports_them(db_url: str, engine: Engine) -> None:
    insert_drops(engine, [d for day in DAYS for d in release(1, day, dt.time(9), 7)])
    settings = MaintenanceSettings(database_url=SecretStr(db_url))
    now = dt.datetime.combine(TODAY, dt.time(12), tzinfo=ZoneInfo("America/New_York"))
    summary = run_at(settings, engine, now.astimezone(dt.UTC))
    steps = summary.as_dict()["steps"]
    assert list(steps)[-1] == "release_windows"
    assert steps["release_windows"]["rows"] == 1 and steps["release_windows"]["removed"] == 0
    assert len(windows(engine)) == 1
    stricter = MaintenanceSettings(database_url=SecretStr(db_url), window_min_days=5)
    assert run_at(stricter, engine, now.astimezone(dt.UTC)).steps["release_windows"].rows == 0


def test_only_new_drops_count_and_impossible_leads_are_ignored(engine: Engine) -> None:
    """Bursts of CLOSED or SIZE_OPEN events are not releases, and a slot dated before the day
    it opened (bad data) is not a negative lead."""
    drops = [
        Drop(1, d.opened_at, d.slot_date, event_type=kind)
        for kind in ("CLOSED", "SIZE_OPEN")
        for day in DAYS
        for d in release(1, day, dt.time(9), 7)
    ]
    drops += [
        Drop(2, d.opened_at, d.opened_at.date() - dt.timedelta(days=2))
        for day in DAYS
        for d in release(2, day, dt.time(9), 0)
    ]
    insert_drops(engine, drops)
    assert learn(engine).windows == 0


def test_two_learners_at_once_agree(db_url: str, engine: Engine) -> None:
    """The daily run and `dropwatch windows --refresh` at the same moment: both commit, and
    the table holds the windows once."""
    insert_drops(engine, [d for day in DAYS for d in release(1, day, dt.time(9), 7)])
    insert_drops(engine, [d for day in DAYS for d in release(2, day, dt.time(10), 14)])
    barrier = threading.Barrier(2)

    def learner() -> store.WindowsLearned:
        with engine.begin() as conn:
            conn.execute(text("SELECT 1"))
            barrier.wait(timeout=10)
            return store.learn_release_windows(
                conn, market="nyc", zone="America/New_York", today=TODAY, params=WindowParams()
            )

    with ThreadPoolExecutor(2) as pool:
        results = list(pool.map(lambda _: learner(), range(2)))
    assert [r.windows for r in results] == [2, 2]
    assert [(w["venue_id"], w["lead_days"]) for w in windows(engine)] == [(1, 7), (2, 14)]
