"""The simulator's search endpoint: Resy's shapes, headers, bodies and paging."""

from __future__ import annotations

import json
import math
from datetime import datetime

import httpx
import pytest

from tests.tools.simulating import (
    DAY,
    SEARCH,
    FakeClock,
    body,
    check_slot,
    http,
    parse_start,
    search,
    venue_ids,
)
from tools.simulator.server import Simulator

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
