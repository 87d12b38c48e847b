"""The poller's database layer: leases, and the one-transaction write of a poll.

Functions here never commit; `services.poller.poll` owns the transaction. The write of a
healthy poll is a constant number of statements whatever the number of new or closed slots
(the review's P1): a version check, a venue upsert, and one statement whose data-modifying
CTEs delete vanished slots, insert their CLOSED events, insert NEW_DROP events for new slots,
record the new open state and bump the bucket's snapshot version.
"""

from __future__ import annotations

import datetime as dt
import json
from collections.abc import Iterable
from dataclasses import dataclass

from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncConnection

from services.poller.slots import BucketFetch

FEED_CHANNEL = "dropwatch_feed"
BASELINE_POLLS = 3


@dataclass(frozen=True)
class LeasedBucket:
    bucket_id: str
    bucket_date: dt.date
    time_slot: str
    snapshot_version: int
    baseline_polls: int
    last_slot_count: int | None
    suspect_polls: int

    @property
    def baselining(self) -> bool:
        return self.baseline_polls < BASELINE_POLLS


@dataclass(frozen=True)
class WriteResult:
    new_drops: int
    closed: int
    open_slots: int


class LeaseLostError(Exception):
    """Another writer changed the bucket since we leased it; our poll must not be applied."""


def _json(rows: Iterable[dict[str, object]]) -> str:
    """A fetch's rows as one JSON parameter, unpacked by json_to_recordset in the statement.

    Passing the thousands of values of a fetch as typed arrays made psycopg adapt each value in
    Python (~2 us each, 25-40 ms per poll of 2,000 slots); one JSON document costs a few ms.
    """
    return json.dumps(list(rows), separators=(",", ":"))


_LEASE_COLUMNS = (
    "b.bucket_id, b.bucket_date, b.time_slot, b.snapshot_version, b.baseline_polls, "
    "b.last_slot_count, b.suspect_polls"
)


async def lease_due(
    conn: AsyncConnection,
    *,
    owner: str,
    limit: int,
    lease_seconds: float,
    first_day: dt.date,
    last_day: dt.date,
    cutoff_bucket_id: str = "",
) -> list[LeasedBucket]:
    """Lease up to `limit` due live buckets nobody else holds (oldest due first)."""
    rows = await conn.execute(
        text(
            f"""
            UPDATE discovery_buckets b
            SET lease_owner = :owner,
                lease_expires_at = now() + make_interval(secs => :lease)
            FROM (
                SELECT bucket_id FROM discovery_buckets
                WHERE next_poll_at <= now()
                  AND bucket_date BETWEEN :first AND :last
                  AND bucket_id >= :cutoff
                  AND (lease_expires_at IS NULL OR lease_expires_at < now())
                ORDER BY next_poll_at
                LIMIT :limit
                FOR UPDATE SKIP LOCKED
            ) due
            WHERE b.bucket_id = due.bucket_id
            RETURNING {_LEASE_COLUMNS}
            """
        ),
        {
            "owner": owner,
            "lease": lease_seconds,
            "first": first_day,
            "last": last_day,
            "limit": limit,
            "cutoff": cutoff_bucket_id,
        },
    )
    return [LeasedBucket(*row) for row in rows.all()]


async def lease_one(
    conn: AsyncConnection, *, owner: str, bucket_id: str, lease_seconds: float
) -> LeasedBucket | None:
    """Lease one named bucket regardless of its cooldown (unless another poller holds it)."""
    rows = await conn.execute(
        text(
            f"""
            UPDATE discovery_buckets b
            SET lease_owner = :owner,
                lease_expires_at = now() + make_interval(secs => :lease)
            WHERE b.bucket_id = :bucket
              AND (b.lease_expires_at IS NULL OR b.lease_expires_at < now()
                   OR b.lease_owner = :owner)
            RETURNING {_LEASE_COLUMNS}
            """
        ),
        {"owner": owner, "lease": lease_seconds, "bucket": bucket_id},
    )
    row = rows.first()
    return LeasedBucket(*row) if row else None


async def check_lease(conn: AsyncConnection, leased: LeasedBucket, owner: str) -> None:
    """Lock the bucket row and verify nobody wrote it since we leased it."""
    row = (
        await conn.execute(
            text(
                "SELECT snapshot_version, lease_owner FROM discovery_buckets "
                "WHERE bucket_id = :b FOR UPDATE"
            ),
            {"b": leased.bucket_id},
        )
    ).first()
    if row is None:
        raise LeaseLostError(f"bucket {leased.bucket_id} no longer exists")
    version, holder = row
    if version != leased.snapshot_version or holder != owner:
        raise LeaseLostError(
            f"bucket {leased.bucket_id}: version {version} held by {holder!r}, "
            f"expected {leased.snapshot_version} held by us"
        )


