"""Benchmark of the poller's write path against the review's original N+1 pattern.

    .venv/bin/python -m bench.poll_write [--events 1000000] [--ks 10,100,1000] [--repeats 5]
                                         [--warmups 1] [--markdown] [--explain]

Not a test: it prints figures. Steps:

1. A fresh database (on `DROPWATCH_DATABASE_URL`'s server, or an embedded PostgreSQL in a
   temporary directory), migrated to head.
2. About `--events` `drop_events` loaded with set-based SQL: 28 days of buckets (14 past and 14
   live, "today" in America/New_York), anchors 15:00 (off_peak) and 19:00 (prime), 2000 venues,
   NEW_DROP/CLOSED pairs, plus the live buckets' open state (`open_slots`: open drops and
   baseline slots) and `baseline_slots`; then ANALYZE.
3. For each k: one poll of a live bucket whose open state holds 2000 slots, with k new and k
   closed slots, through the real code (`services.poller.store`): lease, then one transaction
   of version check, venue upsert and the write. Timed and its statements counted.
4. The same poll with the review's original pattern (section 3): a sync ORM session, dedupe query
   `dedupe_key IN (...)`, `add_all` of NEW_DROP objects, then one "last NEW_DROP of this slot"
   query per closed slot (the N+1) and `add_all` of CLOSED objects; commit. It runs on a sibling
   bucket with the same shape (today+4 instead of today+3, same history size) in the same
   database. Its previous snapshot is a Python dict kept in memory (the original kept it in a
   JSON column of the bucket row; the bucket row is still loaded and updated, but the JSON itself
   is neither parsed nor rewritten, which flatters the original slightly).
"""

from __future__ import annotations

import argparse
import asyncio
import datetime as dt
import math
import platform
import sys
from collections.abc import Callable, Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from zoneinfo import ZoneInfo

from sqlalchemy import Engine, select, text
from sqlalchemy.ext.asyncio import AsyncEngine
from sqlalchemy.orm import Session

from bench._db import (
    BenchDatabase,
    ServerInfo,
    StatementRecorder,
    Window,
    bench_database,
    bench_settings,
    cpu_count,
    cpu_model,
    median,
    memory_gib,
    migrate_to_head,
    percentile,
    server_info,
    timed,
)
from bench.tables import details, md_table, plain_table
from services.poller import store
from services.poller.slots import BucketFetch, Slot, VenueInfo, slot_id_for
from shared.db.buckets import bucket_id_for, ensure_live_buckets, market_today
from shared.db.engine import make_async_engine, make_engine
from shared.db.models import EVENT_CLOSED, EVENT_NEW_DROP, DiscoveryBucket, DropEvent
from shared.db.partitions import ensure_partitions

OWNER = "bench-poller"
MARKET = "nyc"
PROVIDER = "resy"
ZONE_NAME = "America/New_York"
ZONE = ZoneInfo(ZONE_NAME)
ANCHORS = ("15:00", "19:00")
PRIME_ANCHOR = "19:00"
PAST_DAYS = 14
LIVE_DAYS = 14
VENUES = 2000
SEATINGS = ("Dining Room", "Bar", "Patio")
TIMES = 17  # anchor - 2h .. anchor + 2h every 15 minutes
SLOT_SPACE = VENUES * TIMES * len(SEATINGS)  # slot index s -> (venue, time, seating)
# Slot index ranges (per bucket): history pairs, open drops, baseline slots, benchmark slots.
HISTORY_SLOTS = 30_000
BENCH_NEW_BASE = 40_000
OPEN_BASE = 60_000
BASELINE_BASE = 70_000
BENCH_OPEN = 2000  # slots in the benchmark bucket's open state (its first 2000 slot indices)
OPEN_DROPS_PER_BUCKET = 300
BASELINE_PER_BUCKET = 1200
NEIGHBORHOODS = ("SoHo", "Tribeca", "West Village", "Williamsburg", "Harlem", "Chelsea")
MIN_EVENTS = 10_000

TARGET_MAX_STATEMENTS = 8
TARGET_K = 1000
TARGET_MS = 150.0
TARGET_SPEEDUP = 20.0


def log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


# --- the data ----------------------------------------------------------------------------------


@dataclass(frozen=True)
class BucketPlan:
    bucket_id: str
    day: dt.date
    anchor: str
    live: bool
    n0: int  # pairs numbered before this bucket (pair numbers are global, from 1)
    pairs: int
    open_drops: int
    baseline: int

    @property
    def events(self) -> int:
        return 2 * self.pairs - self.open_drops


@dataclass(frozen=True)
class DataPlan:
    now: dt.datetime
    today: dt.date
    buckets: list[BucketPlan]
    ours: BucketPlan
    original: BucketPlan

    @property
    def days(self) -> list[dt.date]:
        return sorted({b.day for b in self.buckets})

    @property
    def events(self) -> int:
        return sum(b.events for b in self.buckets)


