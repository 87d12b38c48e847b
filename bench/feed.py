"""The feed's gRPC reads against the original and a bare echo server (docs/performance.md)."""

from __future__ import annotations

import argparse
import datetime as dt
import itertools
import os
import sys
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

import grpc
from google.protobuf import __version__ as protobuf_version
from google.protobuf.internal import api_implementation
from sqlalchemy import Engine, text

from bench import feed_parts as parts
from bench import harness
from bench.feed_parts import ECHO, SCENARIOS, Load, asks, drive, echo_call
from bench.harness import Point, Section, Target, engine_for
from services.feed.settings import FeedSettings
from shared.gen.dropwatch.feed.v1 import feed_pb2, feed_pb2_grpc
from shared.settings import Settings
from tools.database import PgServer
from tools.seed import Shape, make_plan

CONCURRENCIES = (1, 16)
TARGET_SPEEDUP, TARGET_SCALING, TARGET_CACHE_VS_ECHO = 10.0, 1.3, 0.5


@dataclass
class Size:
    events: int
    data: str  # what was loaded, for the report
    load: dict[tuple[str, int], Load] = field(default_factory=dict)  # (scenario, concurrency)
    cache: dict[str, float] = field(default_factory=dict)  # JustOpened default: hit, miss
    original: list[dict[str, float]] = field(default_factory=list)


def setup(engine: Engine, events: int) -> tuple[Size, list[str], dt.date]:
    """The seed's data, its last hour moved to the real now; the live buckets, today."""
    plan = make_plan(Settings(), events, venues=2000, shape=Shape(recent=2700))
    seeded, data = harness.seed(engine, plan)
    vacuum, now = harness.vacuum(engine), dt.datetime.now(dt.UTC)
    moved = {"delta": now - plan.now, "edge": plan.now - dt.timedelta(hours=1), "today": plan.today}
    with engine.begin() as conn:
        for sql in (
            "UPDATE drop_events SET opened_at = opened_at + :delta, closed_at = closed_at + :delta"
            " WHERE bucket_date >= :today AND opened_at >= :edge",
            "UPDATE open_slots SET opened_at = opened_at + :delta, first_seen_at = first_seen_at"
            " + :delta WHERE drop_event_id IS NOT NULL AND opened_at >= :edge",
            "UPDATE discovery_buckets SET last_polled_at = now(), last_healthy_poll_at = now()"
            " WHERE bucket_date >= :today",
        ):
            conn.execute(text(sql), moved)
    harness.vacuum(engine, "VACUUM (ANALYZE) open_slots, drop_events, discovery_buckets")
    recent = "SELECT count(*) FROM open_slots WHERE drop_event_id IS NOT NULL AND opened_at >= "
    fresh, window = (
        harness.count(engine, f"{recent} now() - '{s} s'::interval") for s in (300, 600)
    )
    data += f", then VACUUM ANALYZE ({vacuum:.1f} s); {fresh:,} drops opened in the last 5 minutes "
    data += f"and {window:,} in the last 600 s when the measurement started"
    live = [b.bucket_id for b in plan.buckets if b.live]
    return Size(seeded.events, data), live, plan.today


@dataclass
class Result:
    cache_ttl: float
    load_average: list[str] = field(default_factory=list)  # at the start, at the end
    sizes: list[Size] = field(default_factory=list)  # the big one first
    echo: dict[tuple[str, int], Load] = field(default_factory=dict)  # (method, concurrency)
    breakdown: list[dict[str, float]] = field(default_factory=list)  # the big size, in-process


