"""Write drops exactly as the poller does: through the poller's own store functions.

Tests of the feed (and anything else that reads what the poller writes) use this, so they read
rows that real polls produce, not hand-made ones.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterable
from dataclasses import dataclass

from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine

from services.poller import store
from services.poller.slots import BucketFetch, Slot, VenueInfo
from shared.db.buckets import ensure_live_buckets
from shared.slots import slot_id_for

OWNER = "seeder"
EVERY_KIND_BASELINED = (
    "UPDATE discovery_buckets SET baseline_polls = 3, kind_baseline ="
    " (SELECT jsonb_object_agg(size::text, 3) FROM generate_series(1, 20) AS size)"
)


@dataclass(frozen=True)
class SeedSlot:
    venue_id: int
    day: dt.date
    start: str  # "HH:MM"
    party_sizes: tuple[int, ...] = (2, 4)
    seating: str = "Dining Room"

    @property
    def slot_id(self) -> str:
        start = dt.datetime.combine(self.day, dt.time.fromisoformat(self.start))
        return slot_id_for("resy", self.venue_id, start, self.seating)


class Seeder:
    """Drives buckets through polls: `open_slots(...)` at a time makes them NEW_DROPs."""

    def __init__(
        self, engine: AsyncEngine, today: dt.date, anchors: tuple[str, ...] = ("15:00", "19:00")
    ) -> None:
        self.engine = engine
        self.today = today
        self.anchors = anchors
        self.state: dict[str, dict[str, SeedSlot]] = {}

    async def setup(self, window_days: int = 3) -> None:
        async with self.engine.begin() as conn:
            await conn.run_sync(
                lambda c: ensure_live_buckets(
                    c,
                    market="nyc",
                    today=self.today,
                    window_days=window_days,
                    anchors=self.anchors,
                )
            )
            # Buckets start with an empty baseline, for every request kind (party size): everything
            # seeded is a drop, also a size a bucket's first poll did not report.
            await conn.execute(text(EVERY_KIND_BASELINED))

    def bucket_of(self, slot: SeedSlot) -> str:
        hour = int(slot.start[:2])
        anchor = min(self.anchors, key=lambda a: abs(int(a[:2]) - hour))
        return f"{slot.day.isoformat()}_{anchor}"

    async def open(self, slots: Iterable[SeedSlot], at: dt.datetime) -> None:
        await self._apply(slots, at, opening=True)

    async def close(self, slots: Iterable[SeedSlot], at: dt.datetime) -> None:
        await self._apply(slots, at, opening=False)

    async def _apply(self, slots: Iterable[SeedSlot], at: dt.datetime, opening: bool) -> None:
        touched: set[str] = set()
        for slot in slots:
            bucket = self.bucket_of(slot)
            current = self.state.setdefault(bucket, {})
            if opening:
                current[slot.slot_id] = slot
            else:
                current.pop(slot.slot_id, None)
            touched.add(bucket)
        for bucket in sorted(touched):
            await self._poll(bucket, at)

    async def _poll(self, bucket: str, at: dt.datetime) -> None:
        fetch = BucketFetch()
        for slot in self.state.get(bucket, {}).values():
            start = dt.datetime.combine(slot.day, dt.time.fromisoformat(slot.start))
            fetch.venues[slot.venue_id] = VenueInfo(
                slot.venue_id,
                f"Venue {slot.venue_id}",
                "West Village",
                3,
                f"venue-{slot.venue_id}",
                "ny",
            )
            for size in slot.party_sizes:
                fetch.add(Slot(slot.slot_id, slot.venue_id, start, slot.seating), size)
        async with self.engine.begin() as conn:
            leased = await store.lease_one(conn, owner=OWNER, bucket_id=bucket, lease_seconds=60)
        assert leased is not None, bucket
        async with self.engine.begin() as conn:
            await store.check_lease(conn, leased, OWNER)
            await store.upsert_venues(conn, fetch, "resy")
            await store.write_healthy_poll(
                conn,
                leased,
                fetch,
                market="nyc",
                provider="resy",
                prime=bucket.endswith("19:00"),
                outcome="healthy",
                now=at,
                next_poll_at=at,
            )
