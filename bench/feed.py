"""The feed's read path (gRPC JustOpened / StillOpen) against the original read pattern and a
bare gRPC echo server (docs/performance.md, Feed read path).

    .venv/bin/python -m bench.feed [--events 1000000] [--small 100000] [--duration 5]
                                   [--cache-ttl SECONDS] [--json FILE]
"""

from __future__ import annotations

import argparse
import asyncio
import datetime as dt
import os
import sys
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

import grpc
from google.protobuf import __version__ as protobuf_version
from google.protobuf.internal import api_implementation
from sqlalchemy import Engine, text

from bench import harness
from bench.feed_grpc import (
    ECHO,
    Load,
    drive,
    echo_call,
    echo_server,
    feed_server,
    raw_default_answer,
)
from bench.feed_original import Ask, Breakdown, Original, measure_breakdown, measure_original
from bench.harness import Point, Section, Target, engine_for, median
from services.feed.request import from_just_opened, from_still_open
from shared.gen.dropwatch.feed.v1 import feed_pb2, feed_pb2_grpc
from shared.settings import Settings
from tools.database import PgServer, pg_server
from tools.seed import Shape, make_plan

CONCURRENCIES = (1, 16)
TARGET_SPEEDUP, TARGET_SCALING, TARGET_CACHE_VS_ECHO = 10.0, 1.3, 0.5
# key, title, JustOpened?, filtered?, p50 target at concurrency 1 (ms)
SCENARIOS = (
    ("jo_default", "JustOpened default", True, False, 5.0),
    ("jo_filtered", "JustOpened filtered", True, True, 5.0),
    ("so_default", "StillOpen limit=1000", False, False, 15.0),
    ("so_filtered", "StillOpen filtered", False, True, 15.0),
)


def request(just_opened: bool, filtered: bool, today: dt.date) -> Message:
    """filtered: party size 2 and the next three days (market time)."""
    dates = [(today + dt.timedelta(days=d)).isoformat() for d in (1, 2, 3)] if filtered else []
    f = feed_pb2.FeedFilter(party_sizes=[2] if filtered else [], reservation_dates=dates)
    if just_opened:
        return feed_pb2.JustOpenedRequest(filter=f)
    return feed_pb2.StillOpenRequest(filter=f, limit=1000)


Message = feed_pb2.JustOpenedRequest | feed_pb2.StillOpenRequest


def asks(today: dt.date) -> list[Ask]:
    out = []
    for _key, title, jo, filtered, _target in SCENARIOS:
        r = request(jo, filtered, today)
        q = from_just_opened(r) if isinstance(r, feed_pb2.JustOpenedRequest) else from_still_open(r)
        days = (1, 2, 3) if filtered else ()
        dates = frozenset(today + dt.timedelta(days=d) for d in days)
        out.append(Ask(title, q, jo, dates, frozenset({2} if filtered else ())))
    return out


# --- setup: the seed's data, its latest hour moved to the real now ----------------------------


@dataclass
class Size:
    events: int
    data: str  # what was loaded, for the report
    bucket_ids: list[str]  # the live buckets
    today: dt.date
    load: dict[tuple[str, int], Load] = field(default_factory=dict)
    cache: dict[str, float] = field(default_factory=dict)
    payload: bytes = b""  # the default JustOpened answer on the wire
    original: list[Original] = field(default_factory=list)


def setup(engine: Engine, events: int) -> Size:
    """The seed's data (2700 open drops in its last 5 minutes, whatever the size), VACUUM
    ANALYZE; then its last hour moved to the real now (the load took a while)."""
    plan = make_plan(Settings(), events, venues=2000, shape=Shape(recent=2700))
    seeded, data = harness.seed(engine, plan)
    vacuum = harness.vacuum(engine)
    now = dt.datetime.now(dt.UTC)
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
        harness.count(engine, f"{recent} now() - interval '{s} s'") for s in (300, 600)
    )
    data += (
        f", then VACUUM ANALYZE ({vacuum:.1f} s); {fresh:,} drops opened in the last 5 minutes "
        f"and {window:,} in the last 600 s when the measurement started"
    )
    live = [b.bucket_id for b in plan.buckets if b.live]
    return Size(seeded.events, data, live, plan.today)


# --- ours over gRPC, the echo floor, the original ------------------------------------------


@dataclass
class Report:
    command: str
    postgres: str
    machine: str
    cache_ttl: float | None
    big: Size = field(default_factory=lambda: Size(0, "", [], dt.date.min))
    small: Size = field(default_factory=lambda: Size(0, "", [], dt.date.min))
    echo: dict[tuple[str, int], Load] = field(default_factory=dict)
    breakdown: list[Breakdown] = field(default_factory=list)


