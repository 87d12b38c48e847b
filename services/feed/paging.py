"""Opaque, signed page tokens: a keyset cursor bound to one query.

A token carries the query's fingerprint, the snapshot time of the first page (so later pages
see exactly the rows that existed then, whatever arrives meanwhile), and the (opened_at,
event_id) of the last item returned. It is HMAC-signed, so a tampered token or one from another
query is rejected with INVALID_ARGUMENT instead of silently returning the wrong page.
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
class Cursor:
    snapshot: dt.datetime
    opened_at: dt.datetime
    event_id: int


class PageTokens:
    def __init__(self, secret: bytes) -> None:
        self._secret = secret

    def issue(self, fingerprint: str, cursor: Cursor) -> str:
        body = json.dumps(
            [
                fingerprint,
                cursor.snapshot.isoformat(),
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
            owner, snapshot, opened_at, event_id = json.loads(body)
            cursor = Cursor(
                dt.datetime.fromisoformat(snapshot),
                dt.datetime.fromisoformat(opened_at),
                int(event_id),
            )
        except (ValueError, TypeError):
            raise InvalidArgumentError("page_token", "was not issued by this server") from None
        if owner != fingerprint:
            raise InvalidArgumentError("page_token", "belongs to a different query")
        return cursor
