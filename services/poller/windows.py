"""Learned release windows, as the scheduler reads them (the maintenance job learns them).

A window says: this venue releases a burst of tables `lead_days` ahead at a market-local
minute. The buckets of date `today + lead_days` whose anchors are in `time_slots` are worth
polling densely around that minute (docs/architecture.md, Release windows and the shared
budget). Every replica reads the same rows, so they agree, and a restart loses nothing.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from sqlalchemy.ext.asyncio import AsyncConnection

from services.poller import sql


@dataclass(frozen=True)
class ReleaseWindow:
    venue_id: int
    lead_days: int
    release_minute: int  # market-local minute of the day, 0..1439
    time_slots: tuple[str, ...]  # anchors ("19:00") of the buckets its slots fell into
    days_seen: int
    first_seen: dt.date
    last_seen: dt.date
    slots_per_release: float

    @property
    def local_time(self) -> dt.time:
        return dt.time(self.release_minute // 60, self.release_minute % 60)

    @classmethod
    def from_row(cls, row: Sequence[Any]) -> ReleaseWindow:
        venue, lead, minute, slots, days, first, last, per_release = row
        return cls(
            int(venue),
            int(lead),
            int(minute),
            tuple(slots),
            int(days),
            first,
            last,
            float(per_release),
        )


async def load_release_windows(conn: AsyncConnection, market: str) -> list[ReleaseWindow]:
    """The market's windows, by release minute; one read-only statement, never commits."""
    rows = await conn.execute(sql.RELEASE_WINDOWS, {"market": market})
    return [ReleaseWindow.from_row(row) for row in rows]
