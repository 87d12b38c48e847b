"""Leases: take a bucket for a poll, check it is still ours before the write, give it back.

Runs `sql/lease.py`; never commits (the scheduler and `poll.py` own the transactions).
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Collection, Sequence
from dataclasses import dataclass, field
from typing import Any

from sqlalchemy.ext.asyncio import AsyncConnection

from services.poller import sql

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


class LeaseLostError(Exception):
    """Another writer changed the bucket since we leased it; our poll must not be applied."""


async def lease_due(
    conn: AsyncConnection,
    *,
    owner: str,
    limit: int,
    lease_seconds: float,
    first_day: dt.date,
    last_day: dt.date,
    cutoff_bucket_id: str = "",
    skip: Collection[str] = (),
) -> list[LeasedBucket]:
    """Lease up to `limit` due live buckets nobody else holds (oldest due first), none of
    `skip` (`poll --once`: the buckets this pass has polled)."""
    rows = await conn.execute(
        sql.LEASE_DUE,
        {
            "owner": owner,
            "lease": lease_seconds,
            "first": first_day,
            "last": last_day,
            "limit": limit,
            "cutoff": cutoff_bucket_id,
            "skip": sorted(skip),
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


async def release_lease(conn: AsyncConnection, bucket_id: str, owner: str) -> None:
    await conn.execute(
        sql.RELEASE_LEASE,
        {"b": bucket_id, "owner": owner},
    )
