"""The write of one poll: the venues it saw, its diff and events, or an unhealthy outcome.

A healthy poll is a constant number of statements whatever the number of new or closed slots
(see docs/architecture.md, Review findings: P1): a version check (`lease.CHECK_LEASE`), a
venue upsert (`UPSERT_VENUES`), and `WRITE_POLL`, whose data-modifying CTEs delete vanished
slots, insert their CLOSED events, insert NEW_DROP events for new slots, record the new open
state, bump the bucket's snapshot version and notify the feed.
"""

from __future__ import annotations

from sqlalchemy import text

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
# The bucket's `last_polled_at` is when its fetch began, on the database clock (this statement's
# start, `statement_timestamp()`, less :fetch_seconds, the fetch's duration on the poller's
# monotonic clock, measured just before it), and `next_poll_at` that plus the wait the caller
# planned (:next_poll_at - :now): an interval (the adaptive plan's, the fixed cooldown) runs from
# poll start to poll start, as the policy assumes when it spends the budget. The caller caps
# :fetch_seconds at the wait, so a fetch slowed by retries (a 429's Retry-After) makes its bucket
# due at once at the most, never overdue. Which bucket is due is decided on one clock, whatever the
# replicas' clocks say (sql/schedule.py, SCHEDULE_STATE; sql/lease.py, LEASE_DUE compares
# next_poll_at with now()). Events keep the poll's own time (:now).
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
            last_polled_at = statement_timestamp()
                - make_interval(secs => CAST(:fetch_seconds AS float8)),
            last_healthy_poll_at = :now,
            last_outcome = :outcome,
            last_slot_count = :slot_count,
            suspect_polls = :suspect_polls,
            held = CAST(:held AS jsonb),
            kind_baseline = CAST(:kind_baseline AS jsonb),
            next_poll_at = statement_timestamp()
                - make_interval(secs => CAST(:fetch_seconds AS float8))
                + (CAST(:next_poll_at AS timestamptz) - CAST(:now AS timestamptz)),
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
# The poll's time and next due time are by the database clock, as in WRITE_POLL.
RECORD_UNHEALTHY = text(
    """
    UPDATE discovery_buckets
    SET last_polled_at = now(), last_outcome = :outcome,
        suspect_polls = :suspect_polls, held = CAST(:held AS jsonb),
        next_poll_at = now() + (CAST(:next_poll_at AS timestamptz) - CAST(:now AS timestamptz)),
        lease_owner = NULL, lease_expires_at = NULL
    WHERE bucket_id = :bucket AND lease_owner = :owner
      AND snapshot_version = :version
    """
)
