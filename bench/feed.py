"""Benchmark of the feed's read path (gRPC JustOpened / StillOpen) against the review's original.

    .venv/bin/python -m bench.feed [--events 1000000] [--small 100000] [--duration 5]
                                   [--markdown] [--explain]

Not a test: it prints figures. Steps:

1. A fresh database (on `DROPWATCH_DATABASE_URL`'s server, or an embedded PostgreSQL in a
   temporary directory), migrated to head, loaded by `dropwatch seed` (`bench._db.load_feed_data`):
   about `--events` drop_events over 28 days of buckets (14 past, 14 live), 2000 venues, the
   live buckets' open state in `open_slots` (~0.267 open drops per event, plus baseline slots),
   2700 of the open drops opened in the last 5 minutes; VACUUM ANALYZE.
2. The real feed server as a child process (`python -m services.feed`), driven from this
   process over loopback with `grpc.aio` clients at concurrency 1 and 16 for `--duration`
   seconds each: JustOpened default (served from the in-memory cache), JustOpened filtered
   (party size 2, three live dates: uncached), StillOpen limit=1000 and StillOpen filtered.
3. A bare `grpc.aio` echo server (generic handlers, no interceptor) in a child process, driven
   the same way: an empty response (the gRPC floor), and the feed's cached default answer as a
   message serialized per call and as pre-serialized bytes (the floor for that payload).
4. In this process, on the same data: the review's original read pattern (an ORM `DropEvent`
   query, then the open snapshot, filters and dedupe in Python), timed per request, with the
   review's drop_events indexes that it reads through created first; and where
   the feed's own time goes (SQL, building the protobuf, serializing it, parsing it).
5. The same gRPC measurement at concurrency 1 on a second database of `--small` events.
"""

from __future__ import annotations

import argparse
import asyncio
import datetime as dt
import os
import platform
import re
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Awaitable, Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import grpc
from google.protobuf import __version__ as protobuf_version
from google.protobuf.internal import api_implementation
from prometheus_client import CollectorRegistry
from sqlalchemy import Engine, select, text
from sqlalchemy.ext.asyncio import AsyncEngine
from sqlalchemy.orm import Session

from bench._db import (
    BenchServer,
    FeedData,
    ServerInfo,
    bench_database,
    bench_server,
    bench_settings,
    cpu_count,
    cpu_model,
    create_review_indexes,
    load_feed_data,
    median,
    memory_gib,
    migrate_to_head,
    percentile,
    refresh_recent,
    server_info,
)
from bench.points import Point, write_points
from bench.tables import details, md_table, plain_table
from services.feed import store
from services.feed.cache import AnswerCache
from services.feed.paging import PageTokens
from services.feed.request import FeedQuery, from_just_opened, from_still_open
from services.feed.servicer import FeedServicer
from services.feed.settings import FeedSettings
from shared.db.buckets import market_today
from shared.db.engine import make_async_engine, make_engine
from shared.db.models import EVENT_NEW_DROP, DropEvent
from shared.gen.dropwatch.feed.v1 import feed_pb2, feed_pb2_grpc

ROOT = Path(__file__).resolve().parents[1]
MIN_EVENTS = 10_000
CONCURRENCIES = (1, 16)
CALL_TIMEOUT = 30.0
ECHO_SERVICE = "dropwatch.bench.Echo"
FEED_SERVICE = feed_pb2.DESCRIPTOR.services_by_name["FeedService"].full_name

TARGET_JUST_OPENED_MS = 5.0
TARGET_STILL_OPEN_MS = 15.0
TARGET_SPEEDUP = 10.0
TARGET_SCALING = 1.3
TARGET_CACHE_VS_ECHO = 0.5

# The original pattern (review): the newest NEW_DROPs of the live buckets, then Python.
ORIGINAL_STILL_OPEN_ROWS = 10_000
ORIGINAL_JUST_OPENED_ROWS = 5_000
ORIGINAL_JUST_OPENED_WINDOW = dt.timedelta(minutes=5)
ORIGINAL_MAX_SAMPLES = 50


def log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


# --- scenarios -------------------------------------------------------------------------------

JUST_OPENED = "JustOpened"
STILL_OPEN = "StillOpen"
Message = feed_pb2.JustOpenedRequest | feed_pb2.StillOpenRequest


@dataclass(frozen=True)
class Scenario:
    key: str
    title: str
    rpc: str
    filtered: bool
    target_ms: float

    @property
    def cached(self) -> bool:
        return self.rpc == JUST_OPENED and not self.filtered

    def filter_dates(self, data: FeedData) -> list[dt.date]:
        return [data.today + dt.timedelta(days=d) for d in (1, 2, 3)] if self.filtered else []

    def filter_sizes(self) -> list[int]:
        return [2] if self.filtered else []

    def request(self, data: FeedData) -> Message:
        f = feed_pb2.FeedFilter(
            party_sizes=self.filter_sizes(),
            reservation_dates=[d.isoformat() for d in self.filter_dates(data)],
        )
        if self.rpc == JUST_OPENED:
            return feed_pb2.JustOpenedRequest(filter=f)
        return feed_pb2.StillOpenRequest(filter=f, limit=1000)

    def query(self, data: FeedData) -> FeedQuery:
        request = self.request(data)
        if isinstance(request, feed_pb2.JustOpenedRequest):
            return from_just_opened(request)
        return from_still_open(request)


# Set from --cache-ttl: None = the feed's default (answers cached up to 2 s), 0 = no cache.
CACHE_TTL: float | None = None

SCENARIOS = (
    Scenario("jo_default", "JustOpened default", JUST_OPENED, False, TARGET_JUST_OPENED_MS),
    Scenario("jo_filtered", "JustOpened filtered", JUST_OPENED, True, TARGET_JUST_OPENED_MS),
    Scenario("so_default", "StillOpen limit=1000", STILL_OPEN, False, TARGET_STILL_OPEN_MS),
    Scenario("so_filtered", "StillOpen filtered", STILL_OPEN, True, TARGET_STILL_OPEN_MS),
)
FILTER_NOTE = (
    "filtered = party_sizes [2] and reservation_dates today+1..today+3 (market time); "
    "StillOpen asks limit=1000; everything else is the RPC's default (JustOpened: last 600 s, "
    "limit 500; StillOpen: opened at least 600 s ago; one item per venue and date)."
)


