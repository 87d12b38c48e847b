"""The feed benchmark's parts: requests, server children, client, original pattern, breakdown."""

from __future__ import annotations

import asyncio
import datetime as dt
import inspect
import itertools
import os
import re
import socket
import subprocess
import time
import urllib.request
from collections.abc import Awaitable, Callable, Iterator
from contextlib import AbstractContextManager as ContextManager
from contextlib import contextmanager, suppress
from dataclasses import dataclass
from pathlib import Path
from types import SimpleNamespace
from typing import Any, NamedTuple

import grpc
from prometheus_client import CollectorRegistry
from sqlalchemy import Engine, select, text
from sqlalchemy.orm import Session

from bench.harness import child, log, median, percentile
from services.feed import sql as feed_sql
from services.feed import store
from services.feed.cache import AnswerCache
from services.feed.paging import PageTokens
from services.feed.request import FeedQuery, from_just_opened, from_still_open
from services.feed.servicer import FeedServicer
from services.feed.settings import FeedSettings
from shared.db.buckets import market_today
from shared.db.engine import make_async_engine
from shared.db.models import EVENT_NEW_DROP, DropEvent
from shared.gen.dropwatch.feed.v1 import feed_pb2

MAX_SAMPLES = 50
CALL_TIMEOUT = 30.0
# key, title, JustOpened?, filtered?, p50 target at concurrency 1 (ms)
SCENARIOS = (
    ("jo_default", "JustOpened default", True, False, 5.0),
    ("jo_filtered", "JustOpened filtered", True, True, 5.0),
    ("so_default", "StillOpen limit=1000", False, False, 15.0),
    ("so_filtered", "StillOpen filtered", False, True, 15.0),
)


@dataclass(frozen=True)
class Ask:  # one request as every side sees it (filtered: party size 2, the next three days)
    key: str
    title: str
    message: feed_pb2.JustOpenedRequest | feed_pb2.StillOpenRequest
    query: FeedQuery
    just_opened: bool
    today: dt.date  # market time


def asks(today: dt.date) -> list[Ask]:
    out = []
    for key, title, jo, filtered, _ in SCENARIOS:
        dates = [today + dt.timedelta(days=d) for d in ((1, 2, 3) if filtered else ())]
        sizes = [2] if filtered else []
        f = feed_pb2.FeedFilter(party_sizes=sizes, reservation_dates=[d.isoformat() for d in dates])
        kw: dict[str, Any] = {} if jo else {"limit": 1000}
        m: Any = (feed_pb2.JustOpenedRequest if jo else feed_pb2.StillOpenRequest)(filter=f, **kw)
        out.append(Ask(key, title, m, (from_just_opened if jo else from_still_open)(m), jo, today))
    return out


def original_statement(ask: Ask, bucket_ids: list[str], now: dt.datetime) -> Any:
    """The newest NEW_DROPs of the live buckets, through the ORM."""
    new_drop = DropEvent.event_type == EVENT_NEW_DROP
    stmt = select(DropEvent).where(new_drop, DropEvent.bucket_id.in_(bucket_ids))
    if ask.just_opened:
        stmt = stmt.where(DropEvent.opened_at >= now - dt.timedelta(minutes=5))
    stmt = stmt.order_by(DropEvent.opened_at.desc())
    return stmt.limit(5000 if ask.just_opened else 10_000)


def original_request(engine: Engine, ask: Ask, bucket_ids: list[str]) -> list[float]:
    """One request the original way: ms of its query, open snapshot and Python; rows, items."""
    now = dt.datetime.now(dt.UTC)
    limit, edge = (500, None) if ask.just_opened else (1000, now - dt.timedelta(seconds=600))
    dates, sizes = set(ask.query.dates), set(ask.query.party_sizes)
    times = [time.perf_counter()]
    with Session(engine) as db:
        events = db.scalars(original_statement(ask, bucket_ids, now)).all()
        times.append(time.perf_counter())
        sql = "SELECT bucket_id, slot_id FROM open_slots WHERE bucket_id = ANY(:ids)"
        open_now = {(r[0], r[1]) for r in db.execute(text(sql), {"ids": bucket_ids})}
        times.append(time.perf_counter())
        seen: set[tuple[int, dt.date]] = set()
        for e in events:  # newest first: the first per (venue, date) wins
            if (e.bucket_id, e.slot_id) not in open_now or e.slot_date < ask.today:
                continue
            if (edge and e.opened_at >= edge) or (dates and e.slot_date not in dates):
                continue
            key = (e.venue_id, e.slot_date)
            if (sizes and sizes.isdisjoint(e.party_sizes)) or key in seen:
                continue
            seen.add(key)
            if len(seen) >= limit:
                break
        times.append(time.perf_counter())
    parts = [(b - a) * 1000 for a, b in itertools.pairwise(times)]
    return [*parts, len(events), len(seen)]