def make_plan(events: int, now: dt.datetime) -> DataPlan:
    today = market_today(ZONE, now)
    days = [today + dt.timedelta(days=d) for d in range(-PAST_DAYS, LIVE_DAYS)]
    ours_id = bucket_id_for(today + dt.timedelta(days=3), PRIME_ANCHOR)
    original_id = bucket_id_for(today + dt.timedelta(days=4), PRIME_ANCHOR)
    n_buckets = len(days) * len(ANCHORS)
    with_open = (LIVE_DAYS * len(ANCHORS)) - 2
    open_drops = min(OPEN_DROPS_PER_BUCKET, events // (2 * n_buckets) // 10)
    pairs = math.ceil((events + open_drops * with_open) / (2 * n_buckets))
    buckets: list[BucketPlan] = []
    n0 = 0
    for day in days:
        for anchor in ANCHORS:
            bucket_id = bucket_id_for(day, anchor)
            live = day >= today
            plain_live = live and bucket_id not in (ours_id, original_id)
            buckets.append(
                BucketPlan(
                    bucket_id=bucket_id,
                    day=day,
                    anchor=anchor,
                    live=live,
                    n0=n0,
                    pairs=pairs,
                    open_drops=open_drops if plain_live else 0,
                    baseline=BASELINE_PER_BUCKET if plain_live else 0,
                )
            )
            n0 += pairs
    by_id = {b.bucket_id: b for b in buckets}
    return DataPlan(now, today, buckets, by_id[ours_id], by_id[original_id])


def _unit(n: str, salt: int) -> str:
    """A deterministic pseudo-random number in [0, 1) from the integer expression `n`."""
    return f"((hashint8extended({n}, {salt}) & 281474976710655)::float8 / 281474976710656.0)"


def _slot_columns(s: str, day: str, anchor: str) -> str:
    """SQL select-list of a slot from its index `s` (same mapping as `slot_for` below)."""
    venue = f"(1 + ({s}) % {VENUES})"
    slot_time = (
        f"(CAST({anchor} AS time) - interval '2 hours'"
        f" + ((({s}) / {VENUES}) % {TIMES}) * interval '15 minutes')"
    )
    seating = f"((ARRAY['{SEATINGS[0]}', '{SEATINGS[1]}', '{SEATINGS[2]}'])" + (
        f"[({s}) / {VENUES * TIMES} + 1])"
    )
    key = (
        f"'{PROVIDER}|' || {venue} || '|' || to_char({day} + {slot_time}, "
        f"'YYYY-MM-DD\"T\"HH24:MI') || '|' || lower({seating})"
    )
    slot_id = f"left(encode(sha256(convert_to({key}, 'UTF8')), 'hex'), 32)"
    return (
        f"{venue} AS venue_id, {slot_time} AS slot_time, {seating} AS seating_type, "
        f"{slot_id} AS slot_id"
    )


def slot_for(day: dt.date, anchor: str, s: int) -> Slot:
    venue = 1 + s % VENUES
    start = (
        dt.datetime.combine(day, dt.time.fromisoformat(anchor))
        - dt.timedelta(hours=2)
        + dt.timedelta(minutes=15 * ((s // VENUES) % TIMES))
    )
    seating = SEATINGS[s // (VENUES * TIMES)]
    return Slot(slot_id_for(PROVIDER, venue, start, seating), venue, start, seating)


def venue_info(venue_id: int) -> VenueInfo:
    return VenueInfo(
        venue_id,
        f"Venue {venue_id}",
        NEIGHBORHOODS[venue_id % len(NEIGHBORHOODS)],
        1 + venue_id % 4,
        f"venue-{venue_id}",
        "ny",
    )


_LOAD_EVENTS = f"""
WITH b AS (
    SELECT * FROM unnest(CAST(:ids AS text[]), CAST(:days AS date[]), CAST(:anchors AS text[]),
                         CAST(:n0s AS bigint[]), CAST(:pairs AS int[]), CAST(:opens AS int[]))
         AS b(bucket_id, day, anchor, n0, pairs, opens)
),
p AS MATERIALIZED (
    SELECT x.*, {_slot_columns("x.s", "x.day", "x.anchor")}
    FROM (
        SELECT b.bucket_id, b.day, b.anchor, b.n0 + g.i + 1 AS n, g.i < b.opens AS is_open,
               CASE WHEN g.i < b.opens THEN {OPEN_BASE} + g.i
                    ELSE (hashint8extended(b.n0 + g.i, 1) & 2147483647) % {HISTORY_SLOTS}
               END AS s,
               w.wstart, w.wend,
               {_unit("b.n0 + g.i", 2)} AS r1, {_unit("b.n0 + g.i", 3)} AS r2,
               {_unit("b.n0 + g.i", 4)} AS r3
        FROM b
        CROSS JOIN LATERAL generate_series(0, b.pairs - 1) AS g(i)
        CROSS JOIN LATERAL (
            SELECT (b.day + CAST(b.anchor AS time)) AT TIME ZONE '{ZONE_NAME}' AS ts
        ) t
        CROSS JOIN LATERAL (
            SELECT t.ts - interval '14 days' AS wstart,
                   least(t.ts, CAST(:now AS timestamptz)) AS wend
        ) w
    ) x
),
q AS (
    SELECT p.*, o.opened_at,
           least(o.opened_at + make_interval(secs => 30 - ln(1 - p.r2) * 900), p.wend)
               AS closed_at,
           CASE WHEN p.r3 < 0.45 THEN CAST('{{2}}' AS smallint[])
                WHEN p.r3 < 0.8 THEN CAST('{{2,4}}' AS smallint[])
                ELSE CAST('{{4}}' AS smallint[]) END AS sizes
    FROM p
    CROSS JOIN LATERAL (
        SELECT CASE WHEN p.is_open
                    THEN p.wend - p.r1 * least(interval '6 hours', p.wend - p.wstart)
                    ELSE p.wstart + p.r1 * (p.wend - p.wstart) END AS opened_at
    ) o
)
INSERT INTO drop_events (id, bucket_date, bucket_id, market, provider, slot_id, venue_id,
    event_type, opened_at, closed_at, drop_duration_seconds, slot_date, slot_time,
    seating_type, party_sizes, time_slot, time_bucket, dedupe_key, drop_event_id)
SELECT CASE WHEN e.closed THEN 2 * q.n ELSE 2 * q.n - 1 END,
       q.day, q.bucket_id, '{MARKET}', '{PROVIDER}', q.slot_id, q.venue_id,
       CASE WHEN e.closed THEN '{EVENT_CLOSED}' ELSE '{EVENT_NEW_DROP}' END,
       q.opened_at,
       CASE WHEN e.closed THEN q.closed_at END,
       CASE WHEN e.closed THEN extract(epoch FROM q.closed_at - q.opened_at) END,
       q.day, q.slot_time, q.seating_type, q.sizes, q.anchor,
       CASE WHEN q.anchor = '{PRIME_ANCHOR}' THEN 'prime' ELSE 'off_peak' END,
       CASE WHEN e.closed THEN '{EVENT_CLOSED}:' || (2 * q.n - 1)
            ELSE '{EVENT_NEW_DROP}:' || q.bucket_id || ':' || q.slot_id || ':' || q.n END,
       CASE WHEN e.closed THEN 2 * q.n - 1 END
FROM q CROSS JOIN (VALUES (false), (true)) AS e(closed)
WHERE NOT (e.closed AND q.is_open)
"""

_LOAD_VENUES = f"""
INSERT INTO venues (venue_id, provider, name, neighborhood, price_range, url_slug,
                    location_code)
SELECT g, '{PROVIDER}', 'Venue ' || g,
       (ARRAY[{", ".join(f"'{n}'" for n in NEIGHBORHOODS)}])[g % {len(NEIGHBORHOODS)} + 1],
       1 + g % 4, 'venue-' || g, 'ny'
FROM generate_series(1, {VENUES}) AS g
"""

_LOAD_PAST_BUCKETS = """
INSERT INTO discovery_buckets (bucket_id, market, date_str, bucket_date, time_slot)
SELECT b.id, :market, to_char(b.day, 'YYYY-MM-DD'), b.day, b.anchor
FROM unnest(CAST(:ids AS text[]), CAST(:days AS date[]), CAST(:anchors AS text[]))
     AS b(id, day, anchor)
ON CONFLICT (bucket_id) DO NOTHING
"""

# Open drops of the live buckets: every live NEW_DROP without its CLOSED.
_LOAD_OPEN_DROPS = f"""
INSERT INTO open_slots (bucket_id, slot_id, venue_id, slot_date, slot_time, seating_type,
                        party_sizes, time_slot, first_seen_at, drop_event_id, opened_at)
SELECT d.bucket_id, d.slot_id, d.venue_id, d.slot_date, d.slot_time, d.seating_type,
       d.party_sizes, d.time_slot, d.opened_at, d.id, d.opened_at
FROM drop_events d
WHERE d.bucket_date >= :today AND d.event_type = '{EVENT_NEW_DROP}'
  AND NOT EXISTS (
    SELECT 1 FROM drop_events c
    WHERE c.bucket_date = d.bucket_date AND c.dedupe_key = '{EVENT_CLOSED}:' || d.id
  )
"""

_LOAD_BASELINE = f"""
WITH b AS (
    SELECT * FROM unnest(CAST(:ids AS text[]), CAST(:days AS date[]), CAST(:anchors AS text[]),
                         CAST(:counts AS int[])) AS b(bucket_id, day, anchor, cnt)
),
s AS MATERIALIZED (
    SELECT x.bucket_id, x.day, x.anchor, {_slot_columns("x.s", "x.day", "x.anchor")}
    FROM (
        SELECT b.*, {BASELINE_BASE} + g.i AS s
        FROM b CROSS JOIN LATERAL generate_series(0, b.cnt - 1) AS g(i)
    ) x
),
bl AS (
    INSERT INTO baseline_slots (bucket_id, slot_id) SELECT bucket_id, slot_id FROM s
)
INSERT INTO open_slots (bucket_id, slot_id, venue_id, slot_date, slot_time, seating_type,
                        party_sizes, time_slot, first_seen_at, drop_event_id, opened_at)
SELECT s.bucket_id, s.slot_id, s.venue_id, s.day, s.slot_time, s.seating_type,
       CAST('{{2,4}}' AS smallint[]), s.anchor, CAST(:now AS timestamptz) - interval '1 day',
       NULL, NULL
FROM s
"""

_MARK_BUCKETS = """
UPDATE discovery_buckets b
SET baseline_polls = 3, snapshot_version = 0, last_polled_at = :now,
    last_healthy_poll_at = :now, last_outcome = 'healthy',
    last_slot_count = (SELECT count(*) FROM open_slots o WHERE o.bucket_id = b.bucket_id),
    next_poll_at = CAST(:now AS timestamptz) + interval '1 hour'
"""


@dataclass
class LoadReport:
    seconds: float  # everything: partitions, buckets, events, open state, ANALYZE
    events_seconds: float  # the drop_events inserts alone
    events: int
    new_drops: int
    closed: int
    open_slots: int
    baseline_slots: int
    workers: int


def load(engine: Engine, plan: DataPlan) -> LoadReport:
    """Create partitions and buckets, then load events and open state with set-based SQL."""
    workers = max(1, min(cpu_count(), 4))
    with timed() as watch:
        with engine.begin() as conn:
            ensure_partitions(conn, plan.days)
            ensure_live_buckets(
                conn, market=MARKET, today=plan.today, window_days=LIVE_DAYS, anchors=ANCHORS
            )
            past = [b for b in plan.buckets if not b.live]
            conn.execute(
                text(_LOAD_PAST_BUCKETS),
                {
                    "market": MARKET,
                    "ids": [b.bucket_id for b in past],
                    "days": [b.day for b in past],
                    "anchors": [b.anchor for b in past],
                },
            )
            conn.execute(text(_LOAD_VENUES))

        def load_day(day: dt.date) -> float:
            chunk = [b for b in plan.buckets if b.day == day]
            with timed() as w, engine.begin() as conn:
                conn.execute(
                    text(_LOAD_EVENTS),
                    {
                        "ids": [b.bucket_id for b in chunk],
                        "days": [b.day for b in chunk],
                        "anchors": [b.anchor for b in chunk],
                        "n0s": [b.n0 for b in chunk],
                        "pairs": [b.pairs for b in chunk],
                        "opens": [b.open_drops for b in chunk],
                        "now": plan.now,
                    },
                )
            return w.seconds

        # One transaction per day (one partition each), as many at once as there are CPUs.
        with timed() as events_watch, ThreadPoolExecutor(max_workers=workers) as pool:
            list(pool.map(load_day, plan.days))

        with engine.begin() as conn:
            conn.execute(
                text(
                    "SELECT setval(pg_get_serial_sequence('drop_events', 'id'), "
                    "(SELECT max(id) FROM drop_events))"
                )
            )
            conn.execute(text(_LOAD_OPEN_DROPS), {"today": plan.today})
            with_baseline = [b for b in plan.buckets if b.baseline]
            conn.execute(
                text(_LOAD_BASELINE),
                {
                    "ids": [b.bucket_id for b in with_baseline],
                    "days": [b.day for b in with_baseline],
                    "anchors": [b.anchor for b in with_baseline],
                    "counts": [b.baseline for b in with_baseline],
                    "now": plan.now,
                },
            )
            conn.execute(text(_MARK_BUCKETS), {"now": plan.now})
        with engine.connect() as conn:
            conn.execute(text("ANALYZE"))
            conn.commit()
    with engine.connect() as conn:
        counts: dict[str, int] = dict(
            conn.execute(
                text("SELECT event_type, count(*) FROM drop_events GROUP BY event_type")
            ).all()
        )
        open_count = conn.execute(text("SELECT count(*) FROM open_slots")).scalar_one()
        baseline_count = conn.execute(text("SELECT count(*) FROM baseline_slots")).scalar_one()
    new_drops = int(counts.get(EVENT_NEW_DROP, 0))
    closed = int(counts.get(EVENT_CLOSED, 0))
    return LoadReport(
        seconds=watch.seconds,
        events_seconds=events_watch.seconds,
        events=new_drops + closed,
        new_drops=new_drops,
        closed=closed,
        open_slots=int(open_count),
        baseline_slots=int(baseline_count),
        workers=workers,
    )


def check_slot_ids_agree(engine: Engine, plan: DataPlan) -> None:
    """The SQL slot mapping and `slot_for` (the poller's `slot_id_for`) must give the same ids."""
    day, anchor = plan.ours.day, plan.ours.anchor
    probes = [0, 1999, BENCH_NEW_BASE + 7, SLOT_SPACE - 1]
    with engine.connect() as conn:
        for s in probes:
            sql = f"SELECT {_slot_columns(str(s), ':day', ':anchor')}"
            row = conn.execute(text(sql), {"day": day, "anchor": anchor}).one()
            expected = slot_for(day, anchor, s)
            got = (row.slot_id, row.venue_id, row.seating_type)
            want = (expected.slot_id, expected.venue_id, expected.seating_type)
            if got != want:
                raise SystemExit(f"slot mapping disagrees for s={s}: SQL {got} vs Python {want}")


# --- the fetches ---------------------------------------------------------------------------------


def fetch_of(bucket: BucketPlan, indices: Iterable[int]) -> BucketFetch:
    """What a provider fetch would return: the slots `indices`, for party sizes 2 and/or 4."""
    fetch = BucketFetch()
    for s in indices:
        slot = slot_for(bucket.day, bucket.anchor, s)
        fetch.venues[slot.venue_id] = venue_info(slot.venue_id)
        sizes = ((2,), (2, 4), (4,))[s % 3]
        for size in sizes:
            fetch.add(slot, size)
    return fetch


def base_indices() -> list[int]:
    return list(range(BENCH_OPEN))


def changed_indices(k: int) -> list[int]:
    """The open state with its first k slots gone and k new ones."""
    return list(range(k, BENCH_OPEN)) + list(range(BENCH_NEW_BASE, BENCH_NEW_BASE + k))


# --- ours: the real write path ---------------------------------------------------------------


@dataclass
class Sample:
    ms: float
    statements: int
    parts: dict[str, float] = field(default_factory=dict)  # ms per kind of work
    kinds: dict[str, int] = field(default_factory=dict)  # statements per kind


def make_sample(
    window: Window, ms: float, parts: Sequence[str], kind_of: Callable[[str], str]
) -> Sample:
    """Split a poll's wall time by statement kind; "other" is what no statement accounts for."""
    times = {name: 0.0 for name in parts}
    kinds = {name: 0 for name in parts if name != "other"}
    for statement in window.statements:
        kind = kind_of(statement.sql)
        times[kind] += statement.seconds * 1000
        kinds[kind] += 1
    times["other"] += ms - window.seconds() * 1000
    return Sample(ms=ms, statements=window.count, parts=times, kinds=kinds)


OUR_PARTS = ("lease", "check_lease", "upsert_venues", "write", "other")


def _our_kind(sql: str) -> str:
    head = " ".join(sql.split()).upper()
    if head.startswith("UPDATE DISCOVERY_BUCKETS B SET LEASE_OWNER"):
        return "lease"
    if head.startswith("SELECT SNAPSHOT_VERSION, LEASE_OWNER"):
        return "check_lease"
    if head.startswith("INSERT INTO VENUES"):
        return "upsert_venues"
    if head.startswith("WITH CUR AS"):
        return "write"
    raise SystemExit(f"unexpected statement in our poll: {head[:80]}")


async def our_poll(
    aengine: AsyncEngine, bucket: BucketPlan, fetch: BucketFetch
) -> tuple[store.WriteResult, float]:
    now = dt.datetime.now(dt.UTC)
    with timed() as watch:
        async with aengine.begin() as conn:
            leased = await store.lease_one(
                conn, owner=OWNER, bucket_id=bucket.bucket_id, lease_seconds=60
            )
        if leased is None:
            raise SystemExit(f"could not lease {bucket.bucket_id}")
        async with aengine.begin() as conn:
            await store.check_lease(conn, leased, OWNER)
            await store.upsert_venues(conn, fetch, PROVIDER)
            result = await store.write_healthy_poll(
                conn,
                leased,
                fetch,
                market=MARKET,
                provider=PROVIDER,
                prime=bucket.anchor == PRIME_ANCHOR,
                outcome="healthy",
                now=now,
                next_poll_at=now,
            )
    return result, watch.ms


def _expect(what: str, got: tuple[int, int], k: int) -> None:
    if got != (k, k):
        raise SystemExit(f"{what}: expected {k} new and {k} closed, got {got}")


async def bench_ours(
    aengine: AsyncEngine,
    recorder: StatementRecorder,
    bucket: BucketPlan,
    k: int,
    repeats: int,
    warmups: int,
) -> list[Sample]:
    base = fetch_of(bucket, base_indices())
    changed = fetch_of(bucket, changed_indices(k))
    samples: list[Sample] = []
    for i in range(warmups + repeats):
        with recorder.window() as window:
            result, ms = await our_poll(aengine, bucket, changed)
        _expect("ours", (result.new_drops, result.closed), k)
        back, _ = await our_poll(aengine, bucket, base)  # restore the 2000-slot open state
        _expect("ours (restore)", (back.new_drops, back.closed), k)
        if i >= warmups:
            samples.append(make_sample(window, ms, OUR_PARTS, _our_kind))
    return samples


# --- the original pattern (review section 3) ------------------------------------------------


ORIGINAL_PARTS = ("bucket", "dedupe", "insert", "lookups", "other")


@dataclass
class OriginalState:
    """The original's snapshot: slot id -> slot, as its JSON column held it (kept in memory)."""

    snapshot: dict[str, Slot] = field(default_factory=dict)
    poll_no: int = 0


def original_poll(
    engine: Engine, bucket: BucketPlan, state: OriginalState, fetch: BucketFetch
) -> tuple[int, int, float]:
    """One poll as the review describes `run_poll_for_bucket`; returns (new, closed, ms)."""
    now = dt.datetime.now(dt.UTC)
    bid = bucket.bucket_id
    time_bucket = "prime" if bucket.anchor == PRIME_ANCHOR else "off_peak"
    with timed() as watch, Session(engine) as db:
        row = db.get(DiscoveryBucket, bid)  # the original read its snapshot from this row
        if row is None:
            raise SystemExit(f"bucket {bid} is missing")
        state.poll_no += 1
        prev_set = set(state.snapshot)
        curr_set = set(fetch.slots)
        new_slots = [fetch.slots[sid] for sid in fetch.slots if sid not in prev_set]
        closed_slots = [sid for sid in state.snapshot if sid not in curr_set]

        # 3.1 NEW_DROP: one batched dedupe query, then add_all.
        to_insert = [
            DropEvent(
                bucket_date=bucket.day,
                bucket_id=bid,
                market=MARKET,
                provider=PROVIDER,
                slot_id=slot.slot_id,
                venue_id=slot.venue_id,
                event_type=EVENT_NEW_DROP,
                opened_at=now,
                slot_date=slot.start.date(),
                slot_time=slot.start.time(),
                seating_type=slot.seating_type,
                party_sizes=sorted(slot.party_sizes),
                time_slot=bucket.anchor,
                time_bucket=time_bucket,
                dedupe_key=f"{EVENT_NEW_DROP}:{bid}:{slot.slot_id}:{state.poll_no}",
            )
            for slot in new_slots
        ]
        if to_insert:
            keys = [e.dedupe_key for e in to_insert]
            existing = set(
                db.scalars(select(DropEvent.dedupe_key).where(DropEvent.dedupe_key.in_(keys)))
            )
            to_insert = [e for e in to_insert if e.dedupe_key not in existing]
            db.add_all(to_insert)

        # 3.2 CLOSED: one query per closed slot (the N+1).
        to_insert_closed = []
        for sid in closed_slots:
            last_drop = (
                db.query(DropEvent)
                .filter(
                    DropEvent.bucket_id == bid,
                    DropEvent.slot_id == sid,
                    DropEvent.event_type == EVENT_NEW_DROP,
                )
                .order_by(DropEvent.opened_at.desc())
                .limit(1)
                .first()
            )
            if last_drop is None:
                continue
            to_insert_closed.append(
                DropEvent(
                    bucket_date=bucket.day,
                    bucket_id=bid,
                    market=MARKET,
                    provider=PROVIDER,
                    slot_id=sid,
                    venue_id=last_drop.venue_id,
                    event_type=EVENT_CLOSED,
                    opened_at=last_drop.opened_at,
                    closed_at=now,
                    drop_duration_seconds=(now - last_drop.opened_at).total_seconds(),
                    slot_date=last_drop.slot_date,
                    slot_time=last_drop.slot_time,
                    seating_type=last_drop.seating_type,
                    party_sizes=last_drop.party_sizes,
                    time_slot=last_drop.time_slot,
                    time_bucket=last_drop.time_bucket,
                    dedupe_key=f"{EVENT_CLOSED}:{last_drop.id}",
                    drop_event_id=last_drop.id,
                )
            )
        db.add_all(to_insert_closed)
        # Stands in for rewriting the JSON snapshot column of the bucket row.
        row.last_polled_at = now
        row.last_healthy_poll_at = now
        row.snapshot_version = row.snapshot_version + 1
        db.commit()
    state.snapshot = dict(fetch.slots)
    return len(to_insert), len(to_insert_closed), watch.ms


def bench_original(
    engine: Engine,
    recorder: StatementRecorder,
    bucket: BucketPlan,
    state: OriginalState,
    k: int,
    repeats: int,
    warmups: int,
) -> list[Sample]:
    base = fetch_of(bucket, base_indices())
    changed = fetch_of(bucket, changed_indices(k))
    samples: list[Sample] = []
    for i in range(warmups + repeats):
        with recorder.window() as window:
            new, closed, ms = original_poll(engine, bucket, state, changed)
        _expect("original", (new, closed), k)
        new, closed, _ = original_poll(engine, bucket, state, base)
        _expect("original (restore)", (new, closed), k)
        if i >= warmups:
            samples.append(make_sample(window, ms, ORIGINAL_PARTS, _original_kind))
    return samples


def _original_kind(sql: str) -> str:
    head = " ".join(sql.split()).upper()
    if head.startswith("INSERT"):
        return "insert"
    if "DEDUPE_KEY IN" in head:
        return "dedupe"
    if "ORDER BY DROP_EVENTS.OPENED_AT DESC" in head:
        return "lookups"
    return "bucket"


# --- EXPLAIN --------------------------------------------------------------------------------


async def explain_ours(
    aengine: AsyncEngine, recorder: StatementRecorder, bucket: BucketPlan, k: int
) -> str:
    """EXPLAIN ANALYZE of the real write statement for k new + k closed, then roll back."""
    recorder.keep_parameters = True
    try:
        with recorder.window() as window:
            await our_poll(aengine, bucket, fetch_of(bucket, changed_indices(k)))
    finally:
        recorder.keep_parameters = False
    await our_poll(aengine, bucket, fetch_of(bucket, base_indices()))  # back to 2000 open
    write = window.statements[-1]
    params = dict(write.parameters)
    async with aengine.connect() as conn:
        version = (
            await conn.execute(
                text("SELECT snapshot_version FROM discovery_buckets WHERE bucket_id = :b"),
                {"b": bucket.bucket_id},
            )
        ).scalar_one()
        params["new_version"] = int(version) + 1  # fresh dedupe keys, as a real next poll
        params["now"] = dt.datetime.now(dt.UTC)
        rows = await conn.exec_driver_sql(
            "EXPLAIN (ANALYZE, BUFFERS, SUMMARY) " + write.sql, params
        )
        plan = "\n".join(str(r[0]) for r in rows)
        await conn.rollback()
    return plan


def explain_original_lookup(engine: Engine, recorder: StatementRecorder, bucket: BucketPlan) -> str:
    """EXPLAIN ANALYZE of one of the original's per-closed-slot lookups."""
    slot = slot_for(bucket.day, bucket.anchor, 0)
    query = (
        select(DropEvent)
        .where(
            DropEvent.bucket_id == bucket.bucket_id,
            DropEvent.slot_id == slot.slot_id,
            DropEvent.event_type == EVENT_NEW_DROP,
        )
        .order_by(DropEvent.opened_at.desc())
        .limit(1)
    )
    recorder.keep_parameters = True
    try:
        with recorder.window() as window, Session(engine) as db:
            db.execute(query).first()
    finally:
        recorder.keep_parameters = False
    statement = window.statements[-1]
    with engine.connect() as conn:
        rows = conn.exec_driver_sql(
            "EXPLAIN (ANALYZE, BUFFERS, SUMMARY) " + statement.sql, statement.parameters
        )
        return "\n".join(str(r[0]) for r in rows)


# --- report ---------------------------------------------------------------------------------


@dataclass
class Row:
    k: int
    ours: list[Sample]
    original: list[Sample]

    @property
    def ours_ms(self) -> float:
        return median([s.ms for s in self.ours])

    @property
    def original_ms(self) -> float:
        return median([s.ms for s in self.original])

    @property
    def speedup(self) -> float:
        return self.original_ms / self.ours_ms

    @staticmethod
    def statements(samples: Sequence[Sample]) -> str:
        counts = sorted({s.statements for s in samples})
        return "/".join(str(c) for c in counts)


@dataclass
class Report:
    command: str
    db: BenchDatabase
    server: ServerInfo
    plan: DataPlan
    load: LoadReport
    repeats: int
    warmups: int
    rows: list[Row]
    explains: dict[str, str]

    def targets(self) -> list[tuple[str, str, str]]:
        """(verdict, target, measured)."""
        out = []
        ours_counts = {s.statements for r in self.rows for s in r.ours}
        constant = len(ours_counts) == 1 and max(ours_counts) <= TARGET_MAX_STATEMENTS
        ks = ", ".join(str(r.k) for r in self.rows)
        out.append(
            (
                "PASS" if constant else "MISS",
                f"statements per poll constant and at most {TARGET_MAX_STATEMENTS}",
                f"{'/'.join(map(str, sorted(ours_counts)))} at every k ({ks})",
            )
        )
        at = next((r for r in self.rows if r.k == TARGET_K), None)
        if at is None:
            out.append(("n/a", f"k={TARGET_K} under {TARGET_MS:.0f} ms", "k=1000 not measured"))
            out.append(("n/a", f"at least {TARGET_SPEEDUP:.0f}x faster at k={TARGET_K}", "-"))
        else:
            out.append(
                (
                    "PASS" if at.ours_ms < TARGET_MS else "MISS",
                    f"k={TARGET_K} under {TARGET_MS:.0f} ms",
                    f"{at.ours_ms:.1f} ms (median)",
                )
            )
            out.append(
                (
                    "PASS" if at.speedup >= TARGET_SPEEDUP else "MISS",
                    f"at least {TARGET_SPEEDUP:.0f}x faster than the original at k={TARGET_K}",
                    f"{at.speedup:.1f}x ({at.original_ms:.0f} ms vs {at.ours_ms:.1f} ms)",
                )
            )
        return out

    def machine(self) -> str:
        mem = memory_gib()
        memory = f", {mem:.0f} GiB RAM" if mem is not None else ""
        return (
            f"{cpu_count()} CPUs (nproc; {cpu_model()}){memory}, {platform.system()} "
            f"{platform.release()}, Python {platform.python_version()}"
        )

    def postgres(self) -> str:
        s = self.server.settings
        return (
            f"PostgreSQL {self.server.version}, {self.db.server}; shared_buffers="
            f"{s['shared_buffers']}, work_mem={s['work_mem']}, "
            f"synchronous_commit={s['synchronous_commit']}, fsync={s['fsync']}, jit={s['jit']}"
        )

    def data(self) -> str:
        ld = self.load
        return (
            f"{ld.events:,} drop_events ({ld.new_drops:,} NEW_DROP, {ld.closed:,} CLOSED) over "
            f"{len(self.plan.days)} daily partitions ({PAST_DAYS} past + {LIVE_DAYS} live days, "
            f"anchors {' and '.join(ANCHORS)}), {VENUES} venues; {ld.open_slots:,} open_slots and "
            f"{ld.baseline_slots:,} baseline_slots. Events inserted set-based (INSERT ... SELECT "
            f"FROM generate_series, {ld.workers} day transactions at a time) in "
            f"{ld.events_seconds:.1f} s = {ld.events / ld.events_seconds:,.0f} rows/s; whole "
            f"load incl. open state and ANALYZE {ld.seconds:.1f} s = "
            f"{ld.events / ld.seconds:,.0f} events/s"
        )

    def method(self) -> str:
        return (
            f"Each k: a poll of a live bucket whose open state holds {BENCH_OPEN} slots, with k "
            f"new and k closed slots; {self.warmups} warm-up + {self.repeats} timed polls per "
            "method, the state restored after each by an untimed poll back. Ours = lease "
            "transaction + write transaction (check_lease, upsert_venues, write_healthy_poll) "
            f"on bucket {self.plan.ours.bucket_id}, via the asyncio engine. Original = the "
            "review's section 3 pattern (sync ORM session, dedupe IN query, add_all, one "
            "last-NEW_DROP query per closed slot, add_all, commit) on the sibling bucket "
            f"{self.plan.original.bucket_id}; its previous snapshot is a dict in memory. "
            "Statements = cursor executions (pool pre-ping and COMMIT not counted)."
        )

    def main_table(self) -> tuple[list[str], list[list[str]]]:
        head = [
            "k",
            "ours ms (median)",
            "ours statements",
            "original ms (median)",
            "original statements",
            "speed-up",
        ]
        body = [
            [
                str(r.k),
                f"{r.ours_ms:.1f}",
                Row.statements(r.ours),
                f"{r.original_ms:.1f}",
                Row.statements(r.original),
                f"{r.speedup:.1f}x",
            ]
            for r in self.rows
        ]
        return head, body

    def spread_table(self) -> tuple[list[str], list[list[str]]]:
        head = ["k", "ours min / p90 / max ms", "original min / p90 / max ms"]

        def spread(samples: Sequence[Sample]) -> str:
            ms = [s.ms for s in samples]
            return f"{min(ms):.1f} / {percentile(ms, 90):.1f} / {max(ms):.1f}"

        return head, [[str(r.k), spread(r.ours), spread(r.original)] for r in self.rows]

    def kinds_table(self) -> tuple[list[str], list[list[str]]]:
        def kinds(samples: Sequence[Sample]) -> str:
            last = samples[-1].kinds
            return ", ".join(f"{name} {count}" for name, count in last.items() if count)

        head = ["k", "ours: statements by kind", "original: statements by kind"]
        return head, [[str(r.k), kinds(r.ours), kinds(r.original)] for r in self.rows]

    def parts_table(self) -> tuple[list[str], list[list[str]]]:
        head = ["k"] + [f"ours {p}" for p in OUR_PARTS] + [f"orig {p}" for p in ORIGINAL_PARTS]
        body = []
        for r in self.rows:
            ours = [median([s.parts[p] for s in r.ours]) for p in OUR_PARTS]
            orig = [median([s.parts[p] for s in r.original]) for p in ORIGINAL_PARTS]
            body.append([str(r.k)] + [f"{v:.1f}" for v in ours + orig])
        return head, body


KINDS_NOTE = (
    "The original's INSERTs go one row per statement: the ORM needs the server-generated id "
    "back (RETURNING) and cannot batch it for DropEvent's composite primary key (id, "
    "bucket_date), which has no insert sentinel. Its bucket statements are the bucket row's "
    "read and update."
)

PARTS_NOTE = (
    "Median ms per part. A statement part is the time from before_cursor_execute to "
    "after_cursor_execute: the driver adapting the parameters, the round trip and the server's "
    "work. ours: lease = lease_one, check_lease = version check "
    "FOR UPDATE, write = the one write_healthy_poll statement, other = COMMITs, pool checkouts "
    "(with pre-ping) and Python. orig: bucket = loading and updating the bucket row, dedupe = the "
    "dedupe_key IN query, insert = the ORM's INSERT statements, lookups = the N per-slot queries, "
    "other = ORM/Python work, COMMIT and checkout."
)


def render_plain(report: Report) -> str:
    out = [
        "dropwatch poller write path benchmark (bench/poll_write.py)",
        f"command:  {report.command}",
        f"machine:  {report.machine()}",
        f"database: {report.postgres()}",
        f"data:     {report.data()}",
        "",
        report.method(),
        "",
        plain_table(*report.main_table()),
        "",
        "targets:",
    ]
    out += [f"  {v:4}  {t}: {m}" for v, t, m in report.targets()]
    out += ["", "spread:", plain_table(*report.spread_table()), ""]
    out += ["statements per poll:", plain_table(*report.kinds_table()), KINDS_NOTE, ""]
    out += ["where the time goes:", plain_table(*report.parts_table()), PARTS_NOTE]
    for title, plan in report.explains.items():
        out += ["", f"{title}:", plan]
    return "\n".join(out)


def render_markdown(report: Report) -> str:
    out = [
        "## Poller write path: benchmark",
        "",
        f"`{report.command}`",
        "",
        f"- Machine: {report.machine()}",
        f"- Database: {report.postgres()}",
        f"- Data: {report.data()}",
        f"- Method: {report.method()}",
        "",
        md_table(*report.main_table()),
        "",
        "| target | measured | verdict |",
        "|---|---|---|",
    ]
    out += [f"| {t} | {m} | **{v}** |" for v, t, m in report.targets()]
    out += ["", "Spread over the timed polls:", "", md_table(*report.spread_table())]
    out += ["", "Statements per poll:", "", md_table(*report.kinds_table()), "", KINDS_NOTE]
    out += ["", "Where the time goes:", "", md_table(*report.parts_table()), "", PARTS_NOTE]
    for title, plan in report.explains.items():
        out += details(title, plan)
    return "\n".join(out)


# --- main -----------------------------------------------------------------------------------


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m bench.poll_write", description=__doc__.split("\n\n")[0] if __doc__ else ""
    )
    parser.add_argument("--events", type=int, default=1_000_000, help="drop_events to load")
    parser.add_argument("--ks", default="10,100,1000", help="new (= closed) slots per poll")
    parser.add_argument("--repeats", type=int, default=5, help="timed polls per k and method")
    parser.add_argument("--warmups", type=int, default=1, help="untimed polls first, per k")
    parser.add_argument("--markdown", action="store_true", help="print a Markdown section")
    parser.add_argument(
        "--explain", action="store_true", help="add EXPLAIN ANALYZE of the write at the largest k"
    )
    args = parser.parse_args(argv)
    try:
        args.k_list = [int(k) for k in args.ks.split(",") if k.strip()]
    except ValueError:
        parser.error("--ks must be comma-separated integers")
    if not args.k_list or any(not 1 <= k <= BENCH_OPEN for k in args.k_list):
        parser.error(f"--ks values must be between 1 and {BENCH_OPEN}")
    if args.events < MIN_EVENTS:
        parser.error(f"--events must be at least {MIN_EVENTS}")
    if args.repeats < 1 or args.warmups < 0:
        parser.error("--repeats must be >= 1 and --warmups >= 0")
    return args


def command_line(argv: Sequence[str]) -> str:
    return " ".join([".venv/bin/python -m bench.poll_write", *argv]).strip()


async def run(args: argparse.Namespace, command: str) -> Report:
    with bench_database() as db:
        log(f"database {db.name} on {db.server}; migrating")
        migrate_to_head(db.url)
        loader = make_engine(
            bench_settings(db_statement_timeout_ms=0, db_pool_size=8),
            name="bench-load",
            url=db.url,
        )
        aengine = make_async_engine(bench_settings(), name="bench", url=db.url)
        sync_engine = make_engine(bench_settings(), name="bench-original", url=db.url)
        try:
            info = server_info(loader)
            plan = make_plan(args.events, dt.datetime.now(dt.UTC))
            check_slot_ids_agree(loader, plan)
            log(f"loading ~{plan.events:,} drop_events ({len(plan.buckets)} buckets)")
            loaded = load(loader, plan)
            log(
                f"loaded {loaded.events:,} drop_events in {loaded.seconds:.1f} s "
                f"({loaded.events / loaded.seconds:,.0f} rows/s)"
            )
            with loader.begin() as conn:
                # Both benchmark buckets: non-baselining, empty open state.
                conn.execute(
                    text(
                        "UPDATE discovery_buckets SET baseline_polls = 3 "
                        "WHERE bucket_id IN (:a, :b)"
                    ),
                    {"a": plan.ours.bucket_id, "b": plan.original.bucket_id},
                )
            ours_recorder = StatementRecorder(aengine.sync_engine)
            original_recorder = StatementRecorder(sync_engine)
            # Seed both open states with 2000 drops (ours: a real poll; original: its own poll).
            seeded, _ = await our_poll(aengine, plan.ours, fetch_of(plan.ours, base_indices()))
            state = OriginalState()
            new, _, _ = original_poll(
                sync_engine, plan.original, state, fetch_of(plan.original, base_indices())
            )
            if (seeded.new_drops, new) != (BENCH_OPEN, BENCH_OPEN):
                raise SystemExit(f"seeding: {seeded.new_drops} and {new} drops, not {BENCH_OPEN}")
            rows = []
            for k in args.k_list:
                log(f"k={k}: ours")
                ours = await bench_ours(
                    aengine, ours_recorder, plan.ours, k, args.repeats, args.warmups
                )
                log(f"k={k}: original ({k} lookups per poll)")
                original = bench_original(
                    sync_engine,
                    original_recorder,
                    plan.original,
                    state,
                    k,
                    args.repeats,
                    args.warmups,
                )
                rows.append(Row(k, ours, original))
                log(
                    f"k={k}: ours {rows[-1].ours_ms:.1f} ms, original {rows[-1].original_ms:.1f} ms"
                )
            explains = {}
            if args.explain:
                k = max(args.k_list)
                explains[
                    f"EXPLAIN ANALYZE of write_healthy_poll's statement, k={k}"
                ] = await explain_ours(aengine, ours_recorder, plan.ours, k)
                explains["EXPLAIN ANALYZE of one original per-closed-slot lookup"] = (
                    explain_original_lookup(sync_engine, original_recorder, plan.original)
                )
            return Report(
                command=command,
                db=db,
                server=info,
                plan=plan,
                load=loaded,
                repeats=args.repeats,
                warmups=args.warmups,
                rows=rows,
                explains=explains,
            )
        finally:
            await aengine.dispose()
            sync_engine.dispose()
            loader.dispose()


def main(argv: Sequence[str] | None = None) -> int:
    raw = list(sys.argv[1:] if argv is None else argv)
    args = parse_args(raw)
    report = asyncio.run(run(args, command_line(raw)))
    render: Callable[[Report], str] = render_markdown if args.markdown else render_plain
    print(render(report))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