# --- child processes -------------------------------------------------------------------------


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _tail(path: Path, lines: int = 30) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return "(no log)"


def stop_child(proc: subprocess.Popen[bytes]) -> None:
    """SIGTERM, then SIGKILL if it has not exited within 15 s; always reaped."""
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=10)


@contextmanager
def child_process(
    args: Sequence[str], log_path: Path, env: dict[str, str] | None = None
) -> Iterator[subprocess.Popen[bytes]]:
    with log_path.open("wb") as out:
        proc = subprocess.Popen(list(args), cwd=ROOT, env=env, stdout=out, stderr=subprocess.STDOUT)
    try:
        yield proc
    finally:
        stop_child(proc)


async def wait_ready(
    target: str, proc: subprocess.Popen[bytes], log_path: Path, timeout: float = 60.0
) -> None:
    deadline = time.monotonic() + timeout
    while True:
        if proc.poll() is not None:
            raise SystemExit(
                f"child {proc.args!r} exited with {proc.returncode}:\n{_tail(log_path)}"
            )
        try:
            async with grpc.aio.insecure_channel(target) as channel:
                await asyncio.wait_for(channel.channel_ready(), timeout=1.0)
                return
        except TimeoutError:
            if time.monotonic() > deadline:
                raise SystemExit(
                    f"{target} not ready after {timeout:.0f} s:\n{_tail(log_path)}"
                ) from None


@dataclass
class FeedProcess:
    proc: subprocess.Popen[bytes]
    target: str
    metrics_port: int | None
    log_path: Path

    def cache_counts(self) -> dict[str, float]:
        """The feed's cache counters (hit, miss) from its /metrics; empty if unavailable."""
        if self.metrics_port is None:
            return {}
        url = f"http://127.0.0.1:{self.metrics_port}/metrics"
        try:
            with urllib.request.urlopen(url, timeout=5) as response:
                body = response.read().decode()
        except OSError:
            return {}
        pattern = re.compile(
            r'^dropwatch_feed_cache_requests_total\{result="(\w+)",rpc="JustOpened"\} ([0-9.e+]+)$',
            re.M,
        )
        return {m.group(1): float(m.group(2)) for m in pattern.finditer(body)}


@contextmanager
def feed_server(url: str, logs: Path, name: str) -> Iterator[FeedProcess]:
    """`python -m services.feed` on a free port, against the benchmark database `url`."""
    port = free_port()
    env = dict(os.environ)
    env.update(
        DROPWATCH_DATABASE_URL=url,
        DROPWATCH_PAGE_TOKEN_SECRET="bench-page-token-secret",
        DROPWATCH_LOG_LEVEL="INFO",
    )
    if CACHE_TTL is not None:  # 0 = every request reaches PostgreSQL
        env["DROPWATCH_CACHE_TTL_SECONDS"] = str(CACHE_TTL)
    log_path = logs / f"feed-{name}.log"
    args = [sys.executable, "-m", "services.feed", "--port", str(port), "--metrics-port", "0"]
    with child_process(args, log_path, env) as proc:
        yield FeedProcess(proc, f"127.0.0.1:{port}", None, log_path)


async def feed_started(feed: FeedProcess) -> None:
    await wait_ready(feed.target, feed.proc, feed.log_path)
    found = re.compile(r"metrics on http://\S+:(\d+)/metrics")
    for _ in range(100):
        match = found.search(feed.log_path.read_text(errors="replace"))
        if match:
            feed.metrics_port = int(match.group(1))
            return
        await asyncio.sleep(0.1)


@dataclass(frozen=True)
class EchoVariant:
    method: str
    title: str
    parse: bool  # the client parses the reply as a JustOpenedResponse (as a feed client does)


ECHO_VARIANTS = (
    EchoVariant("Empty", "echo, empty response", False),
    EchoVariant("Message", "echo, the cached answer (message, serialized per call)", True),
    EchoVariant("Bytes", "echo, the cached answer (pre-serialized bytes)", True),
)


def serve_echo(port: int, payload_path: str) -> None:
    """The echo server's child process: a bare grpc.aio server (no interceptor, no validation).

    Empty answers b""; Message answers the feed's cached default answer, serialized by gRPC per
    call (what the feed does with its cached message); Bytes answers its serialized bytes.
    """
    payload = Path(payload_path).read_bytes()
    message = feed_pb2.JustOpenedResponse.FromString(payload)

    async def empty(request: bytes, context: Any) -> bytes:
        return b""

    async def as_bytes(request: bytes, context: Any) -> bytes:
        return payload

    async def as_message(request: bytes, context: Any) -> feed_pb2.JustOpenedResponse:
        return message

    async def main() -> None:
        server = grpc.aio.server()
        handler = grpc.method_handlers_generic_handler(
            ECHO_SERVICE,
            {
                "Empty": grpc.unary_unary_rpc_method_handler(empty),
                "Bytes": grpc.unary_unary_rpc_method_handler(as_bytes),
                "Message": grpc.unary_unary_rpc_method_handler(
                    as_message,
                    response_serializer=feed_pb2.JustOpenedResponse.SerializeToString,
                ),
            },
        )
        server.add_generic_rpc_handlers((handler,))
        server.add_insecure_port(f"[::]:{port}")
        await server.start()
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, stop.set)
        await stop.wait()
        await server.stop(0)

    asyncio.run(main())


@contextmanager
def echo_server(logs: Path, payload: bytes) -> Iterator[tuple[subprocess.Popen[bytes], str, Path]]:
    port = free_port()
    log_path = logs / "echo.log"
    payload_path = logs / "payload.bin"
    payload_path.write_bytes(payload)
    code = f"from bench.feed import serve_echo; serve_echo({port}, {str(payload_path)!r})"
    args = [sys.executable, "-c", code]
    with child_process(args, log_path) as proc:
        yield proc, f"127.0.0.1:{port}", log_path


# --- load driver -----------------------------------------------------------------------------


