"""The Resy simulator over real HTTP on loopback: shapes, headers, paging, the availability
model's behaviour over time, scripted days, every fault kind and the control endpoints."""

from __future__ import annotations

import json
import math
import re
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest

from tools.simulator import faults
from tools.simulator.model import TimeWindow
from tools.simulator.server import ScriptedSlot, ScriptedVenue, Simulator

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


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
def sim(clock: FakeClock) -> Iterator[Simulator]:
    simulator = Simulator(venues=300, seed=7, clock=clock)
    simulator.start()
    try:
        yield simulator
    finally:
        simulator.stop()


@pytest.fixture
def client(sim: Simulator) -> Iterator[httpx.Client]:
    with http(sim.base_url, timeout=5) as c:
        yield c


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


# -- shapes and headers ---------------------------------------------------------------------


def test_search_answers_resy_shapes_inside_the_requested_box_and_window(
    client: httpx.Client,
) -> None:
    box = [40.10, -75.20, 40.30, -75.00]
    response = search(client, bbox=box)

    assert response.status_code == 200
    assert response.headers["content-type"] == "application/json"
    payload = response.json()
    hits = payload["search"]["hits"]
    assert 0 < len(hits) <= 100
    assert payload["search"]["nbHits"] >= len(hits)
    assert payload["meta"] == {
        "page": 1,
        "per_page": 100,
        "total_pages": math.ceil(payload["search"]["nbHits"] / 100),
    }
    for hit in hits:
        assert isinstance(hit["id"]["resy"], int)
        assert hit["name"] and hit["url_slug"] and hit["neighborhood"]
        assert hit["location"] == {"code": "ny"}
        assert hit["price_range_id"] in (1, 2, 3, 4)
        assert box[0] < hit["_geoloc"]["lat"] < box[2]
        assert box[1] < hit["_geoloc"]["lng"] < box[3]
        assert hit["min_party_size"] <= 2 <= hit["max_party_size"]
        assert hit["availability"]["slots"], "only venues with availability are listed"
        for slot in hit["availability"]["slots"]:
            check_slot(slot, hit["id"]["resy"], DAY, party_size=2)
            start = parse_start(slot["date"]["start"])
            assert datetime(2026, 12, 3, 17, 0) <= start <= datetime(2026, 12, 3, 21, 0)


def test_a_point_search_places_venues_around_the_point(client: httpx.Client) -> None:
    payload = body()
    payload["geo"] = {"latitude": 40.75, "longitude": -73.98}
    hits = client.post(SEARCH, json=payload).json()["search"]["hits"]
    assert hits
    assert all(abs(h["_geoloc"]["lat"] - 40.75) < 0.05 for h in hits)
    assert all(abs(h["_geoloc"]["lng"] + 73.98) < 0.06 for h in hits)


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


def test_api_key_is_required_when_configured(clock: FakeClock) -> None:
    with (
        Simulator(venues=20, api_key="k-123", clock=clock) as sim,
        http(sim.base_url) as c,
    ):
        missing = c.post(SEARCH, json=body())
        wrong = c.post(SEARCH, json=body(), headers={"Authorization": 'ResyAPI api_key="nope"'})
        right = c.post(SEARCH, json=body(), headers={"Authorization": 'ResyAPI api_key="k-123"'})
        assert "k-123" not in repr(sim)

    assert (missing.status_code, missing.json()) == (401, {"message": "Unauthorized"})
    assert (wrong.status_code, wrong.json()) == (401, {"message": "Unauthorized"})
    assert right.status_code == 200


@pytest.mark.parametrize(
    "headers",
    [
        {"Origin": "https://widgets.resy.com"},  # no User-Agent
        {"User-Agent": "Mozilla/5.0"},  # neither Origin nor Referer
        {"Referer": "https://resy.com/"},  # Referer but an empty User-Agent
    ],
)
def test_missing_browser_headers_get_412(sim: Simulator, headers: dict[str, str]) -> None:
    # httpx adds its own User-Agent unless told otherwise.
    with http(sim.base_url, headers={"User-Agent": ""}) as c:
        response = c.post(SEARCH, json=body(), headers=headers)
    assert response.status_code == 412


def test_referer_is_as_good_as_origin(sim: Simulator) -> None:
    headers = {"User-Agent": "Mozilla/5.0", "Referer": "https://resy.com/"}
    with http(sim.base_url, headers=headers) as c:
        assert c.post(SEARCH, json=body()).status_code == 200


