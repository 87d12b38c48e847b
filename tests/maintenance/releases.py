"""NEW_DROP events shaped like releases and cancellations, for the release-window tests."""

from __future__ import annotations

import datetime as dt
import itertools
from collections.abc import Iterable
from dataclasses import dataclass
from zoneinfo import ZoneInfo

from sqlalchemy import Engine, text

from shared.db.partitions import ensure_partitions

NEW_YORK = ZoneInfo("America/New_York")
_keys = itertools.count()


@dataclass(frozen=True)
class Drop:
    venue_id: int
    opened_at: dt.datetime  # aware
    slot_date: dt.date
    time_slot: str = "19:00"
    market: str = "nyc"
    event_type: str = "NEW_DROP"


def release(
    venue_id: int,
    day: dt.date,
    at: dt.time,
    lead: int,
    *,
    slots: int = 4,
    zone: ZoneInfo = NEW_YORK,
    anchors: tuple[str, ...] = ("19:00",),
    spacing_seconds: int = 20,
) -> list[Drop]:
    """A venue's release on local `day` at local `at`: `slots` drops `lead` days ahead, a few
    seconds apart, over the anchors in turn."""
    start = dt.datetime.combine(day, at, tzinfo=zone)
    return [
        Drop(
            venue_id,
            start + dt.timedelta(seconds=spacing_seconds * i),
            day + dt.timedelta(days=lead),
            anchors[i % len(anchors)],
        )
        for i in range(slots)
    ]


def insert_drops(engine: Engine, drops: Iterable[Drop]) -> None:
    """Write the events as the poller does (one partition per reservation day)."""
    rows = list(drops)
    with engine.begin() as conn:
        ensure_partitions(conn, {d.slot_date for d in rows})
        for d in rows:
            key = next(_keys)
            conn.execute(
                text(
                    """
                    INSERT INTO drop_events (bucket_date, bucket_id, market, provider, slot_id,
                        venue_id, event_type, opened_at, slot_date, slot_time, seating_type,
                        party_sizes, time_slot, time_bucket, dedupe_key)
                    VALUES (:d, :b, :m, 'resy', :slot, :v, :t, :o, :d, '19:30',
                        'Dining Room', '{2}', :a, 'prime', :k)
                    """
                ),
                {
                    "d": d.slot_date,
                    "b": f"{d.slot_date.isoformat()}_{d.time_slot}",
                    "m": d.market,
                    "slot": f"s{key}",
                    "v": d.venue_id,
                    "t": d.event_type,
                    "o": d.opened_at,
                    "a": d.time_slot,
                    "k": f"rk{key}",
                },
            )
