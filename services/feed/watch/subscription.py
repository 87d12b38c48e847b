"""One stream's place at the hub: its filter, its resume cursor and its bounded buffer.

The hub only ever appends (`offer`) and never waits: a buffer that is full ends its stream as
too slow (`SLOW`), or, while the stream is still catching up from the database, only marks it
`overflowed` (the catch-up then reads once more, past everything that was dropped). Positions
are compared in commit order, so a change the stream already sent (from its catch-up) is
dropped when it comes again from the hub.
"""

from __future__ import annotations

import asyncio
import math
from collections import deque
from typing import NamedTuple

import grpc

from services.feed.changes import Change
from services.feed.cursor import Cursor
from services.feed.request import FeedQuery


class Ending(NamedTuple):
    """Why a stream ends: its status code, the reason counted in metrics, the message."""

    code: grpc.StatusCode
    reason: str
    message: str


SLOW = Ending(
    grpc.StatusCode.RESOURCE_EXHAUSTED,
    "slow",
    "the stream fell behind its buffer; resume with the cursor after a backoff",
)
MAX_AGE = Ending(
    grpc.StatusCode.ABORTED, "max_age", "the stream reached its maximum age; resume at once"
)
SHUTDOWN = Ending(
    grpc.StatusCode.UNAVAILABLE, "shutdown", "this replica is shutting down; resume elsewhere"
)
DATABASE = Ending(grpc.StatusCode.UNAVAILABLE, "database", "database unavailable")


class Pending(NamedTuple):
    """A change waiting to be sent: the change, its message without a cursor, its type."""

    change: Change
    body: bytes
    kind: str


def position(cursor: Cursor) -> tuple[int, int]:
    return cursor.position_xact, cursor.position_id


class Subscription:
    """Created by `Hub.subscribe`; read and sent by the stream's own task."""

    def __init__(self, query: FeedQuery, key: bytes, cursor: Cursor, capacity: int) -> None:
        self.query = query
        self.key = key
        self.cursor = cursor  # the stream's resume point: everything up to it was sent
        self.capacity = capacity
        self.pending: deque[Pending] = deque()
        self.catching_up = False
        self.overflowed = False
        self.hub_position = position(cursor)
        self.wake = asyncio.Event()
        self.ending: Ending | None = None
        self.task = asyncio.current_task()
        self.writing = False
        self.deadline = math.inf  # the stream's maximum age (monotonic); set by the stream

    def offer(self, item: Pending) -> None:
        if self.ending is not None:
            return
        if len(self.pending) >= self.capacity:
            if self.catching_up:
                self.overflowed = True
            else:
                self.end(SLOW)
            return
        if not self.overflowed:
            self.pending.append(item)
            self.wake.set()

    def moved(self, hub: tuple[int, int]) -> None:
        """The hub has read (and offered) every change up to `hub`."""
        self.hub_position = max(self.hub_position, hub)

    def end(self, ending: Ending) -> None:
        """End the stream (first reason wins). A stream blocked sending to a consumer that
        does not read is interrupted, so the end never waits for the consumer."""
        if self.ending is not None:
            return
        self.ending = ending
        self.pending.clear()
        self.wake.set()
        if self.writing and self.task is not None:
            self.task.cancel()


def excluded(cursor: Cursor, change: Change) -> bool:
    """Whether an initial state already reflected `change` (the cursor's exclusion)."""
    below = cursor.skip_below
    return below is not None and change.xact < below and change.xact not in cursor.skip_except
