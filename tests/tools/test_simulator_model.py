"""The simulator's availability: seeded, a function of simulated time, and scripted days."""

from __future__ import annotations

from datetime import UTC, date, datetime, timedelta

import httpx
import pytest

from tests.tools.simulating import (
    NOW,
    SCRIPTED_DAY,
    FakeClock,
    SlotId,
    all_slot_ids,
    check_slot,
    http,
    parse_start,
    search,
    slot_ids,
    venue_ids,
)
from tools.simulator.model import TimeWindow
from tools.simulator.server import ScriptedSlot, ScriptedVenue, Simulator

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
