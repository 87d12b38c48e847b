"""A wrong clock loses nothing: the findings of docs/architecture.md, Maintenance, as tests.

A run dated back must not recreate dropped days (the next run then replaced their figures with
zeros); a run dated ahead must not aggregate and drop live days. The database clock is the
real one; `clock=` simulates it where a test needs a fixed date.
"""

from __future__ import annotations

import datetime as dt
import json
from typing import Any

import pytest
from sqlalchemy import Engine, text

from services.maintenance.run import run
from shared.db.buckets import ensure_live_buckets, market_today
from shared.db.partitions import ensure_partitions, list_partitions, partition_name
from shared.errors import ConfigError
from tests.maintenance.helpers import ZONE, Ev, insert_events, run_at, run_job, table
from tests.maintenance.test_run import LIVE, NOW, PAST, TODAY, live_buckets, msettings
from tests.maintenance.test_run import sample_events as _sample

FIGURES = ("venue_metrics", "market_metrics", "day_figures")


def figures(engine: Engine) -> dict[str, list[tuple[Any, ...]]]:
    tables = {t: table(engine, t) for t in FIGURES}
    # When figures were written is not a figure; which days are final is.
    tables["day_figures"] = [(r[0], r[1], r[3] is not None) for r in tables["day_figures"]]
    return tables


def partitions(engine: Engine) -> list[dt.date]:
    with engine.connect() as conn:
        return list_partitions(conn)


def database_now(engine: Engine) -> dt.datetime:
    with engine.connect() as conn:
        moment = conn.execute(text("SELECT now()")).scalar_one()
    assert isinstance(moment, dt.datetime)
    return moment


def test_a_run_dated_three_days_back_recreates_nothing_and_loses_no_figures(
    db_url: str, engine: Engine
) -> None:
    insert_events(engine, _sample())
    run_at(msettings(db_url), engine, NOW)
    before, buckets = figures(engine), live_buckets(engine)
    back = run(msettings(db_url), engine, NOW - dt.timedelta(days=3), clock=lambda: NOW)
    assert back.ran and back.today == TODAY - dt.timedelta(days=3)
    assert "live window" in {s["what"] for s in back.as_dict()["skipped"]}
    assert not set(PAST) & set(partitions(engine)), "a dropped day came back"
    assert live_buckets(engine) == buckets, "buckets of past days came back"
    run_at(msettings(db_url), engine, NOW)  # the next normal run
    assert figures(engine) == before


def test_ensure_never_recreates_a_final_day(db_url: str, engine: Engine) -> None:
    insert_events(engine, _sample())
    run_at(msettings(db_url), engine, NOW)
    with engine.begin() as conn:  # e.g. a poller whose clock is days behind
        assert ensure_partitions(conn, PAST) == []
        created = ensure_live_buckets(
            conn, market="nyc", today=PAST[0], window_days=5, anchors=("15:00", "19:00")
        )
    assert created == 0 and not set(PAST) & set(partitions(engine))


def test_a_run_dated_two_days_ahead_is_refused_and_changes_nothing(
    db_url: str, engine: Engine
) -> None:
    real = database_now(engine)
    today = market_today(ZONE, real)
    events = [Ev(1, today + dt.timedelta(days=d), "NEW_DROP", real, prime=True) for d in (-1, 0, 1)]
    insert_events(engine, events)
    days = partitions(engine)
    with pytest.raises(ConfigError, match="ahead of the database clock"):
        run(msettings(db_url), engine, real + dt.timedelta(days=2))
    assert partitions(engine) == days and figures(engine) == {t: [] for t in FIGURES}


def test_the_cli_refuses_a_now_ahead_with_a_clear_error(db_url: str, engine: Engine) -> None:
    ahead = database_now(engine) + dt.timedelta(days=2)
    result = run_job(db_url, "services.maintenance", "run", "--now", ahead.isoformat())
    assert result.returncode == 2
    answer = json.loads(result.stdout.strip().splitlines()[-1])
    assert answer["ok"] is False and "ahead of the database clock" in answer["error"]
    assert live_buckets(engine) == []


def test_a_now_ahead_within_the_skew_runs_as_of_the_database_clock(
    db_url: str, engine: Engine
) -> None:
    """Two minutes ahead, but past midnight: today's partition must not be dropped."""
    real = dt.datetime(2026, 12, 10, 23, 59, tzinfo=ZONE)
    insert_events(engine, [Ev(1, real.date(), "NEW_DROP", real, prime=True)])
    summary = run(msettings(db_url), engine, real + dt.timedelta(minutes=2), clock=lambda: real)
    assert summary.today == real.date() and real.date() in partitions(engine)
    skipped = {s["what"]: s["why"] for s in summary.as_dict()["skipped"]}
    assert "database clock" in skipped["--now"]


def test_without_now_the_database_clock_dates_the_run(db_url: str, engine: Engine) -> None:
    summary = run(msettings(db_url), engine).as_dict()
    real = database_now(engine)
    assert summary["today"] == market_today(ZONE, real).isoformat()
    assert abs(dt.datetime.fromisoformat(summary["database_now"]) - real) < dt.timedelta(minutes=5)


def test_figures_are_never_replaced_by_figures_of_fewer_events(db_url: str, engine: Engine) -> None:
    insert_events(engine, _sample())
    day = PAST[-1]

    def lose_events(name: str) -> None:  # e.g. a hand-made DELETE between two runs
        if name == "aggregate":
            with engine.begin() as conn:
                conn.execute(text(f"DELETE FROM {partition_name(day)} WHERE venue_id = 1"))

    summary = run_at(msettings(db_url), engine, NOW, checkpoint=lose_events)
    assert f"day {day}" in summary.skipped
    assert day in partitions(engine)  # kept for an operator
    with engine.connect() as conn:
        counts = conn.execute(
            text("SELECT new_drop_count FROM venue_metrics WHERE window_date = :d ORDER BY 1"),
            {"d": day},
        ).scalars()
        assert list(counts) == [1, 1, 1]  # venue 1 still counted


def test_an_empty_partition_of_a_final_day_is_dropped_and_a_full_one_kept(
    db_url: str, engine: Engine
) -> None:
    """Partitions recreated before final days were kept (an older version, or by hand)."""
    insert_events(engine, _sample())
    run_at(msettings(db_url), engine, NOW)
    before = figures(engine)
    with engine.begin() as conn:
        for day in PAST[:2]:
            upper = day + dt.timedelta(days=1)
            conn.execute(
                text(
                    f"CREATE TABLE {partition_name(day)} PARTITION OF drop_events"
                    f" FOR VALUES FROM ('{day}') TO ('{upper}')"
                )
            )
    insert_events(engine, [Ev(7, PAST[1], "NEW_DROP", NOW)])
    summary = run_at(msettings(db_url), engine, NOW)
    assert PAST[0] not in partitions(engine) and PAST[1] in partitions(engine)
    assert "final since" in summary.skipped[f"day {PAST[1]}"]
    assert figures(engine) == before


def test_live_days_are_never_dropped_by_a_run_dated_by_the_database_clock(
    db_url: str, engine: Engine
) -> None:
    insert_events(engine, _sample())
    run_at(msettings(db_url), engine, NOW)
    assert set(LIVE) <= set(partitions(engine))
