"""The live view's latest drops, pushed by the feed's WatchDrops stream instead of polled.

A thread holds one stream: first the drops open now (the newest of them shown), then every
change as its poll commits. When the stream ends (the feed restarting, its maximum stream age,
a lost database) it resumes from the last cursor after a short wait, so the view misses
nothing; an expired cursor starts again from what is open now. With
`DROPWATCH_FEED_AUTH_SECRET` set the feed wants a caller token: the view issues itself one.
"""

from __future__ import annotations

import datetime as dt
import os
import threading
import time
from collections import deque
from typing import Any
from zoneinfo import ZoneInfo

import grpc

from services.feed import auth
from shared.gen.dropwatch.feed.v1 import feed_pb2, feed_pb2_grpc
from tools.repeats import Recent

CURSOR_KEY = "dropwatch-cursor"
RETRY_SECONDS = 1.0
Row = tuple[str, ...]  # event, at (market time), venue, date, time, seating
EVENTS = {"opened": "NEW_DROP", "closed": "CLOSED", "sizes_changed": "SIZES"}


def row(kind: str, body: Any, zone: ZoneInfo) -> Row:
    """A change as the view's table shows it (times in market time)."""
    item = body if kind == "opened" else body.drop
    at = {"opened": "opened_at", "closed": "closed_at", "sizes_changed": "changed_at"}[kind]
    return (
        EVENTS[kind],
        getattr(body, at).ToDatetime(dt.UTC).astimezone(zone).strftime("%H:%M:%S"),
        item.venue.name or "?",
        item.reservation_date,
        item.slot_time,
        item.seating_type,
    )


class LiveDrops:
    """The newest `keep` changes, newest first, kept current by one WatchDrops stream."""

    def __init__(self, address: str, zone: ZoneInfo, keep: int = 12) -> None:
        self.address, self.zone, self.keep = address, zone, keep
        self._rows: deque[Row] = deque(maxlen=keep)
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._call: Any = None
        self.status = "connecting"
        self._thread = threading.Thread(target=self._run, name="live-drops", daemon=True)

    def start(self) -> LiveDrops:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        if self._call is not None:
            self._call.cancel()
        self._thread.join(timeout=5)

    def rows(self) -> list[Row]:
        with self._lock:
            return list(self._rows)

    def _metadata(self) -> tuple[tuple[str, str], ...] | None:
        secret = os.environ.get("DROPWATCH_FEED_AUTH_SECRET")
        if not secret:
            return None
        token = auth.issue(secret.encode(), "live-view", int(time.time()) + 86_400)
        return (("authorization", f"Bearer {token}"),)

    def _run(self) -> None:
        cursor, recent = "", Recent()
        with grpc.insecure_channel(self.address) as channel:
            stub = feed_pb2_grpc.FeedServiceStub(channel)
            while not self._stop.is_set():
                request = feed_pb2.WatchDropsRequest(cursor=cursor, send_initial_state=not cursor)
                self._call = stub.WatchDrops(request, metadata=self._metadata())
                initial: list[Any] = []
                try:
                    for message in self._call:
                        cursor = message.cursor or cursor
                        if recent.first_time(message):  # a resume may repeat changes
                            self._take(message, initial)
                except grpc.RpcError as exc:
                    trailing: Any = (
                        exc.trailing_metadata() if hasattr(exc, "trailing_metadata") else ()
                    )
                    ended = next((str(v) for k, v in trailing or () if k == CURSOR_KEY), "")
                    cursor = "" if exc.code() == grpc.StatusCode.OUT_OF_RANGE else ended or cursor
                    if self._stop.is_set():
                        break
                    self.status = f"stream {exc.code().name}, resuming"
                self._stop.wait(RETRY_SECONDS)

    def _take(self, message: feed_pb2.WatchDropsResponse, initial: list[Any]) -> None:
        kind = message.WhichOneof("message")
        if kind == "opened" and message.initial:
            initial.append(message.opened)  # shown once complete: the newest `keep` of them
        elif kind == "initial_state_end":
            newest = sorted(initial, key=lambda i: (i.opened_at.seconds, i.opened_at.nanos))
            with self._lock:
                self._rows.clear()
                self._rows.extendleft(row("opened", i, self.zone) for i in newest[-self.keep :])
            initial.clear()
        elif kind in EVENTS:
            with self._lock:
                self._rows.appendleft(row(str(kind), getattr(message, str(kind)), self.zone))
        if kind is not None:
            self.status = "streaming"
