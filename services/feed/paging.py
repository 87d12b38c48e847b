"""Opaque, signed page tokens: a keyset cursor bound to one query and one boundary.

A token carries the query's fingerprint, the first page's boundary (its time and its
commit-order horizon, so later pages see exactly the writes the first page saw, whatever
commits meanwhile), and the (opened_at, event_id) of the last item returned. It is
HMAC-signed, so a tampered token or one from another query is rejected with INVALID_ARGUMENT
instead of silently returning the wrong page. Tokens expire (`DROPWATCH_PAGE_TOKEN_TTL_SECONDS`),
and a previous key keeps its tokens valid during a rotation
(`DROPWATCH_PAGE_TOKEN_PREVIOUS_SECRET`, docs/deploy.md).
"""

from __future__ import annotations

import datetime as dt
import json
import time
from collections.abc import Callable
from dataclasses import dataclass

from services.feed.errors import InvalidArgumentError
from services.feed.signing import Signer


@dataclass(frozen=True)
class Boundary:
    """What an answer sees: rows opened at or before `at`, written by a transaction whose id
    is below `horizon` (every such transaction had ended when the boundary was taken)."""

    at: dt.datetime
    horizon: int


@dataclass(frozen=True)
class Cursor:
    boundary: Boundary
    opened_at: dt.datetime
    event_id: int


# A real token is about 200 characters; anything longer, or outside the URL-safe base64
# alphabet, is refused before it is decoded (and before it could become a cache key).
MAX_TOKEN_CHARS = 512


class PageTokens:
    """Issues tokens with `secret`; accepts tokens signed with `secret` or `previous` (during a
    key rotation) that are at most `lifetime` seconds old."""

    def __init__(
        self,
        secret: bytes,
        previous: bytes | None = None,
        lifetime: float = 3600.0,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.signer = Signer(secret, previous)
        self._lifetime = lifetime
        self._clock = clock

    def issue(self, fingerprint: str, cursor: Cursor) -> str:
        body = json.dumps(
            [
                fingerprint,
                cursor.boundary.at.isoformat(),
                cursor.boundary.horizon,
                cursor.opened_at.isoformat(),
                cursor.event_id,
                int(self._clock()),
            ],
            separators=(",", ":"),
        ).encode()
        return self.signer.sign(body)

    def read(self, token: str, fingerprint: str) -> Cursor:
        body = self.signer.open(token, MAX_TOKEN_CHARS)
        try:
            if body is None:
                raise ValueError("bad signature")
            owner, at, horizon, opened_at, event_id, issued = json.loads(body)
            cursor = Cursor(
                Boundary(dt.datetime.fromisoformat(at), int(horizon)),
                dt.datetime.fromisoformat(opened_at),
                int(event_id),
            )
            age = self._clock() - int(issued)
        except (ValueError, TypeError):
            raise InvalidArgumentError("page_token", "was not issued by this server") from None
        if owner != fingerprint:
            raise InvalidArgumentError("page_token", "belongs to a different query")
        if age > self._lifetime:
            raise InvalidArgumentError("page_token", "has expired; ask for the first page again")
        return cursor