async def upsert_venues(conn: AsyncConnection, fetch: BucketFetch, provider: str) -> None:
    """Insert new venues and update changed ones, in one statement.

    Unchanged venues are filtered out before `ON CONFLICT`, which would otherwise lock every
    conflicting row until commit and make polls of different buckets (which share venues)
    queue behind each other. Rows go in venue-id order so concurrent writers lock in the same
    order and cannot deadlock.
    """
    venues = sorted(fetch.venues.values(), key=lambda v: v.venue_id)
    await conn.execute(
        text(
            """
            INSERT INTO venues AS v (venue_id, provider, name, neighborhood, price_range,
                                     url_slug, location_code)
            SELECT n.venue_id, :provider, n.name, n.neighborhood, n.price_range, n.url_slug,
                   n.location_code
            FROM json_to_recordset(CAST(:venues AS json))
                 AS n(venue_id bigint, name text, neighborhood text, price_range smallint,
                      url_slug text, location_code text)
            WHERE NOT EXISTS (
                SELECT 1 FROM venues o
                WHERE o.venue_id = n.venue_id
                  AND (o.name, o.neighborhood, o.price_range, o.url_slug, o.location_code)
                      IS NOT DISTINCT FROM
                      (n.name, n.neighborhood, n.price_range, n.url_slug, n.location_code)
            )
            ORDER BY n.venue_id
            ON CONFLICT (venue_id) DO UPDATE
            SET name = excluded.name, neighborhood = excluded.neighborhood,
                price_range = excluded.price_range, url_slug = excluded.url_slug,
                location_code = excluded.location_code, updated_at = now()
            WHERE (v.name, v.neighborhood, v.price_range, v.url_slug, v.location_code)
                  IS DISTINCT FROM (excluded.name, excluded.neighborhood, excluded.price_range,
                                    excluded.url_slug, excluded.location_code)
            """
        ),
        {
            "provider": provider,
            "venues": _json(
                {
                    "venue_id": v.venue_id,
                    "name": v.name,
                    "neighborhood": v.neighborhood,
                    "price_range": v.price_range,
                    "url_slug": v.url_slug,
                    "location_code": v.location_code,
                }
                for v in venues
            ),
        },
    )


_WRITE_POLL = text(
    """
    WITH cur AS (
        SELECT * FROM json_to_recordset(CAST(:slots AS json))
               AS c(slot_id text, venue_id bigint, slot_date date, slot_time time,
                    seating_type text, sizes smallint[])
    ),
    gone AS (
        DELETE FROM open_slots o
        WHERE o.bucket_id = :bucket
          AND NOT EXISTS (SELECT 1 FROM cur WHERE cur.slot_id = o.slot_id)
        RETURNING o.*
    ),
    closed AS (
        INSERT INTO drop_events (bucket_date, bucket_id, market, provider, slot_id, venue_id,
            event_type, opened_at, closed_at, drop_duration_seconds, slot_date, slot_time,
            seating_type, party_sizes, time_slot, time_bucket, dedupe_key, drop_event_id)
        SELECT :bucket_date, :bucket, :market, :provider, g.slot_id, g.venue_id,
            'CLOSED', g.opened_at, :now, extract(epoch FROM (:now - g.opened_at)),
            g.slot_date, g.slot_time, g.seating_type, g.party_sizes, g.time_slot,
            :time_bucket, 'CLOSED:' || g.drop_event_id, g.drop_event_id
        FROM gone g
        WHERE g.drop_event_id IS NOT NULL
        ON CONFLICT (bucket_date, dedupe_key) DO NOTHING
        RETURNING id
    ),
    fresh AS (
        SELECT cur.* FROM cur
        WHERE NOT EXISTS (
            SELECT 1 FROM open_slots o WHERE o.bucket_id = :bucket AND o.slot_id = cur.slot_id
        )
    ),
    drops AS (
        INSERT INTO drop_events (bucket_date, bucket_id, market, provider, slot_id, venue_id,
            event_type, opened_at, slot_date, slot_time, seating_type, party_sizes,
            time_slot, time_bucket, dedupe_key)
        SELECT :bucket_date, :bucket, :market, :provider, f.slot_id, f.venue_id,
            'NEW_DROP', :now, f.slot_date, f.slot_time, f.seating_type,
            f.sizes, :time_slot, :time_bucket,
            'NEW_DROP:' || :bucket || ':' || f.slot_id || ':' || :new_version
        FROM fresh f
        WHERE :emit
          AND NOT EXISTS (
            SELECT 1 FROM baseline_slots bs
            WHERE bs.bucket_id = :bucket AND bs.slot_id = f.slot_id
          )
        ON CONFLICT (bucket_date, dedupe_key) DO NOTHING
        RETURNING id, slot_id, opened_at
    ),
    opened AS (
        INSERT INTO open_slots (bucket_id, slot_id, venue_id, slot_date, slot_time,
            seating_type, party_sizes, time_slot, first_seen_at, drop_event_id, opened_at)
        SELECT :bucket, f.slot_id, f.venue_id, f.slot_date, f.slot_time, f.seating_type,
            f.sizes, :time_slot, :now, d.id, d.opened_at
        FROM fresh f LEFT JOIN drops d ON d.slot_id = f.slot_id
        RETURNING 1
    ),
    resized AS (
        UPDATE open_slots o SET party_sizes = cur.sizes
        FROM cur
        WHERE o.bucket_id = :bucket AND o.slot_id = cur.slot_id
          AND o.party_sizes <> cur.sizes
        RETURNING 1
    ),
    baseline AS (
        INSERT INTO baseline_slots (bucket_id, slot_id)
        SELECT :bucket, cur.slot_id FROM cur WHERE NOT :emit
        ON CONFLICT DO NOTHING
        RETURNING 1
    ),
    bumped AS (
        UPDATE discovery_buckets
        SET snapshot_version = :new_version,
            baseline_polls = :baseline_polls,
            last_polled_at = :now,
            last_healthy_poll_at = :now,
            last_outcome = :outcome,
            last_slot_count = :slot_count,
            suspect_polls = 0,
            next_poll_at = :next_poll_at,
            lease_owner = NULL,
            lease_expires_at = NULL
        WHERE bucket_id = :bucket
        RETURNING 1
    )
    SELECT (SELECT count(*) FROM drops), (SELECT count(*) FROM closed),
           (SELECT count(*) FROM bumped),
           CASE WHEN EXISTS (SELECT 1 FROM drops) OR EXISTS (SELECT 1 FROM closed)
                THEN pg_notify(:channel, :bucket) END
    """
)


