"""What a WatchDrops consumer needs to show each change once (`dropwatch feed watch`, the
`make run` live view)."""

from __future__ import annotations

from collections import deque

from shared.gen.dropwatch.feed.v1 import feed_pb2

CHANGES = ("opened", "closed", "sizes_changed")  # the messages that carry a change


class Recent:
    """The ids of the last `size` changes shown. A resume may repeat changes the reader already
    has (at-least-once: the end of a stream can carry a cursor older than its last message,
    whose write the server could not see finish), always with the same ids: shown once."""

    def __init__(self, size: int = 10_000) -> None:
        self.size, self._order, self._ids = size, deque[int](), set[int]()

    def first_time(self, message: feed_pb2.WatchDropsResponse) -> bool:
        kind = message.WhichOneof("message")
        if kind not in CHANGES or message.initial:  # an initial state is shown whole, again
            return True
        change = getattr(message, str(kind))
        key = int(change.event_id if kind == "opened" else change.change_id)
        if key in self._ids:
            return False
        self._ids.add(key)
        self._order.append(key)
        if len(self._order) > self.size:
            self._ids.discard(self._order.popleft())
        return True
