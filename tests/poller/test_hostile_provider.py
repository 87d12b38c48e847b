"""A hostile provider on loopback: every answer it can make is bounded in memory and time, and
invalid data is a malformed (never partial) fetch whose text stays out of the logs."""

from __future__ import annotations

import datetime as dt
import json
import logging
import time
import tracemalloc
from collections.abc import Iterator
from typing import Any

import pytest
from sqlalchemy import Engine

from services.poller.app import build_context
from services.poller.errors import (
    BodyTooLargeError,
    FetchError,
    MalformedResponseError,
    TooManyHitsError,
    TooManySlotsError,
    UpstreamTimeoutError,
)
from services.poller.provider import BucketSpec
from services.poller.ratelimit import RequestBudget
from services.poller.resy import ResyProvider
from tests.poller.conftest import scheduler_for
from tests.poller.helpers import TODAY, bucket_row, events, make_due, poller_settings
from tests.poller.hostile import HostileResy, gzip_bomb, hit, hostile_resy, page

SPEC = BucketSpec(f"{TODAY}_19:00", TODAY, dt.time(19), (2,), dt.timedelta(hours=2))
MiB = 1 << 20


@pytest.fixture
def resy() -> Iterator[HostileResy]:
    with hostile_resy() as server:
        yield server


async def fetch(resy: HostileResy, deadline: float = 10.0, **extra: Any) -> FetchError | None:
    """One bucket fetch against the hostile server; the error it ended with, if any."""
    settings = poller_settings("postgresql://u@h/d", resy.base_url, max_attempts=1, **extra)
    provider = ResyProvider(settings, RequestBudget(1000.0))
    try:
        await provider.fetch_bucket(SPEC, time.monotonic() + deadline)
    except FetchError as exc:
        return exc
    finally:
        await provider.aclose()
    return None


async def test_a_gzip_bomb_is_read_only_up_to_the_cap(resy: HostileResy) -> None:
    bomb = gzip_bomb(256 * MiB)
    assert len(bomb) < MiB
    resy.answer = lambda h: h.send_body(bomb, gzipped=True)
    tracemalloc.start()
    try:
        error = await fetch(resy, max_body_bytes=2 * MiB)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert isinstance(error, BodyTooLargeError) and error.reason == "body_too_large"
    assert peak < 32 * MiB, f"peak {peak / MiB:.0f} MiB for a 2 MiB cap"


async def test_a_large_plain_body_is_refused(resy: HostileResy) -> None:
    body = b'{"search": {"hits": []}, "pad": "' + b"x" * (3 * MiB) + b'"}'
    resy.answer = lambda h: h.send_body(body)
    error = await fetch(resy, max_body_bytes=MiB)
    assert isinstance(error, BodyTooLargeError)


@pytest.mark.parametrize("declared", ["\u00b2", "12\n", "-1", "1e9"])
async def test_a_malformed_content_length_is_a_failed_fetch(
    resy: HostileResy, declared: str
) -> None:
    """A header that is not ASCII digits (a superscript, a trailing newline, a sign) is a failed
    fetch, never a crash of the poll or an empty answer."""

    def answer(h: Any) -> None:
        h.send_response(200)
        h.send_header("Content-Type", "application/json")
        h.send_header("Content-Length", declared)
        h.end_headers()
        h.wfile.write(json.dumps(page([hit(1)])).encode())

    resy.answer = answer
    error = await fetch(resy)
    # The HTTP parser refuses the header (transport), or reads "12\n" as 12 and the body is cut.
    assert isinstance(error, FetchError) and error.reason in ("transport", "malformed"), error


async def test_a_trickling_provider_is_cut_at_the_poll_deadline(resy: HostileResy) -> None:
    def trickle(h: Any) -> None:
        h.send_response(200)
        h.send_header("Content-Length", "100000")
        h.end_headers()
        while not resy.stopping.wait(0.1):  # one byte at a time, far below any read timeout
            h.wfile.write(b" ")
            h.wfile.flush()

    resy.answer = trickle
    started = time.monotonic()
    error = await fetch(resy, deadline=1.0, request_timeout_seconds=30.0)
    elapsed = time.monotonic() - started
    assert isinstance(error, UpstreamTimeoutError)
    assert elapsed < 6.0, f"the fetch ran {elapsed:.1f}s past a 1s deadline"


