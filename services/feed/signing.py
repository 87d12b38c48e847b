"""HMAC signing of the feed's opaque tokens (page tokens, change cursors), with key rotation.

One place for the signature format: the first 16 bytes of HMAC-SHA256 over the body, then the
body, URL-safe base64 without padding. `open` accepts the current key or the previous one (a
rotation keeps tokens of the old key valid until it is removed), and refuses anything longer
than `max_chars` or outside the URL-safe alphabet before decoding it, and any spelling but the
one it issues (so one token has one text).
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import re

_ALPHABET = re.compile(r"[A-Za-z0-9_-]+")
SIG_BYTES = 16


class Signer:
    """Signs with `secret`; verifies with `secret` or `previous`."""

    def __init__(self, secret: bytes, previous: bytes | None = None) -> None:
        self._keys = [secret] + ([previous] if previous else [])

    def sign(self, body: bytes) -> str:
        sig = hmac.new(self._keys[0], body, hashlib.sha256).digest()[:SIG_BYTES]
        return base64.urlsafe_b64encode(sig + body).decode().rstrip("=")

    def open(self, token: str, max_chars: int) -> bytes | None:
        """The signed body, or None if `token` is not one this server signed (any key)."""
        if len(token) > max_chars or not _ALPHABET.fullmatch(token):
            return None
        try:
            raw = base64.urlsafe_b64decode(token + "=" * (-len(token) % 4))
        except (ValueError, binascii.Error):
            return None
        if base64.urlsafe_b64encode(raw).decode().rstrip("=") != token:
            return None  # a second spelling of the same bytes (unused trailing bits set)
        sig, body = raw[:SIG_BYTES], raw[SIG_BYTES:]
        for key in self._keys:
            if hmac.compare_digest(sig, hmac.new(key, body, hashlib.sha256).digest()[:SIG_BYTES]):
                return body
        return None
