"""Resy's venue search as the simulator reads and answers it: the body's checks (a bad one is
a 400 that says what is wrong) and the JSON of one page of results."""

from __future__ import annotations

import contextlib
import math
import re
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import date, timedelta
from typing import Any, TypeGuard

from tools.simulator.catalog import DEFAULT_BBOX, BoundingBox, parse_hhmm
from tools.simulator.model import Slot, TimeWindow, VenueAvailability

DEFAULT_PER_PAGE = 20
MAX_PER_PAGE = 200
MAX_PARTY_SIZE = 20
# The box searched around a {"latitude", "longitude"} point, in degrees.
POINT_BOX_HALF_SPAN = (0.05, 0.06)

# Resy's date strings drift; a client must normalise all of these to the same start time:
# "2026-12-03 19:30:00", "2026-12-03T19:30:00", "2026-12-03 19:30" (d = YYYY-MM-DD).
START_FORMATS = ("{d} {h:02d}:{m:02d}:00", "{d}T{h:02d}:{m:02d}:00", "{d} {h:02d}:{m:02d}")

_DAY = re.compile(r"^\d{4}-\d{2}-\d{2}$")


class BadRequest(ValueError):
    """A search body the real API would reject with 400."""


@dataclass(frozen=True)
class SearchQuery:
    day: date
    party_size: int
    time_filter: str | None
    page: int
    per_page: int
    bbox: BoundingBox

    @property
    def window(self) -> TimeWindow:
        return TimeWindow.around(self.time_filter)

    def facts(self) -> dict[str, Any]:
        """What a fault's `match` can test."""
        return {
            "page": self.page,
            "per_page": self.per_page,
            "day": self.day.isoformat(),
            "party_size": self.party_size,
            "time_filter": self.time_filter,
        }


def _int_field(body: Mapping[str, Any], name: str, default: int) -> int:
    value = body.get(name, default)
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise BadRequest(f"{name} must be a positive integer")
    return value


def _parse_bbox(geo: Any) -> BoundingBox:
    if geo is None:
        return DEFAULT_BBOX
    if not isinstance(geo, dict):
        raise BadRequest("geo must be an object")
    if "bounding_box" in geo:
        box = geo["bounding_box"]
        if not (isinstance(box, list) and len(box) == 4 and all(_is_number(v) for v in box)):
            raise BadRequest("geo.bounding_box must be [south, west, north, east]")
        south, west, north, east = (float(v) for v in box)
        if not (south < north and west < east):
            raise BadRequest("geo.bounding_box must have south < north and west < east")
        return BoundingBox(south, west, north, east)
    lat, lng = geo.get("latitude"), geo.get("longitude")
    if _is_number(lat) and _is_number(lng):
        d_lat, d_lng = POINT_BOX_HALF_SPAN
        return BoundingBox(
            float(lat) - d_lat, float(lng) - d_lng, float(lat) + d_lat, float(lng) + d_lng
        )
    raise BadRequest("geo needs bounding_box or latitude and longitude")


def _is_number(value: object) -> TypeGuard[float]:
    return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)


def parse_search(body: Any) -> SearchQuery:
    """Validate a search body the way the endpoint needs it; BadRequest says what is wrong."""
    if not isinstance(body, dict):
        raise BadRequest("body must be a JSON object")
    slot_filter = body.get("slot_filter")
    if not isinstance(slot_filter, dict):
        raise BadRequest("slot_filter is required")
    return SearchQuery(
        day=_parse_day(slot_filter.get("day")),
        party_size=_parse_party_size(slot_filter.get("party_size")),
        time_filter=_parse_time_filter(slot_filter.get("time_filter")),
        page=_int_field(body, "page", 1),
        per_page=min(_int_field(body, "per_page", DEFAULT_PER_PAGE), MAX_PER_PAGE),
        bbox=_parse_bbox(body.get("geo")),
    )


def _parse_day(value: Any) -> date:
    if isinstance(value, str) and _DAY.match(value):
        with contextlib.suppress(ValueError):
            return date.fromisoformat(value)
    raise BadRequest("slot_filter.day must be YYYY-MM-DD")


def _parse_party_size(value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise BadRequest("slot_filter.party_size must be an integer")
    if not 1 <= value <= MAX_PARTY_SIZE:
        raise BadRequest(f"slot_filter.party_size must be 1..{MAX_PARTY_SIZE}")
    return value


def _parse_time_filter(value: Any) -> str | None:
    """HH:MM, or None for the whole day."""
    if value is None:
        return None
    if isinstance(value, str):
        with contextlib.suppress(ValueError):
            parse_hhmm(value)
            return value
    raise BadRequest("slot_filter.time_filter must be HH:MM")


def _stamp(fmt: str, day: date, minute: int) -> str:
    """A venue-local date-time string; minute may run past midnight (a late slot's end)."""
    if minute >= 24 * 60:
        day, minute = day + timedelta(days=minute // (24 * 60)), minute % (24 * 60)
    return fmt.format(d=day.isoformat(), h=minute // 60, m=minute % 60)


def _render_slot(slot: Slot, fmt: str) -> dict[str, Any]:
    day = slot.day.isoformat()
    service = slot.service_type_id
    token = (
        f"rgs://resy/{slot.venue_id}/{slot.template_id}/{service}/{day}/{day}/"
        f"{slot.minute // 60:02d}:{slot.minute % 60:02d}:00/{slot.party_size}/{slot.seating_type}"
    )
    end_minute = slot.minute + slot.duration_minutes
    return {
        "config": {"id": slot.config_id, "type": slot.seating_type, "token": token},
        "date": {
            "start": _stamp(fmt, slot.day, slot.minute),
            "end": _stamp(fmt, slot.day, end_minute),
        },
        "shift": {"service": {"type": {"id": service}}, "day": day},
        "template": {"id": slot.template_id},
        "payment": {"is_paid": False, "cancellation_fee": None, "deposit_fee": None},
    }


def _render_hit(found: VenueAvailability, bbox: BoundingBox, fmt: str) -> dict[str, Any]:
    venue = found.venue
    lat, lng = bbox.point(venue.lat_frac, venue.lng_frac)
    return {
        "id": {"resy": venue.venue_id},
        "name": venue.name,
        "url_slug": venue.url_slug,
        "location": {"code": "ny"},
        "neighborhood": venue.neighborhood,
        "price_range_id": venue.price_range_id,
        "_geoloc": {"lat": lat, "lng": lng},
        "min_party_size": venue.min_party_size,
        "max_party_size": venue.max_party_size,
        "availability": {"slots": [_render_slot(s, fmt) for s in found.slots]},
    }


def render_search(
    query: SearchQuery, results: tuple[VenueAvailability, ...], fmt: str, *, drop_page: bool
) -> dict[str, Any]:
    """One page of results; drop_page keeps the totals but omits the hits (missing_page)."""
    total = len(results)
    first = (query.page - 1) * query.per_page
    page = () if drop_page else results[first : first + query.per_page]
    return {
        "search": {"hits": [_render_hit(r, query.bbox, fmt) for r in page], "nbHits": total},
        "meta": {
            "page": query.page,
            "per_page": query.per_page,
            "total_pages": math.ceil(total / query.per_page),
        },
    }
