"""The maintenance job's SQL: set-based aggregation and pruning.

Every aggregate is computed inside PostgreSQL (`INSERT ... SELECT ... GROUP BY ... ON CONFLICT
DO UPDATE`), so the job's memory does not grow with the number of events. A day's figures are
always recomputed from *all* of that day's events and replace what was there, which makes a
rerun idempotent: it cannot double count. `day_figures` records how many events the stored
figures count and when they became final (the partition dropped), so `run.py` can refuse to
replace them with figures from fewer events. The statements that read one day's partition are
built for it (`partition` is a name made from a date, never from input). `store.py` runs them.
"""

from __future__ import annotations

import datetime as dt

from sqlalchemy import TextClause, text

from shared.db.partitions import partition_name

# window_date = the reservation date of the slot = the bucket date = the partition's day.
_VENUE_METRICS = """
INSERT INTO venue_metrics AS m (venue_id, window_date, new_drop_count, closed_count,
    prime_drop_count, off_peak_drop_count, avg_drop_duration_seconds,
    median_drop_duration_seconds, scarcity_score, updated_at)
SELECT venue_id, :day,
    count(*) FILTER (WHERE event_type = 'NEW_DROP'),
    count(*) FILTER (WHERE event_type = 'CLOSED'),
    count(*) FILTER (WHERE event_type = 'NEW_DROP' AND time_bucket = 'prime'),
    count(*) FILTER (WHERE event_type = 'NEW_DROP' AND time_bucket = 'off_peak'),
    avg(drop_duration_seconds) FILTER (WHERE event_type = 'CLOSED'),
    percentile_cont(0.5) WITHIN GROUP (ORDER BY drop_duration_seconds)
        FILTER (WHERE event_type = 'CLOSED'),
    1.0 / (1 + count(*) FILTER (WHERE event_type = 'NEW_DROP')),
    now()
FROM {partition}
GROUP BY venue_id
ON CONFLICT (venue_id, window_date) DO UPDATE SET
    new_drop_count = excluded.new_drop_count, closed_count = excluded.closed_count,
    prime_drop_count = excluded.prime_drop_count,
    off_peak_drop_count = excluded.off_peak_drop_count,
    avg_drop_duration_seconds = excluded.avg_drop_duration_seconds,
    median_drop_duration_seconds = excluded.median_drop_duration_seconds,
    scarcity_score = excluded.scarcity_score, updated_at = now()
"""

_STALE_VENUE_METRICS = """
DELETE FROM venue_metrics m
WHERE m.window_date = :day
  AND NOT EXISTS (SELECT 1 FROM {partition} e WHERE e.venue_id = m.venue_id)
"""

_MARKET_METRICS = """
INSERT INTO market_metrics (market, window_date, total_drops, total_closes, venues_with_drops,
    avg_drop_duration_seconds, median_drop_duration_seconds, weekday, drops_by_hour, updated_at)
SELECT :market, :day,
    count(*) FILTER (WHERE event_type = 'NEW_DROP'),
    count(*) FILTER (WHERE event_type = 'CLOSED'),
    count(DISTINCT venue_id) FILTER (WHERE event_type = 'NEW_DROP'),
    avg(drop_duration_seconds) FILTER (WHERE event_type = 'CLOSED'),
    percentile_cont(0.5) WITHIN GROUP (ORDER BY drop_duration_seconds)
        FILTER (WHERE event_type = 'CLOSED'),
    extract(isodow FROM CAST(:day AS date)),
    coalesce((
        SELECT jsonb_object_agg(hour, n ORDER BY hour) FROM (
            SELECT extract(hour FROM opened_at AT TIME ZONE :zone)::int AS hour, count(*) AS n
            FROM {partition} WHERE event_type = 'NEW_DROP' GROUP BY 1
        ) h
    ), '{{}}'::jsonb),
    now()
FROM {partition}
ON CONFLICT (market, window_date) DO UPDATE SET
    total_drops = excluded.total_drops, total_closes = excluded.total_closes,
    venues_with_drops = excluded.venues_with_drops,
    avg_drop_duration_seconds = excluded.avg_drop_duration_seconds,
    median_drop_duration_seconds = excluded.median_drop_duration_seconds,
    weekday = excluded.weekday, drops_by_hour = excluded.drops_by_hour, updated_at = now()
"""


def day_aggregates(day: dt.date) -> tuple[TextClause, ...]:
    """Venue figures, removal of venues without events, market figures: one day's partition."""
    partition = partition_name(day)
    return tuple(
        text(statement.format(partition=partition))
        for statement in (_VENUE_METRICS, _STALE_VENUE_METRICS, _MARKET_METRICS)
    )


def event_count(day: dt.date) -> TextClause:
    return text(f"SELECT count(*) FROM {partition_name(day)}")


