"""The guards and helpers of `dropwatch up` (tools/stack/), without starting a stack."""

from __future__ import annotations

import asyncio
import datetime as dt
import json
import logging
import os
import socket
import threading
from collections.abc import Callable
from pathlib import Path
from zoneinfo import ZoneInfo

import pytest
from rich.console import Console
from sqlalchemy import Engine

from services.feed.server import start_feed
from shared.db.engine import make_async_engine
from shared.errors import DropwatchError
from shared.logs import configure_logging
from shared.settings import Settings
from tests.cli.test_cli import _dropwatch, _env
from tests.feed.conftest import feed_settings
from tests.seeding import Seeder, SeedSlot
from tools.stack import guard, ready, view
from tools.stack.children import Stack
from tools.stack.drops import LiveDrops
from tools.stack.logs import LogPump, RotatingLog


def test_a_taken_port_is_named_with_its_holder() -> None:
    with socket.socket() as holder:
        holder.bind(("0.0.0.0", 0))  # all interfaces: 127.0.0.1 is taken too
        holder.listen()
        port = holder.getsockname()[1]
        with pytest.raises(DropwatchError) as caught:
            guard.check_ports({"poller metrics": 0, "feed gRPC": port}, "127.0.0.1")
    message = str(caught.value)
    assert f"{port} (feed gRPC)" in message
    assert f"pid {os.getpid()}" in message and "python" in message
    assert "--free-ports" in message
    guard.check_ports({"feed gRPC": port}, "127.0.0.1")  # free again once closed


def test_a_second_up_in_the_same_folder_says_one_is_running(tmp_path: Path) -> None:
    with guard.one_stack(tmp_path):
        second = _dropwatch("up", "--free-ports", env=_env(DROPWATCH_DATA_DIR=str(tmp_path)))
    assert second.returncode == 2
    assert "already running from this folder" in second.stderr
    assert f"pid {os.getpid()}" in second.stderr
    assert not (tmp_path / "pgdata").exists()  # refused before anything started
    with guard.one_stack(tmp_path):  # the lock is free again
        pass


def test_leftovers_of_a_dead_stack_are_stopped_and_strangers_are_not(tmp_path: Path) -> None:
    stack = Stack(tmp_path, on_change=lambda children: guard.record(tmp_path, children))
    child = stack.start("server", "-", ["http.server", "-b", "127.0.0.1", "0"], dict(os.environ))
    try:
        path = tmp_path / guard.STATE_FILE
        state = json.loads(path.read_text())
        # Another process now has the recorded pid: it started at another time.
        stranger = {**state, "children": [{**state["children"][0], "started": 1.0}]}
        path.write_text(json.dumps(stranger))
        assert guard.stop_leftovers(tmp_path) == []
        assert child.proc.poll() is None
        path.write_text(json.dumps(state))
        assert guard.stop_leftovers(tmp_path) == [f"server (pid {child.proc.pid})"]
        assert child.proc.wait(timeout=10) is not None
        assert not path.exists()
    finally:
        stack.stop()


def test_ready_needs_the_health_check_not_just_a_listening_port(tmp_path: Path) -> None:
    with socket.socket() as impostor:
        impostor.bind(("127.0.0.1", 0))
        impostor.listen()
        address = f"127.0.0.1:{impostor.getsockname()[1]}"
        checks = [ready.Check("feed", "gRPC health", ready.grpc_serving(address))]
        with pytest.raises(DropwatchError, match="feed did not answer its health check"):
            ready.wait_ready(checks, Stack(tmp_path), threading.Event(), timeout=1)


def test_a_child_that_exits_is_named_with_its_last_words(tmp_path: Path) -> None:
    stack = Stack(tmp_path)
    child = stack.start("simulator", "-", ["this_module_does_not_exist"], dict(os.environ))
    child.proc.wait(timeout=30)
    with pytest.raises(DropwatchError) as caught:
        stack.check()
    assert "simulator exited with code 1" in str(caught.value)
    assert "No module named this_module_does_not_exist" in str(caught.value)
    assert str(tmp_path / "simulator.log") in str(caught.value)
    stack.stop()


def test_logs_rotate_and_keep_two_old_files(tmp_path: Path) -> None:
    log = RotatingLog(tmp_path / "poller.log", max_bytes=100, backups=2)
    for n in range(41):
        log.write(f"line {n:04d} of the poller's log\n".encode())
    log.close()
    names = sorted(p.name for p in tmp_path.iterdir())
    assert names == ["poller.log", "poller.log.1", "poller.log.2"]
    assert all(p.stat().st_size <= 100 + 40 for p in tmp_path.iterdir())
    assert b"line 0040" in (tmp_path / "poller.log").read_bytes()
    big = tmp_path / "feed.log"  # a log already over the limit rotates at the next start
    big.write_bytes(b"x" * 200)
    RotatingLog(big, max_bytes=100).close()
    assert (tmp_path / "feed.log.1").stat().st_size == 200 and big.stat().st_size == 0


