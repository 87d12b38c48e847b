"""The set-based SQL that generates one reservation day of seeded history (see plan.py).

Every statement works on one day's buckets, passed as arrays; random-looking choices come from
`hashint8extended` of the pair number, so a plan always loads the same rows.
"""

from __future__ import annotations

from tools.seed.plan import PROVIDER, SEATINGS, TIMES


def _unit(n: str, salt: int) -> str:
    """A deterministic pseudo-random number in [0, 1) from the integer expression `n`."""
    return f"((hashint8extended({n}, {salt}) & 281474976710655)::float8 / 281474976710656.0)"


def _slot_parts(s: str, anchor: str) -> str:
    """Select-list of the venue, local start and seating of the slot with index `s` of a
    bucket; `slot_for` in plan.py mirrors it."""
    seatings = ", ".join(f"'{name}'" for name in SEATINGS)
    return (
        f"1 + ({s}) % :venues AS venue_id,"
        f" CAST(:day AS date) + CAST({anchor} AS time) - interval '2 hours'"
        f" + ((({s}) / :venues) % {TIMES}) * interval '15 minutes' AS start,"
        f" (ARRAY[{seatings}])[({s}) / (:venues * {TIMES}) + 1] AS seating_type"
    )


def _slot_columns(x: str) -> str:
    """Select-list of a slot's columns from `_slot_parts` of row `x`, with the poller's id."""
    key = (
        f"'{PROVIDER}|' || {x}.venue_id || '|' || to_char({x}.start, 'YYYY-MM-DD\"T\"HH24:MI')"
        f" || '|' || lower({x}.seating_type)"
    )
    return (
        f"{x}.venue_id, CAST({x}.start AS date) AS slot_date,"
        f" CAST({x}.start AS time) AS slot_time, {x}.seating_type,"
        f" left(encode(sha256(convert_to({key}, 'UTF8')), 'hex'), 32) AS slot_id"
    )


# Per pair: its slot, when it opened and closed. History opened uniformly over the two weeks
# before its bucket (or now, if sooner) and stayed open 30 s plus an exponential 15 minutes;
# an open drop is fresh (the last five minutes) or older (exponential, `:mean_age` seconds).
# NEW_DROP of pair n is id :id_base + 2n - 1, its CLOSED the next id.
_PAIRS = f"""
WITH b AS (
    SELECT * FROM unnest(CAST(:ids AS text[]), CAST(:anchors AS text[]), CAST(:n0s AS bigint[]),
                         CAST(:pairs AS int[]), CAST(:opens AS int[]), CAST(:fresh AS int[]))
         AS b(bucket_id, anchor, n0, pairs, opens, fresh)
),
g AS (
    SELECT b.bucket_id, b.anchor, b.n0 + i + 1 AS n, i < b.opens AS is_open,
           i < b.fresh AS is_fresh,
           CASE WHEN i < b.opens THEN ((b.n0 % :space) + i) * :stride % :space
                ELSE (hashint8extended(b.n0 + i, 11) & 2147483647) % :space END AS s,
           w.wend - interval '14 days' AS wstart, w.wend, w.reach,
           {_unit("b.n0 + i", 12)} AS r1, {_unit("b.n0 + i", 13)} AS r2,
           {_unit("b.n0 + i", 14)} AS r3
    FROM b
    CROSS JOIN LATERAL (
        SELECT least((CAST(:day AS date) + CAST(b.anchor AS time)) AT TIME ZONE :zone,
                     CAST(:now AS timestamptz)) AS wend
    ) w0
    CROSS JOIN LATERAL (
        -- per bucket: its window, and how far back its older open drops reach (float8 math:
        -- numeric exp/ln per row would cost more than everything else here)
        SELECT w0.wend, 1 - exp(-greatest(60.0, CAST(extract(epoch FROM
                   CAST(:now AS timestamptz) - interval '5 minutes'
                   - (w0.wend - interval '14 days')) AS float8)) / :mean_age) AS reach
    ) w
    CROSS JOIN LATERAL generate_series(0, b.pairs - 1) AS i
),
h AS (
    -- OFFSET 0 keeps this a subquery, so each part is computed once, not once per use
    SELECT g.*, {_slot_parts("g.s", "g.anchor")} FROM g OFFSET 0
),
p AS MATERIALIZED (
    SELECT g.bucket_id, g.anchor, g.n, g.is_open, g.wend, o.opened_at,
           {_slot_columns("g")},
           CASE WHEN g.r3 < 0.45 THEN CAST('{{2}}' AS smallint[])
                WHEN g.r3 < 0.8 THEN CAST('{{2,4}}' AS smallint[])
                ELSE CAST('{{4}}' AS smallint[]) END AS sizes,
           least(o.opened_at + make_interval(secs => 30 - ln(1 - g.r2) * 900), g.wend)
               AS closed_at
    FROM h AS g
    CROSS JOIN LATERAL (
        SELECT CASE
            WHEN g.is_fresh THEN CAST(:now AS timestamptz) - g.r1 * interval '5 minutes'
            WHEN g.is_open THEN CAST(:now AS timestamptz) - interval '5 minutes'
                - make_interval(secs => -:mean_age * ln(1 - g.r1 * g.reach))
            ELSE g.wstart + g.r1 * (g.wend - g.wstart)
        END AS opened_at
    ) o
)
"""