@dataclass
class LoadResult:
    concurrency: int
    latencies_ms: list[float]
    seconds: float
    errors: int
    items: int  # items in the last response
    size: int  # bytes of the last response

    @property
    def requests(self) -> int:
        return len(self.latencies_ms)

    @property
    def rps(self) -> float:
        return self.requests / self.seconds if self.seconds > 0 else 0.0

    @property
    def p50(self) -> float:
        return percentile(self.latencies_ms, 50)

    @property
    def p99(self) -> float:
        return percentile(self.latencies_ms, 99)


Call = Callable[[], Awaitable[Any]]


def _measure_reply(reply: Any) -> tuple[int, int]:
    if isinstance(reply, bytes):
        return 0, len(reply)
    return len(reply.items), reply.ByteSize()


async def drive(call: Call, concurrency: int, duration: float, warmup: float) -> LoadResult:
    """`concurrency` workers calling back to back for `duration` s (after `warmup` s)."""
    latencies: list[float] = []
    errors = 0
    last: Any = None

    async def worker(until: float, keep: bool) -> None:
        nonlocal errors, last
        while time.perf_counter() < until:
            started = time.perf_counter()
            try:
                reply = await call()
            except grpc.aio.AioRpcError as exc:
                errors += 1
                if errors <= 3:
                    log(f"  call failed: {exc.code().name}: {exc.details()}")
                await asyncio.sleep(0.01)
                continue
            if keep:
                latencies.append((time.perf_counter() - started) * 1000)
                last = reply

    if warmup > 0:
        until = time.perf_counter() + warmup
        await asyncio.gather(*(worker(until, False) for _ in range(concurrency)))
        errors = 0
    started = time.perf_counter()
    until = started + duration
    await asyncio.gather(*(worker(until, True) for _ in range(concurrency)))
    seconds = time.perf_counter() - started
    items, size = _measure_reply(last) if last is not None else (0, 0)
    return LoadResult(concurrency, latencies, seconds, errors, items, size)


def feed_call(channel: grpc.aio.Channel, scenario: Scenario, data: FeedData) -> Call:
    stub = feed_pb2_grpc.FeedServiceStub(channel)
    request = scenario.request(data)
    if isinstance(request, feed_pb2.JustOpenedRequest):
        jo = request
        return lambda: stub.JustOpened(jo, timeout=CALL_TIMEOUT)
    so = request
    return lambda: stub.StillOpen(so, timeout=CALL_TIMEOUT)


def echo_call(channel: grpc.aio.Channel, variant: EchoVariant) -> Call:
    method = channel.unary_unary(
        f"/{ECHO_SERVICE}/{variant.method}",
        request_serializer=None,  # bytes in
        response_deserializer=feed_pb2.JustOpenedResponse.FromString if variant.parse else None,
    )
    return lambda: method(b"", timeout=CALL_TIMEOUT)


async def raw_default_answer(target: str) -> bytes:
    """The feed's default JustOpened answer as the bytes on the wire."""
    async with grpc.aio.insecure_channel(target) as channel:
        method = channel.unary_unary(
            f"/{FEED_SERVICE}/JustOpened",
            request_serializer=feed_pb2.JustOpenedRequest.SerializeToString,
            response_deserializer=None,
        )
        reply = await method(feed_pb2.JustOpenedRequest(), timeout=CALL_TIMEOUT)
    if not isinstance(reply, bytes):
        raise SystemExit("expected the raw answer")
    return reply


def _warmup(duration: float) -> float:
    return min(1.0, max(0.2, duration / 5))


async def measure_feed(
    feed: FeedProcess,
    data: FeedData,
    scenarios: Sequence[Scenario],
    concurrencies: Sequence[int],
    duration: float,
    label: str,
) -> tuple[dict[tuple[str, int], LoadResult], dict[str, float]]:
    """Every scenario at every concurrency; plus the cache counters over the default runs."""
    results: dict[tuple[str, int], LoadResult] = {}
    cache: dict[str, float] = {}
    async with grpc.aio.insecure_channel(feed.target) as channel:
        for scenario in scenarios:
            call = feed_call(channel, scenario, data)
            before = feed.cache_counts() if scenario.cached else {}
            for c in concurrencies:
                result = await drive(call, c, duration, _warmup(duration))
                results[(scenario.key, c)] = result
                log(
                    f"  {label} {scenario.title}, concurrency {c}: p50 {result.p50:.2f} ms, "
                    f"p99 {result.p99:.2f} ms, {result.rps:,.0f} req/s, {result.items} items"
                    + (f", {result.errors} errors" if result.errors else "")
                )
            if scenario.cached:
                after = feed.cache_counts()
                cache = {k: after.get(k, 0.0) - before.get(k, 0.0) for k in after}
    return results, cache


async def measure_echo(
    target: str, concurrencies: Sequence[int], duration: float
) -> dict[tuple[str, int], LoadResult]:
    results = {}
    async with grpc.aio.insecure_channel(target) as channel:
        for variant in ECHO_VARIANTS:
            call = echo_call(channel, variant)
            for c in concurrencies:
                r = await drive(call, c, duration, _warmup(duration))
                results[(variant.method, c)] = r
                log(
                    f"  {variant.title}, concurrency {c}: p50 {r.p50:.2f} ms, "
                    f"p99 {r.p99:.2f} ms, {r.rps:,.0f} req/s"
                )
    return results


# --- the original pattern (review) -----------------------------------------------------------


@dataclass
class OriginalSample:
    ms: float
    query_ms: float  # the ORM DropEvent query, objects built
    snapshot_ms: float  # loading the open (bucket_id, slot_id) set
    python_ms: float  # still-open check, filters, dedupe
    events: int
    items: int


def original_statement(scenario: Scenario, data: FeedData, now: dt.datetime) -> Any:
    """The review's query: the newest NEW_DROPs of the live buckets, through the ORM."""
    stmt = select(DropEvent).where(
        DropEvent.event_type == EVENT_NEW_DROP, DropEvent.bucket_id.in_(data.live_bucket_ids)
    )
    if scenario.rpc == JUST_OPENED:
        stmt = stmt.where(DropEvent.opened_at >= now - ORIGINAL_JUST_OPENED_WINDOW)
        return stmt.order_by(DropEvent.opened_at.desc()).limit(ORIGINAL_JUST_OPENED_ROWS)
    return stmt.order_by(DropEvent.opened_at.desc()).limit(ORIGINAL_STILL_OPEN_ROWS)


