"""One shape for the feed's server interceptors: wrap the calls of some methods.

The metrics, the caller check and the concurrency limit each wrap a call's behaviour; this base
finds the handler, leaves other methods alone, and rebuilds the handler around what `wrap`
returns, so each interceptor is only its own rule. A server stream (WatchDrops) has the same
shape as a unary call here: its behaviour is a coroutine that writes its messages with
`context.write` and returns when the stream ends, so one `wrap` serves both; an interceptor
that should not apply to streams says so (`streams = False`).
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

import grpc

Behaviour = Callable[[Any, grpc.aio.ServicerContext[Any, Any]], Awaitable[Any]]


class CallInterceptor(grpc.aio.ServerInterceptor):  # type: ignore[type-arg]
    """Applies `wrap` to the unary calls (and server streams, unless `streams` is False) whose
    method path starts with `prefix`."""

    prefix = "/"
    streams = True

    def wrap(self, behaviour: Behaviour, details: grpc.HandlerCallDetails) -> Behaviour:
        raise NotImplementedError

    async def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], Awaitable[Any]],
        details: grpc.HandlerCallDetails,
    ) -> Any:
        handler = await continuation(details)
        if handler is None or not details.method.startswith(self.prefix):
            return handler
        if handler.unary_unary is not None:
            build, behaviour = grpc.unary_unary_rpc_method_handler, handler.unary_unary
        elif handler.unary_stream is not None and self.streams:
            build, behaviour = grpc.unary_stream_rpc_method_handler, handler.unary_stream
        else:
            return handler
        return build(
            self.wrap(behaviour, details),
            request_deserializer=handler.request_deserializer,
            response_serializer=handler.response_serializer,
        )