async def measure_size(
    server: PgServer, events: int, args: argparse.Namespace, floor: Report | None = None
) -> Size:
    """One database: ours over gRPC, the original in-process; at the big size (`floor` given)
    also the echo server and the in-process breakdown, into `floor`."""
    with server.migrated("dw_bench_feed") as name, tempfile.TemporaryDirectory() as tmp:
        url, logs = server.url_for(name), Path(tmp)
        engine = engine_for(url, "bench-load")
        try:
            size = setup(engine, events)
            harness.log(f"{events:,}: {size.data}")
            with feed_server(url, logs, str(events), args.cache_ttl) as feed:
                await feed.ready()
                async with grpc.aio.insecure_channel(feed.target) as channel:
                    stub = feed_pb2_grpc.FeedServiceStub(channel)
                    for key, title, jo, filtered, _ in SCENARIOS:
                        message = request(jo, filtered, size.today)
                        rpc = stub.JustOpened if jo else stub.StillOpen
                        before = feed.cache_counts() if key == "jo_default" else {}
                        for c in CONCURRENCIES if floor else (1,):
                            result = await drive(lambda: rpc(message, timeout=30), c, args.duration)  # type: ignore[arg-type]  # noqa: B023
                            size.load[(key, c)] = result
                            harness.log(
                                f"{title} c={c}: p50 {result.p50:.2f} ms, {result.rps:,.0f} req/s"
                            )
                        if before:
                            after = feed.cache_counts()
                            size.cache = {k: after[k] - before.get(k, 0.0) for k in after}
                size.payload = await raw_default_answer(feed.target)
            if floor is not None:
                with echo_server(logs, size.payload) as echo:
                    await echo.ready()
                    async with grpc.aio.insecure_channel(echo.target) as channel:
                        for method in ECHO:
                            for c in CONCURRENCIES:
                                floor.echo[(method, c)] = await drive(
                                    echo_call(channel, method), c, args.duration
                                )
            harness.create_review_indexes(engine)  # the original reads through them
            orm = engine_for(url, "bench-original", db_statement_timeout_ms=15_000)
            try:
                size.original = measure_original(
                    orm, asks(size.today), size.bucket_ids, size.today, args.duration
                )
            finally:
                orm.dispose()
            if floor is not None:
                floor.breakdown = await measure_breakdown(url, asks(size.today))
            return size
        finally:
            engine.dispose()


async def run(args: argparse.Namespace, command: str) -> Report:
    load_before = " / ".join(f"{v:.2f}" for v in os.getloadavg())
    with pg_server("dropwatch-bench-") as server:
        postgres = harness.postgres(server, ("shared_buffers", "work_mem", "jit"))
        report = Report(command, postgres, "", args.cache_ttl)
        report.big = await measure_size(server, args.events, args, report)
        report.small = await measure_size(server, args.small, args)
    load_after = " / ".join(f"{v:.2f}" for v in os.getloadavg())
    report.machine = harness.machine(
        f", grpcio {grpc.__version__}, protobuf {protobuf_version} ({api_implementation.Type()}); "
        f"load average (1/5/15 min) {load_before} at the start, {load_after} at the end"
    )
    return report


# --- targets and the report ----------------------------------------------------------------


def _ms(v: float) -> str:
    return f"{v:.2f}" if v < 10 else f"{v:.1f}"


def _n(events: int) -> str:
    return f"{events:,}"


def targets(report: Report) -> list[Target]:
    big, small = report.big, report.small
    fast, faster, flat = [], [], []  # p50 limits, against the original, against the small size
    for (key, title, _, _, limit), orig in zip(SCENARIOS, big.original, strict=True):
        ours, theirs, before = big.load[(key, 1)].p50, median(orig.ms), small.load[(key, 1)].p50
        name = f"{title}: p50 < {limit:g} ms at concurrency 1, {_n(big.events)} events"
        fast.append(Target(name, f"{ours:.2f} ms", ours < limit))
        name = f"{title}: >= {TARGET_SPEEDUP:g}x faster than the original pattern"
        got = f"{theirs / ours:.0f}x ({theirs:.1f} ms vs {ours:.2f} ms)"
        faster.append(Target(name, got, theirs / ours >= TARGET_SPEEDUP))
        name = f"{title}: p50 at {_n(big.events)} <= {TARGET_SCALING:g}x p50 at "
        got = f"{ours / before:.2f}x ({ours:.2f} ms vs {before:.2f} ms)"
        flat.append(Target(name + _n(small.events), got, ours <= TARGET_SCALING * before))
    c = CONCURRENCIES[-1]
    cached, echo = big.load[("jo_default", c)].rps, report.echo[("Empty", c)].rps
    name = f"cached JustOpened default >= {TARGET_CACHE_VS_ECHO:g}x the echo server's throughput"
    got = f"{cached / echo:.2f}x ({cached:,.0f} vs {echo:,.0f} req/s)"
    last = Target(f"{name} (concurrency {c})", got, cached >= TARGET_CACHE_VS_ECHO * echo)
    return [*fast, *faster, *flat, last]


