"""The write of one poll: a healthy poll's venues, diff and events, or an unhealthy outcome.

Runs `sql/write.py`; never commits. A healthy poll is three statements whatever the number of
new or closed slots: `check_lease` (`lease.py`), `upsert_venues`, `write_healthy_poll`.
"""

from __future__ import annotations

import datetime as dt
import json
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from sqlalchemy.ext.asyncio import AsyncConnection

from services.poller import sql
from services.poller.judge import Judgement, suspect_polls
from services.poller.slots import BucketFetch
from services.poller.store.lease import BASELINE_POLLS, LeasedBucket, LeaseLostError
from shared.db.contracts import FEED_CHANNEL
from shared.shares import MINUTES_PER_DAY, Share


@dataclass(frozen=True)
class WriteResult:
    new_drops: int
    closed: int
    open_slots: int
    size_changes: int = 0


def _json(rows: Iterable[dict[str, object]]) -> str:
    """A fetch's rows as one JSON parameter, unpacked by json_to_recordset in the statement.

    Passing the thousands of values of a fetch as typed arrays made psycopg adapt each value in
    Python (~2 us each, 25-40 ms per poll of 2,000 slots); one JSON document costs a few ms.
    """
    return json.dumps(list(rows), separators=(",", ":"))


async def upsert_venues(conn: AsyncConnection, fetch: BucketFetch, provider: str) -> None:
    """Insert new venues and update changed ones, in one statement.

    Unchanged venues are filtered out before `ON CONFLICT`, which would otherwise lock every
    conflicting row until commit and make polls of different buckets (which share venues)
    queue behind each other. Rows go in venue-id order so concurrent writers lock in the same
    order and cannot deadlock.
    """
    venues = sorted(fetch.venues.values(), key=lambda v: v.venue_id)
    await conn.execute(
        sql.UPSERT_VENUES,
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
    judgement: Judgement | None = None,
    share: Share | None = None,
    fetch_seconds: float = 0.0,
) -> WriteResult:
    """Apply a fetch the judge let through: events, open state and snapshot version in one
    statement. Held kinds' sizes are taken out of the fetch: the statement keeps their
    snapshot instead (see sql.WRITE_POLL).

    Each request kind has its own baseline: until a kind has answered non-empty
    `BASELINE_POLLS` times, a slot only it reports goes into the baseline and a size it adds
    is no event (it was not observable before, e.g. blocked while the bucket baselined). An
    empty answer does not count.

    `next_poll_at - now` is the wait the caller planned: the bucket stores it from the
    database clock's `now()`, like its `last_polled_at` (see sql.WRITE_POLL), while events
    carry `now`.

    `fetch_seconds` is how long the fetch took: the bucket's `last_polled_at` is when it
    began, so the schedule's intervals run from poll start to poll start. It is capped at the
    wait (`next_poll_at - now`): a fetch that retried for longer (a 429's Retry-After) leaves
    its bucket due at once at the most, never overdue and ahead of the others.

    `share` is the bucket's share of the day (shared/shares.py; None: the whole day). The
    fetch holds only slots within it; open slots stored outside it (from before a slot had one
    bucket) leave the snapshot silently, so they are neither diffed nor closed.
    """
    share = share or Share(0, MINUTES_PER_DAY)
    judgement = judgement or Judgement(outcome, {k: "healthy" for k in fetch.kind_counts})
    held = set(judgement.held_sizes)
    slots = [
        (s, sorted(s.party_sizes - held)) for s in fetch.slots.values() if s.party_sizes - held
    ]
    ready, kind_baseline = leased.ready_kinds, dict(leased.kind_baseline)
    if not kind_baseline and not leased.baselining:  # baselined before kinds had their own
        ready = sorted(fetch.kind_counts)
        kind_baseline = dict.fromkeys(ready, BASELINE_POLLS)
    for kind in judgement.answered(fetch.kind_counts):
        kind_baseline[kind] = min(BASELINE_POLLS, kind_baseline.get(kind, 0) + 1)
    baseline_polls = leased.baseline_polls
    if leased.baselining and slots:
        baseline_polls += 1
    row = (
        await conn.execute(
            sql.WRITE_POLL,
            {
                "slots": _json(
                    {
                        "slot_id": s.slot_id,
                        "venue_id": s.venue_id,
                        "slot_date": s.start.date().isoformat(),
                        "slot_time": s.start.time().isoformat(),
                        "seating_type": s.seating_type,
                        "sizes": sizes,
                    }
                    for s, sizes in slots
                ),
                "held_sizes": sorted(held),
                "confirmed": json.dumps(
                    [{"size": k, "since": v.isoformat()} for k, v in judgement.confirmed.items()]
                ),
                "held": json.dumps(judgement.held),
                "suspect_polls": judgement.suspect_polls,
                "bucket": leased.bucket_id,
                "bucket_date": leased.bucket_date,
                "time_slot": leased.time_slot,
                "time_bucket": "prime" if prime else "off_peak",
                "market": market,
                "provider": provider,
                "now": now,
                "share_start": share.start,
                "share_end": share.end,
                "ready": ready,
                "kind_baseline": json.dumps({str(k): n for k, n in kind_baseline.items()}),
                "new_version": leased.snapshot_version + 1,
                "baseline_polls": baseline_polls,
                "outcome": outcome if ready else "baselining",
                "slot_count": len(fetch.slots),
                "next_poll_at": next_poll_at,
                "fetch_seconds": max(0.0, min(fetch_seconds, (next_poll_at - now).total_seconds())),
                "channel": FEED_CHANNEL,
            },
        )
    ).one()
    new_drops, closed, bumped, sized = int(row[0]), int(row[1]), int(row[2]), int(row[3])
    if bumped != 1:
        raise LeaseLostError(f"bucket {leased.bucket_id} vanished during the write")
    return WriteResult(new_drops, closed, open_slots=len(slots), size_changes=sized)


async def record_unhealthy(
    conn: AsyncConnection,
    leased: LeasedBucket,
    owner: str,
    *,
    outcome: str,
    held: dict[str, Any],
    now: dt.datetime,
    next_poll_at: dt.datetime,
) -> None:
    """Keep the snapshot; note the outcome and the holds (a failed fetch passes the leased
    ones unchanged, so it neither resets nor advances them), release the lease. The poll's
    time and next due time are stored by the database clock, as in `write_healthy_poll`."""
    await conn.execute(
        sql.RECORD_UNHEALTHY,
        {
            "now": now,
            "outcome": outcome,
            "held": json.dumps(held),
            "suspect_polls": suspect_polls(held),
            "next_poll_at": next_poll_at,
            "bucket": leased.bucket_id,
            "owner": owner,
            "version": leased.snapshot_version,
        },
    )
