"""The daily maintenance run against real PostgreSQL."""

from __future__ import annotations

import datetime as dt
import json
import threading
from http.server import BaseHTTPRequestHandler, HTTPServer
from typing import Any, ClassVar

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from pydantic import SecretStr
from sqlalchemy import Engine, text

from services.maintenance.run import STEPS
from services.maintenance.settings import MaintenanceSettings
from shared.db.contracts import MAINTENANCE_RUN_LOCK
from shared.db.partitions import list_partitions
from tests.maintenance.helpers import (
    Ev,
    actual_market_metrics,
    actual_venue_metrics,
    expected_market_metrics,
    expected_venue_metrics,
    insert_events,
    run_at,
    run_job,
    table,
)

NOW = dt.datetime(2026, 12, 10, 12, 5, tzinfo=dt.UTC)  # 07:05 in New York
TODAY = dt.date(2026, 12, 10)
PAST = [TODAY - dt.timedelta(days=n) for n in (3, 2, 1)]
LIVE = [TODAY, TODAY + dt.timedelta(days=1)]


def msettings(db_url: str, **extra: Any) -> MaintenanceSettings:
    return MaintenanceSettings(database_url=SecretStr(db_url), **extra)


def _at(day: dt.date, hour: int) -> dt.datetime:
    return dt.datetime(day.year, day.month, day.day, hour, 0, tzinfo=dt.UTC)


def sample_events() -> list[Ev]:
    evs = []
    for i, day in enumerate(PAST + LIVE):
        for venue in (1, 2, 3):
            evs.append(Ev(venue, day, "NEW_DROP", _at(day, 12 + venue), prime=venue != 2))
            if venue != 3:
                evs.append(Ev(venue, day, "CLOSED", _at(day, 12 + venue), 60.0 * (venue + i)))
    return evs


def live_buckets(engine: Engine) -> list[str]:
    with engine.connect() as conn:
        return list(
            conn.execute(
                text("SELECT bucket_id FROM discovery_buckets ORDER BY bucket_id")
            ).scalars()
        )


def test_run_aggregates_past_days_then_drops_them(db_url: str, engine: Engine) -> None:
    events = sample_events()
    insert_events(engine, events)
    summary = run_at(msettings(db_url), engine, NOW)
    assert summary.ran and summary.cutoff == "2026-12-10_15:00"
    assert list(summary.steps) == [
        "aggregate",
        "prune_buckets",
        "prune_events",
        "rolling",
        "ensure_buckets",
        "baseline",
        "release_windows",
    ]
    assert actual_venue_metrics(engine) == expected_venue_metrics(events, set(PAST))
    assert actual_market_metrics(engine) == expected_market_metrics(events, set(PAST))
    with engine.connect() as conn:
        days = list_partitions(conn)
        remaining = conn.execute(text("SELECT count(*) FROM drop_events")).scalar_one()
    assert min(days) == TODAY and not set(PAST) & set(days)
    assert remaining == sum(1 for e in events if e.day in LIVE)
    buckets = live_buckets(engine)
    assert len(buckets) == 28 and buckets[0] == "2026-12-10_15:00"
    assert summary.steps["prune_events"].rows == sum(1 for e in events if e.day in PAST)
    assert summary.steps["baseline"].rows == 28  # new buckets wait for healthy polls


def test_rolling_metrics(db_url: str, engine: Engine) -> None:
    events = sample_events()
    insert_events(engine, events)
    run_at(msettings(db_url), engine, NOW)
    with engine.connect() as conn:
        rows = {
            r.venue_id: r for r in conn.execute(text("SELECT * FROM venue_rolling_metrics")).all()
        }
    assert set(rows) == {1, 2, 3}
    one = rows[1]
    assert one.as_of_date == TODAY
    assert (one.total_drops, one.days_with_drops, one.last7_drops, one.prev7_drops) == (3, 3, 3, 0)
    assert one.drops_per_day == pytest.approx(3 / 14)
    assert one.availability_rate == pytest.approx(3 / 14)
    assert one.rarity_score == pytest.approx(1 / (1 + 3 / 14))
    assert one.trend is None


def test_rerun_of_a_finished_day_changes_nothing(db_url: str, engine: Engine) -> None:
    insert_events(engine, sample_events())
    run_at(msettings(db_url), engine, NOW)
    before = {t: table(engine, t) for t in ("venue_metrics", "market_metrics")}
    again = run_at(msettings(db_url), engine, NOW)
    assert again.steps["aggregate"].rows == 0 and again.steps["prune_events"].rows == 0
    assert {t: table(engine, t) for t in before} == before


