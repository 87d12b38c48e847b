"""The live discovery buckets: which exist, and making sure they do.

A bucket is a reservation date and an anchor time, `YYYY-MM-DD_HH:MM`. "Today" is always
computed in the market's time zone (the original computed it in UTC and was wrong for hours
every evening; docs/architecture.md, What the original system did wrong, 5). Both the poller
(at start-up and every tick) and the daily maintenance run call `ensure_live_buckets`, so a
fresh database works without waiting for the daily job.
"""

from __future__ import annotations

import datetime as dt
from zoneinfo import ZoneInfo

from sqlalchemy import Connection

from shared.db import sql
from shared.db.partitions import ensure_partitions
from shared.settings import Settings


def bucket_id_for(day: dt.date, anchor: str) -> str:
    return f"{day.isoformat()}_{anchor}"


def market_today(zone: ZoneInfo, now: dt.datetime | None = None) -> dt.date:
    """Today's date in the market's zone (`now` must be timezone-aware)."""
    moment = now if now is not None else dt.datetime.now(dt.UTC)
    return moment.astimezone(zone).date()


def live_days(today: dt.date, window_days: int) -> list[dt.date]:
    return [today + dt.timedelta(days=offset) for offset in range(window_days)]


def ensure_live_buckets(
    conn: Connection,
    *,
    market: str,
    today: dt.date,
    window_days: int,
    anchors: tuple[str, ...],
    cutoff_time: str = "00:00",
) -> int:
    """Create the missing live buckets (and their event partitions); return how many.

    Today's buckets whose anchor is before `cutoff_time` are already past and not created.
    """
    days = live_days(today, window_days)
    ensure_partitions(conn, days)
    cutoff = bucket_id_for(today, cutoff_time)
    wanted = [(day, a) for day in days for a in anchors if bucket_id_for(day, a) >= cutoff]
    ids = [bucket_id_for(day, anchor) for day, anchor in wanted]
    dates = [day for day, _ in wanted]
    slots = [anchor for _, anchor in wanted]
    result = conn.execute(
        sql.ENSURE_BUCKETS, {"market": market, "ids": ids, "dates": dates, "slots": slots}
    )
    return int(result.rowcount)


def ensure_configured_buckets(conn: Connection, settings: Settings, today: dt.date) -> int:
    """`ensure_live_buckets` for the market, window, anchors and cutoff of `settings`."""
    return ensure_live_buckets(
        conn,
        market=settings.market,
        today=today,
        window_days=settings.window_days,
        anchors=settings.anchors,
        cutoff_time=settings.cutoff_time,
    )