def measure_original(
    engine: Engine, asks: list[Ask], bucket_ids: list[str], duration: float
) -> list[dict[str, float]]:
    """Per request: medians of ms per part and of the query's server time; rows read, items."""
    out = []
    for ask in asks:
        original_request(engine, ask, bucket_ids)  # warm-up
        runs: list[list[float]] = []
        until = time.perf_counter() + duration
        while len(runs) < 3 or (time.perf_counter() < until and len(runs) < MAX_SAMPLES):
            runs.append(original_request(engine, ask, bucket_ids))
        servers = []
        with engine.connect() as conn:
            for _ in range(3):
                stmt = original_statement(ask, bucket_ids, dt.datetime.now(dt.UTC))
                sql = str(stmt.compile(engine, compile_kwargs={"literal_binds": True}))
                plan = conn.exec_driver_sql("EXPLAIN (ANALYZE, FORMAT JSON) " + sql).scalar_one()
                servers.append(float(plan[0]["Execution Time"]))
        parts = ("query", "snapshot", "python")
        found = {name: median([r[i] for r in runs]) for i, name in enumerate(parts)}
        found.update(ms=median([sum(r[:3]) for r in runs]), server=median(servers))
        out.append({**found, "rows": runs[-1][3], "items": runs[-1][4]})
        log(f"original {ask.title}: p50 {found['ms']:.1f} ms over {len(runs)} requests")
    return out


async def _calls(n: int, fn: Callable[[], Any]) -> tuple[float, Any]:
    """The median ms of `n` calls of `fn` (awaited if it returns an awaitable), its last result."""
    times, result = [], None
    for _ in range(n):
        started, result = time.perf_counter(), fn()
        result = await result if inspect.isawaitable(result) else result
        times.append((time.perf_counter() - started) * 1000)
    return median(times), result


async def measure_breakdown(url: str, asks: list[Ask], n: int = 30) -> list[dict[str, float]]:
    """Medians of `n` in-process calls of each part of the real code (custom plans, no gRPC)."""
    settings = FeedSettings()
    custom = {"plan_cache_mode": "force_custom_plan"}  # as the feed runs
    engine = make_async_engine(settings, name="bench-feed", url=url, server_settings=custom)
    cache = AnswerCache(settings.cache_ttl_seconds, CollectorRegistry())
    servicer = FeedServicer(settings, engine, PageTokens(b"bench"), cache)
    no_deadline: Any = SimpleNamespace(time_remaining=lambda: None)  # all `_answer` asks of it
    out = []
    for ask in asks:
        make: Any = feed_pb2.JustOpenedResponse if ask.just_opened else feed_pb2.StillOpenResponse
        boundary = await servicer._take_boundary()  # shared by first pages, as served
        today, q = market_today(settings.zone, boundary.at), ask.query
        handler = lambda: servicer._answer(q, boundary, None, no_deadline, make())  # noqa: B023, E731
        found: dict[str, float] = {}
        found["handler"], answer = await _calls(n, handler)
        async with engine.connect() as conn:
            fetch = lambda: store.fetch_feed(conn, q, today=today, boundary=boundary, cursor=None)  # noqa: B023, E731
            found["sql"], rows = await _calls(n, fetch)
            explain = text("EXPLAIN (ANALYZE, FORMAT JSON) " + feed_sql.build_sql(q, keyset=False))
            params = feed_sql.params(q, today, boundary, None)
            plans = [(await conn.execute(explain, params)).scalar_one()[0] for _ in range(3)]
        found["server"] = median([float(p["Execution Time"]) for p in plans])
        found["planning"] = median([float(p["Planning Time"]) for p in plans])
        raw, page = answer.SerializeToString(), rows[: q.limit]
        found["build"] = (await _calls(n, lambda: servicer._fill(make(), page, q)))[0]  # noqa: B023
        found["serialize"] = (await _calls(n, answer.SerializeToString))[0]
        found["parse"] = (await _calls(n, lambda: make().ParseFromString(raw)))[0]  # noqa: B023
        out.append(found)
        log(f"in-process {ask.title}: handler {found['handler']:.2f} ms, SQL {found['sql']:.2f}")
    await engine.dispose()
    return out


ECHO_SERVICE = "dropwatch.bench.Echo"
# Echo methods: an empty answer; the feed's cached default answer as a message serialized per
# call (as the feed serves its cache) or as pre-serialized bytes. The client parses the last two.
ECHO = {
    "Empty": "echo, empty response",
    "Message": "echo, the cached answer (message, serialized per call)",
    "Bytes": "echo, the cached answer (pre-serialized bytes)",
}


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@dataclass
class Server:
    proc: subprocess.Popen[Any]
    target: str  # host:port of its gRPC server
    log_path: Path
    metrics_port: int = 0

    async def ready(self) -> None:
        """Until its gRPC server answers (a minute at most); stops the run if it exits."""
        for _ in range(60):
            if self.proc.poll() is not None:
                break
            with suppress(TimeoutError):
                async with grpc.aio.insecure_channel(self.target) as channel:
                    return await asyncio.wait_for(channel.channel_ready(), timeout=1.0)
        tail = "\n".join(self.log_path.read_text(errors="replace").splitlines()[-30:])
        raise SystemExit(f"{self.proc.args!r} not ready ({self.proc.returncode}):\n{tail}")

    def cache_counts(self) -> dict[str, float]:
        """The feed's JustOpened cache counters (hit, miss) from its /metrics."""
        url = f"http://127.0.0.1:{self.metrics_port}/metrics"
        with urllib.request.urlopen(url, timeout=5) as response:
            body = response.read().decode()
        pattern = r'^dropwatch_feed_cache_requests_total\{result="(\w+)",rpc="JustOpened"\} (\S+)$'
        return {m[1]: float(m[2]) for m in re.finditer(pattern, body, re.M)}