@pytest.mark.parametrize(
    "raw",
    [
        b"not json",
        b"[1, 2]",
        json.dumps({"page": 1}).encode(),
        json.dumps({"slot_filter": {"party_size": 2}}).encode(),
        json.dumps({"slot_filter": {"day": "2026-13-40", "party_size": 2}}).encode(),
        json.dumps({"slot_filter": {"day": "03/12/2026", "party_size": 2}}).encode(),
        json.dumps({"slot_filter": {"day": "2026-12-03", "party_size": "2"}}).encode(),
        json.dumps({"slot_filter": {"day": "2026-12-03", "party_size": 0}}).encode(),
        json.dumps({"slot_filter": {"day": "2026-12-03", "party_size": True}}).encode(),
        json.dumps(
            {"slot_filter": {"day": "2026-12-03", "party_size": 2, "time_filter": "7pm"}}
        ).encode(),
        json.dumps({**body(), "page": 0}).encode(),
        json.dumps({**body(), "geo": {"bounding_box": [1, 2, 3]}}).encode(),
    ],
)
def test_invalid_bodies_get_400(client: httpx.Client, raw: bytes) -> None:
    response = client.post(SEARCH, content=raw, headers={"Content-Type": "application/json"})
    assert response.status_code == 400
    assert response.json()["message"]


# -- paging ---------------------------------------------------------------------------------


def test_pages_partition_the_result_set(client: httpx.Client) -> None:
    first = search(client, per_page=100).json()
    total, pages = first["search"]["nbHits"], first["meta"]["total_pages"]
    assert total > 200, "300 venues at a 4-hour window: most have something open"
    assert pages == math.ceil(total / 100) >= 3

    collected = list(venue_ids(first))
    for page in range(2, pages + 1):
        payload = search(client, per_page=100, page=page).json()
        assert payload["meta"]["page"] == page
        assert payload["search"]["nbHits"] == total
        collected += venue_ids(payload)

    assert len(venue_ids(first)) == 100
    assert set(venue_ids(first)).isdisjoint(collected[100:200])
    assert collected == sorted(collected), "ordered stably by venue id"
    assert len(collected) == len(set(collected)) == total
    everything = search(client, per_page=200).json(), search(client, per_page=200, page=2).json()
    assert collected == venue_ids(everything[0]) + venue_ids(everything[1])
    beyond = search(client, per_page=100, page=pages + 1).json()
    assert beyond["search"]["hits"] == [] and beyond["search"]["nbHits"] == total


def test_per_page_is_capped_at_200(client: httpx.Client) -> None:
    payload = search(client, per_page=500).json()
    assert payload["meta"]["per_page"] == 200
    assert len(payload["search"]["hits"]) == 200


# -- the availability model -----------------------------------------------------------------


def test_same_seed_and_clock_give_the_same_slots(client: httpx.Client, clock: FakeClock) -> None:
    with (
        Simulator(venues=300, seed=7, clock=clock) as twin,
        Simulator(venues=300, seed=8, clock=clock) as other,
        http(twin.base_url) as twin_client,
        http(other.base_url) as other_client,
    ):
        mine = all_slot_ids(client)
        assert mine, "the model should have open slots at 19:00"
        assert all_slot_ids(twin_client) == mine
        assert all_slot_ids(client) == mine, "asking again at the same time changes nothing"
        assert all_slot_ids(other_client) != mine


def test_slots_open_and_close_as_simulated_time_passes(
    client: httpx.Client, clock: FakeClock
) -> None:
    before = all_slot_ids(client)
    clock.advance(minutes=30)
    after = all_slot_ids(client)

    opened, closed = after - before, before - after
    assert opened and closed
    # Most tables keep their state for longer than half an hour: churn, not a re-roll.
    assert len(opened) + len(closed) < len(before) / 2