def explain_original(
    engine: Engine, scenario: Scenario, data: FeedData, with_plan: bool
) -> tuple[float, str]:
    """EXPLAIN ANALYZE execution ms of the original's query (median of 3), and its text plan."""
    times = []
    plan = ""
    with engine.connect() as conn:
        for i in range(4 if with_plan else 3):
            stmt = original_statement(scenario, data, dt.datetime.now(dt.UTC))
            sql = str(stmt.compile(engine, compile_kwargs={"literal_binds": True}))
            if i == 3:
                rows = conn.exec_driver_sql("EXPLAIN (ANALYZE, BUFFERS) " + sql).all()
                plan = "\n".join(str(r[0]) for r in rows)
            else:
                doc = conn.exec_driver_sql("EXPLAIN (ANALYZE, FORMAT JSON) " + sql).scalar_one()
                times.append(float(doc[0]["Execution Time"]))
        conn.rollback()
    return median(times), plan


def original_request(
    engine: Engine, scenario: Scenario, data: FeedData, now: dt.datetime
) -> OriginalSample:
    """One request as the review's feed did it: newest NEW_DROPs of the live buckets through
    the ORM, the buckets' open snapshot (here read from open_slots; the original parsed a JSON
    snapshot per bucket), then still-open, filters and (venue, date) dedupe in Python."""
    today = data.today
    dates = set(scenario.filter_dates(data))
    sizes = set(scenario.filter_sizes())
    ids = data.live_bucket_ids
    if scenario.rpc == JUST_OPENED:
        limit, edge = 500, None
    else:
        limit, edge = 1000, now - dt.timedelta(seconds=600)
    started = time.perf_counter()
    with Session(engine) as db:
        events = db.scalars(original_statement(scenario, data, now)).all()
        queried = time.perf_counter()
        open_now = {
            (row[0], row[1])
            for row in db.execute(
                text("SELECT bucket_id, slot_id FROM open_slots WHERE bucket_id = ANY(:ids)"),
                {"ids": ids},
            )
        }
        loaded = time.perf_counter()
        seen: set[tuple[int, dt.date]] = set()
        kept: list[DropEvent] = []
        for event in events:  # newest first, so the first per (venue, date) wins
            if (event.bucket_id, event.slot_id) not in open_now or event.slot_date < today:
                continue
            if edge is not None and event.opened_at >= edge:
                continue
            if dates and event.slot_date not in dates:
                continue
            if sizes and sizes.isdisjoint(event.party_sizes):
                continue
            key = (event.venue_id, event.slot_date)
            if key in seen:
                continue
            seen.add(key)
            kept.append(event)
            if len(kept) >= limit:
                break
        done = time.perf_counter()
    return OriginalSample(
        ms=(done - started) * 1000,
        query_ms=(queried - started) * 1000,
        snapshot_ms=(loaded - queried) * 1000,
        python_ms=(done - loaded) * 1000,
        events=len(events),
        items=len(kept),
    )


@dataclass
class OriginalRun:
    samples: list[OriginalSample]
    server_ms: float  # EXPLAIN ANALYZE execution time of its query
    plan: str


def measure_original(
    engine: Engine, data: FeedData, duration: float, with_plans: bool
) -> dict[str, OriginalRun]:
    out: dict[str, OriginalRun] = {}
    for scenario in SCENARIOS:
        original_request(engine, scenario, data, dt.datetime.now(dt.UTC))  # warm-up
        samples: list[OriginalSample] = []
        until = time.perf_counter() + duration
        while len(samples) < 3 or (
            time.perf_counter() < until and len(samples) < ORIGINAL_MAX_SAMPLES
        ):
            samples.append(original_request(engine, scenario, data, dt.datetime.now(dt.UTC)))
        server, plan = explain_original(engine, scenario, data, with_plans)
        out[scenario.key] = OriginalRun(samples, server, plan)
        p50 = median([s.ms for s in samples])
        log(
            f"  original {scenario.title}: p50 {p50:.1f} ms over {len(samples)} requests "
            f"(its query: {server:.1f} ms in the server)"
        )
    return out


# --- where the feed's time goes (in-process, real code) --------------------------------------


class _NoDeadline:
    """Stands in for a grpc ServicerContext without a deadline (all `_answer` asks of it)."""

    def time_remaining(self) -> float | None:
        return None


@dataclass
class Breakdown:
    handler_ms: float  # FeedServicer._answer: pool checkout, SQL, as_of, building the message
    sql_ms: float  # store.fetch_feed alone: round trip, server, decoding rows
    server_ms: float  # EXPLAIN ANALYZE execution time of the same statement
    planning_ms: float
    build_ms: float  # FeedServicer._fill for those rows
    serialize_ms: float  # SerializeToString of the answer (the server does it per call)
    parse_ms: float  # FromString of the answer (the client does it per call)
    items: int
    size: int
    plan: str = ""


def _repeat_ms(fn: Callable[[], object], n: int) -> float:
    times = []
    for _ in range(n):
        started = time.perf_counter()
        fn()
        times.append((time.perf_counter() - started) * 1000)
    return median(times)


def _cpu_costs(
    servicer: FeedServicer,
    make: Callable[[], Any],
    page: list[store.FeedRow],
    query: FeedQuery,
    answer: Any,
    n: int,
) -> tuple[float, float, float]:
    """Median ms of building the answer from rows, serializing it, and parsing it back."""
    raw = answer.SerializeToString()
    build = _repeat_ms(lambda: servicer._fill(make(), page, query), n)
    serialize = _repeat_ms(answer.SerializeToString, n)
    parse = _repeat_ms(lambda: make().ParseFromString(raw), n)
    return build, serialize, parse