def test_the_log_pump_copies_output_and_keeps_the_last_line(tmp_path: Path) -> None:
    read, write = os.pipe()
    pump = LogPump(os.fdopen(read, "rb"), RotatingLog(tmp_path / "x.log"), "x")
    os.write(write, b"first\nlast words\n\n")
    os.close(write)
    pump.join()
    assert pump.last_line() == "last words"
    assert (tmp_path / "x.log").read_bytes() == b"first\nlast words\n\n"


def test_http_client_request_lines_stay_out_of_the_logs() -> None:
    root = logging.getLogger()
    handlers, level = root.handlers[:], root.level
    try:
        configure_logging("INFO")
        for name in ("httpx", "httpcore"):
            assert not logging.getLogger(name).isEnabledFor(logging.INFO)
        assert logging.getLogger("services.poller").isEnabledFor(logging.INFO)
    finally:
        root.handlers[:] = handlers
        root.setLevel(level)


async def test_the_live_view_shows_market_time_as_the_stream_pushes_drops(
    engine: Engine, db_url: str
) -> None:
    today = dt.datetime.now(dt.UTC).date()
    opened = dt.datetime.combine(today, dt.time(17, 0, 5), dt.UTC)  # 12:00:05 in New York
    async_engine = make_async_engine(Settings(), name="seed", url=db_url)
    feed = await start_feed(feed_settings(db_url), db_url)
    zone = ZoneInfo("America/New_York")
    drops = LiveDrops(f"127.0.0.1:{feed.port}", zone, keep=3).start()
    try:
        seeder = Seeder(async_engine, today)
        await seeder.setup()
        slots = [SeedSlot(v, today, "19:15", party_sizes=(2,)) for v in (9, 10, 11, 12)]
        await seeder.open(slots[:1], at=opened)  # open before the stream or after: either shows
        await _until(lambda: drops.rows() and drops.status == "streaming")
        await seeder.open(slots[1:], at=opened + dt.timedelta(seconds=1))
        await seeder.close(slots[:1], at=opened + dt.timedelta(seconds=2))
        await _until(lambda: drops.rows()[0][0] == "CLOSED")
        snap = view.snapshot(engine, drops)
    finally:
        drops.stop()
        await feed.stop(0)
        await async_engine.dispose()
    assert len(snap.drops) == 3  # the newest only
    local = [
        (opened + dt.timedelta(seconds=s)).astimezone(zone).strftime("%H:%M:%S") for s in (1, 2)
    ]
    assert snap.drops[0] == (
        "CLOSED",
        local[1],
        "Venue 9",
        today.isoformat(),
        "19:15",
        "Dining Room",
    )
    assert [d[:2] for d in snap.drops[1:]] == [("NEW_DROP", local[0])] * 2
    assert local[1] != (opened + dt.timedelta(seconds=2)).strftime("%H:%M:%S")  # not UTC
    assert f"at {snap.drops[0][1]}" in snap.line() and "1 closed" in snap.line()
    console = Console(width=200, record=True)
    console.print(view.render([], snap, zone))
    shown = console.export_text()
    assert "market time (America/New_York)" in shown and "WatchDrops streaming" in shown


async def test_the_live_view_resumes_after_the_feed_restarts_and_misses_nothing(
    db_url: str,
) -> None:
    """The feed goes away (SIGTERM: UNAVAILABLE with the cursor) while a poll commits; the view
    resumes from its cursor on the feed that comes back and shows that poll's drop."""
    today = dt.datetime.now(dt.UTC).date()
    at = dt.datetime.combine(today, dt.time(17, 0), dt.UTC)
    async_engine = make_async_engine(Settings(), name="seed", url=db_url)
    feed = await start_feed(feed_settings(db_url), db_url)
    drops = LiveDrops(f"127.0.0.1:{feed.port}", ZoneInfo("America/New_York")).start()
    try:
        seeder = Seeder(async_engine, today)
        await seeder.setup()
        await _until(lambda: drops.status == "streaming")
        await seeder.open([SeedSlot(9, today, "19:15")], at=at)
        await _until(lambda: [d[2] for d in drops.rows()] == ["Venue 9"])
        await feed.stop(5)
        await _until(lambda: drops.status.startswith("stream UNAVAILABLE"))
        await seeder.close([SeedSlot(9, today, "19:15")], at=at)  # nobody is watching
        feed = await start_feed(feed_settings(db_url, feed_port=feed.port), db_url)
        # a close is in no list of what is open: only a resume from the cursor shows it
        await _until(lambda: [d[2] for d in drops.rows() if d[0] == "CLOSED"] == ["Venue 9"])
        assert drops.status == "streaming"
    finally:
        drops.stop()
        await feed.stop(0)
        await async_engine.dispose()


async def _until(ok: Callable[[], object], seconds: float = 20) -> None:
    deadline = asyncio.get_running_loop().time() + seconds
    while not ok():
        assert asyncio.get_running_loop().time() < deadline, "the live view never showed it"
        await asyncio.sleep(0.1)
