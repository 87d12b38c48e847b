"""The poller's SQL: leases, and the one-statement write of a healthy poll.

The functions that run these are in `store.py`; `poll.py` and `scheduler.py` own the
transactions. The write of a healthy poll is a constant number of statements whatever the
number of new or closed slots (see docs/architecture.md, Review findings: P1): a version check
(`CHECK_LEASE`), a venue upsert (`UPSERT_VENUES`), and `WRITE_POLL`, whose data-modifying CTEs
delete vanished slots, insert their CLOSED events, insert NEW_DROP events for new slots, record
the new open state, bump the bucket's snapshot version and notify the feed.
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

CHECK_LEASE = text(
    "SELECT snapshot_version, lease_owner FROM discovery_buckets WHERE bucket_id = :b FOR UPDATE"
)

# Unchanged venues are filtered out before ON CONFLICT (which would lock them until commit);
# rows go in venue-id order so concurrent writers lock in the same order.
UPSERT_VENUES = text(
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
)

# Sizes of held kinds (:held_sizes) keep what they reported: a slot's next sizes are the
# fetched ones (held kinds already taken out) plus its snapshot sizes of held kinds. A slot
# left with no size is gone; what a confirmed kind lost was first seen gone at its `since`
# (:confirmed), anything else now. Party-size changes of a slot that stays are SIZE_OPEN /
# SIZE_CLOSE events carrying the sizes added / removed. Only kinds with their own baseline
# (:ready) report news: a fresh slot none of them reports goes into the baseline, and sizes
# of other kinds change silently.
# A baseline slot leaves the baseline when it is gone (`unlisted`): it opened before we looked,
# but its next opening is news, a NEW_DROP like any other. "Gone" is judged per kind as above,
# so a held kind's slot is not gone and stays in the baseline. `baseline_slots` therefore lists
# the open slots that were baseline; `drops` need not consult it, since a fresh slot is never
# open and so never listed (rows of slots that closed before this rule are no longer read).
# The bucket keeps only its share of the day (:share_start <= minute < :share_end, see
# shared/shares.py): the fetch holds nothing else, and an open slot stored outside it (from
# before each slot had one bucket) leaves `open_slots` and the baseline with no event.
# `gone` and `resized` join open_slots on the diff's own (bucket_id, slot_id), not on :bucket:
# a bucket whose open state is newer than the last ANALYZE is estimated at one row, and a
# constant bucket filter then lets the planner scan the whole bucket against the diff (quadratic,
# 0.7 s at 2000 slots); this way each changed slot is a primary-key lookup (test_write_plan.py).
WRITE_POLL = text(
    """
    WITH cur AS (
        SELECT * FROM json_to_recordset(CAST(:slots AS json))
               AS c(slot_id text, venue_id bigint, slot_date date, slot_time time,
                    seating_type text, sizes smallint[])
    ),
    confirmed AS (
        SELECT * FROM json_to_recordset(CAST(:confirmed AS json))
               AS f(size smallint, since timestamptz)
    ),
    diff AS (
        SELECT o.bucket_id, o.slot_id, o.party_sizes AS old_sizes,
            o.slot_date = :bucket_date
                AND o.slot_time - time '00:00' >= make_interval(mins => :share_start)
                AND o.slot_time - time '00:00' < make_interval(mins => :share_end) AS ours,
            ARRAY(SELECT DISTINCT x FROM unnest(
                    coalesce(c.sizes, '{}'::smallint[])
                    || ARRAY(SELECT y FROM unnest(o.party_sizes) y
                             WHERE y = ANY(CAST(:held_sizes AS smallint[])))) AS x
                  ORDER BY x) AS new_sizes
        FROM open_slots o LEFT JOIN cur c ON c.slot_id = o.slot_id
        WHERE o.bucket_id = :bucket
    ),
    changes AS (
        SELECT d.*,
            ARRAY(SELECT x FROM unnest(d.new_sizes) x WHERE x <> ALL(d.old_sizes)) AS added,
            ARRAY(SELECT x FROM unnest(d.old_sizes) x WHERE x <> ALL(d.new_sizes)) AS removed
        FROM diff d
    ),
    lost AS (
        SELECT ch.*,
            (SELECT max(coalesce(f.since, CAST(:now AS timestamptz)))
             FROM unnest(ch.removed) r LEFT JOIN confirmed f ON f.size = r) AS gone_at
        FROM changes ch
    ),
    gone AS (
        DELETE FROM open_slots o USING lost l
        WHERE o.bucket_id = l.bucket_id AND o.slot_id = l.slot_id
          AND (cardinality(l.new_sizes) = 0 OR NOT l.ours)
        RETURNING o.*, l.gone_at, l.ours
    ),
    unlisted AS (
        DELETE FROM baseline_slots bs USING gone g
        WHERE bs.bucket_id = g.bucket_id AND bs.slot_id = g.slot_id
        RETURNING 1
    ),
    closed AS (
        INSERT INTO drop_events (bucket_date, bucket_id, market, provider, slot_id, venue_id,
            event_type, opened_at, closed_at, drop_duration_seconds, slot_date, slot_time,
            seating_type, party_sizes, time_slot, time_bucket, dedupe_key, drop_event_id)
        SELECT :bucket_date, :bucket, :market, :provider, g.slot_id, g.venue_id,
            'CLOSED', g.opened_at, greatest(g.gone_at, g.opened_at),
            extract(epoch FROM (greatest(g.gone_at, g.opened_at) - g.opened_at)),
            g.slot_date, g.slot_time, g.seating_type, g.party_sizes, g.time_slot,
            :time_bucket, 'CLOSED:' || g.drop_event_id, g.drop_event_id
        FROM gone g
        WHERE g.drop_event_id IS NOT NULL AND g.ours
        ON CONFLICT (bucket_date, dedupe_key) DO NOTHING
        RETURNING id
    ),
    resized AS (
        UPDATE open_slots o
        SET party_sizes = l.new_sizes,
            size_opened_at = ARRAY(
                SELECT CASE WHEN x = ANY(o.party_sizes)
                    THEN (SELECT p.at FROM unnest(o.party_sizes, o.size_opened_at) AS p(s, at)
                          WHERE p.s = x LIMIT 1)
                    WHEN x = ANY(CAST(:ready AS smallint[])) THEN CAST(:now AS timestamptz) END
                FROM unnest(l.new_sizes) AS x ORDER BY x)
        FROM lost l
        WHERE o.bucket_id = l.bucket_id AND o.slot_id = l.slot_id
          AND l.ours AND cardinality(l.new_sizes) > 0 AND l.new_sizes <> l.old_sizes
        RETURNING o.*, l.added, l.removed, l.gone_at
    ),
    sized AS (
        INSERT INTO drop_events (bucket_date, bucket_id, market, provider, slot_id, venue_id,
            event_type, opened_at, closed_at, slot_date, slot_time, seating_type, party_sizes,
            time_slot, time_bucket, dedupe_key, drop_event_id)
        SELECT :bucket_date, :bucket, :market, :provider, r.slot_id, r.venue_id,
            e.kind, CASE WHEN e.kind = 'SIZE_OPEN' THEN :now
                         ELSE coalesce(r.opened_at, r.first_seen_at) END,
            CASE WHEN e.kind = 'SIZE_CLOSE' THEN r.gone_at END,
            r.slot_date, r.slot_time, r.seating_type, e.sizes, r.time_slot, :time_bucket,
            e.kind || ':' || :bucket || ':' || r.slot_id || ':' || :new_version,
            r.drop_event_id
        FROM resized r
        CROSS JOIN LATERAL (VALUES ('SIZE_OPEN', r.added), ('SIZE_CLOSE', r.removed))
             AS c(kind, sizes)
        CROSS JOIN LATERAL (
            SELECT c.kind, ARRAY(SELECT x FROM unnest(c.sizes) x
                                 WHERE x = ANY(CAST(:ready AS smallint[]))) AS sizes
        ) e
        WHERE cardinality(e.sizes) > 0
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
        WHERE f.sizes && CAST(:ready AS smallint[])
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
    baseline AS (
        INSERT INTO baseline_slots (bucket_id, slot_id)
        SELECT :bucket, f.slot_id FROM fresh f
        WHERE NOT (f.sizes && CAST(:ready AS smallint[]))
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
            suspect_polls = :suspect_polls,
            held = CAST(:held AS jsonb),
            kind_baseline = CAST(:kind_baseline AS jsonb),
            next_poll_at = :next_poll_at,
            lease_owner = NULL,
            lease_expires_at = NULL
        WHERE bucket_id = :bucket
        RETURNING 1
    )
    SELECT (SELECT count(*) FROM drops), (SELECT count(*) FROM closed),
           (SELECT count(*) FROM bumped), (SELECT count(*) FROM sized),
           CASE WHEN EXISTS (SELECT 1 FROM drops) OR EXISTS (SELECT 1 FROM closed)
                     OR EXISTS (SELECT 1 FROM sized)
                THEN pg_notify(:channel, :bucket) END
    """
)

# An unhealthy poll keeps the snapshot: note the outcome and the holds, release the lease.
RECORD_UNHEALTHY = text(
    """
    UPDATE discovery_buckets
    SET last_polled_at = :now, last_outcome = :outcome,
        suspect_polls = :suspect_polls, held = CAST(:held AS jsonb),
        next_poll_at = :next_poll_at, lease_owner = NULL, lease_expires_at = NULL
    WHERE bucket_id = :bucket AND lease_owner = :owner
      AND snapshot_version = :version
    """
)

RELEASE_LEASE = text(
    "UPDATE discovery_buckets SET lease_owner = NULL, lease_expires_at = NULL "
    "WHERE bucket_id = :b AND lease_owner = :owner"
)


# --- helper D (#14): shared request budget and release windows ------------------------------
# One claim is ONE statement: refill the market's bucket by the database clock (so replicas'
# clocks do not matter), take up to :want whole tokens of what is there, and return the grant
# (`last_grant`) and what is left. The first claim of a market creates its row full. A clock
# that steps back refills nothing until it has caught up (refilled_at never moves backwards).
_AVAILABLE = (
    "least(CAST(:burst AS float8), b.tokens + CAST(:rate AS float8)"
    " * greatest(0, extract(epoch FROM excluded.refilled_at - b.refilled_at)))"
)
# Never negative, even from a row written by hand with negative tokens.
_GRANT = f"greatest(0, least(CAST(:want AS integer), floor({_AVAILABLE})::integer))"
CLAIM_BUDGET = text(
    f"""
    INSERT INTO request_budget AS b (market, tokens, refilled_at, last_grant, granted_total)
    SELECT :market, CAST(:burst AS float8) - g, clock_timestamp(), g, g
    FROM (SELECT least(CAST(:want AS integer), floor(CAST(:burst AS float8))::integer) AS g) s
    ON CONFLICT (market) DO UPDATE SET
        tokens = {_AVAILABLE} - {_GRANT},
        refilled_at = greatest(b.refilled_at, excluded.refilled_at),
        last_grant = {_GRANT},
        granted_total = b.granted_total + {_GRANT}
    RETURNING last_grant, tokens
    """
)

# What the maintenance job learned (services/maintenance/sql.py, LEARN_RELEASE_WINDOWS).
RELEASE_WINDOWS = text(
    """
    SELECT venue_id, lead_days, release_minute, time_slots, days_seen, first_seen, last_seen,
           slots_per_release
    FROM release_windows
    WHERE market = :market
    ORDER BY release_minute, venue_id, lead_days
    """
)
# --- end of helper D's section ----------------------------------------------------------------


# --- helper C: change-rate-aware scheduling (services/poller/adaptive.py) ---------------------
# A constant number of statements per tick: SCHEDULE_STATE reads the live buckets, LEASE_CHOSEN
# leases the ones the policy chose; CHANGE_RATES (every few seconds) and HOUR_PROFILE (every
# few minutes) are what the policy knows, computed here so every replica shares it.
_LIVE = "bucket_date BETWEEN :first AND :last AND bucket_id >= :cutoff"

# `watched_seconds` by the database clock, which wrote `created_at`. `fresh`: never polled,
# or still baselining with slots to baseline (a bucket that answers empty never baselines; it
# is not fresh forever).
SCHEDULE_STATE = text(
    f"""
    SELECT bucket_id, bucket_date, time_slot, last_polled_at,
           greatest(0, extract(epoch FROM now() - created_at)) AS watched_seconds,
           last_polled_at IS NULL OR (baseline_polls < :baseline AND last_slot_count > 0)
               AS fresh,
           coalesce(lease_expires_at >= now(), false) AS leased
    FROM discovery_buckets
    WHERE {_LIVE}
    ORDER BY bucket_id
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
# --- end of helper C's section ----------------------------------------------------------------
