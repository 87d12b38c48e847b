"""A WatchDrops consumer shows each change once (tools/repeats.py)."""

from __future__ import annotations

from shared.gen.dropwatch.feed.v1 import feed_pb2
from tools.repeats import Recent


def _opened(event_id: int, initial: bool = False) -> feed_pb2.WatchDropsResponse:
    return feed_pb2.WatchDropsResponse(
        opened=feed_pb2.FeedItem(event_id=event_id), initial=initial, cursor="c"
    )


def _closed(change_id: int) -> feed_pb2.WatchDropsResponse:
    drop = feed_pb2.FeedItem(event_id=1)
    return feed_pb2.WatchDropsResponse(closed=feed_pb2.DropClosed(change_id=change_id, drop=drop))


def test_a_repeated_change_is_shown_once_and_other_messages_always() -> None:
    recent = Recent()
    assert recent.first_time(_opened(1)) and recent.first_time(_closed(2))
    assert not recent.first_time(_opened(1)) and not recent.first_time(_closed(2))
    # A closing is its own change (its id), not its drop's opening (event 1).
    assert recent.first_time(_closed(3))
    # An initial state is shown whole each time it is sent; progress carries no change.
    assert recent.first_time(_opened(1, initial=True)) and recent.first_time(_opened(1, True))
    progress = feed_pb2.WatchDropsResponse(progress=feed_pb2.Progress(), cursor="c")
    assert recent.first_time(progress) and recent.first_time(progress)


def test_memory_is_bounded_to_the_last_ids() -> None:
    recent = Recent(size=3)
    assert all(recent.first_time(_opened(i)) for i in range(1, 6))
    assert len(recent._ids) == 3
    assert recent.first_time(_opened(1))  # forgotten: the oldest go first
    assert not recent.first_time(_opened(5))