def lock_partition(day: dt.date) -> TextClause:
    return text(f"LOCK TABLE {partition_name(day)} IN SHARE MODE")


# The database's clock is the real one (a CronJob's node clock or a --now can be wrong).
DATABASE_NOW = text("SELECT now()")

DAY_FIGURES = text("SELECT event_count, final_at FROM day_figures WHERE window_date = :day")

RECORD_DAY = text(
    """
INSERT INTO day_figures AS f (window_date, event_count, aggregated_at)
VALUES (:day, :events, now())
ON CONFLICT (window_date) DO UPDATE SET event_count = excluded.event_count, aggregated_at = now()
WHERE f.final_at IS NULL AND excluded.event_count >= f.event_count
"""
)

FINALIZE_DAY = text(
    "UPDATE day_figures SET final_at = now()"
    " WHERE window_date = :day AND event_count = :events AND final_at IS NULL"
)

DELETE_ROLLING = text("DELETE FROM venue_rolling_metrics WHERE as_of_date = :d")

ROLLING_METRICS = text(
    """
INSERT INTO venue_rolling_metrics (venue_id, as_of_date, total_drops,
    days_with_drops, drops_per_day, rarity_score, last7_drops, prev7_drops, trend,
    availability_rate, updated_at)
SELECT venue_id, :as_of, total, active, total::float8 / :days,
    1.0 / (1 + total::float8 / :days), last7, prev7,
    CASE WHEN prev7 > 0 THEN last7::float8 / prev7 END,
    active::float8 / :days, now()
FROM (
    SELECT venue_id,
        sum(new_drop_count) AS total,
        count(*) FILTER (WHERE new_drop_count > 0) AS active,
        coalesce(sum(new_drop_count)
            FILTER (WHERE window_date >= CAST(:as_of AS date) - 7), 0) AS last7,
        coalesce(sum(new_drop_count)
            FILTER (WHERE window_date < CAST(:as_of AS date) - 7
                      AND window_date >= CAST(:as_of AS date) - 14), 0) AS prev7
    FROM venue_metrics
    WHERE window_date >= CAST(:as_of AS date) - :days AND window_date < :as_of
    GROUP BY venue_id
) w
"""
)

PRUNE_BUCKETS = text("DELETE FROM discovery_buckets WHERE bucket_id < :cutoff")

AWAITING_BASELINE = text(
    "SELECT count(*) FROM discovery_buckets WHERE bucket_date >= :d AND baseline_polls = 0"
)

LIVE_BUCKETS = text("SELECT count(*) FROM discovery_buckets WHERE bucket_date >= :d")

# Each run records itself; rows older than the retention go in the same transaction.
RECORD_RUN = text(
    """
    INSERT INTO maintenance_runs (started_at, outcome, summary)
    VALUES (:started_at, :outcome, CAST(:summary AS jsonb))
    """
)
PRUNE_RUNS = text(
    "DELETE FROM maintenance_runs WHERE finished_at < now() - make_interval(days => :days)"
)