def test_a_minute_at_speed_one_already_shows_drops_and_closures(sim: Simulator) -> None:
    """Of the README's 28 buckets (14 days x 15:00/19:00) x party sizes 2 and 4, a seventh
    (4 days, party size 2) must already show a few changes per minute at speed 1."""
    buckets = [
        (NOW.date() + timedelta(days=d), TimeWindow.around(anchor))
        for d in range(4)
        for anchor in ("15:00", "19:00")
    ]

    def open_slots(now: datetime) -> set[tuple[date, int, int, int, str]]:
        return {
            (day, window.first_minute, found.venue.venue_id, slot.minute, slot.seating_type)
            for day, window in buckets
            for found in sim.model.search(day, 2, window, now)
            for slot in found.slots
        }

    before = open_slots(NOW)
    after = open_slots(NOW + timedelta(seconds=60))
    assert len(after - before) >= 3
    assert len(before - after) >= 3


def test_speed_multiplies_simulated_time() -> None:
    """Simulated time is the clock times speed: speed 60 at t equals speed 1 at 60 t."""
    t = NOW.timestamp()
    fast = Simulator(venues=100, speed=60, clock=lambda: datetime.fromtimestamp(t, UTC))
    slow = Simulator(venues=100, speed=1, clock=lambda: datetime.fromtimestamp(60 * t, UTC))
    with (
        fast,
        slow,
        http(fast.base_url) as f,
        http(slow.base_url) as s,
    ):
        assert all_slot_ids(f) == all_slot_ids(s)


def test_token_template_rotates_while_slot_identity_does_not(
    sim: Simulator, client: httpx.Client, clock: FakeClock
) -> None:
    sim.script_day(SCRIPTED_DAY, [ScriptedVenue(501, "Test Kitchen", [ScriptedSlot("19:30")])])

    first = search(client, day=SCRIPTED_DAY).json()
    clock.advance(minutes=10)
    second = search(client, day=SCRIPTED_DAY).json()

    assert (
        slot_ids(first) == slot_ids(second) == {(501, datetime(2026, 12, 5, 19, 30), "Dining Room")}
    )
    a = first["search"]["hits"][0]["availability"]["slots"][0]
    b = second["search"]["hits"][0]["availability"]["slots"][0]
    assert a["template"]["id"] != b["template"]["id"]
    assert a["config"]["token"] != b["config"]["token"]
    assert (
        a["config"]["token"].replace(str(a["template"]["id"]), str(b["template"]["id"]))
        == (b["config"]["token"])
    )


def test_random_model_tokens_rotate_too(client: httpx.Client, clock: FakeClock) -> None:
    def tokens() -> dict[SlotId, str]:
        payload = search(client, per_page=200).json()
        return {
            (h["id"]["resy"], parse_start(s["date"]["start"]), s["config"]["type"]): s["config"][
                "token"
            ]
            for h in payload["search"]["hits"]
            for s in h["availability"]["slots"]
        }

    before = tokens()
    clock.advance(minutes=6)
    after = tokens()
    kept = before.keys() & after.keys()
    assert kept
    assert all(before[k] != after[k] for k in kept)


def test_start_time_format_varies_between_responses(sim: Simulator, client: httpx.Client) -> None:
    sim.script_day(SCRIPTED_DAY, [ScriptedVenue(501, "Test Kitchen", [ScriptedSlot("19:30")])])

    starts = [
        search(client, day=SCRIPTED_DAY).json()["search"]["hits"][0]["availability"]["slots"][0][
            "date"
        ]["start"]
        for _ in range(3)
    ]

    assert len(set(starts)) == 3, starts
    assert {parse_start(s) for s in starts} == {datetime(2026, 12, 5, 19, 30)}
    random_mode = {
        search(client).json()["search"]["hits"][0]["availability"]["slots"][0]["date"]["start"]
        for _ in range(3)
    }
    assert len(random_mode) == 3


# -- scripted days --------------------------------------------------------------------------


def scripted_venues() -> list[ScriptedVenue]:
    return [
        ScriptedVenue(
            700,
            "Edge Bistro",
            [
                ScriptedSlot("16:45"),  # just outside 19:00 - 2 h
                ScriptedSlot("17:00"),  # window edges are inclusive
                ScriptedSlot("21:00", "Bar", (2,)),
                ScriptedSlot("21:15"),  # just outside 19:00 + 2 h
            ],
        ),
        ScriptedVenue(600, "Four Top", [ScriptedSlot("19:00", "Patio", (4,))]),
        ScriptedVenue(800, "Lunch Only", [ScriptedSlot("12:00")]),
    ]


