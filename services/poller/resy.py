"""The Resy provider: paged venue search with availability, through httpx.

Headers are those real clients send (Resy answers 412/500 without them). The API key and
token come from settings and only ever live in request headers; they are never logged, and
error messages carry status codes and reasons, not bodies or headers.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import json
import logging
import random
import re
import time
import zlib
from collections.abc import AsyncIterator, Callable
from typing import Any

import httpx

from services.poller.errors import (
    AuthExpiredError,
    BlockedError,
    BodyTooLargeError,
    FetchError,
    IncompleteFetchError,
    MalformedResponseError,
    RateLimitedError,
    TooManyHitsError,
    TooManySlotsError,
    TransportError,
    UnparseableStartError,
    UpstreamServerError,
    UpstreamTimeoutError,
)
from services.poller.provider import BucketSpec
from services.poller.ratelimit import RequestBudget
from services.poller.settings import PollerSettings
from services.poller.slots import BucketFetch, Slot, VenueInfo, parse_local_start
from shared.slots import slot_id_for

log = logging.getLogger(__name__)

SEARCH_PATH = "/3/venuesearch/search"
USER_AGENT = (
    "Mozilla/5.0 (X11; Linux x86_64) AppleWebKit/537.36 (KHTML, like Gecko) "
    "Chrome/126.0 Safari/537.36"
)
_CHALLENGE_WORDS = ("captcha", "challenge", "perimeterx", "px-captcha", "blocked")
# A venue id must fit the database's bigint; a slug or location code goes into a link's path.
_MAX_VENUE_ID = 2**63 - 1
_URL_PART = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_-]{0,127}$")
_MAX_TEXT = 500

# Called with the status class ("2xx", "4xx", "5xx", "error") of every upstream request.
RequestObserver = Callable[[str], None]


class ResyProvider:
    """Fetches one bucket: every party size, the anchor time filter, every page."""

    name = "resy"

    def __init__(
        self,
        settings: PollerSettings,
        budget: RequestBudget,
        observe: RequestObserver | None = None,
        transport: httpx.AsyncBaseTransport | None = None,
    ) -> None:
        self._settings = settings
        self._budget = budget
        self._observe = observe or (lambda _status_class: None)
        headers = {
            "User-Agent": USER_AGENT,
            "Origin": "https://widgets.resy.com",
            "Referer": "https://widgets.resy.com/",
            "Accept": "application/json",
            # What _CappedBody can inflate within its cap.
            "Accept-Encoding": "gzip, deflate",
        }
        if settings.resy_api_key is not None:
            key = settings.resy_api_key.get_secret_value()
            headers["Authorization"] = f'ResyAPI api_key="{key}"'
        if settings.resy_auth_token is not None:
            headers["X-Resy-Auth-Token"] = settings.resy_auth_token.get_secret_value()
        self._client = httpx.AsyncClient(
            base_url=settings.resy_base_url,
            headers=headers,
            timeout=settings.request_timeout_seconds,
            transport=transport,
            limits=httpx.Limits(max_connections=32, max_keepalive_connections=16),
        )

    async def aclose(self) -> None:
        await self._client.aclose()

    async def fetch_bucket(self, spec: BucketSpec, deadline: float) -> BucketFetch:
        result = BucketFetch()
        for party_size in spec.party_sizes:
            result.kind_counts.setdefault(party_size, 0)
            page, total_pages = 1, 1
            while page <= total_pages:
                body = await self._search(spec, party_size, page, deadline)
                result.requests += 1
                hits, total_pages = _parse_page(body, page)
                if total_pages > self._settings.max_pages:
                    raise IncompleteFetchError(
                        f"{total_pages} pages exceed the limit of {self._settings.max_pages}"
                    )
                if len(hits) > self._settings.max_hits_per_page:
                    raise TooManyHitsError(
                        f"{len(hits)} hits on a page exceed {self._settings.max_hits_per_page}"
                    )
                for hit in hits:
                    try:
                        self._collect(hit, spec, party_size, result)
                    except (TypeError, ValueError, OverflowError, AttributeError):
                        # Valid JSON, invalid data: the fetch is malformed, never partial.
                        raise MalformedResponseError("a venue hit holds invalid data") from None
                page += 1
        return result

    def _collect(
        self, hit: dict[str, Any], spec: BucketSpec, party_size: int, result: BucketFetch
    ) -> None:
        venue = _parse_venue(hit)
        result.venues[venue.venue_id] = venue
        raw_slots = _slots_of(hit)
        if len(raw_slots) > self._settings.max_slots_per_venue:
            raise TooManySlotsError(
                f"venue {venue.venue_id}: {len(raw_slots)} slots exceed "
                f"{self._settings.max_slots_per_venue}"
            )
        for raw in raw_slots:
            start, seating = _parse_slot(raw, self._settings.zone)
            if not spec.contains(start):
                continue
            slot_id = slot_id_for(self.name, venue.venue_id, start, seating)
            result.add(Slot(slot_id, venue.venue_id, start, seating), party_size)

    async def _search(self, spec: BucketSpec, party_size: int, page: int, deadline: float) -> Any:
        payload = {
            "query": "",
            "types": ["venue"],
            "availability": True,
            "order_by": "availability",
            "page": page,
            "per_page": self._settings.per_page,
            "geo": {"bounding_box": list(self._settings.market_bbox)},
            "slot_filter": {
                "day": spec.day.isoformat(),
                "party_size": party_size,
                "time_filter": spec.anchor.strftime("%H:%M"),
            },
        }
        attempt = 0
        while True:
            attempt += 1
            try:
                return await self._post_once(payload, deadline)
            except FetchError as exc:
                if not exc.retryable or attempt >= self._settings.max_attempts:
                    raise
                delay = self._backoff(attempt, exc)
                if time.monotonic() + delay >= deadline:
                    raise
                log.debug("retrying %s page %d in %.2fs (%s)", spec.bucket_id, page, delay, exc)
                await asyncio.sleep(delay)

    def _backoff(self, attempt: int, exc: FetchError) -> float:
        """Exponential backoff with full jitter; a server's Retry-After wins when larger."""
        base = self._settings.backoff_base_seconds * (2 ** (attempt - 1))
        delay = random.uniform(base / 2, base)
        if isinstance(exc, RateLimitedError) and exc.retry_after is not None:
            delay = max(delay, exc.retry_after)
        return delay

    async def _post_once(self, payload: dict[str, Any], deadline: float) -> Any:
        if not await self._budget.acquire(deadline):
            raise UpstreamTimeoutError("request budget exhausted before the poll deadline")
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            raise UpstreamTimeoutError("poll deadline passed")
        try:
            # httpx's timeout is per read: a provider trickling a byte a second would never
            # trip it, so the poll deadline bounds the whole request, body included.
            async with asyncio.timeout(remaining):
                status, retry_after, body = await self._exchange(payload, remaining)
        except TimeoutError:
            self._observe("error")
            raise UpstreamTimeoutError("the poll deadline ran out during a request") from None
        except httpx.TimeoutException as exc:
            self._observe("error")
            raise UpstreamTimeoutError(f"request timed out ({type(exc).__name__})") from None
        except httpx.TransportError as exc:
            self._observe("error")
            raise TransportError(f"connection failed ({type(exc).__name__})") from None
        self._observe(f"{status // 100}xx")
        _raise_for_status(status, retry_after, body)
        return _decode_json(body)

    async def _exchange(
        self, payload: dict[str, Any], remaining: float
    ) -> tuple[int, str | None, bytes]:
        """Status, Retry-After and the body, read as a stream and capped after decompression
        (a small gzip body may inflate to gigabytes)."""
        cap = self._settings.max_body_bytes
        timeout = min(remaining, self._settings.request_timeout_seconds)
        async with self._client.stream("POST", SEARCH_PATH, json=payload, timeout=timeout) as resp:
            declared = resp.headers.get("Content-Length", "")
            if resp.status_code == 200 and declared.isdigit() and int(declared) > cap:
                self._observe("2xx")
                raise BodyTooLargeError(f"declared body of {declared} bytes exceeds {cap}")
            body = _CappedBody(resp.headers.get("Content-Encoding", ""), cap)
            async for chunk in _raw_chunks(resp):
                if not body.feed(chunk):
                    self._observe(f"{resp.status_code // 100}xx")
                    raise BodyTooLargeError(f"body exceeds {cap} bytes after decompression")
            return resp.status_code, resp.headers.get("Retry-After"), body.value()


