"""What a slot is, and its stable identity.

A slot's id is a hash of (provider, venue id, normalised local start, seating type). Resy's
`config.token` embeds a template id that changes over time and its time strings come in more
than one format, so neither is ever used directly: that produced false drops in the original.
"""

from __future__ import annotations

import datetime as dt
import hashlib
from dataclasses import dataclass, field

_START_FORMATS = ("%Y-%m-%d %H:%M:%S", "%Y-%m-%dT%H:%M:%S", "%Y-%m-%d %H:%M", "%Y-%m-%dT%H:%M")


def parse_local_start(raw: str) -> dt.datetime:
    """Parse a venue-local start time in any format seen, to minute precision."""
    text = raw.strip()
    for fmt in _START_FORMATS:
        try:
            return dt.datetime.strptime(text, fmt).replace(second=0, microsecond=0)
        except ValueError:
            continue
    raise ValueError(f"unrecognised slot start time {raw!r}")


def normalise_seating(raw: str) -> str:
    """Seating types differ only in case and spacing between responses; keep one spelling."""
    return " ".join(raw.split()).title() or "Unknown"


def slot_id_for(provider: str, venue_id: int, start: dt.datetime, seating: str) -> str:
    key = f"{provider}|{venue_id}|{start:%Y-%m-%dT%H:%M}|{normalise_seating(seating).lower()}"
    return hashlib.sha256(key.encode()).hexdigest()[:32]


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