def test_scripted_day_returns_exactly_the_script(sim: Simulator, client: httpx.Client) -> None:
    sim.script_day(SCRIPTED_DAY, scripted_venues())

    two = search(client, day=SCRIPTED_DAY, party_size=2).json()
    four = search(client, day=SCRIPTED_DAY, party_size=4).json()
    lunch = search(client, day=SCRIPTED_DAY, party_size=2, time_filter="13:00").json()
    whole_day = search(client, day=SCRIPTED_DAY, party_size=2, time_filter=None).json()

    d = SCRIPTED_DAY
    assert slot_ids(two) == {
        (700, datetime(d.year, d.month, d.day, 17, 0), "Dining Room"),
        (700, datetime(d.year, d.month, d.day, 21, 0), "Bar"),
    }
    assert two["search"]["nbHits"] == 1 and two["meta"]["total_pages"] == 1
    assert venue_ids(four) == [600, 700]
    assert slot_ids(four) == {
        (600, datetime(d.year, d.month, d.day, 19, 0), "Patio"),
        (700, datetime(d.year, d.month, d.day, 17, 0), "Dining Room"),
    }
    assert venue_ids(lunch) == [800]
    assert venue_ids(whole_day) == [700, 800]
    assert len(slot_ids(whole_day)) == 5
    hit = two["search"]["hits"][0]
    assert hit["name"] == "Edge Bistro"
    for slot in hit["availability"]["slots"]:
        check_slot(slot, 700, SCRIPTED_DAY, party_size=2)


def test_a_scripted_slot_appears_and_disappears(sim: Simulator, client: httpx.Client) -> None:
    sim.script_day(SCRIPTED_DAY, [])
    assert search(client, day=SCRIPTED_DAY).json()["search"] == {"hits": [], "nbHits": 0}

    sim.script_day(SCRIPTED_DAY, [ScriptedVenue(42, "Drop Spot", [ScriptedSlot("20:00")])])
    assert len(slot_ids(search(client, day=SCRIPTED_DAY).json())) == 1

    sim.script_day(SCRIPTED_DAY, [])
    assert slot_ids(search(client, day=SCRIPTED_DAY).json()) == set()

    sim.unscript_day(SCRIPTED_DAY)
    assert search(client, day=SCRIPTED_DAY).json()["search"]["nbHits"] > 100


def test_scripting_one_day_leaves_other_days_random(sim: Simulator, client: httpx.Client) -> None:
    before = all_slot_ids(client)
    sim.script_day(SCRIPTED_DAY, [])
    assert all_slot_ids(client) == before


def test_scripted_slot_validates_its_time() -> None:
    with pytest.raises(ValueError):
        ScriptedSlot("7:30pm")
    with pytest.raises(ValueError):
        ScriptedSlot("19:30", party_sizes=())


# -- faults ---------------------------------------------------------------------------------


def test_rate_limit_sends_retry_after(sim: Simulator, client: httpx.Client) -> None:
    sim.faults.add(faults.RATE_LIMIT, retry_after=7)
    sim.faults.add(faults.RATE_LIMIT)
    sim.faults.add(faults.RATE_LIMIT, retry_after=0.2)

    first, second, third, fourth = (search(client) for _ in range(4))

    assert (first.status_code, first.headers["Retry-After"]) == (429, "7")
    assert (second.status_code, second.headers["Retry-After"]) == (429, "1")
    assert (third.status_code, third.headers["Retry-After"]) == (429, "0.2")
    assert fourth.status_code == 200


@pytest.mark.parametrize(
    ("kind", "status"),
    [
        (faults.SERVER_ERROR, 500),
        (faults.CHALLENGE, 403),
        (faults.AUTH, 401),
        (faults.MALFORMED, 200),
        (faults.DRIFTED, 200),
        (faults.EMPTY, 200),
    ],
)
def test_each_fault_fires_once_then_service_resumes(
    sim: Simulator, client: httpx.Client, kind: str, status: int
) -> None:
    sim.faults.add(kind)

    faulted = search(client)
    assert faulted.status_code == status
    if kind == faults.CHALLENGE:
        text = faulted.text.lower()
        assert "captcha" in text and "challenge" in text
        assert faulted.headers["content-type"].startswith("text/html")
    elif kind == faults.AUTH:
        assert faulted.json() == {"message": "Unauthorized"}
    elif kind == faults.MALFORMED:
        with pytest.raises(json.JSONDecodeError):
            json.loads(faulted.text)
    elif kind == faults.DRIFTED:
        assert "hits" not in faulted.json().get("search", {})
    elif kind == faults.EMPTY:
        assert faulted.json()["search"] == {"hits": [], "nbHits": 0}

    healthy = search(client)
    assert healthy.status_code == 200 and healthy.json()["search"]["hits"]
    assert sim.faults.pending() == 0


