"""The poller's write path against the original N+1 pattern (docs/performance.md, Poller write)."""

from __future__ import annotations

import argparse
import datetime as dt
import sys
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import Any, NamedTuple

from sqlalchemy import Engine, select
from sqlalchemy.ext.asyncio import AsyncEngine
from sqlalchemy.orm import Session

from bench import harness
from bench.harness import Point, Section, StatementRecorder, Target, engine_for, median
from services.poller import store
from services.poller.slots import BucketFetch, Slot
from shared.db.buckets import bucket_id_for
from shared.db.engine import make_async_engine
from shared.db.models import EVENT_CLOSED, EVENT_NEW_DROP, DiscoveryBucket, DropEvent
from shared.settings import Settings
from tools.database import PgServer
from tools.seed import SeedPlan, make_plan
from tools.seed.plan import PROVIDER, BucketSeed, slot_for, venue_info

OPEN = 2000  # slots in a benchmark bucket's open state (its first slot indices)
NEW_BASE = 40_000  # slot index of the first slot a measured poll opens
TARGET_MAX_STATEMENTS, TARGET_K, TARGET_MS, TARGET_SPEEDUP = 8, 1000, 150.0, 20.0
KINDS = {  # how a statement of ours starts, what one of the original's holds: its kind
    "UPDATE DISCOVERY_BUCKETS B SET LEASE_OWNER": "lease",
    "SELECT SNAPSHOT_VERSION, LEASE_OWNER": "check_lease",
    "INSERT INTO VENUES": "upsert_venues",
    "WITH CUR AS": "write",
    "INSERT": "insert",
    "DEDUPE_KEY IN": "dedupe",
    "ORDER BY DROP_EVENTS.OPENED_AT DESC": "lookups",
}
OUR_PARTS = ("lease", "check_lease", "upsert_venues", "write", "other")
ORIGINAL_PARTS = ("bucket", "dedupe", "insert", "lookups", "other")
# what a CLOSED copies from its NEW_DROP
COPIED = "venue_id opened_at slot_date slot_time seating_type party_sizes time_slot time_bucket"


def setup(events: int) -> tuple[SeedPlan, BucketSeed, BucketSeed]:
    """The seed's plan; today+3 and today+4 19:00 (ours, the original's) without open state."""
    full = make_plan(Settings(), events, now=dt.datetime.now(dt.UTC))
    ids = [bucket_id_for(full.today + dt.timedelta(days=d), "19:00") for d in (3, 4)]
    if not set(ids) <= {b.bucket_id for b in full.buckets} or full.space < NEW_BASE + OPEN:
        raise SystemExit(f"the plan has no buckets {ids} or too few slots")
    plan = full.without_state(*ids)
    return plan, plan.bucket(ids[0]), plan.bucket(ids[1])


def fetch_of(plan: SeedPlan, bucket: BucketSeed, indices: Sequence[int]) -> BucketFetch:
    """A provider fetch returning the seed's slots `indices`, for party sizes 2 and/or 4."""
    fetch = BucketFetch()
    for s in indices:
        slot = slot_for(plan.venues, bucket.day, bucket.anchor, s)
        fetch.venues[slot.venue_id] = venue_info(slot.venue_id)
        for size in ((2,), (2, 4), (4,))[s % 3]:
            fetch.add(slot, size)
    return fetch


class Sample(NamedTuple):
    ms: float
    parts: dict[str, float]  # ms per kind of work; "other": what no statement accounts for
    kinds: dict[str, int]  # statements per kind


Poll = Callable[[BucketFetch], Awaitable[tuple[int, int, float]]]
Method = tuple[Poll, StatementRecorder]


