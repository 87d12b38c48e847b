"""gRPC server metrics under the names the common gRPC dashboards expect."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Collection, Iterable
from typing import Any

import grpc
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

from services.feed.interceptors import Behaviour, CallInterceptor

LATENCY_BUCKETS = (
    0.0005,
    0.001,
    0.0025,
    0.005,
    0.01,
    0.025,
    0.05,
    0.1,
    0.25,
    0.5,
    1,
    2.5,
    5,
    10,
)


class GrpcServerMetrics:
    def __init__(self, registry: CollectorRegistry) -> None:
        labels = ["grpc_type", "grpc_service", "grpc_method"]
        self.started = Counter(
            "grpc_server_started", "RPCs started on the server.", labels, registry=registry
        )
        self.handled = Counter(
            "grpc_server_handled",
            "RPCs completed on the server, regardless of success or failure.",
            [*labels, "grpc_code"],
            registry=registry,
        )
        self.latency = Histogram(
            "grpc_server_handling_seconds",
            "Time from the start of an RPC until it was answered.",
            labels,
            buckets=LATENCY_BUCKETS,
            registry=registry,
        )
        self.types: dict[str, str] = {}  # method path -> grpc_type, from `prepare`

    def prepare(self, service: str, methods: Iterable[str], streams: Collection[str] = ()) -> None:
        """Create every method's series (and every status code's) at zero: `increase()` and
        `rate()` ignore a series' first sample, so a replica's first errors would be unseen.
        `streams` are the server-streaming methods (grpc_type "server_stream")."""
        for method in methods:
            kind = "server_stream" if method in streams else "unary"
            self.types[f"/{service}/{method}"] = kind
            labels = (kind, service, method)
            self.started.labels(*labels)
            self.latency.labels(*labels)
            for code in grpc.StatusCode:
                self.handled.labels(*labels, code.name)


class MetricsInterceptor(CallInterceptor):
    """Counts and times every RPC (a stream: from its start to its end), with its final status
    code."""

    def __init__(self, metrics: GrpcServerMetrics) -> None:
        self.metrics = metrics

    def wrap(self, behaviour: Behaviour, details: grpc.HandlerCallDetails) -> Behaviour:
        service, _, method = details.method.lstrip("/").rpartition("/")
        labels = (self.metrics.types.get(details.method, "unary"), service, method)
        metrics = self.metrics

        async def observed(request: Any, context: Any) -> Any:
            metrics.started.labels(*labels).inc()
            started = time.perf_counter()
            code = grpc.StatusCode.OK
            try:
                response = await behaviour(request, context)
                code = context.code() or grpc.StatusCode.OK
                return response
            except asyncio.CancelledError:  # the client went away (a stream, usually)
                code = context.code() or grpc.StatusCode.CANCELLED
                raise
            except BaseException:
                code = context.code() or grpc.StatusCode.UNKNOWN
                if code is grpc.StatusCode.OK:
                    code = grpc.StatusCode.UNKNOWN
                raise
            finally:
                metrics.handled.labels(*labels, code.name).inc()
                metrics.latency.labels(*labels).observe(time.perf_counter() - started)

        return observed


def horizon_lag_gauge(registry: CollectorRegistry) -> Gauge:
    """Transactions the feed's boundary cannot see yet (docs/architecture.md, "Commit order"):
    above a few for long, one writing transaction holds every new drop back."""
    return Gauge(
        "dropwatch_feed_commit_horizon_lag_transactions",
        "Transactions started but not visible to the feed at its current boundary: above a"
        " few, a long writing transaction holds the feed's view back (commit order).",
        registry=registry,
    )


WATCH_LAG_BUCKETS = (0.005, 0.01, 0.02, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60)
WATCH_MESSAGES = ("opened", "closed", "sizes_changed", "initial", "initial_state_end", "progress")
WATCH_ENDS = (
    "client",
    "slow",
    "max_age",
    "shutdown",
    "database",
    "limit",
    "refused",
    "expired",
    "error",
)


class WatchMetrics:
    """WatchDrops: open streams, messages, lag, why streams ended, and the hub's reads."""

    def __init__(self, registry: CollectorRegistry) -> None:
        self.streams = Gauge(
            "dropwatch_feed_watch_streams", "Open WatchDrops streams.", registry=registry
        )
        self.messages = Counter(
            "dropwatch_feed_watch_messages",
            "WatchDrops messages sent, by type ('initial': opened messages of an initial state).",
            ["type"],
            registry=registry,
        )
        self.lag = Histogram(
            "dropwatch_feed_watch_send_lag_seconds",
            "From a change's time (when the poll saw it) to its send on a live stream.",
            buckets=WATCH_LAG_BUCKETS,
            registry=registry,
        )
        self.ended = Counter(
            "dropwatch_feed_watch_streams_ended",
            "WatchDrops streams ended, by reason (slow: fell behind its buffer; limit: refused"
            " at the stream limit; refused: bad input; expired: a cursor older than the retained"
            " history).",
            ["reason"],
            registry=registry,
        )
        self.reads = Counter(
            "dropwatch_feed_watch_change_reads",
            "Change reads of the replica's one reader (the hub), by what woke it: a NOTIFY or"
            " the periodic check; catch-up reads of resuming streams are counted apart.",
            ["trigger"],
            registry=registry,
        )
        self.catch_up_reads = Counter(
            "dropwatch_feed_watch_catch_up_reads",
            "Change reads of streams catching up from an older cursor or an initial state.",
            registry=registry,
        )
        self.commits = Counter(
            "dropwatch_feed_watch_commits",
            "Committed transactions with changes the hub has read (reads per commit: the ratio).",
            registry=registry,
        )
        for kind in WATCH_MESSAGES:
            self.messages.labels(kind)
        for reason in WATCH_ENDS:
            self.ended.labels(reason)
        for trigger in ("notify", "check"):
            self.reads.labels(trigger)