# Each event column from pair `p` and kind `k` (a NEW_DROP, or its CLOSED when the drop closed).
EVENT_VALUES = {
    "id": ":id_base + 2 * p.n - 1 + k.closing",
    "bucket_date": "CAST(:day AS date)",
    "bucket_id": "p.bucket_id",
    "market": ":market",
    "provider": f"'{PROVIDER}'",
    "slot_id": "p.slot_id",
    "venue_id": "p.venue_id",
    "event_type": "k.event_type",
    "opened_at": "p.opened_at",
    "closed_at": "CASE WHEN k.closing = 1 THEN p.closed_at END",
    "drop_duration_seconds": "CASE WHEN k.closing = 1"
    " THEN CAST(extract(epoch FROM p.closed_at - p.opened_at) AS float8) END",
    "slot_date": "p.slot_date",
    "slot_time": "p.slot_time",
    "seating_type": "p.seating_type",
    "party_sizes": "p.sizes",
    "time_slot": "p.anchor",
    "time_bucket": "CASE WHEN p.anchor = ANY(CAST(:prime AS text[]))"
    " THEN 'prime' ELSE 'off_peak' END",
    "dedupe_key": "CASE WHEN k.closing = 0"
    " THEN 'NEW_DROP:' || p.bucket_id || ':' || p.slot_id || '/seed' || p.n"
    " ELSE 'CLOSED:' || (:id_base + 2 * p.n - 1) END",
    "drop_event_id": "CASE WHEN k.closing = 1 THEN :id_base + 2 * p.n - 1 END",
    "created_at": "CASE WHEN k.closing = 1 THEN p.closed_at ELSE p.opened_at END",
}

_EVENT_ROWS = """
FROM p CROSS JOIN (VALUES ('NEW_DROP', 0), ('CLOSED', 1)) AS k (event_type, closing)
WHERE NOT (p.is_open AND k.closing = 1)
"""


def insert_events(table: str) -> str:
    """INSERT the day's events into `table` (a day table, or the partitioned parent)."""
    names = ", ".join(EVENT_VALUES)
    values = ",\n    ".join(EVENT_VALUES.values())
    return f"{_PAIRS}INSERT INTO {table} ({names})\nSELECT {values}{_EVENT_ROWS}"


