"""A validated, normalised feed request (`FeedQuery`), built from either RPC's request.

Validation names the offending field (e.g. `filter.party_sizes`), as the contract promises.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import re
from collections.abc import Callable
from dataclasses import asdict, dataclass
from typing import TypeVar

from google.protobuf.message import DecodeError

from services.feed import limits
from services.feed.errors import InvalidArgumentError
from shared.gen.dropwatch.feed.v1 import feed_pb2

# ASCII digits only, matched whole (`fullmatch`): `\d` takes other scripts' digits and `$`
# accepts a trailing newline, which `time.fromisoformat` then rejects (INTERNAL before).
_DATE = re.compile(r"[0-9]{4}-[0-9]{2}-[0-9]{2}")
_HHMM = re.compile(r"([01][0-9]|2[0-3]):[0-5][0-9]")

JUST_OPENED = "just_opened"
STILL_OPEN = "still_open"

Request = TypeVar("Request", feed_pb2.JustOpenedRequest, feed_pb2.StillOpenRequest)


@dataclass(frozen=True)
class Undecodable:
    """Request bytes that are not a valid message (e.g. invalid UTF-8 in a string field)."""

    problem: str


def decoder(message: type[Request]) -> Callable[[bytes], Request | Undecodable]:
    """The request deserializer: an undecodable request is INVALID_ARGUMENT (raising here
    would make gRPC answer UNKNOWN or INTERNAL)."""

    def decode(raw: bytes) -> Request | Undecodable:
        try:
            return message.FromString(raw)
        except DecodeError as exc:
            return Undecodable(str(exc)[:200] or "malformed message")

    return decode


def _decoded(request: Request | Undecodable) -> Request:
    if isinstance(request, Undecodable):
        raise InvalidArgumentError("request", f"cannot be decoded: {request.problem}")
    return request


@dataclass(frozen=True)
class FeedQuery:
    kind: str
    dates: tuple[dt.date, ...]
    party_sizes: tuple[int, ...]
    time_from: dt.time | None
    time_to: dt.time | None
    time_slots: tuple[str, ...]
    venue_ids: tuple[int, ...]
    dedupe: bool
    # JustOpened: opened within `age_seconds`; StillOpen: opened at least `age_seconds` ago.
    age_seconds: int
    limit: int
    limit_capped: bool
    page_token: str

    def fingerprint(self) -> str:
        """Identifies the query a page token belongs to (everything but limit and token)."""
        fields = asdict(self)
        for name in ("limit", "limit_capped", "page_token"):
            fields.pop(name)
        raw = json.dumps(fields, default=str, sort_keys=True)
        return hashlib.sha256(raw.encode()).hexdigest()[:16]


def from_just_opened(raw: feed_pb2.JustOpenedRequest | Undecodable) -> FeedQuery:
    request = _decoded(raw)
    age = request.max_age_seconds
    if age < 0 or age > limits.MAX_MAX_AGE_SECONDS:
        raise InvalidArgumentError(
            "max_age_seconds", f"must be between 0 and {limits.MAX_MAX_AGE_SECONDS}"
        )
    limit, capped = capped_limit(
        request.limit, limits.JUST_OPENED_DEFAULT_LIMIT, limits.JUST_OPENED_MAX_LIMIT
    )
    return build_query(
        JUST_OPENED,
        request.filter,
        age or limits.DEFAULT_MAX_AGE_SECONDS,
        limit,
        capped,
        request.page_token,
    )


def from_still_open(raw: feed_pb2.StillOpenRequest | Undecodable) -> FeedQuery:
    request = _decoded(raw)
    if request.HasField("min_age_seconds"):
        age = request.min_age_seconds
        if age < 0:
            raise InvalidArgumentError("min_age_seconds", "must not be negative")
    else:
        age = limits.DEFAULT_MAX_AGE_SECONDS
    limit, capped = capped_limit(
        request.limit, limits.STILL_OPEN_DEFAULT_LIMIT, limits.STILL_OPEN_MAX_LIMIT
    )
    return build_query(STILL_OPEN, request.filter, age, limit, capped, request.page_token)


def capped_limit(requested: int, default: int, maximum: int) -> tuple[int, bool]:
    if requested < 0:
        raise InvalidArgumentError("limit", "must not be negative")
    if requested == 0:
        return default, False
    return min(requested, maximum), requested > maximum


def build_query(
    kind: str, f: feed_pb2.FeedFilter, age: int, limit: int, capped: bool, token: str
) -> FeedQuery:
    for name in ("reservation_dates", "party_sizes", "time_slots", "venue_ids"):
        if len(getattr(f, name)) > limits.MAX_FILTER_VALUES:
            raise InvalidArgumentError(
                f"filter.{name}", f"at most {limits.MAX_FILTER_VALUES} values"
            )
    sizes = sorted(set(f.party_sizes))
    for size in sizes:
        if not limits.MIN_PARTY_SIZE <= size <= limits.MAX_PARTY_SIZE:
            raise InvalidArgumentError(
                "filter.party_sizes",
                f"{size} is outside {limits.MIN_PARTY_SIZE}-{limits.MAX_PARTY_SIZE}",
            )
    venues = sorted(set(f.venue_ids))
    if any(v <= 0 for v in venues):
        raise InvalidArgumentError("filter.venue_ids", "venue ids are positive")
    time_from = _time("filter.time_from", f.time_from)
    time_to = _time("filter.time_to", f.time_to)
    if time_from is not None and time_to is not None and time_from > time_to:
        raise InvalidArgumentError("filter.time_from", "must not be after filter.time_to")
    slots = sorted(set(f.time_slots))
    for slot in slots:
        if not _HHMM.fullmatch(slot):
            raise InvalidArgumentError("filter.time_slots", f"{slot!r} is not HH:MM")
    return FeedQuery(
        kind=kind,
        dates=tuple(sorted({_date(d) for d in f.reservation_dates})),
        party_sizes=tuple(sizes),
        time_from=time_from,
        time_to=time_to,
        time_slots=tuple(slots),
        venue_ids=tuple(venues),
        dedupe=not f.all_slots_per_venue,
        age_seconds=age,
        limit=limit,
        limit_capped=capped,
        page_token=token,
    )


def _date(raw: str) -> dt.date:
    try:
        if not _DATE.fullmatch(raw):
            raise ValueError
        return dt.date.fromisoformat(raw)
    except ValueError:
        raise InvalidArgumentError(
            "filter.reservation_dates", f"{raw[:40]!r} is not a YYYY-MM-DD date"
        ) from None


def _time(field: str, raw: str) -> dt.time | None:
    if not raw:
        return None
    if not _HHMM.fullmatch(raw):
        raise InvalidArgumentError(field, f"{raw[:40]!r} is not HH:MM")
    return dt.time.fromisoformat(raw)
