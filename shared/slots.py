"""A slot's stable identity, shared by the poller (which finds slots) and the seeder.

A slot's id is a hash of (provider, venue id, normalised local start, seating type). Resy's
`config.token` embeds a template id that changes over time and its time strings come in more
than one format, so neither is ever used directly: that produced false drops in the original
system (see docs/architecture.md, What the original system did wrong, 3). Whatever writes
slots the poller will see later (the seeder) must derive their ids here, or the poller would
take them for new slots.
"""

from __future__ import annotations

import datetime as dt
import hashlib


def normalise_seating(raw: str) -> str:
    """Seating types differ only in case and spacing between responses; keep one spelling."""
    return " ".join(raw.split()).title() or "Unknown"


def slot_id_for(provider: str, venue_id: int, start: dt.datetime, seating: str) -> str:
    """The id of the slot at `start` (venue-local, minute precision) with this seating."""
    key = f"{provider}|{venue_id}|{start:%Y-%m-%dT%H:%M}|{normalise_seating(seating).lower()}"
    return hashlib.sha256(key.encode()).hexdigest()[:32]
