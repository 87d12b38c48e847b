"""WatchDrops against polling JustOpened every second: commit-to-client latency, fan-out,
change reads per commit and memory per stream (docs/performance.md)."""

from __future__ import annotations

import argparse
import asyncio
import datetime as dt
import itertools
import json
import math
import os
import random
import sys
import tempfile
import time
import urllib.request
from collections import Counter, defaultdict
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NamedTuple

import grpc
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine

from bench import harness
from bench.feed_parts import Server, free_port, served
from bench.harness import Point, Section, Target, percentile
from services.poller import store
from services.poller.slots import BucketFetch, Slot, VenueInfo
from shared.db.buckets import ensure_live_buckets, market_today
from shared.db.engine import make_async_engine
from shared.gen.dropwatch.feed.v1 import feed_pb2, feed_pb2_grpc
from shared.settings import Settings
from tools.database import PgServer

OWNER, ANCHORS, DAYS, VENUES, PER_CHANNEL = "bench-watch", ("15:00", "19:00"), 14, 400, 250
SIZES = ((2,), (2, 4), (4,), (2, 4, 6))
BASELINED = (  # every request kind baselined: what a poll adds is a drop
    "UPDATE discovery_buckets SET baseline_polls = 3, kind_baseline ="
    " (SELECT jsonb_object_agg(size::text, 3) FROM generate_series(1, 20) AS size)"
)
NOTIFY = '{trigger="notify"}'  # the hub's change reads woken by the poller's NOTIFY
WRITER = "import sys; from bench.watch import writer; writer(sys.argv[1:])"
Open = dict[str, tuple[Slot, tuple[int, ...]]]  # slot id: the slot, its party sizes
Got = list[tuple[int, str, float]]  # consumer, change key ("o"/"c" + slot id), monotonic time


def consumer_filter(i: int, dates: list[str]) -> feed_pb2.FeedFilter:
    """Of ten: one takes everything, two a party size, three a date, two prime time, two venues."""
    kind = (0, 1, 1, 2, 2, 2, 3, 3, 4, 4)[i % 10]
    return [
        feed_pb2.FeedFilter(),
        feed_pb2.FeedFilter(party_sizes=[2 + 2 * (i % 2)]),
        feed_pb2.FeedFilter(reservation_dates=[dates[i % len(dates)]]),
        feed_pb2.FeedFilter(time_slots=["19:00"], party_sizes=[2]),
        feed_pb2.FeedFilter(venue_ids=[1 + (i * 7 + k) % VENUES for k in range(20)]),
    ][kind]


def writer(argv: list[str]) -> None:
    """The writer process: at its end, each commit's time (monotonic, as COMMIT returned)."""
    url, phase, *numbers = argv
    print(json.dumps(asyncio.run(_write(url, phase, *map(float, numbers)))))