async def polls(
    method: Method, bucket: BucketSeed, plan: SeedPlan, k: int, args: argparse.Namespace
) -> list[Sample]:
    """Timed polls with k new and k closed slots, each followed by an untimed one back."""
    poll, recorder = method
    base = fetch_of(plan, bucket, range(OPEN))
    moved = fetch_of(plan, bucket, [*range(k, OPEN), *range(NEW_BASE, NEW_BASE + k)])
    samples = []
    for i in range(args.warmups + args.repeats):
        with recorder.window() as window:
            new, closed, ms = await poll(moved)
        back = await poll(base)
        if (new, closed, *back[:2]) != (k, k, k, k):
            raise SystemExit(f"{bucket}: {new} new, {closed} closed, back {back[:2]}")
        parts, kinds = harness.split(window, kind)
        parts["other"] = ms - sum(parts.values())
        if i >= args.warmups:
            samples.append(Sample(ms, parts, kinds))
    return samples


def kind(sql: str) -> str:
    """A statement's kind: by how it starts, else by what it holds ("bucket": neither)."""
    head = " ".join(sql.split()).upper()
    found = [k for key, k in KINDS.items() if head.startswith(key)]
    return next(iter(found + [k for key, k in KINDS.items() if key in head]), "bucket")


def our_poll(aengine: AsyncEngine, plan: SeedPlan, bucket: BucketSeed) -> Poll:
    """Lease transaction, then one of version check, venue upsert and the write."""
    prime = bucket.anchor in plan.prime_anchors
    lease: dict[str, Any] = dict(owner="bench", bucket_id=bucket.bucket_id, lease_seconds=60)

    async def ours(fetch: BucketFetch) -> tuple[int, int, float]:
        now = dt.datetime.now(dt.UTC)
        with harness.Timer() as timer:
            async with aengine.begin() as conn:
                leased = await store.lease_one(conn, **lease)
            if leased is None:
                raise SystemExit(f"could not lease {bucket.bucket_id}")
            async with aengine.begin() as conn:
                await store.check_lease(conn, leased, "bench")
                await store.upsert_venues(conn, fetch, PROVIDER)
                kw: dict[str, Any] = dict(market=plan.market, provider=PROVIDER, prime=prime)
                kw.update(outcome="healthy", now=now, next_poll_at=now)
                result = await store.write_healthy_poll(conn, leased, fetch, **kw)
        return result.new_drops, result.closed, timer.ms

    return ours


def original_poll(engine: Engine, plan: SeedPlan, bucket: BucketSeed) -> Poll:
    """The original `run_poll_for_bucket`; its previous snapshot is a dict in memory."""
    snapshot: dict[str, Slot] = {}
    number = [0]
    bid, tb = bucket.bucket_id, "prime" if bucket.anchor in plan.prime_anchors else "off_peak"

    async def original(fetch: BucketFetch) -> tuple[int, int, float]:
        now = dt.datetime.now(dt.UTC)
        number[0] += 1
        with harness.Timer() as timer, Session(engine) as db:
            row = db.get(DiscoveryBucket, bid)  # the original read its snapshot from this row
            assert row is not None
            common = dict(bucket_date=bucket.day, bucket_id=bid, market=plan.market)
            common.update(provider=PROVIDER)
            new = [
                DropEvent(
                    **common,
                    **{c: getattr(slot, c) for c in ("slot_id", "venue_id", "seating_type")},
                    **dict(event_type=EVENT_NEW_DROP, opened_at=now, time_slot=bucket.anchor),
                    **dict(slot_date=slot.start.date(), slot_time=slot.start.time()),
                    party_sizes=sorted(slot.party_sizes),
                    time_bucket=tb,
                    dedupe_key=f"{EVENT_NEW_DROP}:{bid}:{slot.slot_id}:{number[0]}",
                )
                for sid, slot in fetch.slots.items()
                if sid not in snapshot
            ]
            if new:
                keys = [e.dedupe_key for e in new]
                query = select(DropEvent.dedupe_key).where(DropEvent.dedupe_key.in_(keys))
                existing = set(db.scalars(query))
                new = [e for e in new if e.dedupe_key not in existing]
                db.add_all(new)
            closed = []
            for sid in [sid for sid in snapshot if sid not in fetch.slots]:  # the N+1
                lookup = db.query(DropEvent).filter_by(bucket_id=bid, slot_id=sid)
                lookup = lookup.filter_by(event_type=EVENT_NEW_DROP)
                last = lookup.order_by(DropEvent.opened_at.desc()).limit(1).first()
                if last is not None:
                    kept = {c: getattr(last, c) for c in COPIED.split()}
                    kept.update(event_type=EVENT_CLOSED, slot_id=sid, closed_at=now)
                    kept.update(dedupe_key=f"{EVENT_CLOSED}:{last.id}", drop_event_id=last.id)
                    seconds = (now - last.opened_at).total_seconds()
                    closed.append(DropEvent(**common, **kept, drop_duration_seconds=seconds))
            db.add_all(closed)
            row.last_polled_at = row.last_healthy_poll_at = now  # stands in for the JSON column
            row.snapshot_version += 1
            db.commit()
        snapshot.clear()
        snapshot.update(fetch.slots)
        return len(new), len(closed), timer.ms

    return original


