"""A validated WatchDrops request: the filter, where to start, and the heartbeat interval.

Validated as the other RPCs are (`changes.filter_query`, naming `filter.*`), plus the stream's
own fields: `cursor` (signed, of this filter), `heartbeat_seconds` (1-300, 0 = the default)
and `send_initial_state`, which cannot be combined with `cursor`.
"""

from __future__ import annotations

from dataclasses import dataclass

from services.feed.changes import filter_query
from services.feed.cursor import Cursor, CursorCodec, filter_key
from services.feed.errors import InvalidArgumentError
from services.feed.request import FeedQuery, Undecodable
from shared.gen.dropwatch.feed.v1 import feed_pb2

MIN_HEARTBEAT, MAX_HEARTBEAT = 1, 300


@dataclass(frozen=True)
class Watch:
    query: FeedQuery
    key: bytes
    cursor: Cursor | None
    initial: bool
    heartbeat: float


def from_watch(
    raw: feed_pb2.WatchDropsRequest | Undecodable, codec: CursorCodec, default_heartbeat: int
) -> Watch:
    if isinstance(raw, Undecodable):
        raise InvalidArgumentError("request", f"cannot be decoded: {raw.problem}")
    query = filter_query(raw.filter)
    key = filter_key(query)
    heartbeat = raw.heartbeat_seconds
    if heartbeat == 0:
        heartbeat = default_heartbeat
    elif not MIN_HEARTBEAT <= heartbeat <= MAX_HEARTBEAT:
        raise InvalidArgumentError(
            "heartbeat_seconds",
            f"must be between {MIN_HEARTBEAT} and {MAX_HEARTBEAT} (0 = default)",
        )
    if raw.send_initial_state and raw.cursor:
        raise InvalidArgumentError(
            "send_initial_state", "cannot be combined with cursor (resume, or start again)"
        )
    cursor = codec.decode(raw.cursor, key) if raw.cursor else None
    return Watch(query, key, cursor, raw.send_initial_state, float(heartbeat))