async def _raw_chunks(resp: httpx.Response) -> AsyncIterator[bytes]:
    """The body as it came off the wire; an in-memory transport's response (already read)
    holds its content whole."""
    try:
        async for chunk in resp.aiter_raw():
            yield chunk
    except httpx.StreamConsumed:
        yield resp.content


class _CappedBody:
    """Decompresses a body ourselves, never more than `cap` bytes: httpx's decoder inflates a
    whole network chunk at once (64 KiB of a gzip bomb is 64 MiB)."""

    def __init__(self, encoding: str, cap: int) -> None:
        encoding = encoding.strip().lower()
        if encoding not in ("", "identity", "gzip", "deflate"):
            raise MalformedResponseError("unsupported Content-Encoding")
        # 32 + 15: zlib or gzip framing, detected from the header.
        self._inflater = zlib.decompressobj(47) if encoding in ("gzip", "deflate") else None
        self._cap = cap
        self._size = 0
        self._chunks: list[bytes] = []

    def feed(self, data: bytes) -> bool:
        """Take one raw chunk; False once the decompressed body passes the cap."""
        try:
            while data:
                if self._inflater is None:
                    out, data = data, b""
                else:
                    out = self._inflater.decompress(data, self._cap - self._size + 1)
                    data = self._inflater.unconsumed_tail
                self._size += len(out)
                if self._size > self._cap:
                    return False
                self._chunks.append(out)
        except zlib.error:
            raise MalformedResponseError("response body does not decompress") from None
        return True

    def value(self) -> bytes:
        return b"".join(self._chunks)