async def test_too_many_hits_on_a_page_is_an_excess(resy: HostileResy) -> None:
    resy.answer = lambda h: h.send_json(page([hit(v) for v in range(1, 31)]))
    error = await fetch(resy, max_hits_per_page=20)
    assert isinstance(error, TooManyHitsError) and error.reason == "too_many_hits"


async def test_too_many_slots_at_a_venue_is_an_excess(resy: HostileResy) -> None:
    resy.answer = lambda h: h.send_json(page([hit(1, slots=600)]))
    error = await fetch(resy, max_slots_per_venue=500)
    assert isinstance(error, TooManySlotsError) and error.reason == "too_many_slots"


@pytest.mark.parametrize(
    "body",
    [
        b'{"search": {"hits": [{"id": {"resy": Infinity}, "name": "x"}]}, "meta": {}}',
        b'{"search": {"hits": [{"id": {"resy": NaN}, "name": "x"}]}, "meta": {}}',
        page([hit(2**63)]),
        page([hit(-4)]),
        page([hit(1.5)]),
        page([hit(True)]),
        page([hit(7, name="Car\x00bone")]),
        page([hit(7, name={"nested": 1})]),
        page([hit(7, name="x" * 10_000)]),
        b"[" * 100_000 + b"]" * 100_000,
        b'{"search": {"hits": [' + b"[" * 50_000 + b"]" * 50_000 + b"]}}",
    ],
    ids=[
        "infinity",
        "nan",
        "2^63",
        "negative",
        "float",
        "bool",
        "nul",
        "object-name",
        "long-name",
        "deep",
        "deep-hit",
    ],
)
async def test_valid_json_invalid_data_is_malformed(resy: HostileResy, body: Any) -> None:
    raw = body if isinstance(body, bytes) else json.dumps(body).encode()
    resy.answer = lambda h: h.send_body(raw)
    error = await fetch(resy)
    assert isinstance(error, MalformedResponseError), error


async def test_link_parts_that_are_not_plain_tokens_are_dropped(resy: HostileResy) -> None:
    settings = poller_settings("postgresql://u@h/d", resy.base_url, max_attempts=1)
    hostile = hit(5, url_slug="x?date=2000-01-01&seats=99#", location={"code": "..\\..\\evil"})
    fine = hit(6, url_slug="carbone", location={"code": "ny"})
    resy.answer = lambda h: h.send_json(page([hostile, fine]))
    provider = ResyProvider(settings, RequestBudget(1000.0))
    try:
        result = await provider.fetch_bucket(SPEC, time.monotonic() + 10)
    finally:
        await provider.aclose()
    assert (result.venues[5].url_slug, result.venues[5].location_code) == (None, None)
    assert (result.venues[6].url_slug, result.venues[6].location_code) == ("carbone", "ny")


async def test_a_malformed_poll_changes_nothing_releases_the_bucket_and_logs_no_provider_text(
    resy: HostileResy, db_url: str, engine: Engine, caplog: pytest.LogCaptureFixture
) -> None:
    marker = "EVIL\x1b]8;;https://evil.example\x07"
    resy.answer = lambda h: h.send_json(page([hit(2**63, name=marker), hit(1, name=marker)]))
    ctx = build_context(poller_settings(db_url, resy.base_url, max_attempts=1), db_url)
    bucket = SPEC.bucket_id
    try:
        make_due(engine)
        with caplog.at_level(logging.DEBUG):
            outcomes = await scheduler_for(ctx).poll_once(bucket)
    finally:
        await ctx.provider.aclose()
        await ctx.engine.dispose()
    assert [(o.outcome, o.applied) for o in outcomes] == [("malformed", False)]
    assert ctx.metrics.fetch_outcomes.labels("malformed")._value.get() == 1
    row = bucket_row(engine, bucket)
    assert row["lease_owner"] is None and events(engine, bucket) == []
    assert "EVIL" not in caplog.text and "\x1b" not in caplog.text
