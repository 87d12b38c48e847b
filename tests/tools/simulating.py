"""Helpers of the simulator tests: a hand-moved clock and a client that speaks Resy's search."""

from __future__ import annotations

import re
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx

REPO = Path(__file__).resolve().parents[2]
SEARCH = "/3/venuesearch/search"
HEADERS = {"User-Agent": "Mozilla/5.0 (dropwatch tests)", "Origin": "https://widgets.resy.com"}
NOW = datetime(2026, 12, 1, 17, 0, tzinfo=UTC)
DAY = date(2026, 12, 3)
SCRIPTED_DAY = date(2026, 12, 5)
START_FORMATS = ("%Y-%m-%d %H:%M:%S", "%Y-%m-%dT%H:%M:%S", "%Y-%m-%d %H:%M")
TOKEN = re.compile(
    r"^rgs://resy/(?P<venue>\d+)/(?P<template>\d+)/(?P<service>\d+)/(?P<day>[\d-]+)/"
    r"(?P<day2>[\d-]+)/(?P<time>\d\d:\d\d:\d\d)/(?P<party>\d+)/(?P<type>.+)$"
)

SlotId = tuple[int, datetime, str]


class FakeClock:
    """A clock the test moves by hand."""

    def __init__(self, now: datetime = NOW) -> None:
        self.now = now

    def __call__(self) -> datetime:
        return self.now

    def advance(self, **delta: float) -> None:
        self.now += timedelta(**delta)


def http(base_url: str, headers: dict[str, str] | None = None, **kwargs: Any) -> httpx.Client:
    """A plain-HTTP loopback client; verify=False skips building a TLS context (~40 ms each)."""
    return httpx.Client(
        base_url=base_url, headers=HEADERS if headers is None else headers, verify=False, **kwargs
    )


def body(
    day: date = DAY,
    party_size: int = 2,
    time_filter: str | None = "19:00",
    page: int = 1,
    per_page: int = 100,
    bbox: list[float] | None = None,
) -> dict[str, Any]:
    slot_filter: dict[str, Any] = {"day": day.isoformat(), "party_size": party_size}
    if time_filter is not None:
        slot_filter["time_filter"] = time_filter
    return {
        "query": "",
        "types": ["venue"],
        "availability": True,
        "order_by": "availability",
        "page": page,
        "per_page": per_page,
        "geo": {"bounding_box": bbox or [40.691, -74.030, 40.882, -73.910]},
        "slot_filter": slot_filter,
    }


def search(client: httpx.Client, **kwargs: Any) -> httpx.Response:
    return client.post(SEARCH, json=body(**kwargs))


def parse_start(text: str) -> datetime:
    for fmt in START_FORMATS:
        try:
            return datetime.strptime(text, fmt)
        except ValueError:
            continue
    raise AssertionError(f"unexpected date format {text!r}")


def slot_ids(payload: dict[str, Any]) -> set[SlotId]:
    """A slot's stable identity, as a client must derive it: venue, start time, seating."""
    return {
        (hit["id"]["resy"], parse_start(s["date"]["start"]), s["config"]["type"])
        for hit in payload["search"]["hits"]
        for s in hit["availability"]["slots"]
    }


def all_slot_ids(client: httpx.Client, **kwargs: Any) -> set[SlotId]:
    """Every open slot of one search, over all its pages."""
    first = search(client, per_page=200, **kwargs).json()
    found = slot_ids(first)
    for page in range(2, first["meta"]["total_pages"] + 1):
        found |= slot_ids(search(client, per_page=200, page=page, **kwargs).json())
    return found


def venue_ids(payload: dict[str, Any]) -> list[int]:
    return [hit["id"]["resy"] for hit in payload["search"]["hits"]]


def check_slot(slot: dict[str, Any], venue_id: int, day: date, party_size: int) -> None:
    token = TOKEN.match(slot["config"]["token"])
    assert token is not None, slot["config"]["token"]
    start = parse_start(slot["date"]["start"])
    assert parse_start(slot["date"]["end"]) > start
    assert int(token["venue"]) == venue_id
    assert int(token["template"]) == slot["template"]["id"]
    assert int(token["service"]) == slot["shift"]["service"]["type"]["id"]
    assert token["day"] == token["day2"] == slot["shift"]["day"] == day.isoformat()
    assert token["time"] == start.strftime("%H:%M:%S")
    assert int(token["party"]) == party_size
    assert token["type"] == slot["config"]["type"]
    assert isinstance(slot["config"]["id"], int)
    assert isinstance(slot["payment"], dict)
