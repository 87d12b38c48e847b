"""What a slot is, as a fetch returns it (its id comes from `shared.slots.slot_id_for`)."""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass, field


def parse_local_start(raw: str, zone: dt.tzinfo | None = None) -> dt.datetime:
    """Parse a start time in any ISO-8601 form seen, to a naive market-local time, to the minute.

    Resy's time strings come in more than one format (`T` or a space, with or without seconds,
    fractional seconds, a UTC offset); a slot's identity must not depend on which one a
    response used. A time with an offset is converted to `zone` (the market's time zone).
    """
    text = raw.strip()
    try:
        start = dt.datetime.fromisoformat(text)
    except ValueError:
        raise ValueError(f"unrecognised slot start time {raw!r}") from None
    if len(text) < len("YYYY-MM-DDTHH:MM"):  # a bare date is not a start time
        raise ValueError(f"slot start time {raw!r} has no time of day")
    if start.tzinfo is not None:
        if zone is None:
            raise ValueError(f"slot start time {raw!r} has an offset but no market zone is known")
        start = start.astimezone(zone).replace(tzinfo=None)
    return start.replace(second=0, microsecond=0)


@dataclass(frozen=True)
class VenueInfo:
    venue_id: int
    name: str
    neighborhood: str | None
    price_range: int | None
    url_slug: str | None
    location_code: str | None


@dataclass
class Slot:
    """One bookable start time at a venue; `party_sizes` are the sizes that returned it."""

    slot_id: str
    venue_id: int
    start: dt.datetime
    seating_type: str
    party_sizes: set[int] = field(default_factory=set)


@dataclass
class BucketFetch:
    """Everything one healthy-looking fetch of a bucket returned."""

    slots: dict[str, Slot] = field(default_factory=dict)
    venues: dict[int, VenueInfo] = field(default_factory=dict)
    requests: int = 0
    # Slots each request kind (party size, all its pages) returned, 0 for an empty answer.
    kind_counts: dict[int, int] = field(default_factory=dict)

    def add(self, slot: Slot, party_size: int) -> None:
        """Merge: the same slot seen for several party sizes is one slot."""
        existing = self.slots.get(slot.slot_id)
        if existing is not None and party_size in existing.party_sizes:
            return
        self.kind_counts[party_size] = self.kind_counts.get(party_size, 0) + 1
        if existing is None:
            slot.party_sizes = {party_size}
            self.slots[slot.slot_id] = slot
        else:
            existing.party_sizes.add(party_size)
