"""The daily run: aggregate past events -> prune past buckets -> prune past events ->
ensure the live buckets -> baseline the new day.

"Past" is everything before today `cutoff_time` (15:00) in the market's zone. Events are kept
and dropped by whole reservation days (one partition each): a day is aggregated while all its
events exist, and its partition is dropped only after a check, in the dropping transaction,
that the committed figures account for every one of its events (otherwise it is re-aggregated
in that same transaction). So a crash at any step, followed by a rerun, gives exactly the
figures of a clean run, and a rerun of a finished day changes nothing.

Only one run works at a time: a session advisory lock; a second run says so and exits 0.
"""

from __future__ import annotations

import datetime as dt
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from sqlalchemy import Engine

from services.maintenance import store
from services.maintenance.settings import MaintenanceSettings
from shared.db.buckets import bucket_id_for, ensure_configured_buckets, market_today
from shared.db.contracts import MAINTENANCE_RUN_LOCK
from shared.db.locks import session_lock
from shared.db.partitions import drop_partition, list_partitions

log = logging.getLogger(__name__)

STEPS = ("aggregate", "prune_buckets", "prune_events", "ensure_buckets", "baseline")


@dataclass
class StepResult:
    rows: int = 0
    seconds: float = 0.0
    detail: dict[str, Any] = field(default_factory=dict)


@dataclass
class RunSummary:
    ran: bool
    today: dt.date
    cutoff: str
    steps: dict[str, StepResult] = field(default_factory=dict)
    message: str = ""

    def as_dict(self) -> dict[str, Any]:
        return {
            "ok": True,
            "ran": self.ran,
            "today": self.today.isoformat(),
            "cutoff": self.cutoff,
            "message": self.message,
            "steps": {
                name: {"rows": s.rows, "seconds": round(s.seconds, 4), **s.detail}
                for name, s in self.steps.items()
            },
        }


def run(
    settings: MaintenanceSettings,
    engine: Engine,
    now: dt.datetime | None = None,
    after_step: Callable[[str], None] | None = None,
) -> RunSummary:
    """One maintenance run. `after_step` is called after each committed step (tests crash there)."""
    moment = now or dt.datetime.now(dt.UTC)
    today = market_today(settings.zone, moment)
    cutoff = bucket_id_for(today, settings.cutoff_time)
    summary = RunSummary(ran=False, today=today, cutoff=cutoff)
    with (
        engine.connect() as lock_conn,
        session_lock(lock_conn, MAINTENANCE_RUN_LOCK, wait=False) as got,
    ):
        if not got:
            summary.message = "another maintenance run holds the lock; nothing to do"
            return summary
        summary.ran = True
        with engine.connect() as conn:
            past_days = [d for d in list_partitions(conn) if d < today]
        steps: dict[str, Callable[[], StepResult]] = {
            "aggregate": lambda: _aggregate(settings, engine, past_days, today),
            "prune_buckets": lambda: _prune_buckets(engine, cutoff),
            "prune_events": lambda: _prune_events(settings, engine, past_days),
            "ensure_buckets": lambda: _ensure_buckets(settings, engine, today),
            "baseline": lambda: _baseline(engine, today),
        }
        for name in STEPS:
            started = time.perf_counter()
            result = steps[name]()
            result.seconds = time.perf_counter() - started
            summary.steps[name] = result
            log.info("%s: %d rows in %.3fs", name, result.rows, result.seconds)
            if after_step is not None:
                after_step(name)
    return summary
    return summary


def _aggregate(
    settings: MaintenanceSettings, engine: Engine, past_days: list[dt.date], today: dt.date
) -> StepResult:
    events = 0
    for day in past_days:  # one transaction per day: bounded work and lock time
        with engine.begin() as conn:
            events += store.aggregate_day(
                conn, day, market=settings.market, zone=settings.market_timezone
            )
    with engine.begin() as conn:
        venues = store.rolling_metrics(conn, today, settings.rolling_days)
    return StepResult(rows=events, detail={"days": len(past_days), "rolling_venues": venues})


def _prune_buckets(engine: Engine, cutoff: str) -> StepResult:
    with engine.begin() as conn:
        return StepResult(rows=store.prune_buckets(conn, cutoff))


def _prune_events(
    settings: MaintenanceSettings, engine: Engine, past_days: list[dt.date]
) -> StepResult:
    dropped, events, reaggregated = 0, 0, 0
    for day in past_days:
        with engine.begin() as conn:
            if day not in list_partitions(conn):
                continue  # an earlier, interrupted run already dropped it
            store.lock_partition(conn, day)
            count = store.event_count(conn, day)
            if count != store.aggregated_count(conn, day):
                # Events arrived after aggregation (or it never committed): count them now.
                store.aggregate_day(
                    conn, day, market=settings.market, zone=settings.market_timezone
                )
                reaggregated += 1
            drop_partition(conn, day)
            dropped += 1
            events += count
    return StepResult(rows=events, detail={"partitions": dropped, "reaggregated": reaggregated})


def _ensure_buckets(settings: MaintenanceSettings, engine: Engine, today: dt.date) -> StepResult:
    with engine.begin() as conn:
        created = ensure_configured_buckets(conn, settings, today)
        live = store.live_bucket_count(conn, today)
    return StepResult(rows=created, detail={"live": live})


def _baseline(engine: Engine, today: dt.date) -> StepResult:
    """New buckets start without a baseline; the poller builds it from healthy polls only."""
    with engine.connect() as conn:
        return StepResult(rows=store.buckets_awaiting_baseline(conn, today))