def test_missing_page_truncates_later_pages_but_keeps_the_totals(
    sim: Simulator, client: httpx.Client
) -> None:
    sim.faults.add(faults.MISSING_PAGE)

    page1 = search(client, page=1).json()
    assert len(page1["search"]["hits"]) == 100, "page 1 never takes a missing_page fault"
    assert sim.faults.pending() == 1
    page2 = search(client, page=2).json()

    assert page2["search"]["hits"] == []
    assert page2["search"]["nbHits"] == page1["search"]["nbHits"]
    assert page2["meta"]["total_pages"] == page1["meta"]["total_pages"] >= 2
    assert search(client, page=2).json()["search"]["hits"], "consumed after one use"


def test_latency_delays_a_normal_answer(sim: Simulator, client: httpx.Client) -> None:
    sim.faults.add(faults.LATENCY, delay_s=0.15)
    started = time.monotonic()
    response = search(client)
    assert time.monotonic() - started >= 0.15
    assert response.status_code == 200 and response.json()["search"]["hits"]


def test_faults_fire_only_on_matching_requests_and_count_down(
    sim: Simulator, client: httpx.Client
) -> None:
    sim.faults.add(faults.SERVER_ERROR, count=2, match={"party_size": 4, "day": DAY.isoformat()})

    assert search(client, party_size=2).status_code == 200
    assert search(client, party_size=4, day=DAY + timedelta(days=1)).status_code == 200
    assert search(client, party_size=4).status_code == 500
    assert search(client, party_size=4).status_code == 500
    assert search(client, party_size=4).status_code == 200


def test_queued_faults_fire_in_order(sim: Simulator, client: httpx.Client) -> None:
    sim.faults.add(faults.AUTH)
    sim.faults.add(faults.SERVER_ERROR, match={"page": 2})
    sim.faults.add(faults.EMPTY)

    assert search(client, page=2).status_code == 401
    assert search(client, page=1).json()["search"]["nbHits"] == 0, "the page-2 fault waits"
    assert search(client, page=2).status_code == 500
    assert search(client, page=2).status_code == 200


def test_default_fault_applies_until_cleared(sim: Simulator, client: httpx.Client) -> None:
    sim.faults.set_default(faults.CHALLENGE)
    assert [search(client).status_code for _ in range(3)] == [403, 403, 403]
    sim.faults.add(faults.SERVER_ERROR)
    assert search(client).status_code == 500, "queued faults come before the default"
    assert search(client).status_code == 403
    sim.faults.set_default(None)
    assert search(client).status_code == 200
    sim.faults.set_default(faults.EMPTY, match={"page": 2})
    sim.faults.add(faults.AUTH)
    sim.faults.clear()
    assert search(client).status_code == 200
    assert search(client, page=2).json()["search"]["hits"]


def test_fault_plan_rejects_mistakes(sim: Simulator) -> None:
    with pytest.raises(ValueError, match="unknown fault kind"):
        sim.faults.add("teapot")
    with pytest.raises(ValueError, match="unknown match keys"):
        sim.faults.add(faults.SERVER_ERROR, match={"pagee": 2})
    with pytest.raises(ValueError):
        sim.faults.add(faults.SERVER_ERROR, count=0)
    assert sim.faults.pending() == 0


# -- control endpoints, counters, lifecycle -------------------------------------------------


def test_control_endpoints(sim: Simulator, client: httpx.Client) -> None:
    with http(sim.base_url, headers={}) as human:  # no browser headers needed
        assert human.get("/_sim/health").json() == {"ok": True, "venues": 300}
        added = human.post(
            "/_sim/faults",
            json={"kind": "rate_limit", "count": 2, "retry_after": 3, "match": {"page": 1}},
        )
        assert added.status_code == 200 and added.json()["queued"][0]["count"] == 2
        assert human.post("/_sim/faults", json={"kind": "teapot"}).status_code == 400
        assert human.post("/_sim/faults", content=b"nope").status_code == 400

        limited = search(client)
        assert (limited.status_code, limited.headers["Retry-After"]) == (429, "3")
        assert human.delete("/_sim/faults").json() == {"ok": True}
        assert search(client).status_code == 200

        assert human.post("/_sim/faults", json={"kind": "auth", "default": True}).status_code == 200
        assert [search(client).status_code for _ in range(2)] == [401, 401]
        assert human.get("/_sim/faults").json()["default"]["kind"] == "auth"
        human.delete("/_sim/faults")
        assert search(client).status_code == 200

        assert human.get("/nowhere").status_code == 404
        assert human.get(SEARCH).status_code == 405