# A live day's open drops, from its NEW_DROP events: pair n of a bucket is open when it is one
# of the bucket's first `opens` pairs (plan.py), and its NEW_DROP has id :id_base + 2n - 1.
OPEN_DROPS = """
INSERT INTO __OPEN_TABLE__ (bucket_id, slot_id, venue_id, slot_date, slot_time, seating_type,
                            party_sizes, time_slot, first_seen_at, drop_event_id, opened_at)
SELECT d.bucket_id, d.slot_id, d.venue_id, d.slot_date, d.slot_time, d.seating_type,
       d.party_sizes, d.time_slot, d.opened_at, d.id, d.opened_at
FROM __DAY_TABLE__ AS d
JOIN unnest(CAST(:ids AS text[]), CAST(:n0s AS bigint[]), CAST(:opens AS int[]))
     AS b(bucket_id, n0, opens) ON b.bucket_id = d.bucket_id
WHERE d.bucket_date = :day AND d.event_type = 'NEW_DROP'
  AND (d.id - :id_base + 1) / 2 BETWEEN b.n0 + 1 AND b.n0 + b.opens
"""


# Baseline slots: open since the bucket was first seen, never drops. They follow the bucket's
# open drops in its slot order, so the two never share a slot.
BASELINE = f"""
WITH b AS (
    SELECT * FROM unnest(CAST(:ids AS text[]), CAST(:anchors AS text[]), CAST(:n0s AS bigint[]),
                         CAST(:opens AS int[]), CAST(:baselines AS int[]))
         AS b(bucket_id, anchor, n0, opens, cnt)
),
s AS MATERIALIZED (
    SELECT x.bucket_id, x.anchor, {_slot_columns("x")}
    FROM (
        SELECT y.*, {_slot_parts("y.s", "y.anchor")}
        FROM (
            SELECT b.bucket_id, b.anchor,
                   ((b.n0 % :space) + b.opens + j) * :stride % :space AS s
            FROM b CROSS JOIN LATERAL generate_series(0, b.cnt - 1) AS j
        ) y
        OFFSET 0
    ) x
),
bl AS (
    INSERT INTO baseline_slots (bucket_id, slot_id) SELECT bucket_id, slot_id FROM s
)
INSERT INTO __OPEN_TABLE__ (bucket_id, slot_id, venue_id, slot_date, slot_time, seating_type,
                            party_sizes, time_slot, first_seen_at)
SELECT s.bucket_id, s.slot_id, s.venue_id, s.slot_date, s.slot_time, s.seating_type,
       CAST('{{2,4}}' AS smallint[]), s.anchor,
       -- first seen when its bucket's two weeks began, before any drop of the bucket
       least((CAST(:day AS date) + CAST(s.anchor AS time)) AT TIME ZONE :zone,
             CAST(:now AS timestamptz)) - interval '14 days'
FROM s
"""

BUCKETS = """
INSERT INTO discovery_buckets (bucket_id, market, date_str, bucket_date, time_slot)
SELECT b.id, :market, to_char(b.day, 'YYYY-MM-DD'), b.day, b.anchor
FROM unnest(CAST(:ids AS text[]), CAST(:days AS date[]), CAST(:anchors AS text[]))
     AS b(id, day, anchor)
ON CONFLICT (bucket_id) DO NOTHING
"""

# Each of the day's buckets as its last healthy poll left it (past buckets too: they were
# polled), with the number of slots the plan leaves open in it; in the day's transaction, so
# a day that fails leaves its buckets unpolled.
MARK_BUCKETS = """
UPDATE discovery_buckets b
SET baseline_polls = 3, snapshot_version = 1, last_polled_at = :now,
    last_healthy_poll_at = :now, last_outcome = 'healthy', next_poll_at = :now,
    last_slot_count = c.slots
FROM unnest(CAST(:ids AS text[]), CAST(:slots AS int[])) AS c(bucket_id, slots)
WHERE b.bucket_id = c.bucket_id
"""

VENUES = """
INSERT INTO venues (venue_id, provider, name, neighborhood, price_range, url_slug, location_code)
SELECT v, :provider, 'Venue ' || v,
       (CAST(:hoods AS text[]))[v % cardinality(CAST(:hoods AS text[])) + 1],
       1 + v % 4, 'venue-' || v, 'ny'
FROM generate_series(1, :venues) AS v
ON CONFLICT (venue_id) DO NOTHING
"""
