"""Build and run the feed's gRPC server: FeedService, health, reflection, metrics.

FeedService's concurrency is bounded (`FeedLimit`, admission.py): excess calls get
RESOURCE_EXHAUSTED at once instead of queueing without bound, and are counted; health and
reflection are outside the limit, so a busy replica still answers its probes. SIGTERM marks
health NOT_SERVING, ends every WatchDrops stream (UNAVAILABLE with its cursor, `watch/`) and
drains in-flight calls within the grace period.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import secrets
from dataclasses import dataclass

import grpc
from grpc_reflection.v1alpha import reflection
from prometheus_client import CollectorRegistry

from services.feed.admission import FeedLimit
from services.feed.auth import FeedAuth
from services.feed.cache import AnswerCache
from services.feed.cursor import CursorCodec
from services.feed.listing import ChangeLister, decode
from services.feed.metrics import GrpcServerMetrics, MetricsInterceptor, WatchMetrics
from services.feed.paging import PageTokens
from services.feed.request import decoder
from services.feed.servicer import FeedServicer
from services.feed.settings import FeedSettings
from services.feed.watch.hub import Hub
from services.feed.watch.stream import WatchService
from shared.db.engine import make_async_engine
from shared.db.pool_metrics import PoolMetrics
from shared.gen.dropwatch.feed.v1 import feed_pb2
from shared.health import Health
from shared.metrics_http import grpc_address

log = logging.getLogger(__name__)

LISTEN_WAIT_SECONDS = 3.0
SERVICE_NAME = feed_pb2.DESCRIPTOR.services_by_name["FeedService"].full_name


@dataclass
class FeedServer:
    server: grpc.aio.Server
    port: int
    servicer: FeedServicer
    health: Health
    registry: CollectorRegistry
    _listener: asyncio.Task[None]
    _stop_listener: asyncio.Event
    watch: WatchService

    async def stop(self, grace: float) -> None:
        await self.health.shutdown()
        await self.watch.hub.stop()  # every stream ends now, UNAVAILABLE with its cursor
        await self.server.stop(grace)
        self._stop_listener.set()
        self._listener.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await self._listener
        await self.servicer.engine.dispose()


def _method_handlers(
    servicer: FeedServicer, watch: WatchService
) -> dict[str, grpc.RpcMethodHandler]:  # type: ignore[type-arg]
    """As the generated `add_FeedServiceServicer_to_server`, except that the methods return
    already-serialized answers (kept that way in the cache), which are sent as they are."""
    return {
        "JustOpened": grpc.unary_unary_rpc_method_handler(
            servicer.JustOpened,
            request_deserializer=decoder(feed_pb2.JustOpenedRequest),
            response_serializer=_as_is,
        ),
        "StillOpen": grpc.unary_unary_rpc_method_handler(
            servicer.StillOpen,
            request_deserializer=decoder(feed_pb2.StillOpenRequest),
            response_serializer=_as_is,
        ),
        "ListChanges": grpc.unary_unary_rpc_method_handler(
            ChangeLister(servicer).ListChanges,
            request_deserializer=decode,
            response_serializer=_as_is,
        ),
        # A coroutine that writes its messages (already serialized) and returns at the end.
        "WatchDrops": grpc.unary_stream_rpc_method_handler(
            watch.WatchDrops,
            request_deserializer=decoder(feed_pb2.WatchDropsRequest),
            response_serializer=_as_is,
        ),
    }


def _as_is(answer: bytes) -> bytes:
    return answer


async def start_feed(
    settings: FeedSettings, database_url: str, registry: CollectorRegistry | None = None
) -> FeedServer:
    registry = registry if registry is not None else CollectorRegistry()
    pool = PoolMetrics(registry)
    engine = make_async_engine(
        settings,
        name="feed",
        metrics=pool,
        url=database_url,
        # Custom plans: a generic plan of the filtered query was measured 20x slower. No
        # parallel workers: on small nodes they compete with the gRPC process for the cores.
        server_settings={
            "plan_cache_mode": "force_custom_plan",
            "max_parallel_workers_per_gather": "0",
        },
    )
    if settings.page_token_secret is not None:
        secret = settings.page_token_secret.get_secret_value().encode()
    else:
        log.warning("DROPWATCH_PAGE_TOKEN_SECRET unset: page tokens only work on this replica")
        secret = secrets.token_bytes(32)
    cache = AnswerCache(settings.cache_ttl_seconds, registry, settings.cache_max_mb << 20)
    previous = settings.page_token_previous_secret
    tokens = PageTokens(
        secret,
        previous.get_secret_value().encode() if previous is not None else None,
        lifetime=settings.page_token_ttl_seconds,
    )
    servicer = FeedServicer(settings, engine, tokens, cache, registry=registry)

    hub = Hub(engine, database_url, settings, WatchMetrics(registry))
    watch = WatchService(settings, engine, hub, CursorCodec(tokens.signer), hub.metrics)
    handlers = _method_handlers(servicer, watch)
    grpc_metrics = GrpcServerMetrics(registry)
    streams = [name for name, handler in handlers.items() if handler.unary_stream is not None]
    grpc_metrics.prepare(SERVICE_NAME, handlers, streams)
    interceptors: list[grpc.aio.ServerInterceptor] = [MetricsInterceptor(grpc_metrics)]  # type: ignore[type-arg]
    auth_keys = [
        key.get_secret_value().encode()
        for key in (settings.feed_auth_secret, settings.feed_auth_previous_secret)
        if key is not None
    ]
    if auth_keys:
        interceptors.append(FeedAuth(SERVICE_NAME, auth_keys))
    else:
        log.warning("DROPWATCH_FEED_AUTH_SECRET unset: any caller may use the feed")
    interceptors.append(FeedLimit(SERVICE_NAME, settings.max_concurrent_rpcs))
    server = grpc.aio.server(
        # Outermost first: refusals (unauthenticated, at the limit) are counted like any other
        # answer.
        interceptors=interceptors,
        options=[
            ("grpc.so_reuseport", 0),  # a taken port is an error, not a shared one
            # A request is a few kilobytes; 4 MiB (gRPC's default) would let a caller make the
            # server decode megabytes per call.
            ("grpc.max_receive_message_length", settings.max_request_bytes),
        ],
    )
    server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler(SERVICE_NAME, handlers),))
    server.add_registered_method_handlers(SERVICE_NAME, handlers)  # type: ignore[attr-defined]
    health = Health((SERVICE_NAME,))
    health.add_to(server)
    if settings.feed_reflection:  # off in the production overlay
        reflection.enable_server_reflection(
            (SERVICE_NAME, "grpc.health.v1.Health", reflection.SERVICE_NAME), server
        )
    port = server.add_insecure_port(grpc_address(settings.bind_host, settings.feed_port))
    await server.start()
    await health.set(True)
    stop_listener = asyncio.Event()
    listener = asyncio.create_task(cache.listen(database_url, stop_listener))
    # Serve once invalidations can reach the cache (bounded: a down database must not stop
    # the server from starting and answering UNAVAILABLE).
    hub.start()
    with contextlib.suppress(TimeoutError):
        await asyncio.wait_for(
            asyncio.gather(cache.listening.wait(), hub.ready.wait()), timeout=LISTEN_WAIT_SECONDS
        )
    log.info("feed serving %s on port %d", SERVICE_NAME, port)
    return FeedServer(server, port, servicer, health, registry, listener, stop_listener, watch)