async def measure_breakdown(
    url: str, data: FeedData, iterations: int, with_plans: bool
) -> dict[str, Breakdown]:
    settings = FeedSettings()
    engine: AsyncEngine = make_async_engine(
        settings,
        name="bench-feed",
        url=url,
        server_settings={"plan_cache_mode": "force_custom_plan"},
    )
    cache = AnswerCache(settings.cache_ttl_seconds, CollectorRegistry())
    servicer = FeedServicer(settings, engine, PageTokens(b"bench"), cache)
    context: Any = _NoDeadline()
    out: dict[str, Breakdown] = {}
    try:
        for scenario in SCENARIOS:
            query = scenario.query(data)
            make: Callable[[], Any] = (
                feed_pb2.JustOpenedResponse
                if scenario.rpc == JUST_OPENED
                else feed_pb2.StillOpenResponse
            )
            handler: list[float] = []
            answer: Any = None
            for _ in range(iterations):
                started = time.perf_counter()
                answer = await servicer._answer(query, context, make())
                handler.append((time.perf_counter() - started) * 1000)
            sql: list[float] = []
            rows: list[store.FeedRow] = []
            for _ in range(iterations):
                snapshot = dt.datetime.now(dt.UTC)
                today = market_today(settings.zone, snapshot)
                async with engine.connect() as conn:
                    started = time.perf_counter()
                    rows = await store.fetch_feed(
                        conn, query, today=today, snapshot=snapshot, cursor=None
                    )
                    sql.append((time.perf_counter() - started) * 1000)
            build, serialize, parse = _cpu_costs(
                servicer, make, rows[: query.limit], query, answer, iterations
            )
            raw = answer.SerializeToString()
            server, planning, plan = await explain(engine, settings, query, with_plans)
            out[scenario.key] = Breakdown(
                handler_ms=median(handler),
                sql_ms=median(sql),
                server_ms=server,
                planning_ms=planning,
                build_ms=build,
                serialize_ms=serialize,
                parse_ms=parse,
                items=len(answer.items),
                size=len(raw),
                plan=plan,
            )
            b = out[scenario.key]
            log(
                f"  in-process {scenario.title}: handler {b.handler_ms:.2f} ms (SQL "
                f"{b.sql_ms:.2f}, server {b.server_ms:.2f}), build {b.build_ms:.2f}, "
                f"serialize {b.serialize_ms:.2f}, parse {b.parse_ms:.2f}"
            )
    finally:
        await engine.dispose()
    return out


async def explain(
    engine: AsyncEngine, settings: FeedSettings, query: FeedQuery, with_plan: bool
) -> tuple[float, float, str]:
    """EXPLAIN ANALYZE of the feed's statement: median execution and planning ms of 3 runs,
    and the text plan of a 4th when asked."""
    executions: list[float] = []
    plannings: list[float] = []
    plan = ""
    sql = store.build_sql(query, keyset=False)
    async with engine.connect() as conn:
        for _ in range(3):
            snapshot = dt.datetime.now(dt.UTC)
            params = store.params(query, market_today(settings.zone, snapshot), snapshot, None)
            result = await conn.execute(text("EXPLAIN (ANALYZE, FORMAT JSON) " + sql), params)
            doc = result.scalar_one()
            executions.append(float(doc[0]["Execution Time"]))
            plannings.append(float(doc[0]["Planning Time"]))
        if with_plan:
            snapshot = dt.datetime.now(dt.UTC)
            params = store.params(query, market_today(settings.zone, snapshot), snapshot, None)
            result = await conn.execute(text("EXPLAIN (ANALYZE, BUFFERS) " + sql), params)
            plan = "\n".join(str(row[0]) for row in result)
        await conn.rollback()
    return median(executions), median(plannings), plan


# --- the run ---------------------------------------------------------------------------------


@dataclass
class SizeRun:
    data: FeedData
    fresh_5min: int  # open drops opened in the last 5 minutes when the measurement started
    window_10min: int  # ... in the last 600 s (JustOpened's window)
    load: dict[tuple[str, int], LoadResult] = field(default_factory=dict)
    cache: dict[str, float] = field(default_factory=dict)
    payload: bytes = b""  # the default JustOpened answer on the wire
    original: dict[str, OriginalRun] = field(default_factory=dict)  # at this size


@dataclass
class Report:
    command: str
    server: ServerInfo
    where: str
    duration: float
    big: SizeRun
    small: SizeRun
    echo: dict[tuple[str, int], LoadResult]
    original: dict[str, OriginalRun]
    breakdown: dict[str, Breakdown]
    load_before: str  # load averages when the run started and ended (other work on the box)
    load_after: str


def _loader(url: str) -> Engine:
    return make_engine(
        bench_settings(db_statement_timeout_ms=0, db_pool_size=8), name="bench-load", url=url
    )


def _recent_counts(engine: Engine) -> tuple[int, int]:
    with engine.connect() as conn:
        row = conn.execute(
            text(
                "SELECT count(*) FILTER (WHERE opened_at >= now() - interval '5 minutes'),"
                " count(*) FILTER (WHERE opened_at >= now() - interval '600 seconds')"
                " FROM open_slots WHERE drop_event_id IS NOT NULL"
            )
        ).one()
    return int(row[0]), int(row[1])


def prepare(url: str, events: int) -> tuple[FeedData, Engine]:
    migrate_to_head(url)
    engine = _loader(url)
    log(f"loading ~{events:,} drop_events")
    data = load_feed_data(engine, events)
    log(
        f"loaded {data.events:,} drop_events, {data.open_drops:,} open drops, "
        f"{data.baseline:,} baseline slots in {data.seconds:.1f} s"
    )
    return data, engine


async def run_size(
    server: BenchServer,
    events: int,
    label: str,
    duration: float,
    logs: Path,
    concurrencies: Sequence[int],
    extra: Callable[[str, SizeRun, Engine], Awaitable[None]] | None = None,
) -> SizeRun:
    with bench_database(f"dw_bench_feed_{label}", server) as db:
        data, engine = prepare(db.url, events)
        try:
            data = refresh_recent(engine, data)
            fresh, window = _recent_counts(engine)
            log(f"{label}: {fresh:,} opened in the last 5 minutes, {window:,} in 600 s")
            run = SizeRun(data, fresh, window)
            with feed_server(db.url, logs, label) as feed:
                await feed_started(feed)
                run.load, run.cache = await measure_feed(
                    feed, data, SCENARIOS, concurrencies, duration, label
                )
                run.payload = await raw_default_answer(feed.target)
            if extra is not None:
                await extra(db.url, run, engine)
            return run
        finally:
            engine.dispose()


