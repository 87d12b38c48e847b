"""What the change-rate-aware schedule reads (services/poller/adaptive.py).

Runs `sql/schedule.py`, one statement per function; never commits. The lease of the chosen
buckets is `lease.lease_chosen`.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass

from sqlalchemy.ext.asyncio import AsyncConnection

from services.poller import sql
from services.poller.store.lease import BASELINE_POLLS


@dataclass(frozen=True)
class ScheduleRow:
    """A live bucket as the scheduling policy sees it (sql.SCHEDULE_STATE)."""

    bucket_id: str
    bucket_date: dt.date
    time_slot: str
    last_polled_at: dt.datetime | None  # as stored (the lease checks it is unchanged)
    last_poll: dt.datetime | None  # the same moment on the reader's clock (plan with this)
    watched_seconds: float
    fresh: bool
    leased: bool


@dataclass(frozen=True)
class ChangeRates:
    decayed: dict[str, float]  # bucket_id -> sum(exp(-age / tau)) of recent changes
    floor_id: int  # the next refresh reads events above this id only


async def read_schedule_state(
    conn: AsyncConnection,
    *,
    first_day: dt.date,
    last_day: dt.date,
    cutoff_bucket_id: str,
    now: dt.datetime,
) -> list[ScheduleRow]:
    """Every live bucket's last poll, lease and baseline state, in one statement. `now` is
    the caller's clock as it reads: each `last_poll` is put on it by its age on the database
    clock, so due-ness does not depend on how far the replicas' clocks are apart."""
    rows = await conn.execute(
        sql.SCHEDULE_STATE,
        {
            "first": first_day,
            "last": last_day,
            "cutoff": cutoff_bucket_id,
            "baseline": BASELINE_POLLS,
            "now": now,
        },
    )
    return [
        ScheduleRow(b, day, anchor, polled, last_poll, float(watched), fresh, leased)
        for b, day, anchor, polled, last_poll, watched, fresh, leased in rows.all()
    ]


async def read_change_rates(
    conn: AsyncConnection,
    *,
    first_day: dt.date,
    last_day: dt.date,
    cutoff_bucket_id: str,
    floor_id: int,
    tau: float,
    horizon_seconds: float,
) -> ChangeRates:
    """Decayed change counts of the live buckets, in one statement."""
    rows = (
        await conn.execute(
            sql.CHANGE_RATES,
            {
                "first": first_day,
                "last": last_day,
                "cutoff": cutoff_bucket_id,
                "floor": floor_id,
                "tau": tau,
                "horizon": horizon_seconds,
            },
        )
    ).all()
    decayed, firsts, lasts = {}, [], []
    for bucket_id, weight, first_counted, last_id in rows:
        decayed[bucket_id] = float(weight)
        if first_counted is not None:
            firsts.append(int(first_counted))
        if last_id is not None:
            lasts.append(int(last_id))
    floor = min(firsts) - 1 if firsts else max(lasts, default=floor_id)
    return ChangeRates(decayed, max(floor, floor_id))


async def read_extra_pages(
    conn: AsyncConnection,
    *,
    first_day: dt.date,
    last_day: dt.date,
    cutoff_bucket_id: str,
    per_page: int,
) -> dict[str, int]:
    """Requests a poll of each live bucket needs beyond one per party size (more pages)."""
    rows = await conn.execute(
        sql.BUCKET_PAGES,
        {"first": first_day, "last": last_day, "cutoff": cutoff_bucket_id, "per_page": per_page},
    )
    return {bucket_id: int(extra) for bucket_id, extra in rows.all()}


async def read_hour_profile(
    conn: AsyncConnection, *, market: str, zone: str, days: int, since_day: dt.date
) -> tuple[dict[int, int], int]:
    """Changes per market-local hour over the last `days` days, and the days seen."""
    rows = (
        await conn.execute(
            sql.HOUR_PROFILE,
            {"market": market, "zone": zone, "days": days, "since_day": since_day},
        )
    ).all()
    counts = {int(hour): int(n) for hour, n, _ in rows}
    return counts, max((int(d) for _, _, d in rows), default=0)