# --- helper D (#14): release windows -----------------------------------------------------------
# Learn the market's release windows from the retained NEW_DROP events, in one statement.
# In market-local time: a release is a burst of >= :min_burst drops of one venue with one lead
# (slot date minus the local date it opened), each within :burst_minutes of the previous one;
# its minute is the burst's first. Bursts of a venue and lead whose minutes are each within
# :drift_minutes of the previous one are one window, kept if seen on >= :min_days days; its
# minute is their median. Rows no longer learned are deleted, the rest upserted (the delete and
# the upsert touch different keys, so their order inside the statement does not matter).
LEARN_RELEASE_WINDOWS = text(
    """
WITH seen AS (
    SELECT venue_id, time_slot, local_at, CAST(local_at AS date) AS day,
        slot_date - CAST(local_at AS date) AS lead
    FROM (
        SELECT venue_id, time_slot, slot_date, opened_at AT TIME ZONE :zone AS local_at
        FROM drop_events
        WHERE market = :market AND event_type = 'NEW_DROP'
            AND bucket_date > CAST(:today AS date) - CAST(:history_days AS integer)
            AND opened_at >= CAST(CAST(:today AS date) - CAST(:history_days AS integer) + 1
                AS timestamp) AT TIME ZONE :zone
            AND opened_at < CAST(CAST(:today AS date) + 1 AS timestamp) AT TIME ZONE :zone
    ) e
    WHERE slot_date >= CAST(local_at AS date)
),
starts AS (
    SELECT seen.*, CASE WHEN local_at - lag(local_at) OVER w
        <= make_interval(mins => CAST(:burst_minutes AS integer)) THEN 0 ELSE 1 END AS starts
    FROM seen WINDOW w AS (PARTITION BY venue_id, lead, day ORDER BY local_at)
),
islands AS (
    SELECT starts.*, sum(starts) OVER (PARTITION BY venue_id, lead, day ORDER BY local_at
        ROWS UNBOUNDED PRECEDING) AS burst
    FROM starts
),
bursts AS (
    SELECT venue_id, lead, day, burst, count(*) AS slots,
        CAST(extract(hour FROM min(local_at)) * 60 + extract(minute FROM min(local_at))
            AS integer) AS minute
    FROM islands
    GROUP BY venue_id, lead, day, burst
    HAVING count(*) >= :min_burst
),
chained AS (
    SELECT bursts.*, sum(step) OVER (PARTITION BY venue_id, lead ORDER BY minute, day
        ROWS UNBOUNDED PRECEDING) AS moment
    FROM (
        SELECT bursts.*, CASE WHEN minute - lag(minute) OVER (PARTITION BY venue_id, lead
            ORDER BY minute, day) <= :drift_minutes THEN 0 ELSE 1 END AS step
        FROM bursts
    ) bursts
),
anchors AS (
    SELECT c.venue_id, c.lead, c.moment, array_agg(DISTINCT i.time_slot ORDER BY i.time_slot)
        AS time_slots
    FROM chained c JOIN islands i USING (venue_id, lead, day, burst)
    GROUP BY c.venue_id, c.lead, c.moment
),
learned AS (
    SELECT c.venue_id, c.lead, a.time_slots,
        percentile_disc(0.5) WITHIN GROUP (ORDER BY c.minute) AS minute,
        count(DISTINCT c.day) AS days, min(c.day) AS first_day, max(c.day) AS last_day,
        percentile_cont(0.5) WITHIN GROUP (ORDER BY c.slots) AS slots
    FROM chained c JOIN anchors a USING (venue_id, lead, moment)
    GROUP BY c.venue_id, c.lead, c.moment, a.time_slots
    HAVING count(DISTINCT c.day) >= :min_days
),
gone AS (
    DELETE FROM release_windows r
    WHERE r.market = :market AND NOT EXISTS (
        SELECT 1 FROM learned l WHERE l.venue_id = r.venue_id AND l.lead = r.lead_days
            AND l.minute = r.release_minute)
    RETURNING 1
),
kept AS (
    INSERT INTO release_windows AS r (market, venue_id, lead_days, release_minute, time_slots,
        days_seen, first_seen, last_seen, slots_per_release, refreshed_at)
    SELECT :market, venue_id, lead, minute, time_slots, days, first_day, last_day, slots, now()
    FROM learned
    ON CONFLICT (market, venue_id, lead_days, release_minute) DO UPDATE SET
        time_slots = excluded.time_slots, days_seen = excluded.days_seen,
        first_seen = excluded.first_seen, last_seen = excluded.last_seen,
        slots_per_release = excluded.slots_per_release, refreshed_at = excluded.refreshed_at
    RETURNING 1
)
SELECT (SELECT count(*) FROM kept) AS windows, (SELECT count(*) FROM gone) AS removed
"""
)
# The market's windows as `dropwatch windows` shows them: with the venue's name.
SHOW_RELEASE_WINDOWS = text(
    """
SELECT w.venue_id, v.name AS venue, w.lead_days, w.release_minute, w.time_slots, w.days_seen,
    w.first_seen, w.last_seen, w.slots_per_release, w.refreshed_at
FROM release_windows w LEFT JOIN venues v ON v.venue_id = w.venue_id
WHERE w.market = :market
ORDER BY w.release_minute, w.lead_days, v.name, w.venue_id
"""
)
# --- end of helper D's section ------------------------------------------------------------------


# ---- Change cursor retention (#15, helper F1) ----
# Before a day's partition is dropped, in the same transaction: the highest xact_id it holds
# becomes the change floor, so a change cursor at or below it is OUT_OF_RANGE (events after it
# may be gone) instead of silently missing them (docs/architecture.md, "Change cursor and
# ListChanges"). One row; the floor only rises (an older day dropped late cannot lower it).
# `max` walks ix_drop_events_xact_id_id backwards: one index probe.
_RECORD_CHANGE_FLOOR = """
INSERT INTO change_floor AS f (singleton, pruned_through, pruned_day, pruned_at)
SELECT true, max(xact_id), :day, now() FROM {partition}
HAVING max(xact_id) IS NOT NULL
ON CONFLICT (singleton) DO UPDATE SET
    pruned_through = excluded.pruned_through, pruned_day = excluded.pruned_day,
    pruned_at = excluded.pruned_at
WHERE f.pruned_through < excluded.pruned_through
"""


def record_change_floor(day: dt.date) -> TextClause:
    return text(_RECORD_CHANGE_FLOOR.format(partition=partition_name(day)))
