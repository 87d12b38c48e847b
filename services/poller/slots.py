"""What a slot is, as a fetch returns it (its id comes from `shared.slots.slot_id_for`)."""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass, field

_START_FORMATS = ("%Y-%m-%d %H:%M:%S", "%Y-%m-%dT%H:%M:%S", "%Y-%m-%d %H:%M", "%Y-%m-%dT%H:%M")


def parse_local_start(raw: str) -> dt.datetime:
    """Parse a venue-local start time in any format seen, to minute precision.

    Resy's time strings come in more than one format; a slot's identity must not depend on
    which one a response used.
    """
    text = raw.strip()
    for fmt in _START_FORMATS:
        try:
            return dt.datetime.strptime(text, fmt).replace(second=0, microsecond=0)
        except ValueError:
            continue
    raise ValueError(f"unrecognised slot start time {raw!r}")


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

    def add(self, slot: Slot, party_size: int) -> None:
        """Merge: the same slot seen for several party sizes is one slot."""
        existing = self.slots.get(slot.slot_id)
        if existing is None:
            slot.party_sizes = {party_size}
            self.slots[slot.slot_id] = slot
        else:
            existing.party_sizes.add(party_size)
