"""Provider text in the CLI's table: rich markup is shown as text, terminal escapes removed."""

from __future__ import annotations

import io
import json
import time
from zoneinfo import ZoneInfo

from rich.console import Console

from cli.feed import _table
from services.feed import auth
from services.feed.server import start_feed
from shared.gen.dropwatch.feed.v1 import feed_pb2
from tests.cli.test_feed_cli import _cli
from tests.feed.conftest import feed_settings

HOSTILE = "[link=https://evil.example]Carbone[/link]\x1b]8;;https://evil.example\x07x\x1b[2J\x9b"


def _render(name: str, seating: str = "Dining Room") -> str:
    item = feed_pb2.FeedItem(reservation_date="2026-12-01", slot_time="19:00")
    item.venue.name = name
    item.venue.id = 7
    item.seating_type = seating
    response = feed_pb2.JustOpenedResponse(items=[item], truncated=True, next_page_token="t\x1bz")
    out = io.StringIO()
    console = Console(file=out, force_terminal=True, color_system=None, width=300)
    _table(response, "just-opened", ZoneInfo("UTC"), default_age=False, console=console)
    return out.getvalue()


def test_markup_in_a_name_is_shown_not_interpreted() -> None:
    text = _render(HOSTILE, seating="[bold]Bar[/bold]")
    assert "[link=https://evil.example]Carbone[/link]" in text
    assert "[bold]Bar[/bold]" in text


def test_terminal_escapes_in_provider_text_are_removed() -> None:
    text = _render(HOSTILE)
    assert "\x1b" not in text and "\x07" not in text and "\x9b" not in text
    assert "]8;;https://evil.example" in text  # the rest of the sequence stays visible as text


async def test_the_cli_sends_its_token(db_url: str) -> None:
    """Against a feed that requires tokens: refused without one, served with one."""
    key = "a" * 32
    server = await start_feed(feed_settings(db_url, feed_auth_secret=key), db_url)
    addr = f"127.0.0.1:{server.port}"
    token = auth.issue(key.encode(), "cli", int(time.time()) + 600)
    try:
        code, _, err = await _cli("feed", "still-open", "--addr", addr, "--json")
        assert code == 2 and "UNAUTHENTICATED" in err
        code, out, err = await _cli(
            "feed", "still-open", "--addr", addr, "--json", "--token", token
        )
        assert code == 0, err
        assert json.loads(out)["applied_limit"] > 0
    finally:
        await server.stop(0)
