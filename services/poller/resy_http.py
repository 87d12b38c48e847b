"""The HTTP side of the Resy provider: one search request, under the request budget and the
poll deadline, with retries.

Headers are those real clients send (Resy answers 412/500 without them). The API key and
token come from settings and only ever live in request headers; they are never logged, and
error messages carry status codes and reasons, not bodies or headers. A body is read as a
stream and capped after decompression; a status is mapped to the most specific `FetchError`.
"""

from __future__ import annotations

import asyncio
import json
import logging
import random
import time
import zlib
from collections.abc import AsyncIterator, Callable
from typing import Any

import httpx

from services.poller.budget import Budget
from services.poller.errors import (
    AuthExpiredError,
    BlockedError,
    BodyTooLargeError,
    FetchError,
    MalformedResponseError,
    RateLimitedError,
    TransportError,
    UpstreamServerError,
    UpstreamTimeoutError,
)
from services.poller.settings import PollerSettings

log = logging.getLogger(__name__)

SEARCH_PATH = "/3/venuesearch/search"
USER_AGENT = (
    "Mozilla/5.0 (X11; Linux x86_64) AppleWebKit/537.36 (KHTML, like Gecko) "
    "Chrome/126.0 Safari/537.36"
)
_CHALLENGE_WORDS = ("captcha", "challenge", "perimeterx", "px-captcha", "blocked")

# Called with the status class ("2xx", "4xx", "5xx", "error") of every upstream request.
RequestObserver = Callable[[str], None]


class SearchClient:
    """Posts venue searches: each request waits for the budget, retries end at the deadline."""

    def __init__(
        self,
        settings: PollerSettings,
        budget: Budget,
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

    async def search(self, payload: dict[str, Any], deadline: float, what: str) -> Any:
        """The decoded answer to one search; `what` names it in the retry log."""
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
                log.debug("retrying %s in %.2fs (%s)", what, delay, exc)
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
            if (
                resp.status_code == 200
                and declared.isascii()
                and declared.isdigit()
                and int(declared) > cap
            ):
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