def load_average() -> str:
    try:
        return " / ".join(f"{v:.2f}" for v in os.getloadavg())
    except OSError:
        return "n/a"


async def run(args: argparse.Namespace, command: str) -> Report:
    load_before = load_average()
    echo: dict[tuple[str, int], LoadResult] = {}
    original: dict[str, OriginalRun] = {}
    breakdown: dict[str, Breakdown] = {}
    info: ServerInfo | None = None

    with tempfile.TemporaryDirectory(prefix="dropwatch-bench-feed-") as tmp, bench_server() as pg:
        logs = Path(tmp)

        async def at_big_size(url: str, size: SizeRun, engine: Engine) -> None:
            nonlocal echo, original, breakdown, info
            info = server_info(engine)
            log("echo server (the gRPC floor)")
            with echo_server(logs, size.payload) as (proc, target, log_path):
                await wait_ready(target, proc, log_path)
                echo = await measure_echo(target, CONCURRENCIES, args.duration)
            seconds = create_review_indexes(engine)
            log(f"the original pattern, in-process (its review indexes built in {seconds:.1f} s)")
            orm = make_engine(bench_settings(), name="bench-original", url=url)
            try:
                original = measure_original(orm, size.data, args.duration, args.explain)
                size.original = original
            finally:
                orm.dispose()
            log("where the feed's time goes, in-process")
            breakdown = await measure_breakdown(url, size.data, 30, args.explain)

        log(f"== {args.events:,} events")
        big = await run_size(
            pg, args.events, "big", args.duration, logs, CONCURRENCIES, at_big_size
        )

        async def original_only(url: str, size: SizeRun, engine: Engine) -> None:
            seconds = create_review_indexes(engine)
            log(f"the original pattern, in-process (its review indexes built in {seconds:.1f} s)")
            orm = make_engine(bench_settings(), name="bench-original", url=url)
            try:
                size.original = measure_original(orm, size.data, args.duration, False)
            finally:
                orm.dispose()

        log(f"== {args.small:,} events")
        small = await run_size(pg, args.small, "small", args.duration, logs, (1,), original_only)
        if info is None:
            raise SystemExit("no server information")
        return Report(
            command=command,
            server=info,
            where=pg.description,
            duration=args.duration,
            big=big,
            small=small,
            echo=echo,
            original=original,
            breakdown=breakdown,
            load_before=load_before,
            load_after=load_average(),
        )


# --- report ----------------------------------------------------------------------------------


def _events(n: int) -> str:
    if n % 1_000_000 == 0:
        return f"{n // 1_000_000}M"
    if n % 1000 == 0:
        return f"{n // 1000}k"
    return f"{n:,}"


def machine(report: Report) -> str:
    mem = memory_gib()
    memory = f", {mem:.0f} GiB RAM" if mem is not None else ""
    return (
        f"{cpu_count()} CPUs (nproc; {cpu_model()}){memory}, {platform.system()} "
        f"{platform.release()}, Python {platform.python_version()}, grpcio {grpc.__version__}, "
        f"protobuf {protobuf_version} ({api_implementation.Type()}); load average (1/5/15 min) "
        f"{report.load_before} at the start, {report.load_after} at the end"
    )


def postgres(report: Report) -> str:
    s = report.server.settings
    return (
        f"PostgreSQL {report.server.version}, {report.where}; shared_buffers="
        f"{s['shared_buffers']}, work_mem={s['work_mem']}, jit={s['jit']}"
    )


def data_line(run: SizeRun) -> str:
    d = run.data
    return (
        f"{d.events:,} drop_events ({d.new_drops:,} NEW_DROP, {d.closed:,} CLOSED) over 28 days "
        f"(14 past + 14 live, anchors 15:00 and 19:00), {d.venues:,} venues; open_slots: "
        f"{d.open_drops:,} open drops + {d.baseline:,} baseline slots; {run.fresh_5min:,} drops "
        f"opened in the last 5 minutes and {run.window_10min:,} in the last 600 s when the "
        f"measurement started. Loaded by `dropwatch seed` in {d.seconds:.1f} s incl. VACUUM "
        "ANALYZE."
    )


def method(report: Report) -> str:
    return (
        "The feed runs as `python -m services.feed` (a child process); the client is this "
        "process, `grpc.aio` over loopback (one channel, N coroutines calling back to back for "
        f"{report.duration:g} s after a warm-up). Latency is per call as the client sees it, "
        "including deserializing the response. Echo = a bare `grpc.aio` server in a child "
        "process (generic handlers, no interceptor), same client: an empty response, or the "
        "feed's cached default answer (the client parses it as a JustOpenedResponse). "
        + FILTER_NOTE
    )


def _ms(v: float) -> str:
    return f"{v:.2f}" if v < 10 else f"{v:.1f}"


def grpc_table(report: Report) -> tuple[list[str], list[list[str]]]:
    head = ["request", "items", "bytes"]
    for c in CONCURRENCIES:
        head += [f"c={c} p50 ms", f"c={c} p99 ms", f"c={c} req/s"]
    body = []
    for s in SCENARIOS:
        first = report.big.load[(s.key, CONCURRENCIES[0])]
        row = [s.title, str(first.items), f"{first.size:,}"]
        for c in CONCURRENCIES:
            r = report.big.load[(s.key, c)]
            row += [_ms(r.p50), _ms(r.p99), f"{r.rps:,.0f}"]
        body.append(row)
    for variant in ECHO_VARIANTS:
        first = report.echo[(variant.method, CONCURRENCIES[0])]
        row = [variant.title, str(first.items), f"{first.size:,}"]
        for c in CONCURRENCIES:
            r = report.echo[(variant.method, c)]
            row += [_ms(r.p50), _ms(r.p99), f"{r.rps:,.0f}"]
        body.append(row)
    return head, body