class Crash(Exception):
    pass


@pytest.mark.parametrize("step", STEPS[:-1])
def test_crash_after_any_step_then_rerun_equals_a_clean_run(
    db_url: str, engine: Engine, pg_server: Any, step: str
) -> None:
    events = sample_events()
    insert_events(engine, events)

    def crash(name: str) -> None:
        if name == step:
            raise Crash(name)

    with pytest.raises(Crash):
        run_at(msettings(db_url), engine, NOW, checkpoint=crash)
    run_at(msettings(db_url), engine, NOW)
    assert actual_venue_metrics(engine) == expected_venue_metrics(events, set(PAST))
    assert actual_market_metrics(engine) == expected_market_metrics(events, set(PAST))
    assert len(live_buckets(engine)) == 28


def test_late_event_after_aggregation_is_counted_before_its_day_is_dropped(
    db_url: str, engine: Engine
) -> None:
    events = sample_events()
    insert_events(engine, events)
    late = Ev(9, PAST[-1], "NEW_DROP", _at(PAST[-1], 20))

    def sneak(name: str) -> None:
        if name == "aggregate":
            insert_events(engine, [late])

    summary = run_at(msettings(db_url), engine, NOW, checkpoint=sneak)
    assert summary.steps["prune_events"].detail["reaggregated"] == 1
    assert actual_venue_metrics(engine) == expected_venue_metrics([*events, late], set(PAST))
    # Today's rolling figures see it too (they were computed before the re-aggregation, and
    # no later run recomputes this as-of date).
    with engine.connect() as conn:
        rolling = conn.execute(
            text("SELECT total_drops FROM venue_rolling_metrics WHERE venue_id = 9")
        ).scalar_one_or_none()
    assert rolling == 1


def test_a_second_concurrent_run_says_so_and_does_nothing(db_url: str, engine: Engine) -> None:
    with engine.connect() as holder:
        holder.execute(text("SELECT pg_advisory_lock(:k)"), {"k": MAINTENANCE_RUN_LOCK})
        summary = run_at(msettings(db_url), engine, NOW)
        holder.execute(text("SELECT pg_advisory_unlock(:k)"), {"k": MAINTENANCE_RUN_LOCK})
    assert not summary.ran and "lock" in summary.message
    assert live_buckets(engine) == []


@pytest.mark.parametrize(
    ("now", "today"),
    [
        # Spring forward (2026-03-08): 07:05 EDT is 11:05 UTC.
        (dt.datetime(2026, 3, 8, 11, 5, tzinfo=dt.UTC), dt.date(2026, 3, 8)),
        # Fall back (2026-11-01): 07:05 EST is 12:05 UTC.
        (dt.datetime(2026, 11, 1, 12, 5, tzinfo=dt.UTC), dt.date(2026, 11, 1)),
        # Late evening in New York is already tomorrow in UTC: "today" must be New York's.
        (dt.datetime(2026, 11, 2, 3, 30, tzinfo=dt.UTC), dt.date(2026, 11, 1)),
    ],
)
def test_cutoff_is_computed_in_the_market_zone(
    db_url: str, engine: Engine, now: dt.datetime, today: dt.date
) -> None:
    summary = run_at(msettings(db_url), engine, now)
    assert summary.today == today
    assert summary.cutoff == f"{today.isoformat()}_15:00"
    buckets = live_buckets(engine)
    assert len(buckets) == 28 and buckets[0] == f"{today.isoformat()}_15:00"


def test_sliding_window_across_month_and_year_end(db_url: str, engine: Engine) -> None:
    for day in range(28, 32):
        run_at(msettings(db_url), engine, dt.datetime(2026, 12, day, 12, 5, tzinfo=dt.UTC))
    run_at(msettings(db_url), engine, dt.datetime(2027, 1, 1, 12, 5, tzinfo=dt.UTC))
    buckets = live_buckets(engine)
    assert len(buckets) == 28
    assert buckets[0] == "2027-01-01_15:00" and buckets[-1] == "2027-01-14_19:00"
    with engine.connect() as conn:
        assert min(list_partitions(conn)) == dt.date(2027, 1, 1)


def test_early_anchor_buckets_of_today_are_past(db_url: str, engine: Engine) -> None:
    settings_ = msettings(db_url, anchors=("11:00", "19:00"))
    run_at(settings_, engine, NOW)
    buckets = live_buckets(engine)
    assert f"{TODAY.isoformat()}_11:00" not in buckets
    assert len(buckets) == 27  # today's 11:00 is already before the 15:00 cutoff