@dataclass
class Row:
    k: int
    ours: list[Sample]  # phase 1: the real schema
    indexed: list[Sample]  # phase 2: ours again, maintaining the review's 8 indexes
    original: list[Sample]  # phase 2

    def ms(self, which: str) -> float:
        return median([s.ms for s in getattr(self, which)])


Result = tuple[str, int, list[Row]]  # what was loaded, drop_events, a row per k


async def run(server: PgServer, args: argparse.Namespace) -> Result:
    """Phase 1: ours on the real schema; phase 2, after the review's indexes: both, per k."""
    with server.migrated("dw_bench_poll") as name:
        url = server.url_for(name)
        loader = engine_for(url, "bench-load")
        aengine = make_async_engine(Settings(), name="bench", url=url)
        sync = engine_for(url, "bench-original", db_statement_timeout_ms=15_000)
        plan, ours_bucket, orig_bucket = setup(args.events)
        seeded, data = harness.seed(loader, plan)
        ours = (our_poll(aengine, plan, ours_bucket), StatementRecorder(aengine.sync_engine))
        original = (original_poll(sync, plan, orig_bucket), StatementRecorder(sync))
        both = ((ours, ours_bucket), (original, orig_bucket))
        for (poll, _), bucket in both:
            if (opened := await poll(fetch_of(plan, bucket, range(OPEN))))[0] != OPEN:
                raise SystemExit(f"the first poll of {bucket} opened {opened}")  # base state
        phase1 = {k: await polls(ours, ours_bucket, plan, k, args) for k in args.ks}
        index_seconds = harness.create_review_indexes(loader)
        rows = [Row(k, phase1[k], *[await polls(*m, plan, k, args) for m in both]) for k in args.ks]
        data += f"; the review's 6 indexes created between the phases in {index_seconds:.1f} s; "
        data += f"buckets: ours {ours_bucket.bucket_id}, the original's {orig_bucket.bucket_id}"
        await aengine.dispose()
        sync.dispose()
        loader.dispose()
        return data, seeded.events, rows


def targets(rows: list[Row]) -> list[Target]:
    counts = sorted({sum(s.kinds.values()) for r in rows for s in r.ours})
    ks = ", ".join(str(r.k) for r in rows)
    what = f"statements per poll constant and at most {TARGET_MAX_STATEMENTS}"
    ok = len(counts) == 1 and counts[0] <= TARGET_MAX_STATEMENTS
    out = [Target(what, f"{'/'.join(map(str, counts))} at every k ({ks})", ok)]
    at = next((r for r in rows if r.k == TARGET_K), None)
    name = f"k={TARGET_K} under {TARGET_MS:.0f} ms"
    if at is None:
        return [*out, Target(name, "not measured", None)]
    ours, orig = at.ms("ours"), at.ms("original")
    out.append(Target(name, f"{ours:.1f} ms (median)", ours < TARGET_MS))
    fast = f"at least {TARGET_SPEEDUP:.0f}x faster than the original at k={TARGET_K}"
    speed = f"{orig / ours:.1f}x ({orig:.0f} ms vs {ours:.1f} ms)"
    return [*out, Target(fast, speed, orig / ours >= TARGET_SPEEDUP)]