async def measure_size(
    server: PgServer, events: int, args: argparse.Namespace, out: Result
) -> None:
    """One database; at the big size (the first) also the echo server and the breakdown."""
    big = not out.sizes
    with server.migrated("dw_bench_feed") as name, tempfile.TemporaryDirectory() as tmp:
        url, logs = server.url_for(name), Path(tmp)
        engine = engine_for(url, "bench-load")
        try:
            size, bucket_ids, today = setup(engine, events)
            harness.log(f"{events:,}: {size.data}")
            with parts.feed_server(url, logs, str(events), args.cache_ttl) as feed:
                await feed.ready()
                async with grpc.aio.insecure_channel(feed.target) as channel:
                    stub = feed_pb2_grpc.FeedServiceStub(channel)
                    for ask in asks(today):
                        rpc = stub.JustOpened if ask.just_opened else stub.StillOpen
                        before = feed.cache_counts() if ask.key == "jo_default" else {}
                        for c in CONCURRENCIES if big else (1,):
                            call = lambda: rpc(ask.message, timeout=30)  # type: ignore[arg-type]  # noqa: B023, E731
                            load = size.load[(ask.key, c)] = await drive(call, c, args.duration)
                            harness.log(f"{ask.title} c={c}: p50 {load.p50:.2f} ms")
                        if before:
                            after = feed.cache_counts()
                            size.cache = {k: after[k] - before.get(k, 0.0) for k in after}
                    default = await stub.JustOpened(feed_pb2.JustOpenedRequest(), timeout=30)
            if big:
                with parts.echo_server(logs, default.SerializeToString()) as echo:
                    await echo.ready()
                    async with grpc.aio.insecure_channel(echo.target) as channel:
                        for method, c in itertools.product(ECHO, CONCURRENCIES):
                            echoed = echo_call(channel, method)
                            out.echo[(method, c)] = await drive(echoed, c, args.duration)
            harness.create_review_indexes(engine)  # the original reads through them
            orm = engine_for(url, "bench-original", db_statement_timeout_ms=15_000)
            size.original = parts.measure_original(orm, asks(today), bucket_ids, args.duration)
            orm.dispose()
            if big:
                out.breakdown = await parts.measure_breakdown(url, asks(today))
            out.sizes.append(size)
        finally:
            engine.dispose()


async def run(server: PgServer, args: argparse.Namespace) -> Result:
    out = Result(args.cache_ttl, [" / ".join(f"{v:.2f}" for v in os.getloadavg())])
    for events in (args.events, args.small):
        await measure_size(server, events, args, out)
    out.load_average.append(" / ".join(f"{v:.2f}" for v in os.getloadavg()))
    return out


def _ms(v: float) -> str:
    return f"{v:.2f}" if v < 10 else f"{v:.1f}"


def targets(result: Result) -> list[Target]:
    (big, small), fast, faster, flat = result.sizes, [], [], []
    for (key, title, _, _, limit), orig in zip(SCENARIOS, big.original, strict=True):
        ours, theirs, before = big.load[(key, 1)].p50, orig["ms"], small.load[(key, 1)].p50
        name = f"{title}: p50 < {limit:g} ms at concurrency 1, {big.events:,} events"
        fast.append(Target(name, f"{ours:.2f} ms", ours < limit))
        name = f"{title}: >= {TARGET_SPEEDUP:g}x faster than the original pattern"
        got = f"{theirs / ours:.0f}x ({theirs:.1f} ms vs {ours:.2f} ms)"
        faster.append(Target(name, got, theirs / ours >= TARGET_SPEEDUP))
        name = f"{title}: p50 at {big.events:,} <= {TARGET_SCALING:g}x p50 at {small.events:,}"
        got = f"{ours / before:.2f}x ({ours:.2f} ms vs {before:.2f} ms)"
        flat.append(Target(name, got, ours <= TARGET_SCALING * before))
    c = CONCURRENCIES[-1]
    cached, echo = big.load[("jo_default", c)].rps, result.echo[("Empty", c)].rps
    name = f"cached JustOpened default >= {TARGET_CACHE_VS_ECHO:g}x the echo server's throughput"
    got = f"{cached / echo:.2f}x ({cached:,.0f} vs {echo:,.0f} req/s)"
    last = Target(f"{name} (concurrency {c})", got, cached >= TARGET_CACHE_VS_ECHO * echo)
    return [*fast, *faster, *flat, last]


