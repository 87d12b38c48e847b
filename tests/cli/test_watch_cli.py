"""`dropwatch feed watch|changes` as a user runs them.

Against a real feed for what it shows; against a scripted FeedService for the ends of a stream
a healthy feed rarely gives (shutdown, maximum age, expired cursor), so each reaction of the
client is shown exactly: where it resumes from, when it gives up.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import json
import os
import signal
import sys
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass, field
from typing import Any
from zoneinfo import ZoneInfo

import grpc
import pytest

from cli.watch import Backoff
from services.feed.server import FeedServer, start_feed
from shared.gen.dropwatch.feed.v1 import feed_pb2
from tests.conftest import REPO_ROOT
from tests.feed.conftest import NOW, TODAY, feed_settings
from tests.seeding import Seeder, SeedSlot

NEW_YORK = ZoneInfo("America/New_York")
OPENED_AT = dt.datetime(2026, 12, 1, 17, 0, 5, tzinfo=dt.UTC)  # 12:00:05 in New York


def _item(event_id: int = 7) -> feed_pb2.FeedItem:
    item = feed_pb2.FeedItem(
        event_id=event_id,
        venue=feed_pb2.Venue(id=9, name="Venue\x1b[2J 9\x07"),  # control characters: removed
        reservation_date="2026-12-02",
        slot_time="19:15",
        seating_type="Dining Room",
        party_sizes=[2, 4],
        bucket_id="2026-12-02_19:00",
        time_slot="19:00",
    )
    item.opened_at.FromDatetime(OPENED_AT)
    return item


def _opened(cursor: str, initial: bool = False, event_id: int = 7) -> feed_pb2.WatchDropsResponse:
    return feed_pb2.WatchDropsResponse(opened=_item(event_id), cursor=cursor, initial=initial)


def _closed(cursor: str) -> feed_pb2.WatchDropsResponse:
    closed = feed_pb2.DropClosed(change_id=8, drop=_item(), open_seconds=126.4)
    closed.closed_at.FromDatetime(OPENED_AT + dt.timedelta(seconds=126))
    return feed_pb2.WatchDropsResponse(closed=closed, cursor=cursor)


def _sizes(cursor: str) -> feed_pb2.WatchDropsResponse:
    changed = feed_pb2.PartySizesChanged(change_id=9, drop=_item(), added=[6], removed=[4])
    changed.changed_at.FromDatetime(OPENED_AT)
    return feed_pb2.WatchDropsResponse(sizes_changed=changed, cursor=cursor)


@dataclass
class Call:
    """One WatchDrops call of the script: its messages, then its end (None: held open)."""

    messages: Sequence[feed_pb2.WatchDropsResponse]
    end: tuple[grpc.StatusCode, str, str] | None  # code, details, trailing cursor ("" = none)


@dataclass
class Scripted:
    calls: list[Call]
    requests: list[feed_pb2.WatchDropsRequest] = field(default_factory=list)

    async def WatchDrops(
        self, request: feed_pb2.WatchDropsRequest, context: Any
    ) -> AsyncIterator[feed_pb2.WatchDropsResponse]:
        self.requests.append(request)
        call = self.calls.pop(0) if self.calls else Call([], None)
        for message in call.messages:
            yield message
        if call.end is None:
            await asyncio.sleep(3600)
            return
        code, details, cursor = call.end
        if cursor:
            context.set_trailing_metadata((("dropwatch-cursor", cursor),))
        await context.abort(code, details)


async def _serve(script: Scripted) -> tuple[grpc.aio.Server, str]:
    server = grpc.aio.server()
    watch = grpc.unary_stream_rpc_method_handler(
        script.WatchDrops,
        request_deserializer=feed_pb2.WatchDropsRequest.FromString,
        response_serializer=feed_pb2.WatchDropsResponse.SerializeToString,
    )
    service = "dropwatch.feed.v1.FeedService"
    server.add_generic_rpc_handlers(
        (grpc.method_handlers_generic_handler(service, {"WatchDrops": watch}),)
    )
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    return server, f"127.0.0.1:{port}"


async def _start(*args: str, stdout: Any = asyncio.subprocess.PIPE) -> asyncio.subprocess.Process:
    env = {k: v for k, v in os.environ.items() if not k.startswith("DROPWATCH_")}
    return await asyncio.create_subprocess_exec(
        *(sys.executable, "-m", "cli.main", "feed", *args),
        cwd=REPO_ROOT,
        env=env,
        stdout=stdout,
        stderr=asyncio.subprocess.PIPE,
    )


async def _lines(proc: asyncio.subprocess.Process, n: int) -> list[str]:
    assert proc.stdout is not None
    return [
        (await asyncio.wait_for(proc.stdout.readline(), timeout=20)).decode().rstrip("\n")
        for _ in range(n)
    ]


async def _finish(proc: asyncio.subprocess.Process) -> tuple[int, str, str]:
    out, err = await asyncio.wait_for(proc.communicate(), timeout=30)
    return proc.returncode or 0, (out or b"").decode(), err.decode()


async def test_resumes_from_the_servers_cursor_and_stops_on_an_expired_one() -> None:
    unavailable = grpc.StatusCode.UNAVAILABLE, "shutting down", "c3"  # newer than c2
    script = Scripted(
        [
            Call([_opened("c1"), _closed("c2")], unavailable),
            Call([_sizes("c4")], (grpc.StatusCode.ABORTED, "maximum stream age", "")),
            Call([], (grpc.StatusCode.OUT_OF_RANGE, "oldest resumable point: x", "")),
        ]
    )
    server, addr = await _serve(script)
    try:
        code, out, err = await _finish(await _start("watch", "--addr", addr, "--party-size", "2"))
    finally:
        await server.stop(0)
    assert code == 2, err
    assert "the cursor has expired: oldest resumable point: x" in err and "Traceback" not in err
    assert [r.cursor for r in script.requests] == ["", "c3", "c4"]  # trailing, then last message
    assert all(list(r.filter.party_sizes) == [2] for r in script.requests)
    opened, closed, sizes = out.splitlines()
    local = OPENED_AT.astimezone(NEW_YORK)
    assert opened.startswith(local.strftime("%m-%d %H:%M:%S") + "  OPEN")  # market time
    assert "Venue[2J 9 (9)" in opened and "\x1b" not in out and "\x07" not in out
    assert "2026-12-02 19:15  Dining Room  for 2,4" in opened
    assert (local + dt.timedelta(seconds=126)).strftime("%H:%M:%S") in closed
    assert "CLOSED" in closed and "after 2m06s" in closed
    assert "SIZES" in sizes and "(+6 -4)" in sizes
    assert err.count("UNAVAILABLE: shutting down; resuming from the last cursor") == 1


async def test_changes_repeated_after_a_resume_are_shown_once() -> None:
    """The end of a stream may carry a cursor older than its last message (the server could not
    see that write finish): the resumed stream repeats changes, with the same ids."""
    older = grpc.StatusCode.UNAVAILABLE, "shutting down", "c1"
    script = Scripted(
        [
            Call([_opened("c1"), _closed("c2")], older),
            Call([_closed("c2"), _sizes("c4")], (grpc.StatusCode.OUT_OF_RANGE, "gone", "")),
        ]
    )
    server, addr = await _serve(script)
    try:
        code, out, err = await _finish(await _start("watch", "--addr", addr, "--json"))
    finally:
        await server.stop(0)
    assert code == 2, err
    assert [r.cursor for r in script.requests] == ["", "c1"]
    kinds = [next(iter(set(json.loads(line)) - {"cursor", "initial"})) for line in out.splitlines()]
    assert kinds == ["opened", "closed", "sizes_changed"], out


async def test_initial_lists_again_after_an_expired_cursor_and_ctrl_c_is_quiet() -> None:
    expired = grpc.StatusCode.OUT_OF_RANGE, "oldest resumable point: y", ""
    script = Scripted(
        [
            Call([], expired),
            Call(
                [
                    _opened("", initial=True),
                    feed_pb2.WatchDropsResponse(
                        initial_state_end=feed_pb2.InitialStateEnd(items=1), cursor="c9"
                    ),
                ],
                None,
            ),
        ]
    )
    server, addr = await _serve(script)
    try:
        proc = await _start("watch", "--addr", addr, "--json", "--initial", "--from-cursor", "old")
        first, second = (json.loads(line) for line in await _lines(proc, 2))
        proc.send_signal(signal.SIGINT)
        code, _, err = await _finish(proc)
    finally:
        await server.stop(0)
    assert first["initial"] is True and first["opened"]["event_id"] == "7"
    assert second == {"initial_state_end": {"items": 1}, "cursor": "c9"}
    requests = [(r.cursor, r.send_initial_state) for r in script.requests]
    assert requests == [("old", False), ("", True)]
    assert "listing what is open now" in err
    assert code == 130 and "Traceback" not in err and "Exception" not in err


async def test_an_expired_answer_to_a_fresh_listing_is_an_error_not_a_loop() -> None:
    script = Scripted([Call([], (grpc.StatusCode.OUT_OF_RANGE, "oldest resumable point: z", ""))])
    server, addr = await _serve(script)
    try:
        code, _, err = await _finish(await _start("watch", "--addr", addr, "--initial"))
    finally:
        await server.stop(0)
    assert code == 2 and "the cursor has expired: oldest resumable point: z" in err
    assert [(r.cursor, r.send_initial_state) for r in script.requests] == [("", True)]


async def test_a_feed_that_stays_down_is_given_up_on() -> None:
    proc = await _start("watch", "--addr", "127.0.0.1:1", "--retry-for", "1")
    code, out, err = await _finish(proc)
    assert code == 2 and out == ""
    assert "gave up after 1 s of failed attempts: UNAVAILABLE" in err
    assert "Traceback" not in err


@pytest.mark.parametrize(
    "code", [grpc.StatusCode.INVALID_ARGUMENT, grpc.StatusCode.UNAUTHENTICATED]
)
async def test_a_refusal_is_one_line_and_not_retried(code: grpc.StatusCode) -> None:
    script = Scripted([Call([], (code, "cursor: not issued by this feed", ""))])
    server, addr = await _serve(script)
    try:
        status, _, err = await _finish(await _start("watch", "--addr", addr))
    finally:
        await server.stop(0)
    assert status == 2 and len(script.requests) == 1
    assert (
        err.strip()
        == f"dropwatch: error: feed at {addr}: {code.name}: cursor: not issued by this feed"
    )


async def test_a_reader_that_goes_away_is_not_a_bug() -> None:
    script = Scripted([Call([_opened(f"c{i}", event_id=100 + i) for i in range(50)], None)])
    server, addr = await _serve(script)
    read, write = os.pipe()
    os.close(read)
    try:
        code, _, err = await _finish(await _start("watch", "--addr", addr, stdout=write))
    finally:
        os.close(write)
        await server.stop(0)
    assert code == 141 and err == ""


# ---- against a real feed ----

ONE_SECOND = dt.timedelta(seconds=1)


async def test_watch_shows_what_is_open_then_opens_and_closes(
    seeder: Seeder, feed: FeedServer
) -> None:
    feed.watch.clock = lambda: NOW  # what is open "now": the seeded day's drops
    first, second = (SeedSlot(v, TODAY, "19:15", party_sizes=(2,)) for v in (9, 10))
    await seeder.open([first], at=NOW - ONE_SECOND)
    proc = await _start("watch", "--addr", f"127.0.0.1:{feed.port}", "--initial")
    try:
        listed, end = await _lines(proc, 2)
        await seeder.open([second], at=NOW)
        await seeder.close([first], at=NOW + ONE_SECOND)
        opened, closed = await _lines(proc, 2)
    finally:
        proc.send_signal(signal.SIGINT)
        code, _, err = await _finish(proc)
    assert "OPEN NOW" in listed and "Venue 9 (9)" in listed
    assert end == "-- 1 drops open now; changes follow --"
    local = NOW.astimezone(NEW_YORK).strftime("%m-%d %H:%M:%S")
    assert opened.startswith(f"{local}  OPEN ") and "Venue 10 (10)" in opened
    assert "CLOSED" in closed and "Venue 9 (9)" in closed
    assert code == 130 and "Traceback" not in err


async def test_a_consumer_that_was_away_resumes_and_lists_what_it_missed(
    seeder: Seeder, feed: FeedServer
) -> None:
    addr = f"127.0.0.1:{feed.port}"
    slots = [SeedSlot(v, TODAY, "19:15", party_sizes=(2,)) for v in (9, 10, 11)]
    proc = await _start("watch", "--addr", addr, "--json", "--heartbeat", "1")
    try:
        (heartbeat,) = [json.loads(line) for line in await _lines(proc, 1)]
        await seeder.open(slots[:1], at=NOW)  # the stream is open: it sees this
        seen: dict[str, Any] = {}
        while "opened" not in seen:  # heartbeats (each with its cursor) until it comes
            (seen,) = [json.loads(line) for line in await _lines(proc, 1)]
    finally:
        proc.send_signal(signal.SIGINT)
        await _finish(proc)
    assert "progress" in heartbeat and heartbeat["cursor"]
    assert seen["opened"]["venue"]["id"] == "9" and seen["cursor"]
    await seeder.open(slots[1:], at=NOW + ONE_SECOND)  # while nobody watches
    await seeder.close(slots[:1], at=NOW + 2 * ONE_SECOND)
    resume = f"--from-cursor={seen['cursor']}"  # `=`: a cursor may start with "-"
    proc = await _start("watch", "--addr", addr, "--json", resume)
    try:
        missed = [json.loads(line) for line in await _lines(proc, 3)]
    finally:
        proc.send_signal(signal.SIGINT)
        await _finish(proc)
    venues = sorted(m["opened"]["venue"]["id"] for m in missed if "opened" in m)
    assert venues == ["10", "11"]
    assert [m["closed"]["drop"]["venue"]["id"] for m in missed if "closed" in m] == ["9"]
    code, out, err = await _cli_once("changes", "--addr", addr, f"--cursor={seen['cursor']}")
    assert code == 0, err
    assert out.count("  OPEN ") == 2 and out.count("  CLOSED ") == 1
    assert "3 changes (times in market time, America/New_York)" in out
    (following,) = [x for x in out.splitlines() if x.startswith("next: --cursor=")]
    # One argument as printed: a cursor may start with "-" (CI once drew one: "--cursor -..."
    # was read as a missing value).
    code, out, err = await _cli_once("changes", "--addr", addr, "--json", following[6:])
    assert code == 0, err
    assert json.loads(out).get("changes", []) == []


async def test_changes_names_a_bad_cursor(feed: FeedServer) -> None:
    code, _, err = await _cli_once("changes", "--addr", f"127.0.0.1:{feed.port}", "--cursor", "x")
    assert code == 2 and "INVALID_ARGUMENT" in err and "cursor" in err
    assert err.count("\n") == 1 and "Traceback" not in err


async def test_a_cursor_that_starts_with_a_dash_is_passed_as_printed(feed: FeedServer) -> None:
    """Cursors are base64url: about one in 32 starts with "-". The CLI prints `--cursor=C`,
    which argparse reads as one argument; the feed then judges the value (here: forged)."""
    addr = f"127.0.0.1:{feed.port}"
    code, _, err = await _cli_once("changes", "--addr", addr, "--cursor=-AAAA")
    assert code == 2 and "INVALID_ARGUMENT" in err and "cursor" in err, err
    assert "expected one argument" not in err


async def _cli_once(*args: str) -> tuple[int, str, str]:
    return await _finish(await _start(*args))


async def test_watch_resumes_on_the_feed_that_comes_back_and_misses_nothing(
    seeder: Seeder, db_url: str
) -> None:
    """SIGTERM ends the stream UNAVAILABLE with its cursor; a close and an open committed
    while no feed runs are printed once the feed is back."""
    slots = [SeedSlot(v, TODAY, "19:15", party_sizes=(2,)) for v in (9, 10)]
    feed = await start_feed(feed_settings(db_url), db_url)
    proc = await _start("watch", "--addr", f"127.0.0.1:{feed.port}", "--heartbeat", "1", "--json")
    try:
        await _lines(proc, 1)  # a heartbeat: the stream is open
        await seeder.open(slots[:1], at=NOW)
        while "opened" not in json.loads((await _lines(proc, 1))[0]):
            pass
        await feed.stop(5)
        await seeder.close(slots[:1], at=NOW + ONE_SECOND)
        await seeder.open(slots[1:], at=NOW + ONE_SECOND)
        feed = await start_feed(feed_settings(db_url, feed_port=feed.port), db_url)
        changes: list[dict[str, Any]] = []
        while len(changes) < 2:
            line = json.loads((await _lines(proc, 1))[0])
            changes += [line] if "progress" not in line else []
    finally:
        proc.send_signal(signal.SIGINT)
        code, _, err = await _finish(proc)
        await feed.stop(0)
    assert [c["closed"]["drop"]["venue"]["id"] for c in changes if "closed" in c] == ["9"]
    assert [c["opened"]["venue"]["id"] for c in changes if "opened" in c] == ["10"]
    assert "UNAVAILABLE" in err and "resuming from the last cursor" in err
    assert code == 130 and "Traceback" not in err


def test_waits_grow_jittered_up_to_the_cap() -> None:
    backoff = Backoff(first=1.0, cap=8.0)
    waits = [backoff.next() for _ in range(6)]
    for wait, step in zip(waits, (1, 2, 4, 8, 8, 8), strict=True):
        assert step / 2 <= wait <= step
    assert len({round(w, 6) for w in waits[3:]}) > 1  # jittered, not in lockstep