async def write_healthy_poll(
    conn: AsyncConnection,
    leased: LeasedBucket,
    fetch: BucketFetch,
    *,
    market: str,
    provider: str,
    prime: bool,
    outcome: str,
    now: dt.datetime,
    next_poll_at: dt.datetime,
) -> WriteResult:
    """Apply a healthy fetch: events, open state and snapshot version in one statement.

    While the bucket is baselining (fewer than `BASELINE_POLLS` healthy non-empty polls), its
    slots go into the baseline and no events are emitted. An empty fetch does not count
    towards the baseline.
    """
    slots = list(fetch.slots.values())
    emit = not leased.baselining
    baseline_polls = leased.baseline_polls
    if not emit and slots:
        baseline_polls += 1
    row = (
        await conn.execute(
            _WRITE_POLL,
            {
                "slots": _json(
                    {
                        "slot_id": s.slot_id,
                        "venue_id": s.venue_id,
                        "slot_date": s.start.date().isoformat(),
                        "slot_time": s.start.time().isoformat(),
                        "seating_type": s.seating_type,
                        "sizes": sorted(s.party_sizes),
                    }
                    for s in slots
                ),
                "bucket": leased.bucket_id,
                "bucket_date": leased.bucket_date,
                "time_slot": leased.time_slot,
                "time_bucket": "prime" if prime else "off_peak",
                "market": market,
                "provider": provider,
                "now": now,
                "emit": emit,
                "new_version": leased.snapshot_version + 1,
                "baseline_polls": baseline_polls,
                "outcome": outcome if emit else "baselining",
                "slot_count": len(slots),
                "next_poll_at": next_poll_at,
                "channel": FEED_CHANNEL,
            },
        )
    ).one()
    new_drops, closed, bumped = int(row[0]), int(row[1]), int(row[2])
    if bumped != 1:
        raise LeaseLostError(f"bucket {leased.bucket_id} vanished during the write")
    return WriteResult(new_drops=new_drops, closed=closed, open_slots=len(slots))


async def record_unhealthy(
    conn: AsyncConnection,
    leased: LeasedBucket,
    owner: str,
    *,
    outcome: str,
    suspect: bool,
    now: dt.datetime,
    next_poll_at: dt.datetime,
) -> None:
    """Keep the snapshot; note the outcome, count a suspect poll, release the lease."""
    await conn.execute(
        text(
            """
            UPDATE discovery_buckets
            SET last_polled_at = :now, last_outcome = :outcome,
                suspect_polls = CASE WHEN :suspect THEN suspect_polls + 1 ELSE suspect_polls END,
                next_poll_at = :next_poll_at, lease_owner = NULL, lease_expires_at = NULL
            WHERE bucket_id = :bucket AND lease_owner = :owner
              AND snapshot_version = :version
            """
        ),
        {
            "now": now,
            "outcome": outcome,
            "suspect": suspect,
            "next_poll_at": next_poll_at,
            "bucket": leased.bucket_id,
            "owner": owner,
            "version": leased.snapshot_version,
        },
    )


async def release_lease(conn: AsyncConnection, bucket_id: str, owner: str) -> None:
    await conn.execute(
        text(
            "UPDATE discovery_buckets SET lease_owner = NULL, lease_expires_at = NULL "
            "WHERE bucket_id = :b AND lease_owner = :owner"
        ),
        {"b": bucket_id, "owner": owner},
    )