def render(result: Result, section: Section) -> list[Point]:
    big, small = result.sizes
    cache = "off: every request reaches PostgreSQL" if result.cache_ttl == 0 else "on, as deployed"
    section.title = f"Feed read path: benchmark (answer cache {cache})"
    protobuf = f"protobuf {protobuf_version} ({api_implementation.Type()})"
    section.bullets["Machine"] += f", grpcio {grpc.__version__}, {protobuf}; load average (1/5/15 "
    section.bullets["Machine"] += "min) {} at the start, {} at the end".format(*result.load_average)
    for size in result.sizes:
        section.bullets[f"Data ({size.events:,})"] = size.data
    head = ["request", "items", "bytes"]
    head += [f"c={c} {m}" for c in CONCURRENCIES for m in ("p50 ms", "p99 ms", "req/s")]
    rows, body = [(title, big.load, key) for key, title, *_ in SCENARIOS], []
    for title, loads, key in [*rows, *((title, result.echo, m) for m, title in ECHO.items())]:
        body.append([title, str(loads[(key, 1)].items), f"{loads[(key, 1)].size:,}"])
        for r in (loads[(key, c)] for c in CONCURRENCIES):
            body[-1] += [_ms(r.p50), _ms(r.p99), f"{r.rps:,.0f}"]
    section.table(head, body, f"gRPC at {big.events:,} events:")
    hits, misses = big.cache.get("hit", 0.0), big.cache.get("miss", 0.0)
    section.add(
        f"Cache during the JustOpened default runs (incl. warm-up), from the feed's /metrics: "
        f"{hits:,.0f} hits, {misses:,.0f} misses ({hits / max(1.0, hits + misses):.2%} hits)."
    ).targets(targets(result))
    head = ["request", "original p50 ms", "ORM query", "query server", "open snapshot", "Python"]
    head += ["rows read", "items", "feed p50 ms (gRPC, c=1)", "speed-up"]
    body = []
    for (key, title, *_), o in zip(SCENARIOS, big.original, strict=True):
        ours = big.load[(key, 1)].p50
        body.append([title, *(_ms(o[n]) for n in ("ms", "query", "server", "snapshot", "python"))])
        body[-1] += [f"{o['rows']:,.0f}", f"{o['items']:.0f}", _ms(ours), f"{o['ms'] / ours:.0f}x"]
    section.table(head, body, "Against the original pattern:")
    head = ["request (c=1)", f"p50 ms at {small.events:,}", f"p50 ms at {big.events:,}", "ratio"]
    body = []
    for key, title, *_ in SCENARIOS:
        a, b = small.load[(key, 1)], big.load[(key, 1)]
        body.append([title, _ms(a.p50), _ms(b.p50), f"{b.p50 / a.p50:.2f}x"])
        body[-1].append(f"{a.items} / {b.items}")
    section.table([*head, "items"], body, "Scaling:")
    head = ["request", "handler ms", "SQL ms (fetch_feed)", "SQL server ms", "build ms"]
    head += ["serialize ms", "client parse ms", "gRPC p50 ms (c=1)"]
    body = []
    for (key, title, *_), part in zip(SCENARIOS, result.breakdown, strict=True):
        handler = _ms(part["handler"]) + (" (miss)" if key == "jo_default" else "")
        server = f"{part['server']:.2f} (+{part['planning']:.2f} plan)"
        body.append([title, handler, _ms(part["sql"]), server, _ms(part["build"])])
        body[-1] += [_ms(part["serialize"]), _ms(part["parse"]), _ms(big.load[(key, 1)].p50)]
    section.table(head, body, "Where the time goes (medians of 30 in-process calls):")
    return [  # p50 of each request at concurrency 1, ours and the original's, at both sizes
        Point(f"{title}, p50 at c=1", "ms", size.events, size.load[(key, 1)].p50, o["ms"])
        for size in result.sizes[::-1]
        for (key, title, *_), o in zip(SCENARIOS, size.original, strict=True)
    ]


if __name__ == "__main__":
    options = [
        ("--events", 1_000_000, "drop_events to load", 10_000, 1e9),
        ("--small", 100_000, "drop_events of the small database", 10_000, 1e9),
        ("--duration", 5.0, "seconds per measurement", 0.5, 120),
        ("--cache-ttl", FeedSettings().cache_ttl_seconds, "the answer cache's TTL (0: none)", 0, 2),
    ]
    show = ("shared_buffers", "work_mem", "jit")
    sys.exit(harness.main("feed", __doc__, options, run, render, show))
