"""The poller's database layer: runs the statements of `sql.py` and shapes their rows.

Functions here never commit; `services.poller.poll` and the scheduler own the transactions.
A healthy poll is three statements whatever the number of new or closed slots:
`check_lease`, `upsert_venues`, `write_healthy_poll`.
"""

from __future__ import annotations

import datetime as dt
import json
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

from sqlalchemy.ext.asyncio import AsyncConnection

from services.poller import sql
from services.poller.judge import Judgement, suspect_polls
from services.poller.slots import BucketFetch
from shared.db.contracts import FEED_CHANNEL
from shared.shares import MINUTES_PER_DAY, Share

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
    # Held request kinds (see judge.py), each kind's count in the snapshot, and the market's
    # latest clean non-empty answer elsewhere (sell-out evidence).
    held: dict[str, Any] = field(default_factory=dict)
    kind_counts: dict[int, int] = field(default_factory=dict)
    evidence_at: dt.datetime | None = None
    kind_baseline: dict[int, int] = field(default_factory=dict)

    @classmethod
    def from_row(cls, row: Sequence[Any]) -> LeasedBucket:
        bucket_id, day, time_slot, version, baseline, last_count, suspects = row[:7]
        held, counts, evidence_at, kind_baseline = row[7:]
        return cls(
            bucket_id,
            day,
            time_slot,
            version,
            baseline,
            last_count,
            suspects,
            held=dict(held or {}),
            kind_counts={int(k): int(v) for k, v in (counts or {}).items()},
            evidence_at=evidence_at,
            kind_baseline={int(k): int(v) for k, v in (kind_baseline or {}).items()},
        )

    @property
    def baselining(self) -> bool:
        return self.baseline_polls < BASELINE_POLLS

    @property
    def ready_kinds(self) -> list[int]:
        """Kinds with their own baseline: what they report now is news (a drop, a size)."""
        return sorted(k for k, n in self.kind_baseline.items() if n >= BASELINE_POLLS)


@dataclass(frozen=True)
class WriteResult:
    new_drops: int
    closed: int
    open_slots: int
    size_changes: int = 0


class LeaseLostError(Exception):
    """Another writer changed the bucket since we leased it; our poll must not be applied."""


def _json(rows: Iterable[dict[str, object]]) -> str:
    """A fetch's rows as one JSON parameter, unpacked by json_to_recordset in the statement.

    Passing the thousands of values of a fetch as typed arrays made psycopg adapt each value in
    Python (~2 us each, 25-40 ms per poll of 2,000 slots); one JSON document costs a few ms.
    """
    return json.dumps(list(rows), separators=(",", ":"))


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
        sql.LEASE_DUE,
        {
            "owner": owner,
            "lease": lease_seconds,
            "first": first_day,
            "last": last_day,
            "limit": limit,
            "cutoff": cutoff_bucket_id,
        },
    )
    return [LeasedBucket.from_row(row) for row in rows.all()]


async def lease_one(
    conn: AsyncConnection, *, owner: str, bucket_id: str, lease_seconds: float
) -> LeasedBucket | None:
    """Lease one named bucket regardless of its cooldown (unless another poller holds it)."""
    rows = await conn.execute(
        sql.LEASE_ONE,
        {"owner": owner, "lease": lease_seconds, "bucket": bucket_id},
    )
    row = rows.first()
    return LeasedBucket.from_row(row) if row else None


async def check_lease(conn: AsyncConnection, leased: LeasedBucket, owner: str) -> None:
    """Lock the bucket row and verify nobody wrote it since we leased it."""
    row = (
        await conn.execute(
            sql.CHECK_LEASE,
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
) -> WriteResult:
    """Apply a fetch the judge let through: events, open state and snapshot version in one
    statement. Held kinds' sizes are taken out of the fetch: the statement keeps their
    snapshot instead (see sql.WRITE_POLL).

    Each request kind has its own baseline: until a kind has answered non-empty
    `BASELINE_POLLS` times, a slot only it reports goes into the baseline and a size it adds
    is no event (it was not observable before, e.g. blocked while the bucket baselined). An
    empty answer does not count.

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
    ones unchanged, so it neither resets nor advances them), release the lease."""
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


async def release_lease(conn: AsyncConnection, bucket_id: str, owner: str) -> None:
    await conn.execute(
        sql.RELEASE_LEASE,
        {"b": bucket_id, "owner": owner},
    )


# --- helper C: change-rate-aware scheduling (services/poller/adaptive.py) ---------------------
@dataclass(frozen=True)
class ScheduleRow:
    """A live bucket as the scheduling policy sees it (sql.SCHEDULE_STATE)."""

    bucket_id: str
    bucket_date: dt.date
    time_slot: str
    last_polled_at: dt.datetime | None
    watched_seconds: float
    fresh: bool
    leased: bool


@dataclass(frozen=True)
class ChangeRates:
    decayed: dict[str, float]  # bucket_id -> sum(exp(-age / tau)) of recent changes
    floor_id: int  # the next refresh reads events above this id only


async def read_schedule_state(
    conn: AsyncConnection, *, first_day: dt.date, last_day: dt.date, cutoff_bucket_id: str
) -> list[ScheduleRow]:
    """Every live bucket's last poll, lease and baseline state, in one statement."""
    rows = await conn.execute(
        sql.SCHEDULE_STATE,
        {
            "first": first_day,
            "last": last_day,
            "cutoff": cutoff_bucket_id,
            "baseline": BASELINE_POLLS,
        },
    )
    return [
        ScheduleRow(b, day, anchor, polled, float(watched), fresh, leased)
        for b, day, anchor, polled, watched, fresh, leased in rows.all()
    ]


async def lease_chosen(
    conn: AsyncConnection,
    *,
    owner: str,
    lease_seconds: float,
    chosen: Sequence[tuple[str, dt.datetime | None]],
) -> list[LeasedBucket]:
    """Lease the chosen buckets, each only if nobody holds it and its last poll is still the
    one the plan saw (another replica polled it meanwhile: skipped)."""
    if not chosen:
        return []
    rows = await conn.execute(
        sql.LEASE_CHOSEN,
        {
            "owner": owner,
            "lease": lease_seconds,
            "ids": [bucket_id for bucket_id, _ in chosen],
            "polled": [polled for _, polled in chosen],
        },
    )
    return [LeasedBucket.from_row(row) for row in rows.all()]


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


# --- end of helper C's section ----------------------------------------------------------------
