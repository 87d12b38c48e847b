"""WatchDrops' exported metrics follow what the streams actually send: the send-lag histogram
observes each live change (from when the poll saw it), messages are counted by type, the open
streams gauge follows a stream's life and the hub counts its reads and the commits they read."""

from __future__ import annotations

import asyncio
import datetime as dt
import time
from collections.abc import Callable

from services.feed.server import FeedServer
from shared.gen.dropwatch.feed.v1 import feed_pb2
from tests.feed.conftest import TODAY
from tests.feed.watch_support import Recorder, sample, serving
from tests.seeding import Seeder, SeedSlot

LAG = "dropwatch_feed_watch_send_lag_seconds"
MESSAGES = "dropwatch_feed_watch_messages_total"
STREAMS = "dropwatch_feed_watch_streams"
READS = "dropwatch_feed_watch_change_reads_total"
COMMITS = "dropwatch_feed_watch_commits_total"


async def eventually(condition: Callable[[], bool], timeout: float = 5.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "condition not reached"
        await asyncio.sleep(0.02)


def lag(server: FeedServer) -> tuple[float, float]:
    return sample(server, f"{LAG}_count"), sample(server, f"{LAG}_sum")


def sent(stream: Recorder, kind: str) -> int:
    return sum(1 for m in stream.messages if m.WhichOneof("message") == kind)


def counted_as_sent(server: FeedServer, stream: Recorder, kind: str) -> Callable[[], bool]:
    return lambda: sample(server, MESSAGES, type=kind) == sent(stream, kind)


def seen_ago(seconds: float = 0.0) -> dt.datetime:
    """A poll's time of seeing a change, `seconds` before now (real time: the lag is real)."""
    return dt.datetime.now(dt.UTC) - dt.timedelta(seconds=seconds)


async def test_a_sent_change_records_its_lag_and_the_messages_by_type(
    db_url: str, seeder: Seeder
) -> None:
    a, b = SeedSlot(1, TODAY, "19:00"), SeedSlot(2, TODAY, "15:00")
    async with serving(db_url) as (server, stub):
        assert sample(server, STREAMS) == 0
        stream = Recorder.start(stub, feed_pb2.WatchDropsRequest(heartbeat_seconds=1))
        await eventually(lambda: sample(server, STREAMS) == 1)
        await stream.until(lambda r: sent(r, "progress") >= 1)  # subscribed and heartbeating
        count, total = lag(server)
        reads = sample(server, READS, trigger="notify")
        commits = sample(server, COMMITS)

        await seeder.open([a], at=seen_ago())
        await stream.until(lambda r: len(r.live("opened")) == 1)
        await eventually(lambda: lag(server)[0] == count + 1)
        fresh = lag(server)[1] - total
        assert 0 <= fresh < 5.0, fresh  # seen just now: committed and sent within seconds

        await seeder.close([a], at=seen_ago())
        await stream.until(lambda r: len(r.live("closed")) == 1)
        await eventually(lambda: lag(server)[0] == count + 2)
        assert 0 <= lag(server)[1] - total - fresh < 5.0

        # The lag runs from when the poll saw the change, not from the send: 30 s old shows.
        count, total = lag(server)
        await seeder.open([b], at=seen_ago(30.0))
        await stream.until(lambda r: len(r.live("opened")) == 2)
        await eventually(lambda: lag(server)[0] == count + 1)
        assert 30.0 <= lag(server)[1] - total < 35.0
        assert sample(server, f"{LAG}_bucket", le="10.0") == count  # not under 10 s
        assert sample(server, f"{LAG}_bucket", le="60.0") == count + 1

        # Three committed transactions with changes, read by the one reader: at most one
        # read per commit woken by their NOTIFYs (fewer when they coalesce).
        assert sample(server, COMMITS) - commits == 3
        assert 1 <= sample(server, READS, trigger="notify") - reads <= 3

        await stream.until(lambda r: sent(r, "progress") >= 3)  # heartbeats after the changes
        for kind in ("opened", "closed", "progress"):
            await eventually(counted_as_sent(server, stream, kind))
        assert sample(server, MESSAGES, type="opened") == 2
        assert sample(server, MESSAGES, type="closed") == 1
        assert sample(server, MESSAGES, type="initial") == 0
        assert sample(server, STREAMS) == 1
        await stream.close()
        await eventually(lambda: sample(server, STREAMS) == 0)