@contextmanager
def served(log: Path, args: list[str], metrics: int = 0, **env: str) -> Iterator[Server]:
    """A gRPC server child on a free port (`{port}` in `args`), its output in `log`."""
    port = free_port()
    args = [a.replace("{port}", str(port)) for a in args]
    env = {**os.environ, **env}
    with log.open("wb") as out, child(args, env, stdout=out, stderr=subprocess.STDOUT) as p:
        yield Server(p, f"127.0.0.1:{port}", log, metrics)


def feed_server(url: str, logs: Path, name: str, cache_ttl: float) -> ContextManager[Server]:
    """`python -m services.feed` against the benchmark's database."""
    args = ["-m", "services.feed", "--port", "{port}", "--metrics-port", str(m := free_port())]
    env = dict(DROPWATCH_DATABASE_URL=url, DROPWATCH_CACHE_TTL_SECONDS=str(cache_ttl))
    env.update(DROPWATCH_PAGE_TOKEN_SECRET="bench-" + "0" * 32, DROPWATCH_LOG_LEVEL="INFO")
    return served(logs / f"feed-{name}.log", args, m, **env)


def echo_server(logs: Path, payload: bytes) -> ContextManager[Server]:
    (logs / "payload.bin").write_bytes(payload)
    code = f"from bench.feed_parts import serve_echo; serve_echo({{port}}, {str(logs)!r})"
    return served(logs / "echo.log", ["-c", code])


def serve_echo(port: int, logs: str) -> None:
    """The echo child: a bare grpc.aio server, generic handlers, no interceptor."""
    payload = (Path(logs) / "payload.bin").read_bytes()
    message = feed_pb2.JustOpenedResponse.FromString(payload)
    serialize = feed_pb2.JustOpenedResponse.SerializeToString
    answers = {"Empty": (b"", None), "Bytes": (payload, None), "Message": (message, serialize)}

    def handler(answer: Any, serializer: Any) -> grpc.RpcMethodHandler[Any, Any]:
        async def handle(request: bytes, context: Any) -> Any:
            return answer

        return grpc.unary_unary_rpc_method_handler(handle, None, serializer)

    async def main() -> None:  # until SIGTERM
        server = grpc.aio.server()
        handlers = {method: handler(*answer) for method, answer in answers.items()}
        generic = grpc.method_handlers_generic_handler(ECHO_SERVICE, handlers)
        server.add_generic_rpc_handlers((generic,))
        server.add_insecure_port(f"127.0.0.1:{port}")
        await server.start()
        await server.wait_for_termination()

    asyncio.run(main())


Call = Callable[[], Awaitable[Any]]


def echo_call(channel: grpc.aio.Channel, method: str) -> Call:
    parse = None if method == "Empty" else feed_pb2.JustOpenedResponse.FromString
    stub = channel.unary_unary(f"/{ECHO_SERVICE}/{method}", None, parse)
    return lambda: stub(b"", timeout=CALL_TIMEOUT)


class Load(NamedTuple):  # what `drive` measured, every call's latency as the client saw it
    p50: float  # ms
    p99: float
    rps: float
    items: int  # in the last answer
    size: int  # bytes of the last answer


async def drive(call: Call, concurrency: int, duration: float) -> Load:
    """`concurrency` coroutines calling back to back for `duration` s, after a warm-up."""
    latencies: list[float] = []
    last: Any = None
    errors = 0

    async def worker(until: float, keep: bool) -> None:
        nonlocal last, errors
        while time.perf_counter() < until:
            started = time.perf_counter()
            try:
                reply = await call()
            except grpc.aio.AioRpcError as exc:
                errors += 1
                if errors <= 3:
                    log(f"call failed: {exc.code().name}: {exc.details()}")
                await asyncio.sleep(0.01)
                continue
            if keep:
                latencies.append((time.perf_counter() - started) * 1000)
                last = reply

    for keep, seconds in ((False, min(1.0, max(0.2, duration / 5))), (True, duration)):
        started = time.perf_counter()
        await asyncio.gather(*(worker(started + seconds, keep) for _ in range(concurrency)))
    rps = len(latencies) / (time.perf_counter() - started)
    sized = not isinstance(last, bytes | None)  # the echo's empty answer is not parsed
    items, size = (len(last.items), last.ByteSize()) if sized else (0, len(last or b""))
    return Load(percentile(latencies, 50), percentile(latencies, 99), rps, items, size)
