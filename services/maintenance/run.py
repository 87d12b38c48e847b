"""The daily run: aggregate past events -> prune past buckets -> prune past events ->
rolling figures -> ensure the live buckets -> baseline the new day -> learn release windows.

"Past" is everything before today `cutoff_time` (15:00) in the market's zone. Events are kept
and dropped by whole reservation days (one partition each). Under the partition's SHARE lock a
day is aggregated and `day_figures` records how many events the figures count; the partition
is dropped, and the figures marked final, only in a transaction that finds them counting every
event in it (otherwise it re-aggregates first). So a crash at any point, followed by a rerun,
gives exactly the figures of a clean run, and a rerun of a finished day changes nothing.

Clocks: the real clock is the database server's `now()`, not this process's. `--now` may move
the run back (a missed day), never forward: more than `max_clock_skew_seconds` ahead is refused,
less is clamped to the database clock. So nothing live by the real clock is ever aggregated,
pruned or dropped; the live window is always the database clock's; a final day (its partition
dropped) is never recreated and its figures never replaced (docs/architecture.md, Maintenance).

Only one run works at a time: a session advisory lock; a second run says so and exits 0.
"""

from __future__ import annotations

import datetime as dt
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from sqlalchemy import Connection, Engine

from services.maintenance import store
from services.maintenance.settings import MaintenanceSettings
from shared.db.buckets import bucket_id_for, ensure_configured_buckets, market_today
from shared.db.contracts import MAINTENANCE_RUN_LOCK
from shared.db.locks import session_lock
from shared.db.partitions import drop_partition, list_partitions
from shared.errors import ConfigError

log = logging.getLogger(__name__)

STEPS = (
    "aggregate",
    "prune_buckets",
    "prune_events",
    "rolling",
    "ensure_buckets",
    "baseline",
    "release_windows",
)

# Called with a step's name after the step commits, and with "<step> <day>" inside a day's
# transaction just before it commits: tests raise there to crash the run at any point.
Checkpoint = Callable[[str], None]


@dataclass
class StepResult:
    rows: int = 0
    seconds: float = 0.0
    detail: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class Dates:
    """What the run treats as today, from `--now` bounded by the database clock."""

    database_now: dt.datetime
    requested: dt.datetime | None  # --now
    today: dt.date  # days before it are past (aggregated, dropped)
    cutoff: str  # buckets before it are past (deleted)
    live_today: dt.date  # the database clock's today: the live window starts there


@dataclass
class RunSummary:
    ran: bool
    today: dt.date
    cutoff: str
    steps: dict[str, StepResult] = field(default_factory=dict)
    message: str = ""
    dates: Dates | None = None
    skipped: dict[str, str] = field(default_factory=dict)  # what -> why

    def as_dict(self) -> dict[str, Any]:
        clock = self.dates
        return {
            "ok": True,
            "ran": self.ran,
            "today": self.today.isoformat(),
            "cutoff": self.cutoff,
            "database_now": clock.database_now.isoformat() if clock else None,
            "now": clock.requested.isoformat() if clock and clock.requested else None,
            "live_today": clock.live_today.isoformat() if clock else None,
            "message": self.message,
            "skipped": [{"what": what, "why": why} for what, why in self.skipped.items()],
            "steps": {
                name: {"rows": s.rows, "seconds": round(s.seconds, 4), **s.detail}
                for name, s in self.steps.items()
            },
        }


def run_dates(
    settings: MaintenanceSettings, database_now: dt.datetime, now: dt.datetime | None
) -> tuple[Dates, dict[str, str]]:
    """The run's dates and what `--now` made it skip; refuses a `--now` too far ahead."""
    skew = dt.timedelta(seconds=settings.max_clock_skew_seconds)
    skipped: dict[str, str] = {}
    if now is not None and now - database_now > skew:
        raise ConfigError(
            "--now",
            f"{now.isoformat()} is {now - database_now} ahead of the database clock "
            f"({database_now.isoformat()}); a run dated ahead would aggregate and drop days "
            f"that are still live, so at most {skew.total_seconds():.0f} s ahead is accepted "
            "(DROPWATCH_MAX_CLOCK_SKEW_SECONDS)",
        )
    moment = database_now if now is None else min(now, database_now)
    if now is not None and now > database_now:
        skipped["--now"] = (
            f"{(now - database_now).total_seconds():.0f} s ahead of the database clock (within "
            "the allowed skew): the run is dated by the database clock"
        )
    today = market_today(settings.zone, moment)
    live_today = market_today(settings.zone, database_now)
    if today < live_today:
        skipped["live window"] = (
            f"--now is before the database clock: buckets are ensured from {live_today} (the "
            f"database clock's today), not from {today}; days before it are not live"
        )
    cutoff = bucket_id_for(today, settings.cutoff_time)
    return Dates(database_now, now, today, cutoff, live_today), skipped


