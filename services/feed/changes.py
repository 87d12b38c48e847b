"""Changes of the feed in commit order: what ListChanges lists and WatchDrops streams.

A change is one drop_events row: a drop opened (NEW_DROP), closed (CLOSED), or its party sizes
changed (SIZE_OPEN / SIZE_CLOSE). `store.read_changes` reads them after a cursor; `matches` is
the Python twin of the SQL filter (`sql.build_changes_sql`), so a hub can read every change
once, unfiltered, and route it to each stream's filter in memory; a property test holds the two
to the same answers. The filter applies to the slot: its date, start time, time slot and venue
as for JustOpened, and its party sizes: a change matches when the slot's sizes intersect the
filter's, for a sizes change before or after the change (so a consumer also learns that the
size it watches went away). A slot's date is not cut at today: a change is a change.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass
from urllib.parse import quote

from google.protobuf.timestamp_pb2 import Timestamp

from services.feed import request
from services.feed.cursor import Cursor
from services.feed.request import FeedQuery
from shared.errors import DropwatchError
from shared.gen.dropwatch.feed.v1 import feed_pb2

OPENED, CLOSED, SIZES = "opened", "closed", "sizes"
CHANGES = "changes"  # FeedQuery.kind of a change filter


class OutOfRangeError(DropwatchError):
    """A cursor is older than the retained history: events after it were pruned."""

    def __init__(self, pruned_through: int, pruned_day: dt.date, pruned_at: dt.datetime) -> None:
        super().__init__(
            f"cursor: older than the retained history; the oldest resumable point is after"
            f" transaction {pruned_through} (events through reservation day {pruned_day}"
            f" were pruned at {pruned_at.isoformat()}); re-list with StillOpen or"
            f" send_initial_state"
        )
        self.field = "cursor"
        self.pruned_through = pruned_through


@dataclass(frozen=True)
class Change:
    """One change, with the drop it concerns.

    `event_id` is the drop's NEW_DROP id; `party_sizes` are the slot's sizes as it opened
    (opened, closed) or after the change (sizes); `removed` are the sizes a sizes change took
    away, or, for a closing, every size the slot still had when it closed. `xact` is 0 for the
    opened drops of an initial state (they have no cursor of their own).
    """

    change_id: int
    kind: str
    xact: int
    event_id: int
    bucket_id: str
    slot_id: str
    venue_id: int
    slot_date: dt.date
    slot_time: dt.time
    seating_type: str
    party_sizes: tuple[int, ...]
    time_slot: str
    opened_at: dt.datetime
    changed_at: dt.datetime
    venue_name: str | None = None
    neighborhood: str | None = None
    price_range: int | None = None
    url_slug: str | None = None
    location_code: str | None = None
    closed_at: dt.datetime | None = None
    open_seconds: float | None = None
    added: tuple[int, ...] = ()
    removed: tuple[int, ...] = ()


@dataclass(frozen=True)
class ChangePage:
    """Changes after a cursor, in cursor order; `next` is the cursor to read from next."""

    changes: list[Change]
    next: Cursor
    truncated: bool
    as_of: dt.datetime


def filter_query(f: feed_pb2.FeedFilter) -> FeedQuery:
    """A stream's or change list's filter, validated as the other RPCs validate it."""
    return request.build_query(CHANGES, f, 0, 1, False, "")


def matches(query: FeedQuery | None, change: Change) -> bool:
    """Whether `change` passes `query`'s filter: exactly what the SQL filter keeps."""
    if query is None:
        return True
    if query.dates and change.slot_date not in query.dates:
        return False
    if query.party_sizes and not (
        set(query.party_sizes) & (set(change.party_sizes) | set(change.removed))
    ):
        return False
    if query.time_from is not None and change.slot_time < query.time_from:
        return False
    if query.time_to is not None and change.slot_time > query.time_to:
        return False
    if query.time_slots and change.time_slot not in query.time_slots:
        return False
    return not (query.venue_ids and change.venue_id not in query.venue_ids)


def feed_item(change: Change, prime_anchors: tuple[str, ...] | frozenset[str]) -> feed_pb2.FeedItem:
    """The drop as the feed's lists show it (FeedItem), built as `servicer._fill` builds it."""
    url = ""
    if change.url_slug and change.location_code:
        url = (
            f"https://resy.com/cities/{quote(change.location_code, safe='')}/"
            f"{quote(change.url_slug, safe='')}"
        )
    date = change.slot_date.isoformat()
    booking = ""
    if url:
        seats = min(change.party_sizes) if change.party_sizes else 2
        booking = f"{url}?date={date}&seats={seats}"
    return feed_pb2.FeedItem(
        event_id=change.event_id,
        slot_id=change.slot_id,
        bucket_id=change.bucket_id,
        reservation_date=date,
        slot_time=change.slot_time.strftime("%H:%M"),
        seating_type=change.seating_type,
        party_sizes=change.party_sizes,
        time_slot=change.time_slot,
        time_bucket=(
            feed_pb2.TIME_BUCKET_PRIME
            if change.time_slot in prime_anchors
            else feed_pb2.TIME_BUCKET_OFF_PEAK
        ),
        opened_at=_timestamp(change.opened_at),
        booking_url=booking,
        venue=feed_pb2.Venue(
            id=change.venue_id,
            name=change.venue_name or "",
            neighborhood=change.neighborhood or "",
            price_range=change.price_range or 0,
            url=url,
        ),
    )


def to_proto(
    change: Change, cursor: str, prime_anchors: tuple[str, ...] | frozenset[str]
) -> feed_pb2.Change:
    """The Change message; `cursor` is the encoded cursor after this change."""
    item = feed_item(change, prime_anchors)
    if change.kind == OPENED:
        return feed_pb2.Change(opened=item, cursor=cursor)
    if change.kind == CLOSED:
        closed_at = change.closed_at or change.changed_at
        return feed_pb2.Change(
            closed=feed_pb2.DropClosed(
                change_id=change.change_id,
                drop=item,
                closed_at=_timestamp(closed_at),
                open_seconds=max(0.0, change.open_seconds or 0.0),
            ),
            cursor=cursor,
        )
    return feed_pb2.Change(
        sizes_changed=feed_pb2.PartySizesChanged(
            change_id=change.change_id,
            drop=item,
            added=change.added,
            removed=change.removed,
            changed_at=_timestamp(change.changed_at),
        ),
        cursor=cursor,
    )


def _timestamp(at: dt.datetime) -> Timestamp:
    return Timestamp(seconds=int(at.timestamp()), nanos=at.microsecond * 1000)