@settings(
    max_examples=15,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(
    st.lists(
        st.tuples(
            st.integers(1, 4),
            st.sampled_from(PAST + LIVE),
            st.booleans(),
            st.integers(0, 23),
            st.one_of(st.none(), st.floats(0, 7200, allow_nan=False)),
            st.booleans(),
        ),
        max_size=40,
    )
)
def test_aggregates_equal_a_python_reference(
    db_url: str, engine: Engine, raw: list[tuple[int, dt.date, bool, int, float | None, bool]]
) -> None:
    with engine.begin() as conn:
        conn.execute(
            text("TRUNCATE venue_metrics, market_metrics, venue_rolling_metrics, day_figures")
        )
        conn.execute(text("DELETE FROM discovery_buckets"))
        conn.execute(text("DELETE FROM drop_events"))
    events = [
        Ev(
            v,
            day,
            "NEW_DROP" if is_drop else "CLOSED",
            _at(day, hour),
            None if is_drop else (dur if dur is not None else 0.0),
            prime,
        )
        for v, day, is_drop, hour, dur, prime in raw
    ]
    insert_events(engine, events)
    run_at(msettings(db_url), engine, NOW)
    assert actual_venue_metrics(engine) == expected_venue_metrics(events, set(PAST))
    # A past day gets a market row when it had a partition (here: when it had events).
    days_seen = set(PAST) & {e.day for e in events}
    assert actual_market_metrics(engine) == expected_market_metrics(events, days_seen)


class _Gateway(BaseHTTPRequestHandler):
    received: ClassVar[list[tuple[str, str]]] = []

    def do_PUT(self) -> None:
        length = int(self.headers.get("Content-Length", 0))
        self.received.append((self.path, self.rfile.read(length).decode()))
        self.send_response(202)
        self.end_headers()

    do_POST = do_PUT

    def log_message(self, *args: object) -> None:
        pass


def test_cli_prints_json_and_pushes_to_the_pushgateway(db_url: str, engine: Engine) -> None:
    with engine.connect() as conn:  # --now may not be ahead of the database clock
        now = conn.execute(text("SELECT now() - interval '1 hour'")).scalar_one()
    server = HTTPServer(("127.0.0.1", 0), _Gateway)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        result = run_job(
            db_url,
            *("cli.main", "maintenance", "run", "--now", now.isoformat()),
            DROPWATCH_PUSHGATEWAY_URL=f"http://127.0.0.1:{server.server_port}",
        )
    finally:
        server.shutdown()
        server.server_close()
    assert result.returncode == 0, result.stderr
    summary = json.loads(result.stdout.strip().splitlines()[-1])
    assert summary["ok"] and summary["ran"] and summary["steps"]["ensure_buckets"]["rows"] == 28
    path, body = _Gateway.received[-1]
    assert path == "/metrics/job/dropwatch_maintenance"
    assert "dropwatch_maintenance_last_success_timestamp_seconds" in body
    assert "dropwatch_maintenance_partitions_left_for_operator 0.0" in body
    assert 'dropwatch_maintenance_step_duration_seconds{step="aggregate"}' in body


def test_cli_fails_non_zero_when_the_database_is_unreachable() -> None:
    result = run_job("postgresql://m:secretpw@127.0.0.1:1/x", "services.maintenance", "run")
    assert result.returncode == 2
    assert json.loads(result.stdout.strip())["ok"] is False
    assert "secretpw" not in result.stdout + result.stderr


def test_party_size_events_are_counted_as_events_but_not_as_drops(
    db_url: str, engine: Engine
) -> None:
    """SIZE_OPEN / SIZE_CLOSE (a slot's party sizes changed) are not drops or closes; the day
    is still final once, with every event it held accounted for."""
    events = sample_events()
    sizes = [Ev(1, PAST[0], kind, _at(PAST[0], 14)) for kind in ("SIZE_OPEN", "SIZE_CLOSE")]
    insert_events(engine, [*events, *sizes])
    summary = run_at(msettings(db_url), engine, NOW)
    assert summary.steps["prune_events"].detail == {"partitions": 3, "reaggregated": 0}
    assert actual_venue_metrics(engine) == expected_venue_metrics(events, set(PAST))
    assert actual_market_metrics(engine) == expected_market_metrics(events, set(PAST))
    with engine.connect() as conn:
        counted = conn.execute(
            text("SELECT event_count FROM day_figures WHERE window_date = :d"), {"d": PAST[0]}
        ).scalar_one()
    assert counted == sum(e.day == PAST[0] for e in events) + 2
