"""`dropwatch feed ...` against a real feed server."""

from __future__ import annotations

import asyncio
import datetime as dt
import json
import os
import sys
from zoneinfo import ZoneInfo

from services.feed.server import FeedServer
from tests.conftest import REPO_ROOT
from tests.feed.conftest import NOW, TODAY
from tests.seeding import Seeder, SeedSlot

ONE_SECOND = dt.timedelta(seconds=1)


async def _cli(
    *args: str, stdout: int = asyncio.subprocess.PIPE, columns: int = 200
) -> tuple[int, str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("DROPWATCH_")}
    env["COLUMNS"] = str(columns)  # a table as wide as a terminal's, not wrapped at 80
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "cli.main",
        *args,
        cwd=REPO_ROOT,
        env=env,
        stdout=stdout,
        stderr=asyncio.subprocess.PIPE,
    )
    out, err = await asyncio.wait_for(proc.communicate(), timeout=30)
    return proc.returncode or 0, (out or b"").decode(), err.decode()


async def test_just_opened_json_and_table(seeder: Seeder, feed: FeedServer) -> None:
    await seeder.open([SeedSlot(9, TODAY, "19:15", party_sizes=(2,))], at=NOW - ONE_SECOND)
    addr = f"127.0.0.1:{feed.port}"
    code, out, err = await _cli("feed", "just-opened", "--addr", addr, "--json")
    assert code == 0, err
    body = json.loads(out)
    assert body["items"][0]["venue"]["id"] == "9"
    assert body["applied_limit"] == 500
    code, out, err = await _cli(
        "feed", "still-open", "--addr", addr, "--min-age", "0", "--party-size", "2"
    )
    assert code == 0, err
    assert "Venue 9" in out and "19:15" in out


async def test_invalid_values_are_one_line_errors(feed: FeedServer) -> None:
    addr = f"127.0.0.1:{feed.port}"
    code, _, err = await _cli("feed", "just-opened", "--addr", addr, "--party-size", "40")
    assert code == 2
    assert err.strip().count("\n") == 0 and "Traceback" not in err
    assert "INVALID_ARGUMENT" in err and "filter.party_sizes" in err
    code, _, err = await _cli("feed", "still-open", "--addr", "127.0.0.1:1", "--timeout", "2")
    assert code == 2 and "UNAVAILABLE" in err and "Traceback" not in err


async def test_the_table_shows_market_time_and_why_still_open_is_empty(
    seeder: Seeder, feed: FeedServer
) -> None:
    opened = NOW - ONE_SECOND
    await seeder.open([SeedSlot(9, TODAY, "19:15", party_sizes=(2,))], at=opened)
    addr = f"127.0.0.1:{feed.port}"
    code, out, err = await _cli("feed", "just-opened", "--addr", addr)
    assert code == 0, err
    new_york = opened.astimezone(ZoneInfo("America/New_York")).strftime("%m-%d %H:%M:%S")
    assert new_york in out and "market time (America/New_York)" in out
    assert opened.strftime("%H:%M:%S") not in out  # not UTC
    code, out, err = await _cli("feed", "still-open", "--addr", addr)
    assert code == 0, err
    assert "0 items" in out and "--min-age 0" in out  # one second old: not listed, and why


async def test_a_reader_that_goes_away_is_not_a_bug(seeder: Seeder, feed: FeedServer) -> None:
    """`dropwatch feed just-opened | head -1`: the pipe closes before the output is written."""
    await seeder.open([SeedSlot(9, TODAY, "19:15", party_sizes=(2,))], at=NOW - ONE_SECOND)
    read, write = os.pipe()
    os.close(read)
    try:
        code, _, err = await _cli(
            "feed", "just-opened", "--addr", f"127.0.0.1:{feed.port}", "--json", stdout=write
        )
    finally:
        os.close(write)
    assert code == 141
    assert err == ""


async def test_a_narrow_terminal_cuts_no_value_a_user_copies(
    seeder: Seeder, feed: FeedServer
) -> None:
    await seeder.open([SeedSlot(v, TODAY, "19:15") for v in (9, 10, 11)], at=NOW - ONE_SECOND)
    addr = f"127.0.0.1:{feed.port}"
    code, out, err = await _cli("feed", "just-opened", "--addr", addr, "--limit", "1", columns=50)
    assert code == 0, err
    assert "\u2026" not in out  # no ellipsis
    assert TODAY.isoformat() in out and "Venue " in out
    (line,) = [x for x in out.splitlines() if x.startswith("more: --page-token=")]
    argument = line.removeprefix("more: ").strip()  # one argument: a token may start with "-"
    code, out, err = await _cli(
        "feed", "just-opened", "--addr", addr, "--limit", "1", argument, columns=50
    )
    assert code == 0, err  # the token, copied from its line, is whole
    assert "1 items" in out and "\u2026" not in out