def run(
    settings: MaintenanceSettings,
    engine: Engine,
    now: dt.datetime | None = None,
    checkpoint: Checkpoint | None = None,
    *,
    clock: Callable[[], dt.datetime] | None = None,
) -> RunSummary:
    """One maintenance run as of `now` (default: the database clock; `clock` replaces the
    database clock in tests that simulate days passing)."""
    with engine.connect() as conn:
        database_now = clock() if clock is not None else store.database_now(conn)
    dates, skipped = run_dates(settings, database_now, now)
    summary = RunSummary(False, dates.today, dates.cutoff, dates=dates, skipped=skipped)
    point = checkpoint or (lambda _name: None)
    with (
        engine.connect() as lock_conn,
        session_lock(lock_conn, MAINTENANCE_RUN_LOCK, wait=False) as got,
    ):
        if not got:
            summary.message = "another maintenance run holds the lock; nothing to do"
            return summary
        summary.ran = True
        with engine.connect() as conn:
            past_days = [d for d in list_partitions(conn) if d < dates.today]
        steps: dict[str, Callable[[], StepResult]] = {
            "aggregate": lambda: _aggregate(settings, engine, past_days, point),
            "prune_buckets": lambda: _prune_buckets(engine, dates.cutoff),
            "prune_events": lambda: _prune_events(settings, engine, past_days, point, skipped),
            "rolling": lambda: _rolling(settings, engine, dates.today),
            "ensure_buckets": lambda: _ensure_buckets(settings, engine, dates.live_today),
            "baseline": lambda: _baseline(engine, dates.live_today),
            "release_windows": lambda: _release_windows(settings, engine, dates.today),
        }
        for name in STEPS:
            started = time.perf_counter()
            result = steps[name]()
            result.seconds = time.perf_counter() - started
            summary.steps[name] = result
            log.info("%s: %d rows in %.3fs", name, result.rows, result.seconds)
            point(name)
    for what, why in summary.skipped.items():
        log.warning("skipped %s: %s", what, why)
    return summary


def _why_not(state: store.DayState) -> str | None:
    """Why a day's partition must be left alone, or None."""
    if state.final_at is not None:
        if not state.events:
            return None  # an empty leftover: dropping it loses nothing
        return (
            f"its figures are final since {state.final_at.isoformat()}, yet its partition "
            f"reappeared holding {state.events} events: left for an operator, figures kept"
        )
    if state.counted is not None and state.events < state.counted:
        return (
            f"its partition holds {state.events} events but its figures count "
            f"{state.counted}: figures and partition kept for an operator"
        )
    return None


def _settle(conn: Connection, settings: MaintenanceSettings, state: store.DayState) -> int:
    """Bring a day's figures up to every event in its partition; return events counted now."""
    if state.final_at is not None or state.counted == state.events:
        return 0
    return store.aggregate_day(
        conn, state.day, market=settings.market, zone=settings.market_timezone
    )


def _aggregate(
    settings: MaintenanceSettings,
    engine: Engine,
    past_days: list[dt.date],
    point: Checkpoint,
) -> StepResult:
    events, days = 0, 0
    for day in past_days:  # one transaction per day: bounded work and lock time
        with engine.begin() as conn:
            if day not in list_partitions(conn):
                continue  # dropped meanwhile
            state = store.day_state(conn, day)
            if _why_not(state) is None and (counted := _settle(conn, settings, state)):
                events, days = events + counted, days + 1
            point(f"aggregate {day}")
    return StepResult(rows=events, detail={"days": days})


def _prune_buckets(engine: Engine, cutoff: str) -> StepResult:
    with engine.begin() as conn:
        return StepResult(rows=store.prune_buckets(conn, cutoff))


def _prune_events(
    settings: MaintenanceSettings,
    engine: Engine,
    past_days: list[dt.date],
    point: Checkpoint | None = None,
    skipped: dict[str, str] | None = None,
) -> StepResult:
    dropped, events, reaggregated = 0, 0, 0
    for day in past_days:
        with engine.begin() as conn:
            if day not in list_partitions(conn):
                continue  # an earlier, interrupted run already dropped it
            state = store.day_state(conn, day)
            why = _why_not(state)
            if why is not None:
                if skipped is not None:
                    skipped[f"day {day}"] = why
                continue
            if state.final_at is not None:  # empty, recreated before final days were kept
                store.record_change_floor(conn, day)
                drop_partition(conn, day)
                dropped += 1
                continue
            if _settle(conn, settings, state):
                reaggregated += 1  # events arrived after aggregation (or it never committed)
            store.finalize_day(conn, day, state.events)
            dropped += 1
            events += state.events
            if point is not None:
                point(f"prune_events {day}")
    return StepResult(rows=events, detail={"partitions": dropped, "reaggregated": reaggregated})


def _rolling(settings: MaintenanceSettings, engine: Engine, today: dt.date) -> StepResult:
    """After prune_events: a day it re-aggregated (late events) must count here too."""
    with engine.begin() as conn:
        return StepResult(rows=store.rolling_metrics(conn, today, settings.rolling_days))


def _ensure_buckets(
    settings: MaintenanceSettings, engine: Engine, live_today: dt.date
) -> StepResult:
    with engine.begin() as conn:
        created = ensure_configured_buckets(conn, settings, live_today)
        live = store.live_bucket_count(conn, live_today)
    return StepResult(rows=created, detail={"live": live})


def _baseline(engine: Engine, live_today: dt.date) -> StepResult:
    """New buckets start without a baseline; the poller builds it from healthy polls only."""
    with engine.connect() as conn:
        return StepResult(rows=store.buckets_awaiting_baseline(conn, live_today))


def _release_windows(settings: MaintenanceSettings, engine: Engine, today: dt.date) -> StepResult:
    """Relearn the market's release windows from the events still retained (up to `today`)."""
    with engine.begin() as conn:
        learned = store.learn_release_windows(
            conn,
            market=settings.market,
            zone=settings.market_timezone,
            today=today,
            params=settings.window_params,
        )
    return StepResult(rows=learned.windows, detail={"removed": learned.removed})
