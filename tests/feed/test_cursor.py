"""The change cursor's token (services/feed/cursor.py): round trip, rotation, and strict
refusal of anything this server did not issue for this filter, naming field "cursor"."""

from __future__ import annotations

import base64
import datetime as dt

import pytest
from hypothesis import given
from hypothesis import strategies as st

from services.feed.changes import filter_query
from services.feed.cursor import MAX_CURSOR_CHARS, Cursor, CursorCodec, filter_key
from services.feed.errors import InvalidArgumentError
from services.feed.signing import Signer
from shared.gen.dropwatch.feed.v1 import feed_pb2

KEY = b"a" * 32
OTHER = b"b" * 32
F = filter_key(None)
CURSOR = Cursor(10_000_000_001, 42, 10_000_000_009, frozenset({10_000_000_003}), F)


def refused(codec: CursorCodec, token: str, key: bytes = F) -> str:
    with pytest.raises(InvalidArgumentError) as err:
        codec.decode(token, key)
    assert err.value.field == "cursor"
    return str(err.value)


def test_round_trip_and_no_expiry() -> None:
    codec = CursorCodec(KEY)
    token = codec.encode(CURSOR)
    assert codec.decode(token, F) == CURSOR
    assert len(token) < 200
    # No time inside: the same cursor is the same token, whenever it is issued or read.
    assert codec.encode(CURSOR) == token


@given(
    xact=st.integers(0, 2**64 - 1),
    change=st.integers(0, 2**63 - 1),
    skip=st.none() | st.integers(0, 2**64 - 1),
    excepted=st.frozensets(st.integers(0, 2**64 - 1), max_size=20),
)
def test_round_trip_any_position(
    xact: int, change: int, skip: int | None, excepted: frozenset[int]
) -> None:
    cursor = Cursor(xact, change, skip, excepted if skip is not None else frozenset(), F)
    codec = CursorCodec(KEY)
    assert codec.decode(codec.encode(cursor), F) == cursor


def test_rotation_previous_key_still_reads() -> None:
    old = CursorCodec(OTHER).encode(CURSOR)
    assert CursorCodec(KEY, OTHER).decode(old, F) == CURSOR
    assert "not issued" in refused(CursorCodec(KEY), old)


def test_shares_the_page_token_signer() -> None:
    signer = Signer(KEY)
    assert CursorCodec(signer).encode(CURSOR) == CursorCodec(KEY).encode(CURSOR)


def test_other_filter_is_refused() -> None:
    codec = CursorCodec(KEY)
    sizes = filter_key(filter_query(feed_pb2.FeedFilter(party_sizes=[4])))
    token = codec.encode(CURSOR)
    assert "different filter" in refused(codec, token, sizes)


def test_filter_key_ignores_order_duplicates_and_non_filter_fields() -> None:
    a = filter_query(feed_pb2.FeedFilter(venue_ids=[2, 1, 2], all_slots_per_venue=True))
    b = filter_query(feed_pb2.FeedFilter(venue_ids=[1, 2]))
    assert filter_key(a) == filter_key(b) != filter_key(None)
    dates = filter_query(feed_pb2.FeedFilter(reservation_dates=["2026-12-02"]))
    assert filter_key(dates) != filter_key(None)
    assert dt.date(2026, 12, 2) in dates.dates


@pytest.mark.parametrize(
    "mangle",
    [
        lambda t: t[:-1],  # truncated
        lambda t: t[:10],
        lambda t: t + "A",  # trailing garbage
        lambda t: t + "==",
        lambda t: t + "\n",
        lambda t: t[:5] + ("B" if t[5] != "B" else "C") + t[6:],  # tampered
        lambda t: "é" + t,  # non-ASCII
        lambda t: t.replace(t[3], "٣", 1),
        lambda t: "",
        lambda t: " " + t,
        lambda t: "A" * (MAX_CURSOR_CHARS + 1),
    ],
)
def test_mangled_tokens_are_refused(mangle) -> None:  # type: ignore[no-untyped-def]
    codec = CursorCodec(KEY)
    refused(codec, mangle(codec.encode(CURSOR)))


def test_a_second_spelling_of_the_same_bytes_is_refused() -> None:
    codec = CursorCodec(KEY)
    alphabet = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_"
    for remainder, spare in ((2, 15), (3, 3)):  # the last character's unused low bits
        token = next(
            t
            for t in (codec.encode(Cursor(1, n, filter_key=F)) for n in range(1, 10**4))
            if len(t) % 4 == remainder
        )
        twin = token[:-1] + alphabet[alphabet.index(token[-1]) ^ spare]
        assert base64.urlsafe_b64decode(twin + "==") == base64.urlsafe_b64decode(token + "==")
        refused(codec, twin)


def test_signed_but_malformed_bodies_are_refused() -> None:
    """A body this version cannot read is refused even with a valid signature."""
    signer = Signer(KEY)
    codec = CursorCodec(signer)
    for body in (
        b"[]",
        b"not json",
        b'[1,"' + F.hex().encode() + b'",-1,0,null,[]]',  # negative position
        b'[1,"' + F.hex().encode() + b'",1.5,0,null,[]]',  # not an integer
        b'[1,"' + F.hex().encode() + b'",1,0,null,[7]]',  # exclusion list without its bound
        b'[2,"' + F.hex().encode() + b'",1,0,null,[]]',  # unknown version
        b'[1,"zz",1,0,null,[]]',  # key not hex
        b'[1,"' + F.hex().encode() + b'",18446744073709551616,0,null,[]]',  # > xid8
        '[1,"é",1,0,null,[]]'.encode(),
    ):
        refused(codec, signer.sign(body))


def test_after_moves_forward_and_drops_the_exclusion_past_xmax() -> None:
    c = Cursor(100, 0, 110, frozenset({105}), F)
    assert c.after(99, 5) == c  # never backwards
    assert c.after(105, 3) == Cursor(105, 3, 110, frozenset({105}), F)
    assert c.after(110, 0) == Cursor(110, 0, None, frozenset(), F)
    base64.urlsafe_b64decode(CursorCodec(KEY).encode(c) + "==")  # plain URL-safe base64
