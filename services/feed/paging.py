"""Opaque, signed page tokens: a keyset cursor bound to one query and one boundary.

A token carries the query's fingerprint, the first page's boundary (its time and its
commit-order horizon, so later pages see exactly the writes the first page saw, whatever
commits meanwhile), and the (opened_at, event_id) of the last item returned. It is
HMAC-signed, so a tampered token or one from another query is rejected with INVALID_ARGUMENT
instead of silently returning the wrong page.
"""

from __future__ import annotations

import base64
import datetime as dt
import hashlib
import hmac
import json
from dataclasses import dataclass

from services.feed.errors import InvalidArgumentError


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


class PageTokens:
    def __init__(self, secret: bytes) -> None:
        self._secret = secret

    def issue(self, fingerprint: str, cursor: Cursor) -> str:
        body = json.dumps(
            [
                fingerprint,
                cursor.boundary.at.isoformat(),
                cursor.boundary.horizon,
                cursor.opened_at.isoformat(),
                cursor.event_id,
            ],
            separators=(",", ":"),
        ).encode()
        sig = hmac.new(self._secret, body, hashlib.sha256).digest()[:16]
        return base64.urlsafe_b64encode(sig + body).decode().rstrip("=")

    def read(self, token: str, fingerprint: str) -> Cursor:
        try:
            raw = base64.urlsafe_b64decode(token + "=" * (-len(token) % 4))
            sig, body = raw[:16], raw[16:]
            expected = hmac.new(self._secret, body, hashlib.sha256).digest()[:16]
            if not hmac.compare_digest(sig, expected):
                raise ValueError("bad signature")
            owner, at, horizon, opened_at, event_id = json.loads(body)
            cursor = Cursor(
                Boundary(dt.datetime.fromisoformat(at), int(horizon)),
                dt.datetime.fromisoformat(opened_at),
                int(event_id),
            )
        except (ValueError, TypeError):
            raise InvalidArgumentError("page_token", "was not issued by this server") from None
        if owner != fingerprint:
            raise InvalidArgumentError("page_token", "belongs to a different query")
        return cursor