async def _write(
    url: str, phase: str, seconds: float, rate: float, changes: float, release: float
) -> dict[str, Any]:
    engine, rng = make_async_engine(Settings(), name="bench-writer", url=url), random.Random(phase)
    async with engine.connect() as conn:
        sql = "SELECT bucket_id, bucket_date FROM discovery_buckets ORDER BY bucket_id"
        buckets = [(str(r[0]), r[1]) for r in await conn.execute(text(sql))]
    state: dict[str, Open] = {b: {} for b, _ in buckets}
    commits: list[list[Any]] = []
    made, released, started = itertools.count(1), False, time.monotonic()
    while (elapsed := time.monotonic() - started) < seconds:
        bucket, day = buckets[len(commits) % len(buckets)]
        slots, kind = state[bucket], "steady"
        closing = list(slots)[: min(int(changes) // 2, len(slots))]
        opening = int(changes) - len(closing)
        if not released and elapsed >= seconds / 2:
            kind, closing, opening, released = "release", [], int(release), True
        keys = [f"c{s}" for s in closing]
        for slot_id in closing:
            del slots[slot_id]
        for _ in range(opening):
            slot_id, hour = f"bench-{phase}-{next(made)}", int(bucket[-5:-3]) - 2 + rng.randrange(4)
            start = dt.datetime.combine(day, dt.time(hour, rng.choice((0, 15, 30, 45))))
            slot = Slot(slot_id, rng.randrange(1, VENUES + 1), start, "Dining Room")
            slots[slot_id] = (slot, rng.choice(SIZES))
            keys.append(f"o{slot_id}")
        commits.append([await _poll(engine, bucket, slots), kind, keys])
        await asyncio.sleep(max(0.0, started + len(commits) / rate - time.monotonic()))
    cleanup = [await _poll(engine, b, {}) for b, _ in buckets if state[b]]  # not timed
    await engine.dispose()
    return {"commits": commits, "all": len(commits) + len(cleanup)}


async def _poll(engine: AsyncEngine, bucket: str, slots: Open) -> float:
    """A healthy poll of `bucket` answering `slots`, as the poller writes it; its COMMIT's time."""
    fetch, now = BucketFetch(), dt.datetime.now(dt.UTC)
    for slot, sizes in slots.values():
        venue = slot.venue_id
        fetch.venues[venue] = VenueInfo(venue, f"Venue {venue}", "Chelsea", 2, f"v-{venue}", "ny")
        for size in sizes:
            fetch.add(Slot(slot.slot_id, venue, slot.start, slot.seating_type), size)
    async with engine.begin() as conn:
        leased = await store.lease_one(conn, owner=OWNER, bucket_id=bucket, lease_seconds=60)
    assert leased is not None, bucket
    async with engine.begin() as conn:
        await store.check_lease(conn, leased, OWNER)
        await store.upsert_venues(conn, fetch, "resy")
        poll: Any = dict(market="nyc", provider="resy", outcome="healthy", now=now)
        poll.update(prime=bucket.endswith("19:00"), next_poll_at=now)
        await store.write_healthy_poll(conn, leased, fetch, **poll)
    return time.monotonic()


@dataclass
class Phase:
    """What the consumers received while one writer run committed."""

    commits: list[list[Any]]  # [time, "steady" or "release", change keys]
    got: Got
    metrics: dict[str, float]  # the feed's counters: deltas
    written: int  # commits with changes, the untimed ones at the end included
    seconds: float  # the consumers' time: start to the last message
    rps: float = 0.0  # polling: JustOpened answers per second
    errors: int = 0  # polling: failed calls; streams: ended by the server

    def latencies(self, kind: str, opens_only: bool = False) -> list[float]:
        """ms from each commit to each consumer's receipt of each of its changes."""
        at = {key: t for t, k, keys in self.commits if k == kind for key in keys}
        keep = ("o",) if opens_only else ("o", "c")
        return [(t - at[key]) * 1000 for _, key, t in self.got if key in at and key[0] in keep]

    def reads(self, which: str = "") -> float:
        return self.metrics.get(f"dropwatch_feed_watch_change_reads_total{which}", 0) / self.written


class Run(NamedTuple):
    streams: int
    idle_kb: float
    push: Phase
    poll: Phase
    complete: bool  # every unfiltered stream received every change


class Result(NamedTuple):
    args: Any
    load_average: list[str]
    runs: list[Run]
    events: int


def scrape(feed: Server) -> dict[str, float]:
    """The feed's /metrics: each sample, and each name summed over its labels."""
    with urllib.request.urlopen(f"http://127.0.0.1:{feed.metrics_port}/metrics") as answer:
        lines = answer.read().decode().splitlines()
    out: dict[str, float] = defaultdict(float)
    for key, value in (line.rsplit(" ", 1) for line in lines if line[:1] not in ("#", "")):
        out[key] += float(value)
        out[key.split("{")[0]] += float(value) if "{" in key else 0.0
    return out


def rss_kb(pid: int) -> int:
    lines = Path(f"/proc/{pid}/status").read_text().splitlines()
    return int(next(line for line in lines if line.startswith("VmRSS:")).split()[1])


async def _streams(feed: Server, n: int) -> None:
    """Until the feed counts `n` open streams (a minute at most)."""
    for _ in range(300):
        if scrape(feed)["dropwatch_feed_watch_streams"] == n:
            return
        await asyncio.sleep(0.2)
    raise SystemExit(f"the feed never had {n} streams open (see its log)")


async def _stream(stub: Any, i: int, filt: Any, got: Got, ends: Counter[str]) -> None:
    try:
        async for m in stub.WatchDrops(feed_pb2.WatchDropsRequest(filter=filt)):
            kind = m.WhichOneof("message")
            if kind == "opened":
                got.append((i, "o" + m.opened.slot_id, time.monotonic()))
            elif kind == "closed":
                got.append((i, "c" + m.closed.drop.slot_id, time.monotonic()))
    except grpc.aio.AioRpcError as exc:
        ends[exc.code().name] += 1


async def _poller(stub: Any, i: int, filt: Any, got: Got, stop: Any, n: Counter[str]) -> None:
    request = feed_pb2.JustOpenedRequest(filter=filt, limit=2000)
    request.filter.all_slots_per_venue = True  # every slot, as the stream sends them
    seen: set[str] = set()
    due = time.monotonic() + random.random()  # consumers spread over the second
    while not stop.is_set():
        await asyncio.sleep(max(0.0, due - time.monotonic()))
        try:
            answer = await stub.JustOpened(request, timeout=10)
        except grpc.aio.AioRpcError:
            n["errors"] += 1
        else:
            at, n["calls"] = time.monotonic(), n["calls"] + 1
            for item in answer.items:
                if item.slot_id not in seen:
                    seen.add(item.slot_id)
                    got.append((i, "o" + item.slot_id, at))
        due = max(due + 1.0, time.monotonic())


async def _phase(feed: Server, url: str, phase: str, args: Any, got: Got) -> Phase:
    """One writer run while the consumers receive, until nothing more arrives for 1.5 s."""
    before, started, got[:] = scrape(feed), time.monotonic(), []
    values = map(str, (url, phase, args.duration, args.rate, args.changes, args.release))
    ran = await asyncio.to_thread(harness.run_to_end, WRITER, *values, env={**os.environ})
    count = -1
    while len(got) != count and time.monotonic() - started < 120:
        count = len(got)
        await asyncio.sleep(1.5)
    after, last = scrape(feed), max((t for _, _, t in got), default=math.nan)
    deltas = {k: after[k] - before[k] for k in after}
    return Phase(ran.output["commits"], list(got), deltas, ran.output["all"], last - started)


async def measure(feed: Server, url: str, n: int, dates: list[str], args: Any) -> Run:
    """`n` idle streams (memory), streaming while a writer runs, then `n` pollers."""
    options = [("grpc.use_local_subchannel_pool", 1)]  # a connection per channel
    count = math.ceil(n / PER_CHANNEL)
    channels = [grpc.aio.insecure_channel(feed.target, options=options) for _ in range(count)]
    stubs = [feed_pb2_grpc.FeedServiceStub(channels[i % count]) for i in range(n)]
    got: Got = []
    ends, calls, stop = Counter[str](), Counter[str](), asyncio.Event()
    base = rss_kb(feed.proc.pid)
    consumers = [(stubs[i], i, consumer_filter(i, dates), got) for i in range(n)]
    tasks = [asyncio.create_task(_stream(*c, ends)) for c in consumers]
    await _streams(feed, n)
    await asyncio.sleep(2)
    idle_kb = (rss_kb(feed.proc.pid) - base) / n
    push = await _phase(feed, url, f"{n}-push", args, got)
    push.errors, every = sum(ends.values()), {k for _, _, keys in push.commits for k in keys}
    complete = {(i, key) for i, key, _ in push.got if i % 10 == 0 and key in every}
    for task in tasks:
        task.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)
    await _streams(feed, 0)
    polling = time.monotonic()
    tasks = [asyncio.create_task(_poller(*c, stop, calls)) for c in consumers]
    poll = await _phase(feed, url, f"{n}-poll", args, got)
    stop.set()
    await asyncio.gather(*tasks)
    poll.rps, poll.errors = calls["calls"] / (time.monotonic() - polling), calls["errors"]
    for channel in channels:
        await channel.close(None)
    harness.log(f"{n} streams: p99 {percentile(push.latencies('steady'), 99):.1f} ms")
    return Run(n, idle_kb, push, poll, len(complete) == len(every) * len(range(0, n, 10)))


async def run(server: PgServer, args: argparse.Namespace) -> Result:
    load, runs = [" / ".join(f"{v:.2f}" for v in os.getloadavg())], []
    with server.migrated("dw_bench_watch") as name, tempfile.TemporaryDirectory() as tmp:
        url, engine = server.url_for(name), harness.engine_for(server.url_for(name))
        today = market_today(Settings().zone)
        with engine.begin() as conn:
            ensure_live_buckets(conn, market="nyc", today=today, window_days=DAYS, anchors=ANCHORS)
            conn.execute(text(BASELINED))
        dates = [(today + dt.timedelta(days=d)).isoformat() for d in range(DAYS)]
        m = free_port()
        command = f"-m services.feed --port {{port}} --metrics-port {m}".split()
        env = dict(DROPWATCH_DATABASE_URL=url, DROPWATCH_PAGE_TOKEN_SECRET="bench-" + "0" * 32)
        env["DROPWATCH_WATCH_MAX_STREAMS"] = str(max(args.streams) + 100)
        with served(Path(tmp) / "feed.log", command, m, **env) as feed:
            await feed.ready()
            for n in args.streams:
                runs.append(await measure(feed, url, n, dates, args))
        events = harness.count(engine, "SELECT count(*) FROM drop_events")
        engine.dispose()
    load.append(" / ".join(f"{v:.2f}" for v in os.getloadavg()))
    return Result(args, load, runs, events)


def _ms(values: list[float], p: int) -> str:
    return f"{percentile(values, p):.1f}" if values else "-"


def targets(result: Result) -> list[Target]:
    by = {r.streams: r.push.latencies("steady") for r in result.runs}
    out = []
    for n, p, limit in ((100, 50, 20), (100, 99, 100), (1000, 99, 500)):
        got = percentile(by.get(n, []), p)
        name, ran = f"p{p} < {limit} ms at {n:,} streams (steady)", math.isfinite(got)
        ok = got < limit if ran else None
        out.append(Target(name, f"{got:.1f} ms" if ran else "not run", ok))
    reads = [r.push.reads(NOTIFY) for r in result.runs]
    name = "1 change read per commit per replica (NOTIFY-woken reads / commits, each count)"
    out.append(Target(name, ", ".join(f"{r:.2f}" for r in reads), max(reads) <= 1.0))
    big = result.runs[-1]
    name = f"< 50 KB per idle stream (feed RSS with {big.streams:,} idle streams minus with 0)"
    return [*out, Target(name, f"{big.idle_kb:.1f} KB", big.idle_kb < 50)]


def render(result: Result, section: Section) -> list[Point]:
    a, head, body, poll = result.args, ["streams", "changes", "messages", "msg/s"], [], []
    points: list[Point] = []  # x: the table's size, as in every chart
    section.title = "WatchDrops (bench/watch.py)"
    section.bullets["Machine"] += f", grpcio {grpc.__version__}; load average (1/5/15 min) "
    section.bullets["Machine"] += "{} at the start, {} at the end".format(*result.load_average)
    section.bullets["Load"] = (
        f"per stream count, {a.rate:g} polls/s for {a.duration:g} s, {a.changes} changes each, "
        f"and half-way a release of {a.release} drops in one commit (How it measures, below); "
        f"{result.events:,} drop_events at the end"
    )
    head += ["p50 ms", "p99 ms", "release p50 ms", "release p99 ms"]
    head += ["reads/commit (NOTIFY, all)", "idle KB/stream", "ended early"]
    for r in result.runs:
        steady, burst = r.push.latencies("steady"), r.push.latencies("release")
        messages, keys = len(steady) + len(burst), sum(len(k) for _, _, k in r.push.commits)
        body.append([f"{r.streams:,}", f"{keys:,}", f"{messages:,}"])
        body[-1] += [f"{messages / r.push.seconds:,.0f}", _ms(steady, 50), _ms(steady, 99)]
        body[-1] += [_ms(burst, 50), _ms(burst, 99)]
        body[-1] += [f"{r.push.reads(NOTIFY):.2f}, {r.push.reads():.2f}", f"{r.idle_kb:.1f}"]
        body[-1] += [f"{r.push.errors}" + ("" if r.complete else " (changes missed!)")]
        opens, polled = r.push.latencies("steady", True), r.poll.latencies("steady")
        poll.append([f"{r.streams:,}", f"{r.poll.rps:,.0f}"])
        poll[-1] += [str(r.poll.errors), _ms(opens, 50), _ms(opens, 99), _ms(polled, 50)]
        poll[-1] += [_ms(polled, 99), _ms(r.poll.latencies("release"), 99)]
        name = f"p99 of opens at {r.streams:,} streams (original: polling every 1 s)"
        points.append(Point(name, "ms", result.events, *map(percentile, (opens, polled), (99, 99))))
    section.table(head, body, "Streams (latency: from COMMIT to the consumer, per message):")
    head = ["consumers", "JustOpened req/s", "errors", "stream p50 ms", "stream p99 ms"]
    head += ["poll p50 ms", "poll p99 ms", "poll release p99 ms"]
    section.table(head, poll, "Against polling JustOpened every second (opens only):")
    section.targets(targets(result))
    return points


if __name__ == "__main__":
    options = [
        ("--streams", [1, 100, 1000], "concurrent streams, then pollers, per run", 1, 5000),
        ("--duration", 20.0, "seconds of writes per stream count and mode", 1, 600),
        ("--rate", 4.0, "polls committed per second", 0.1, 50),
        ("--changes", 4, "changes per steady commit", 1, 100),
        ("--release", 300, "drops of the release commit", 1, 5000),
    ]
    show = ("shared_buffers", "synchronous_commit")
    sys.exit(harness.main("watch", __doc__, options, run, render, show))