def test_request_count_and_log(sim: Simulator, client: httpx.Client) -> None:
    search(client, party_size=4)
    client.post(SEARCH, content=b"{broken")
    with http(sim.base_url, headers={}) as bare:
        assert bare.post(SEARCH, json=body(party_size=6)).status_code == 412
    client.get("/_sim/health")

    assert sim.request_count == 3, "search requests only, whatever their answer"
    assert sim.requests == [body(party_size=4), body(party_size=6)], "every parseable body"

    lower_case_headers = {k.lower(): v for k, v in HEADERS.items()}
    for i in range(1005):
        sim.handle("POST", SEARCH, lower_case_headers, json.dumps({"n": i}).encode())
    assert len(sim.requests) == 1000
    assert sim.requests[-1] == {"n": 1004}
    assert sim.request_count == 1008


def test_concurrent_requests_are_all_counted(sim: Simulator) -> None:
    def poll() -> None:
        with http(sim.base_url) as c:
            for _ in range(5):
                assert c.post(SEARCH, json=body(per_page=5)).status_code == 200

    threads = [threading.Thread(target=poll) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sim.request_count == 20


def _server_threads() -> list[threading.Thread]:
    return [t for t in threading.enumerate() if t.name.startswith("resy-simulator")]


def test_stop_closes_the_port_and_joins_every_thread(clock: FakeClock) -> None:
    sim = Simulator(venues=20, clock=clock)
    url = sim.start(port=0)
    port = int(url.rsplit(":", 1)[1])
    assert url == f"http://127.0.0.1:{port}" and port > 0

    with http(url) as idle:
        assert idle.post(SEARCH, json=body()).status_code == 200  # leaves a keep-alive open
        sim.faults.add(faults.LATENCY, delay_s=30)
        sleeper = threading.Thread(target=lambda: _swallow(url))
        sleeper.start()
        while sim.request_count < 2:  # the sleeper's request has arrived
            time.sleep(0.005)
        time.sleep(0.02)  # and is now inside its latency fault
        started = time.monotonic()
        sim.stop()
        assert time.monotonic() - started < 2, "stop must not wait for keep-alives or faults"
        # The idle keep-alive is still open on the client side: its server thread must be gone.
        assert _server_threads() == []
        sleeper.join(timeout=5)

    with pytest.raises(OSError), socket.create_connection(("127.0.0.1", port), timeout=1):
        pass
    sim.stop()  # idempotent


def _swallow(url: str) -> None:
    try:
        with http(url, timeout=10) as c:
            c.post(SEARCH, json=body())
    except httpx.HTTPError:
        pass


def test_context_manager_starts_and_stops(clock: FakeClock) -> None:
    with Simulator(venues=10, clock=clock) as sim:
        assert httpx.get(sim.base_url + "/_sim/health", verify=False).json() == {
            "ok": True,
            "venues": 10,
        }
        with pytest.raises(RuntimeError):
            sim.start()
    assert _server_threads() == []
    with pytest.raises(RuntimeError):
        _ = sim.base_url


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
def test_module_runs_as_a_process_and_stops_cleanly(sig: signal.Signals) -> None:
    proc = subprocess.Popen(
        [sys.executable, "-m", "tools.simulator", "--port", "0", "--venues", "30"],
        cwd=REPO,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        assert proc.stderr is not None
        line = proc.stderr.readline()
        match = re.search(r"simulator listening on (http://127\.0\.0\.1:\d+)$", line.strip())
        assert match, line
        health = httpx.get(match.group(1) + "/_sim/health", timeout=5, verify=False)
        assert health.json() == {"ok": True, "venues": 30}
        proc.send_signal(sig)
        assert proc.wait(timeout=10) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        if proc.stderr is not None:
            proc.stderr.close()