def original_table(report: Report) -> tuple[list[str], list[list[str]]]:
    head = [
        "request",
        "original p50 ms",
        "ORM query",
        "query server",
        "open snapshot",
        "Python",
        "rows read",
        "items",
        "feed p50 ms (gRPC, c=1)",
        "speed-up",
    ]
    body = []
    for s in SCENARIOS:
        run = report.original[s.key]
        samples = run.samples
        ours = report.big.load[(s.key, 1)].p50
        orig = median([x.ms for x in samples])
        body.append(
            [
                s.title,
                _ms(orig),
                _ms(median([x.query_ms for x in samples])),
                _ms(run.server_ms),
                _ms(median([x.snapshot_ms for x in samples])),
                _ms(median([x.python_ms for x in samples])),
                f"{samples[-1].events:,}",
                str(samples[-1].items),
                _ms(ours),
                f"{orig / ours:.0f}x",
            ]
        )
    return head, body


def scaling_table(report: Report) -> tuple[list[str], list[list[str]]]:
    small, big = _events(report.small.data.events), _events(report.big.data.events)
    head = ["request (c=1)", f"p50 ms at {small}", f"p50 ms at {big}", "ratio", "items"]
    body = []
    for s in SCENARIOS:
        a = report.small.load[(s.key, 1)]
        b = report.big.load[(s.key, 1)]
        body.append(
            [s.title, _ms(a.p50), _ms(b.p50), f"{b.p50 / a.p50:.2f}x", f"{a.items} / {b.items}"]
        )
    return head, body


def breakdown_table(report: Report) -> tuple[list[str], list[list[str]]]:
    head = [
        "request",
        "handler ms",
        "SQL ms (fetch_feed)",
        "SQL server ms",
        "build ms",
        "serialize ms",
        "client parse ms",
        "gRPC p50 ms (c=1)",
    ]
    body = []
    for s in SCENARIOS:
        b = report.breakdown[s.key]
        p50 = report.big.load[(s.key, 1)].p50
        handler = _ms(b.handler_ms) + (" (miss)" if s.cached else "")
        body.append(
            [
                s.title,
                handler,
                _ms(b.sql_ms),
                f"{b.server_ms:.2f} (+{b.planning_ms:.2f} plan)",
                _ms(b.build_ms),
                _ms(b.serialize_ms),
                _ms(b.parse_ms),
                _ms(p50),
            ]
        )
    return head, body


BREAKDOWN_NOTE = (
    "Medians of 30 in-process calls of the real code at the large size, no gRPC. handler = "
    "`FeedServicer._answer` (pool checkout, statement timeout, `store.fetch_feed`, "
    "`store.data_as_of`, COMMIT, `_fill`); SQL = `store.fetch_feed` alone (round trip, "
    "server, decoding rows into FeedRow); SQL server = EXPLAIN ANALYZE execution time (+ "
    "planning: the feed forces custom plans); build = `_fill` of the page into protobuf; "
    "serialize = `SerializeToString` (gRPC does it for every call, also for a cached answer); "
    "client parse = `ParseFromString` (the client's share of the gRPC latency). A cache hit "
    "costs the handler nothing but the lookup: only serialize, transport and parse remain."
)


def targets(report: Report) -> list[tuple[str, str, str]]:
    out = []
    big, small = _events(report.big.data.events), _events(report.small.data.events)
    for s in SCENARIOS:
        p50 = report.big.load[(s.key, 1)].p50
        out.append(
            (
                "PASS" if p50 < s.target_ms else "MISS",
                f"{s.title}: p50 < {s.target_ms:g} ms at concurrency 1, {big} events",
                f"{p50:.2f} ms",
            )
        )
    for s in SCENARIOS:
        ours = report.big.load[(s.key, 1)].p50
        orig = median([x.ms for x in report.original[s.key].samples])
        out.append(
            (
                "PASS" if orig / ours >= TARGET_SPEEDUP else "MISS",
                f"{s.title}: >= {TARGET_SPEEDUP:g}x faster than the original pattern",
                f"{orig / ours:.0f}x ({orig:.1f} ms vs {ours:.2f} ms)",
            )
        )
    for s in SCENARIOS:
        a = report.small.load[(s.key, 1)].p50
        b = report.big.load[(s.key, 1)].p50
        out.append(
            (
                "PASS" if b <= TARGET_SCALING * a else "MISS",
                f"{s.title}: p50 at {big} <= {TARGET_SCALING:g}x p50 at {small}",
                f"{b / a:.2f}x ({b:.2f} ms vs {a:.2f} ms)",
            )
        )
    c = CONCURRENCIES[-1]
    cached = report.big.load[(SCENARIOS[0].key, c)].rps
    echo = report.echo[(ECHO_VARIANTS[0].method, c)].rps
    out.append(
        (
            "PASS" if cached >= TARGET_CACHE_VS_ECHO * echo else "MISS",
            f"cached JustOpened default >= {TARGET_CACHE_VS_ECHO:g}x the echo server's "
            f"throughput (concurrency {c})",
            f"{cached / echo:.2f}x ({cached:,.0f} vs {echo:,.0f} req/s)",
        )
    )
    return out


def cache_line(report: Report) -> str:
    c = report.big.cache
    if not c:
        return "Cache counters: not available (metrics endpoint not found)."
    hits, misses = c.get("hit", 0.0), c.get("miss", 0.0)
    total = hits + misses
    ratio = hits / total if total else 0.0
    return (
        f"Cache during the JustOpened default runs (incl. warm-up), from the feed's /metrics: "
        f"{hits:,.0f} hits, {misses:,.0f} misses ({ratio:.2%} hits; the answer lives at most "
        "2 s)."
    )


ORIGINAL_NOTE = (
    "Original = the review's read pattern in this process (sync SQLAlchemy ORM, one request "
    "at a time): `DropEvent` NEW_DROPs of the 28 live buckets, newest first, LIMIT 10,000 "
    "(StillOpen) or opened in the last 5 minutes LIMIT 5,000 (JustOpened); then the open "
    "(bucket_id, slot_id) set of those buckets (read from open_slots; the original parsed a "
    "JSON snapshot per bucket); then still-open, the same filters, the 600 s age edge "
    "(StillOpen) and (venue, date) dedupe, newest wins, in Python. It builds no response and "
    "crosses no gRPC, which flatters it. ORM query = executing it and building the DropEvent "
    "objects; query server = its EXPLAIN ANALYZE execution time."
)