def _reject_constant(name: str) -> Any:
    raise ValueError(f"JSON constant {name} is not data")


def _decode_json(body: bytes) -> Any:
    """The body as JSON; NaN/Infinity and pathological nesting are malformed, not crashes."""
    try:
        return json.loads(body, parse_constant=_reject_constant)
    except (ValueError, RecursionError):
        raise MalformedResponseError("response body is not JSON") from None


def _raise_for_status(status: int, retry_after: str | None, body: bytes) -> None:
    if status == 200:
        return
    if status == 401:
        raise AuthExpiredError("401: the API key or token was rejected")
    if status == 403:
        text = body[:2000].decode("utf-8", "replace").lower()
        if any(word in text for word in _CHALLENGE_WORDS):
            raise BlockedError("403 with a challenge page: anti-bot block")
        raise AuthExpiredError("403: not authorised")
    if status == 429:
        raise RateLimitedError("429: rate limited", _retry_after(retry_after))
    if status >= 500 or status == 412:
        raise UpstreamServerError(f"{status} from the provider")
    raise MalformedResponseError(f"unexpected status {status}")


def _retry_after(value: str | None) -> float | None:
    if value is None:
        return None
    try:
        seconds = float(value)
    except ValueError:
        return None
    return max(0.0, seconds) if seconds == seconds and seconds != float("inf") else None


def _parse_page(body: Any, page: int) -> tuple[list[dict[str, Any]], int]:
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


def _parse_venue(hit: dict[str, Any]) -> VenueInfo:
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


def _slots_of(hit: dict[str, Any]) -> list[dict[str, Any]]:
    availability = hit.get("availability")
    if availability is None:
        return []
    slots = availability.get("slots") if isinstance(availability, dict) else None
    if not isinstance(slots, list) or not all(isinstance(s, dict) for s in slots):
        raise MalformedResponseError("'availability.slots' is not a list")
    return slots


def _parse_slot(raw: dict[str, Any], zone: dt.tzinfo) -> tuple[dt.datetime, str]:
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
