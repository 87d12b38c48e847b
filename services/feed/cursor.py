"""The change cursor: an opaque, signed position in commit order, bound to one filter.

A cursor says "every change up to `position` in (xact_id, id) order was delivered". Right after
an initial state it also carries an exclusion: the transactions below `skip_below` (the
snapshot's xmax) that are not in `skip_except` (the snapshot's in-progress list) were already
reflected in that state, so their events are skipped; the exclusion is dropped once the
position passes `skip_below` (docs/architecture.md, "Change cursor and ListChanges").

Tokens are signed with the page-token key (`signing.Signer`, same rotation), carry a hash of
the normalised filter (a cursor of another filter is refused: its position says nothing about
what this filter delivered), and never expire by time: history ends by retention, and a cursor
older than the retained history is OUT_OF_RANGE (`changes.check_retained`). Decoding is strict:
anything that is not exactly a token this server issued is INVALID_ARGUMENT naming "cursor".
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field

from services.feed.errors import InvalidArgumentError
from services.feed.request import FeedQuery
from services.feed.signing import Signer

FIELD = "cursor"
# A cursor is ~80 characters; with an exclusion, ~30 more per transaction in flight at the
# snapshot (bounded by max_connections). Longer text is refused before it is decoded.
MAX_CURSOR_CHARS = 8_192
_VERSION = 1
_XID8_MAX = 2**64 - 1
_INT8_MAX = 2**63 - 1


@dataclass(frozen=True)
class Cursor:
    """After (`position_xact`, `position_id`) in commit order; `filter_key` names the filter."""

    position_xact: int
    position_id: int
    skip_below: int | None = None
    skip_except: frozenset[int] = field(default_factory=frozenset)
    filter_key: bytes = b""

    def after(self, xact: int, change_id: int) -> Cursor:
        """The cursor after a change at (xact, change_id), or at (horizon, 0) after an empty
        read; never moves back. The exclusion ends once the position passes `skip_below`."""
        if (xact, change_id) <= (self.position_xact, self.position_id):
            return self
        keep = self.skip_below is not None and xact < self.skip_below
        return Cursor(
            xact,
            change_id,
            self.skip_below if keep else None,
            self.skip_except if keep else frozenset(),
            self.filter_key,
        )


def filter_key(query: FeedQuery | None) -> bytes:
    """A hash of the normalised filter (what a change must match); None = unfiltered.

    Only the filter: the RPC, limit, window and `all_slots_per_venue` do not change which
    changes a cursor's position accounts for.
    """
    if query is None:
        parts: list[object] = []
    else:
        parts = [
            [d.isoformat() for d in query.dates],
            list(query.party_sizes),
            query.time_from.isoformat() if query.time_from else None,
            query.time_to.isoformat() if query.time_to else None,
            list(query.time_slots),
            list(query.venue_ids),
        ]
    raw = json.dumps(parts, separators=(",", ":")).encode()
    return hashlib.sha256(raw).digest()[:12]


class CursorCodec:
    """Encodes and strictly decodes cursors with the page-token key(s)."""

    def __init__(self, secret: bytes | Signer, previous: bytes | None = None) -> None:
        self.signer = secret if isinstance(secret, Signer) else Signer(secret, previous)

    def encode(self, cursor: Cursor) -> str:
        body = [
            _VERSION,
            cursor.filter_key.hex(),
            cursor.position_xact,
            cursor.position_id,
            cursor.skip_below,
            sorted(cursor.skip_except),
        ]
        return self.signer.sign(json.dumps(body, separators=(",", ":")).encode())

    def decode(self, token: str, key: bytes) -> Cursor:
        """The cursor `token` holds, if this server issued it for the filter `key`."""
        body = self.signer.open(token, MAX_CURSOR_CHARS)
        if body is None:
            raise InvalidArgumentError(FIELD, "was not issued by this server")
        try:
            cursor = _parse(body)
        except (ValueError, TypeError):
            # Signed but unreadable: a format this version does not know.
            raise InvalidArgumentError(FIELD, "was not issued by this server") from None
        if cursor.filter_key != key:
            raise InvalidArgumentError(FIELD, "belongs to a different filter")
        return cursor


def _parse(body: bytes) -> Cursor:
    value = json.loads(body.decode("ascii"))
    if not isinstance(value, list) or len(value) != 6 or value[0] != _VERSION:
        raise ValueError("unknown cursor format")
    _, key, xact, change_id, skip_below, skip_except = value
    if not isinstance(key, str) or not isinstance(skip_except, list):
        raise ValueError("unknown cursor format")
    xact = _bounded(xact, _XID8_MAX)
    change_id = _bounded(change_id, _INT8_MAX)
    below = None if skip_below is None else _bounded(skip_below, _XID8_MAX)
    excepted = frozenset(_bounded(x, _XID8_MAX) for x in skip_except)
    if below is None and excepted:
        raise ValueError("an exclusion list without its bound")
    return Cursor(xact, change_id, below, excepted, bytes.fromhex(key))


def _bounded(value: object, maximum: int) -> int:
    if type(value) is not int or not 0 <= value <= maximum:
        raise ValueError("out of range")
    return value