def plans(report: Report) -> list[tuple[str, str]]:
    out = []
    for s in SCENARIOS:
        if report.breakdown[s.key].plan:
            out.append(
                (
                    f"EXPLAIN (ANALYZE, BUFFERS) of the feed's query, {s.title}",
                    report.breakdown[s.key].plan,
                )
            )
    for s in SCENARIOS:  # the filtered requests send the same SQL
        if report.original[s.key].plan and not s.filtered:
            out.append(
                (
                    f"EXPLAIN (ANALYZE, BUFFERS) of the original's query, {s.title}",
                    report.original[s.key].plan,
                )
            )
    return out


def render_plain(report: Report) -> str:
    big, small = report.big, report.small
    out = [
        "dropwatch feed read path benchmark (bench/feed.py)",
        f"command:  {report.command}",
        f"machine:  {machine(report)}",
        f"database: {postgres(report)}",
        f"data ({_events(big.data.events)}):  {data_line(big)}",
        f"data ({_events(small.data.events)}): {data_line(small)}",
        "",
        method(report),
        "",
        f"gRPC, {_events(big.data.events)} events:",
        plain_table(*grpc_table(report)),
        cache_line(report),
        "",
        "targets:",
    ]
    out += [f"  {v:4}  {t}: {m}" for v, t, m in targets(report)]
    out += ["", "the original pattern:", plain_table(*original_table(report)), ORIGINAL_NOTE]
    out += ["", "scaling:", plain_table(*scaling_table(report))]
    out += ["", "where the time goes:", plain_table(*breakdown_table(report)), BREAKDOWN_NOTE]
    for title, plan in plans(report):
        out += ["", f"{title}:", plan]
    return "\n".join(out)


def render_markdown(report: Report) -> str:
    big, small = report.big, report.small
    out = [
        "## Feed read path: benchmark (answer cache "
        + ("off: every request reaches PostgreSQL)" if CACHE_TTL == 0 else "on, as deployed)"),
        "",
        f"`{report.command}`",
        "",
        f"- Machine: {machine(report)}",
        f"- Database: {postgres(report)}",
        f"- Data ({_events(big.data.events)}): {data_line(big)}",
        f"- Data ({_events(small.data.events)}): {data_line(small)}",
        f"- Method: {method(report)}",
        "",
        f"gRPC at {_events(big.data.events)} events:",
        "",
        md_table(*grpc_table(report)),
        "",
        cache_line(report),
        "",
        "| target | measured | verdict |",
        "|---|---|---|",
    ]
    out += [f"| {t} | {m} | **{v}** |" for v, t, m in targets(report)]
    out += ["", "Against the original pattern:", "", md_table(*original_table(report))]
    out += ["", ORIGINAL_NOTE, "", "Scaling:", "", md_table(*scaling_table(report))]
    out += ["", "Where the time goes:", "", md_table(*breakdown_table(report))]
    out += ["", BREAKDOWN_NOTE]
    for title, plan in plans(report):
        out += details(title, plan)
    return "\n".join(out)


def points(report: Report) -> list[Point]:
    """p50 of each request at concurrency 1, ours and the original's, at both sizes."""
    out = []
    for run in (report.small, report.big):
        for s in SCENARIOS:
            original = run.original.get(s.key)
            out.append(
                Point(
                    f"{s.title}, p50 at c=1",
                    "ms",
                    run.data.events,
                    run.load[(s.key, 1)].p50,
                    median([x.ms for x in original.samples]) if original else None,
                )
            )
    return out


# --- main ------------------------------------------------------------------------------------


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m bench.feed", description=__doc__.split("\n\n")[0] if __doc__ else ""
    )
    parser.add_argument("--events", type=int, default=1_000_000, help="drop_events to load")
    parser.add_argument(
        "--small", type=int, default=100_000, help="drop_events of the second, small database"
    )
    parser.add_argument(
        "--duration", type=float, default=5.0, help="seconds per measurement (after a warm-up)"
    )
    parser.add_argument("--markdown", action="store_true", help="print a Markdown section")
    parser.add_argument("--json", help="also write the chart figures to this file")
    parser.add_argument(
        "--cache-ttl",
        type=float,
        default=None,
        help="the feed's DROPWATCH_CACHE_TTL_SECONDS (default: its own, 2; 0 = no cache)",
    )
    parser.add_argument(
        "--explain", action="store_true", help="add EXPLAIN (ANALYZE, BUFFERS) of each query"
    )
    args = parser.parse_args(argv)
    if min(args.events, args.small) < MIN_EVENTS:
        parser.error(f"--events and --small must be at least {MIN_EVENTS}")
    if not 0.5 <= args.duration <= 120:
        parser.error("--duration must be between 0.5 and 120 seconds")
    global CACHE_TTL
    CACHE_TTL = args.cache_ttl
    return args


def command_line(argv: Sequence[str]) -> str:
    return " ".join([".venv/bin/python -m bench.feed", *argv]).strip()


async def run_cancellable(args: argparse.Namespace, command: str) -> Report | None:
    """`run`, cancelled by SIGTERM or Ctrl-C: the cancellation unwinds through every context
    manager, so the child processes, databases and the embedded server are always stopped
    (a signal that arrives during synchronous work takes effect at the next await)."""
    task = asyncio.current_task()
    if task is None:
        raise RuntimeError("not in a task")
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, task.cancel)
    try:
        return await run(args, command)
    except asyncio.CancelledError:
        log("interrupted; children and databases were cleaned up")
        return None


def main(argv: Sequence[str] | None = None) -> int:
    raw = list(sys.argv[1:] if argv is None else argv)
    args = parse_args(raw)
    report = asyncio.run(run_cancellable(args, command_line(raw)))
    if report is None:
        return 130
    render: Callable[[Report], str] = render_markdown if args.markdown else render_plain
    print(render(report))
    write_points(args.json, "feed_uncached" if CACHE_TTL == 0 else "feed", points(report))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
