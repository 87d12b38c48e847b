"""What the change-rate-aware schedule knows, read set-based (services/poller/adaptive.py).

A constant number of statements per tick: SCHEDULE_STATE reads the live buckets, LEASE_CHOSEN
(`lease.py`) leases the ones the policy chose; CHANGE_RATES (every few seconds), BUCKET_PAGES
and HOUR_PROFILE (every few minutes) are what the policy knows, computed here so every replica
shares it.
"""

from __future__ import annotations

from sqlalchemy import text

_LIVE = "bucket_date BETWEEN :first AND :last AND bucket_id >= :cutoff"

# `watched_seconds` by the database clock, which wrote `created_at`. `fresh`: never polled,
# or still baselining with slots to baseline (a bucket that answers empty never baselines; it
# is not fresh forever). `last_poll` is the last poll on the caller's clock (:now): its age by
# the database clock, which wrote `last_polled_at`, taken from :now, so a replica whose clock
# is off still sees each bucket's age as every other replica does.
SCHEDULE_STATE = text(
    f"""
    SELECT bucket_id, bucket_date, time_slot, last_polled_at,
           CAST(:now AS timestamptz) - (now() - last_polled_at) AS last_poll,
           greatest(0, extract(epoch FROM now() - created_at)) AS watched_seconds,
           last_polled_at IS NULL OR (baseline_polls < :baseline AND last_slot_count > 0)
               AS fresh,
           coalesce(lease_expires_at >= now(), false) AS leased
    FROM discovery_buckets
    WHERE {_LIVE}
    ORDER BY bucket_id
    """
)

# Per live bucket: sum(exp(-age / tau)) over its NEW_DROP and CLOSED events younger than
# :horizon (by the database clock, which wrote created_at). `id > :floor` lets each day
# partition's primary-key index skip events already too old at the previous refresh (ids
# grow with time; the caller moves the floor to just below the oldest event still counted):
# ~2 ms over 14 partitions of 12,000 events each, where a scan of them took ~100 ms.
CHANGE_RATES = text(
    f"""
    WITH live AS (
        SELECT bucket_id FROM discovery_buckets WHERE {_LIVE}
    ),
    recent AS (
        SELECT e.bucket_id, e.id, e.created_at,
               e.created_at > now() - make_interval(secs => :horizon) AS counted
        FROM drop_events e
        WHERE e.bucket_date BETWEEN :first AND :last AND e.id > :floor
          AND e.event_type IN ('NEW_DROP', 'CLOSED')
    ),
    events AS (
        SELECT bucket_id,
               sum(exp(-greatest(0, extract(epoch FROM now() - created_at)) / :tau))
                   FILTER (WHERE counted) AS decayed,
               min(id) FILTER (WHERE counted) AS first_counted,
               max(id) AS last_id
        FROM recent GROUP BY bucket_id
    )
    SELECT coalesce(l.bucket_id, e.bucket_id), coalesce(e.decayed, 0), e.first_counted,
           e.last_id
    FROM live l
    FULL JOIN events e ON e.bucket_id = l.bucket_id
    """
)

# Per live bucket with open slots: the pages beyond the first that a poll needs, summed over
# party sizes (a page holds :per_page venues). Reads the live buckets' open slots, so it runs
# rarely (a bucket's venue count moves slowly).
BUCKET_PAGES = text(
    """
    WITH kinds AS (
        SELECT bucket_id, size, count(*) AS venues
        FROM (
            SELECT DISTINCT o.bucket_id, s.size, o.venue_id
            FROM open_slots o
            JOIN discovery_buckets b ON b.bucket_id = o.bucket_id
            CROSS JOIN LATERAL unnest(o.party_sizes) AS s(size)
            WHERE b.bucket_date BETWEEN :first AND :last AND b.bucket_id >= :cutoff
        ) d
        GROUP BY bucket_id, size
    )
    SELECT bucket_id, sum(greatest(0, ceil(venues / CAST(:per_page AS float8)) - 1))
    FROM kinds
    GROUP BY bucket_id
    """
)

# NEW_DROP and CLOSED events of the market per market-local hour over the last :days days,
# and on how many local days there were any (the profile's denominator).
HOUR_PROFILE = text(
    """
    WITH ev AS (
        SELECT e.created_at AT TIME ZONE :zone AS local_at
        FROM drop_events e
        WHERE e.bucket_date >= :since_day AND e.market = :market
          AND e.event_type IN ('NEW_DROP', 'CLOSED')
          AND e.created_at >= now() - make_interval(days => :days)
    )
    SELECT CAST(extract(hour FROM local_at) AS integer) AS hour, count(*),
           (SELECT count(DISTINCT CAST(local_at AS date)) FROM ev)
    FROM ev
    GROUP BY 1
    ORDER BY 1
    """
)
