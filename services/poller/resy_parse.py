"""Reading a Resy search answer: pages, venues and slots, checked as untrusted input.

Shape drift is an error (`MalformedResponseError`), never a partial fetch: a page without its
hits or page count, a venue id that does not fit a bigint, text with a NUL, a slot without a
start. Link parts (slug, location code) that are not plain tokens are dropped.
"""

from __future__ import annotations

import datetime as dt
import re
from typing import Any

from services.poller.errors import (
    IncompleteFetchError,
    MalformedResponseError,
    UnparseableStartError,
)
from services.poller.slots import VenueInfo, parse_local_start

# A venue id must fit the database's bigint; a slug or location code goes into a link's path.
_MAX_VENUE_ID = 2**63 - 1
_URL_PART = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_-]{0,127}$")
_MAX_TEXT = 500


def parse_page(body: Any, page: int) -> tuple[list[dict[str, Any]], int]:
    """The hits of one page and the total number of pages; shape drift is an error."""
    if not isinstance(body, dict) or not isinstance(body.get("search"), dict):
        raise MalformedResponseError("response has no 'search' object")
    hits = body["search"].get("hits")
    if not isinstance(hits, list) or not all(isinstance(h, dict) for h in hits):
        raise MalformedResponseError("'search.hits' is not a list of venues")
    meta = body.get("meta")
    if not isinstance(meta, dict):
        meta = {}
    total_pages = meta.get("total_pages")
    if not isinstance(total_pages, int):
        total = body["search"].get("nbHits")
        per_page = meta.get("per_page") or len(hits) or 1
        if not isinstance(total, int) or not isinstance(per_page, int):
            raise MalformedResponseError("response carries neither total_pages nor nbHits")
        total_pages = max(1, -(-total // per_page))
    if page > 1 and not hits:
        raise IncompleteFetchError(f"page {page} of {total_pages} came back empty")
    return hits, max(1, total_pages)


def parse_venue(hit: dict[str, Any]) -> VenueInfo:
    try:
        raw_id = hit["id"]["resy"]
        name = hit["name"]
    except (KeyError, TypeError):
        raise MalformedResponseError("a venue hit has no id.resy or name") from None
    venue_id = _venue_id(raw_id)
    location = hit.get("location")
    price = hit.get("price_range_id")
    slug = _opt_str(hit.get("url_slug"))
    code = _opt_str(location.get("code")) if isinstance(location, dict) else None
    return VenueInfo(
        venue_id=venue_id,
        name=_text(name),
        neighborhood=_opt_text(hit.get("neighborhood")),
        price_range=price if isinstance(price, int) and 1 <= price <= 4 else None,
        # Parts of the booking link: anything but a plain token is dropped (no link).
        url_slug=slug if slug is not None and _URL_PART.match(slug) else None,
        location_code=code if code is not None and _URL_PART.match(code) else None,
    )


def _venue_id(raw: Any) -> int:
    """A positive id that fits the database's bigint (`2**63` or a float is malformed)."""
    if isinstance(raw, str) and raw.isascii() and raw.isdigit() and len(raw) < 20:
        raw = int(raw)
    if isinstance(raw, bool) or not isinstance(raw, int) or not 0 < raw <= _MAX_VENUE_ID:
        raise MalformedResponseError("a venue id is not a positive 64-bit integer")
    return raw


def _text(value: Any) -> str:
    """Provider text stored as is: a string, bounded, with no NUL (PostgreSQL rejects it)."""
    if not isinstance(value, str) or not value or len(value) > _MAX_TEXT or "\x00" in value:
        raise MalformedResponseError("a venue or slot text field is invalid")
    return value


def _opt_text(value: Any) -> str | None:
    return _text(value) if isinstance(value, str) and value else None


def slots_of(hit: dict[str, Any]) -> list[dict[str, Any]]:
    availability = hit.get("availability")
    if availability is None:
        return []
    slots = availability.get("slots") if isinstance(availability, dict) else None
    if not isinstance(slots, list) or not all(isinstance(s, dict) for s in slots):
        raise MalformedResponseError("'availability.slots' is not a list")
    return slots


def parse_slot(raw: dict[str, Any], zone: dt.tzinfo) -> tuple[dt.datetime, str]:
    try:
        start_raw = raw["date"]["start"]
        seating_raw = raw["config"].get("type") or "Unknown"
    except (KeyError, TypeError, AttributeError):
        raise MalformedResponseError("a slot has no date.start / config") from None
    seating = _text(seating_raw if isinstance(seating_raw, str) else str(seating_raw))
    try:
        start = parse_local_start(str(start_raw), zone)
    except ValueError:
        raise UnparseableStartError("a slot's date.start is not a start time") from None
    return start, seating


def _opt_str(value: Any) -> str | None:
    return str(value) if isinstance(value, str | int) and str(value) else None