def render(result: Result, section: Section) -> list[Point]:
    def counts(samples: list[Sample]) -> str:
        return "/".join(str(c) for c in sorted({sum(s.kinds.values()) for s in samples}))

    def spread(samples: list[Sample]) -> str:
        ms = [s.ms for s in samples]
        return f"{min(ms):.1f} / {harness.percentile(ms, 90):.1f} / {max(ms):.1f}"

    def kinds(samples: list[Sample]) -> str:
        return ", ".join(f"{name} {n}" for name, n in samples[-1].kinds.items() if n)

    def part(samples: list[Sample], name: str) -> str:
        return f"{median([s.parts[name] for s in samples]):.1f}"

    section.title, section.bullets["Data"] = "Poller write path: benchmark", result[0]
    main, rows = [], result[2]
    for r in rows:
        main.append([str(r.k), f"{r.ms('ours'):.1f}", counts(r.ours), f"{r.ms('original'):.1f}"])
        main[-1] += [counts(r.original), f"{r.ms('original') / r.ms('ours'):.1f}x"]
    head = ["k", "ours ms (median)", "ours statements", "original ms (median)"]
    section.table([*head, "original statements", "speed-up"], main).targets(targets(rows))
    head = ["k", "ours ms, real schema: 2 indexes (median)", "ours ms, review's 8 indexes"]
    head += ["difference", "write statement ms, 2 indexes", "write statement ms, 8 indexes"]
    body = []
    for r in rows:
        a, b = r.ms("ours"), r.ms("indexed")
        body.append([str(r.k), f"{a:.1f}", f"{b:.1f}", f"{b - a:+.1f} ms ({(b / a - 1):+.0%})"])
        body[-1] += [part(r.ours, "write"), part(r.indexed, "write")]
    section.table(head, body, "What the review's six dropped indexes cost our write:")
    head = ["k", "ours min / p90 / max ms", "ours, 8 indexes min / p90 / max ms"]
    body = [[str(r.k), spread(r.ours), spread(r.indexed), spread(r.original)] for r in rows]
    section.table([*head, "original min / p90 / max ms"], body, "Spread over the timed polls:")
    body = [[str(r.k), kinds(r.ours), kinds(r.original)] for r in rows]
    head = ["k", "ours: statements by kind", "original: statements by kind"]
    section.table(head, body, "Statements per poll:")
    head = ["k", *(f"ours {p}" for p in OUR_PARTS), *(f"orig {p}" for p in ORIGINAL_PARTS)]
    both = [(p, "ours") for p in OUR_PARTS] + [(p, "original") for p in ORIGINAL_PARTS]
    body = [[str(r.k), *(part(getattr(r, w), p) for p, w in both)] for r in rows]
    section.table(head, body, "Where the time goes (median ms per part):")
    n = result[1]
    return [Point(f"poll write, k={r.k}", "ms", n, r.ms("ours"), r.ms("original")) for r in rows]


if __name__ == "__main__":
    options = [
        ("--events", 1_000_000, "drop_events to load", 10_000, 1e9),
        ("--ks", [10, 100, 1000], "new (= closed) slots per poll", 1, OPEN),
        ("--repeats", 5, "timed polls per k and method", 1, 100),
        ("--warmups", 1, "untimed polls first, per k", 0, 100),
    ]
    sys.exit(harness.main("poll_write", __doc__, options, run, render))
