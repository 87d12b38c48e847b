"""One shape for the feed's server interceptors: wrap the unary calls of some methods.

The metrics, the caller check and the concurrency limit each wrap a call's behaviour; this base
finds the unary-unary handler, leaves other methods (and streams) alone, and rebuilds the
handler around what `wrap` returns, so each interceptor is only its own rule.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

import grpc

Behaviour = Callable[[Any, grpc.aio.ServicerContext[Any, Any]], Awaitable[Any]]


class UnaryInterceptor(grpc.aio.ServerInterceptor):  # type: ignore[type-arg]
    """Applies `wrap` to the unary-unary calls whose method path starts with `prefix`."""

    prefix = "/"

    def wrap(self, behaviour: Behaviour, details: grpc.HandlerCallDetails) -> Behaviour:
        raise NotImplementedError

    async def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], Awaitable[Any]],
        details: grpc.HandlerCallDetails,
    ) -> Any:
        handler = await continuation(details)
        if handler is None or handler.unary_unary is None:
            return handler
        if not details.method.startswith(self.prefix):
            return handler
        return grpc.unary_unary_rpc_method_handler(
            self.wrap(handler.unary_unary, details),
            request_deserializer=handler.request_deserializer,
            response_serializer=handler.response_serializer,
        )
