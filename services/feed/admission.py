"""The feed's concurrency limit, applied to FeedService only.

grpc's `maximum_concurrent_rpcs` counts every call, health checks included: with a slow
database a busy replica then answered its own probes RESOURCE_EXHAUSTED, went unready and was
restarted, turning an overload into an outage, and the refused calls never reached the metrics.
Here FeedService calls beyond the limit are refused at once with RESOURCE_EXHAUSTED, inside
the metrics interceptor (so they are counted in `grpc_server_handled_total`), while health and
reflection are never refused: readiness means "this replica can serve", not "has a free slot".
"""

from __future__ import annotations

from typing import Any

import grpc

from services.feed.interceptors import Behaviour, CallInterceptor


class FeedLimit(CallInterceptor):
    """At most `limit` unary calls of `service` at once; the next ones are refused. Streams
    are bounded by their own limit (`DROPWATCH_WATCH_MAX_STREAMS`, services/feed/watch)."""

    streams = False

    def __init__(self, service: str, limit: int) -> None:
        self.prefix = f"/{service}/"
        self.limit = limit
        self.in_flight = 0

    def wrap(self, behaviour: Behaviour, details: grpc.HandlerCallDetails) -> Behaviour:
        async def limited(request: Any, context: grpc.aio.ServicerContext[Any, Any]) -> Any:
            if self.in_flight >= self.limit:
                await context.abort(
                    grpc.StatusCode.RESOURCE_EXHAUSTED,
                    f"this feed replica is answering its limit of {self.limit} calls;"
                    " retry with back-off",
                )
            self.in_flight += 1
            try:
                return await behaviour(request, context)
            finally:
                self.in_flight -= 1

        return limited
