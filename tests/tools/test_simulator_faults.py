"""The faults a test can plan, and the control endpoints that plan them."""

from __future__ import annotations

import json
import time
from datetime import timedelta

import httpx
import pytest

from tests.tools.simulating import (
    DAY,
    search,
)
from tools.simulator import faults
from tools.simulator.server import Simulator

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
