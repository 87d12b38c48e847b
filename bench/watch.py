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
CPU = "{:.1f}; {:.1f}".format  # the feed's CPU seconds; the consumers'
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
    print(json.dumps(asyncio.run(_write(argv[0], argv[1], *map(float, argv[2:])))))


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
    while (elapsed := time.monotonic() - started) < seconds * 1.25:  # steady, release, after
        bucket, day = buckets[len(commits) % len(buckets)]
        slots, kind = state[bucket], "after" if released else "steady"
        closing = list(slots)[: min(int(changes) // 2, len(slots))]
        opening = int(changes) - len(closing)
        if not released and elapsed >= seconds:
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
    seconds: float  # the first commit to the last message
    cpu: tuple[float, ...]  # CPU seconds of the feed and of the consumers' process
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
    before, used, got[:], count = scrape(feed), usage(feed.proc.pid), [], -1
    values = map(str, (url, phase, args.duration, args.rate, args.changes, args.release))
    ran = await asyncio.to_thread(harness.run_to_end, WRITER, *values, env={**os.environ})
    while len(got) != count and time.monotonic() - ran.output["commits"][-1][0] < 180:
        count = len(got)
        await asyncio.sleep(1.5)
    after, last, commits = scrape(feed), max(t for _, _, t in got), ran.output["commits"]
    cpu = tuple(b - a for a, b in zip(used[1:], usage(feed.proc.pid)[1:], strict=True))
    deltas = {k: after[k] - before[k] for k in after}
    return Phase(commits, list(got), deltas, ran.output["all"], last - commits[0][0], cpu)


async def measure(feed: Server, url: str, n: int, dates: list[str], args: Any) -> Run:
    """`n` idle streams (memory), streaming while a writer runs, then `n` pollers."""
    options = [("grpc.use_local_subchannel_pool", 1)]  # a connection per channel
    count = math.ceil(n / PER_CHANNEL)
    channels = [grpc.aio.insecure_channel(feed.target, options=options) for _ in range(count)]
    stubs = [feed_pb2_grpc.FeedServiceStub(channels[i % count]) for i in range(n)]
    got: Got = []
    ends, calls, stop = Counter[str](), Counter[str](), asyncio.Event()
    base = usage(feed.proc.pid)[0]
    consumers = [(stubs[i], i, consumer_filter(i, dates), got) for i in range(n)]
    tasks = [asyncio.create_task(_stream(*c, ends)) for c in consumers]
    await _streams(feed, n)
    await asyncio.sleep(2)
    idle_kb = (usage(feed.proc.pid)[0] - base) / n
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


def _ms(values: list[float]) -> str:
    return " / ".join(f"{percentile(values, p):.1f}" for p in (50, 99)) if values else "-"


def usage(pid: int) -> tuple[float, float, float]:
    """The process `pid`'s RSS (KB) and CPU seconds; this process's (the consumers') CPU s."""
    stat = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    ticks = (int(stat[11]) + int(stat[12])) / os.sysconf("SC_CLK_TCK")
    return int(stat[21]) * os.sysconf("SC_PAGE_SIZE") / 1024, ticks, time.process_time()


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
    a, push, poll, points = result.args, [], [], []
    section.title = "WatchDrops (bench/watch.py)"
    section.bullets["Machine"] += f", grpcio {grpc.__version__}; load average (1/5/15 min) "
    section.bullets["Machine"] += "{} at the start, {} at the end".format(*result.load_average)
    section.bullets["Load"] = (
        f"per stream count, {a.rate:g} polls/s of {a.changes} changes for {a.duration:g} s, "
        f"then a release of {a.release} drops in one commit, then {a.duration / 4:g} s more "
        f"(How it measures, below); {result.events:,} drop_events at the end"
    )
    for r in result.runs:
        steady, burst, after = (r.push.latencies(k) for k in ("steady", "release", "after"))
        messages, keys = len(steady + burst + after), sum(len(k) for _, _, k in r.push.commits)
        push.append([f"{r.streams:,}", f"{keys:,}", f"{messages:,}"])
        push[-1] += [f"{messages / r.push.seconds:,.0f}", _ms(steady), _ms(burst), _ms(after)]
        push[-1] += [CPU(*r.push.cpu), f"{r.push.reads(NOTIFY):.2f}; {r.push.reads():.2f}"]
        push[-1] += [f"{r.idle_kb:.1f}", f"{r.push.errors}" + ("" if r.complete else " (missed!)")]
        opens, polled = r.push.latencies("steady", True), r.poll.latencies("steady")
        poll.append([f"{r.streams:,}", f"{r.poll.rps:,.0f}", str(r.poll.errors), CPU(*r.poll.cpu)])
        poll[-1] += [_ms(opens), _ms(polled), _ms(r.poll.latencies("release"))]
        name = f"p99 of opens at {r.streams:,} streams (original: polling every 1 s)"
        points.append(Point(name, "ms", result.events, *map(percentile, (opens, polled), (99, 99))))
    head = "streams,changes,messages,msg/s,p50 / p99 ms,release p50 / p99 ms,after it p50 / p99 ms,"
    head += "CPU s (feed; consumers),reads per commit (NOTIFY; all),KB per idle stream,ended early"
    section.table(head.split(","), push, "Streams (latency: from COMMIT to the consumer):")
    head = "consumers,JustOpened req/s,errors,CPU s (feed; consumers),stream p50 / p99 ms,"
    head += "poll p50 / p99 ms,poll release p50 / p99 ms"
    section.table(head.split(","), poll, "Against polling JustOpened every second (opens only):")
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
