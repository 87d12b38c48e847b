"""Who calls the feed: a signed bearer token per client, checked for FeedService calls only.

A token names its client and its expiry and is signed (HMAC-SHA256) with the feed's key
`DROPWATCH_FEED_AUTH_SECRET`; an operator issues one per calling service with
`python -m services.feed.auth CLIENT --days N` and hands it over as that client's Secret
(docs/deploy.md, "Who calls the feed"). A caller sends it as `authorization: Bearer TOKEN`
metadata. Health and reflection stay open, so the kubelet's gRPC probes (which cannot send
metadata) keep working. A previous key (`DROPWATCH_FEED_AUTH_PREVIOUS_SECRET`) keeps its
tokens valid during a rotation; removing it revokes them.
"""

from __future__ import annotations

import argparse
import base64
import hashlib
import hmac
import logging
import os
import re
import sys
import time
from collections.abc import Sequence
from typing import Any

import grpc

from services.feed.interceptors import Behaviour, CallInterceptor

log = logging.getLogger(__name__)

VERSION = "dwf1"
_CLIENT = re.compile(r"^[a-z0-9][a-z0-9-]{0,62}$")
_MAX_TOKEN = 256


def _sign(key: bytes, client: str, expires: int) -> str:
    mac = hmac.new(key, f"{VERSION}.{client}.{expires}".encode(), hashlib.sha256).digest()
    return base64.urlsafe_b64encode(mac).decode().rstrip("=")


def issue(key: bytes, client: str, expires: int) -> str:
    """A token for `client` valid until `expires` (Unix seconds)."""
    if not _CLIENT.match(client):
        raise ValueError("a client name is lower-case letters, digits and '-'")
    return f"{VERSION}.{client}.{expires}.{_sign(key, client, expires)}"


def _canonical_number(text: str) -> bool:
    return text.isascii() and text.isdigit() and text == str(int(text))


def verify(keys: Sequence[bytes], token: str, now: float) -> str:
    """The client a token names; ValueError if it is malformed, forged or expired."""
    parts = token.split(".") if len(token) <= _MAX_TOKEN else []
    # One spelling per token: ASCII digits without leading zeros (int() also reads other
    # scripts' digits and "007", and the signature covers the number, not its spelling).
    if len(parts) != 4 or parts[0] != VERSION or not _canonical_number(parts[2]):
        raise ValueError("malformed token")
    _, client, expires, sig = parts
    if not any(hmac.compare_digest(sig, _sign(k, client, int(expires))) for k in keys):
        raise ValueError("bad signature")
    if int(expires) < now:
        raise ValueError("expired token")
    return client


class FeedAuth(CallInterceptor):
    """Refuses FeedService calls without a valid token (UNAUTHENTICATED)."""

    def __init__(self, service: str, keys: Sequence[bytes]) -> None:
        self.prefix = f"/{service}/"
        self.keys = list(keys)

    def wrap(self, behaviour: Behaviour, details: grpc.HandlerCallDetails) -> Behaviour:
        metadata = dict(details.invocation_metadata or ())
        header = str(metadata.get("authorization", ""))
        try:
            client = verify(self.keys, header.removeprefix("Bearer "), time.time())
        except ValueError as exc:
            log.info("refused a feed call: %s", exc)

            async def refuse(_request: Any, context: grpc.aio.ServicerContext[Any, Any]) -> Any:
                await context.abort(grpc.StatusCode.UNAUTHENTICATED, "a valid feed token needed")

            return refuse
        log.debug("feed call from %s", client)
        return behaviour


def main(argv: list[str] | None = None) -> int:
    """`python -m services.feed.auth CLIENT --days N`: print a token (key from the env)."""
    parser = argparse.ArgumentParser(prog="python -m services.feed.auth")
    parser.add_argument("client", help="the calling service's name, e.g. alerts")
    parser.add_argument("--days", type=int, default=90, help="validity (default 90)")
    args = parser.parse_args(argv)
    key = os.environ.get("DROPWATCH_FEED_AUTH_SECRET", "").encode()
    if len(key) < 32:
        print(
            "DROPWATCH_FEED_AUTH_SECRET: needs the feed's key (32 bytes or more)", file=sys.stderr
        )
        return 2
    print(issue(key, args.client, int(time.time()) + args.days * 86400))
    return 0


if __name__ == "__main__":
    sys.exit(main())