def render(report: Report) -> str:
    big, small = report.big, report.small
    cache = (
        "off: every request reaches PostgreSQL)" if report.cache_ttl == 0 else "on, as deployed)"
    )
    section = Section(
        "Feed read path: benchmark (answer cache " + cache,
        report.command,
        Machine=report.machine,
        Database=report.postgres,
        **{f"Data ({_n(big.events)})": big.data, f"Data ({_n(small.events)})": small.data},
    )
    head = ["request", "items", "bytes"]
    head += [f"c={c} {m}" for c in CONCURRENCIES for m in ("p50 ms", "p99 ms", "req/s")]
    rows = [(title, big.load, key) for key, title, *_ in SCENARIOS]
    rows += [(title, report.echo, method) for method, title in ECHO.items()]
    body = []
    for title, loads, key in rows:
        first = loads[(key, 1)]
        body.append([title, str(first.items), f"{first.size:,}"])
        for r in (loads[(key, c)] for c in CONCURRENCIES):
            body[-1] += [_ms(r.p50), _ms(r.p99), f"{r.rps:,.0f}"]
    section.table(head, body, f"gRPC at {_n(big.events)} events:")
    hits, misses = big.cache.get("hit", 0.0), big.cache.get("miss", 0.0)
    section.add(
        f"Cache during the JustOpened default runs (incl. warm-up), from the feed's /metrics: "
        f"{hits:,.0f} hits, {misses:,.0f} misses ({hits / max(1.0, hits + misses):.2%} hits)."
    )
    section.targets(targets(report))
    head = ["request", "original p50 ms", "ORM query", "query server", "open snapshot", "Python"]
    head += ["rows read", "items", "feed p50 ms (gRPC, c=1)", "speed-up"]
    body = []
    for (key, title, *_), o in zip(SCENARIOS, big.original, strict=True):
        ours = big.load[(key, 1)].p50
        body.append(
            [
                title,
                _ms(median(o.ms)),
                _ms(median(o.query_ms)),
                _ms(o.server_ms),
                _ms(median(o.snapshot_ms)),
            ]
        )
        body[-1] += [
            _ms(median(o.python_ms)),
            f"{o.rows:,}",
            str(o.items),
            _ms(ours),
            f"{median(o.ms) / ours:.0f}x",
        ]
    section.table(head, body, "Against the original pattern:")
    head = [
        "request (c=1)",
        f"p50 ms at {_n(small.events)}",
        f"p50 ms at {_n(big.events)}",
        "ratio",
        "items",
    ]
    body = []
    for key, title, *_ in SCENARIOS:
        a, b = small.load[(key, 1)], big.load[(key, 1)]
        body.append(
            [title, _ms(a.p50), _ms(b.p50), f"{b.p50 / a.p50:.2f}x", f"{a.items} / {b.items}"]
        )
    section.table(head, body, "Scaling:")
    head = ["request", "handler ms", "SQL ms (fetch_feed)", "SQL server ms", "build ms"]
    head += ["serialize ms", "client parse ms", "gRPC p50 ms (c=1)"]
    body = []
    for (key, title, *_), part in zip(SCENARIOS, report.breakdown, strict=True):
        handler = _ms(part.handler_ms) + (" (miss)" if key == "jo_default" else "")
        server = f"{part.server_ms:.2f} (+{part.planning_ms:.2f} plan)"
        body.append([title, handler, _ms(part.sql_ms), server, _ms(part.build_ms)])
        body[-1] += [_ms(part.serialize_ms), _ms(part.parse_ms), _ms(big.load[(key, 1)].p50)]
    return str(section.table(head, body, "Where the time goes (medians of 30 in-process calls):"))


def points(report: Report) -> list[Point]:
    """p50 of each request at concurrency 1, ours and the original's, at both sizes."""
    return [
        Point(f"{title}, p50 at c=1", "ms", size.events, size.load[(key, 1)].p50, median(o.ms))
        for size in (report.small, report.big)
        for (key, title, *_), o in zip(SCENARIOS, size.original, strict=True)
    ]


def main() -> int:
    p = harness.parser("feed", __doc__)
    p.add_argument("--events", type=int, default=1_000_000, help="drop_events to load")
    p.add_argument("--small", type=int, default=100_000, help="drop_events of the small database")
    p.add_argument("--duration", type=float, default=5.0, help="seconds per measurement")
    p.add_argument("--cache-ttl", type=float, help="the feed's answer cache TTL (0 = no cache)")
    args = p.parse_args()
    if min(args.events, args.small) < 10_000 or not 0.5 <= args.duration <= 120:
        p.error("--events and --small must be at least 10000, --duration 0.5 to 120 s")
    args.points_name = "feed_uncached" if args.cache_ttl == 0 else "feed"
    return harness.main("feed", args, lambda a, c: asyncio.run(run(a, c)), render, points)


if __name__ == "__main__":
    sys.exit(main())
