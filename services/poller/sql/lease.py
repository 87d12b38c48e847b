"""Leases on `discovery_buckets`: which replica may poll a bucket now, and the check before
a write.

A lease is an owner and an expiry taken under `FOR UPDATE SKIP LOCKED`, so any number of
replicas share the buckets; `CHECK_LEASE` locks the row again in the write's transaction, where
the caller compares the snapshot version (see `write.py`).
"""

from __future__ import annotations

from sqlalchemy import text

# Besides the bucket's own bookkeeping: what each request kind (party size) reported last
# (its count in the open snapshot) and when another bucket of the market last answered healthy
# and non-empty with no kind held (the evidence that confirms a sell-out, see judge.py).
LEASE_COLUMNS = """b.bucket_id, b.bucket_date, b.time_slot, b.snapshot_version, b.baseline_polls,
    b.last_slot_count, b.suspect_polls, b.held,
    (SELECT coalesce(jsonb_object_agg(k.size, k.n), '{}'::jsonb)
     FROM (SELECT s.size, count(*) AS n
           FROM open_slots o, unnest(o.party_sizes) AS s(size)
           WHERE o.bucket_id = b.bucket_id GROUP BY s.size) k) AS kind_counts,
    (SELECT max(m.last_healthy_poll_at) FROM discovery_buckets m
     WHERE m.market = b.market AND m.bucket_id <> b.bucket_id
       AND m.held = '{}'::jsonb AND m.last_slot_count > 0) AS evidence_at,
    b.kind_baseline"""
_TAKE_LEASE = "SET lease_owner = :owner, lease_expires_at = now() + make_interval(secs => :lease)"

# Up to :limit due live buckets nobody else holds, oldest due first.
LEASE_DUE = text(
    f"""
    UPDATE discovery_buckets b
    {_TAKE_LEASE}
    FROM (
        SELECT bucket_id FROM discovery_buckets
        WHERE next_poll_at <= now()
          AND bucket_date BETWEEN :first AND :last
          AND bucket_id >= :cutoff
          AND (lease_expires_at IS NULL OR lease_expires_at < now())
          AND bucket_id <> ALL(CAST(:skip AS text[]))
        ORDER BY next_poll_at
        LIMIT :limit
        FOR UPDATE SKIP LOCKED
    ) due
    WHERE b.bucket_id = due.bucket_id
    RETURNING {LEASE_COLUMNS}
    """
)

# One named bucket regardless of its cooldown, unless another poller holds it.
LEASE_ONE = text(
    f"""
    UPDATE discovery_buckets b
    {_TAKE_LEASE}
    WHERE b.bucket_id = :bucket
      AND (b.lease_expires_at IS NULL OR b.lease_expires_at < now()
           OR b.lease_owner = :owner)
    RETURNING {LEASE_COLUMNS}
    """
)

# The chosen buckets nobody holds and nobody polled since SCHEDULE_STATE read them.
LEASE_CHOSEN = text(
    f"""
    UPDATE discovery_buckets b
    {_TAKE_LEASE}
    FROM (
        SELECT d.bucket_id FROM discovery_buckets d
        JOIN unnest(CAST(:ids AS text[]), CAST(:polled AS timestamptz[])) AS c(bucket_id, polled)
          ON c.bucket_id = d.bucket_id
        WHERE (d.lease_expires_at IS NULL OR d.lease_expires_at < now())
          AND d.last_polled_at IS NOT DISTINCT FROM c.polled
        FOR UPDATE OF d SKIP LOCKED
    ) chosen
    WHERE b.bucket_id = chosen.bucket_id
    RETURNING {LEASE_COLUMNS}
    """
)

CHECK_LEASE = text(
    "SELECT snapshot_version, lease_owner FROM discovery_buckets WHERE bucket_id = :b FOR UPDATE"
)

RELEASE_LEASE = text(
    "UPDATE discovery_buckets SET lease_owner = NULL, lease_expires_at = NULL "
    "WHERE bucket_id = :b AND lease_owner = :owner"
)
