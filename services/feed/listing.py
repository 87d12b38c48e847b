"""The ListChanges RPC: the changes after a cursor as one page (`store.read_changes`).

Validation, limits and status codes as for JustOpened (`servicer.py`), plus OUT_OF_RANGE for a
cursor older than the retained history. No answer cache: a cursor read is one indexed range
scan, and its answer must include what committed a moment ago. Registered next to the other
RPCs in `server._method_handlers`, behind the same interceptors (auth, metrics, FeedLimit).
"""

from __future__ import annotations

import logging

import grpc
from google.protobuf.message import DecodeError

from services.feed import limits, request, store
from services.feed.changes import OutOfRangeError, filter_query, to_proto
from services.feed.cursor import Cursor, CursorCodec, filter_key
from services.feed.errors import InvalidArgumentError
from services.feed.servicer import Context, FeedServicer, abort_call, database_errors
from shared.errors import DropwatchError
from shared.gen.dropwatch.feed.v1 import feed_pb2

log = logging.getLogger(__name__)


def decode(raw: bytes) -> feed_pb2.ListChangesRequest | request.Undecodable:
    """The request deserializer: undecodable bytes are INVALID_ARGUMENT, not UNKNOWN."""
    try:
        return feed_pb2.ListChangesRequest.FromString(raw)
    except DecodeError as exc:
        return request.Undecodable(str(exc)[:200] or "malformed message")


class ChangeLister:
    """ListChanges, with the servicer's engine, settings, deadline rule and page-token key."""

    def __init__(self, servicer: FeedServicer) -> None:
        self.servicer = servicer
        self.codec = CursorCodec(servicer.tokens.signer)
        self.prime = frozenset(servicer.settings.prime_anchors)

    async def ListChanges(
        self, raw: feed_pb2.ListChangesRequest | request.Undecodable, context: Context
    ) -> bytes:
        try:
            with database_errors():
                return (await self._answer(raw, context)).SerializeToString()
        except OutOfRangeError as exc:
            await context.abort(grpc.StatusCode.OUT_OF_RANGE, str(exc))
            raise
        except DropwatchError as exc:
            await abort_call(context, exc)
            raise  # unreachable: abort raises
        except Exception:  # a bug or an unexpected database error: log it, answer INTERNAL
            log.exception("ListChanges failed")
            await context.abort(grpc.StatusCode.INTERNAL, "internal error")
            raise

    async def _answer(
        self, raw: feed_pb2.ListChangesRequest | request.Undecodable, context: Context
    ) -> feed_pb2.ListChangesResponse:
        if isinstance(raw, request.Undecodable):
            raise InvalidArgumentError("request", f"cannot be decoded: {raw.problem}")
        limit, capped = request.capped_limit(
            raw.limit, limits.LIST_CHANGES_DEFAULT_LIMIT, limits.LIST_CHANGES_MAX_LIMIT
        )
        query = filter_query(raw.filter)
        key = filter_key(query)
        after = self.codec.decode(raw.cursor, key) if raw.cursor else None
        response = feed_pb2.ListChangesResponse(applied_limit=limit, limit_capped=capped)
        timeout_ms = self.servicer.timeout_ms(context)
        async with self.servicer.engine.connect() as conn, conn.begin():
            await store.set_statement_timeout(conn, timeout_ms)
            if after is None:  # the current moment: nothing yet, a cursor to list from
                oldest, _ = await store.horizon(conn)
                response.next_cursor = self.codec.encode(Cursor(oldest, 0, filter_key=key))
                response.as_of.FromDatetime(self.servicer.clock())
                return response
            page = await store.read_changes(conn, after, limit, query)
        position = after
        messages = []
        for change in page.changes:
            position = position.after(change.xact, change.change_id)
            messages.append(to_proto(change, self.codec.encode(position), self.prime))
        response.changes.extend(messages)
        response.next_cursor = self.codec.encode(page.next)
        response.truncated = page.truncated
        response.as_of.FromDatetime(page.as_of)
        return response
