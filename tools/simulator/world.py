"""A seeded database's open drops, carried into the simulator so that seed and simulation are
one world.

`dropwatch seed` writes drops for venues the simulator's model does not have. Without them in
the simulator, the first polls of `make run` would close every seeded drop within seconds.
`make run` therefore exports the database's live open slots (`dropwatch up` writes
`.dropwatch/world.json`); when some belong to venues the model does not have, the simulator
serves that world instead of its generated venues (which, in buckets the seed marked as
polled, would all look like new drops at once). Each carried slot stays open until the end of
the model period it is in when the simulator starts, and from then on follows the model's rule
for a slot of its own (closed in most periods, open again now and then). A seeded venue's
other slots stay sold out, so the seeded world does not grow.
"""

from __future__ import annotations

import json
from collections import defaultdict
from dataclasses import dataclass
from datetime import date
from pathlib import Path
from typing import Any

from tools.simulator.catalog import FIRST_SLOT_MINUTE, Venue, mix64, parse_hhmm, stable_key
from tools.simulator.model import Slot, TimeWindow, VenueAvailability, slot_state, template_id


@dataclass(frozen=True)
class CarriedSlot:
    venue_id: int
    minute: int
    seating_type: str
    key: int

    def open_at(self, t: int, started: int) -> bool:
        """Open through the period it was in at `started`, then as the model says."""
        _, _, last = slot_state(self.key, self.minute, started)
        return t <= last or slot_state(self.key, self.minute, t)[0]


class World:
    """Venues and open slots carried over from the database, searched like the model."""

    def __init__(self, venues: dict[int, Venue], slots: dict[tuple[date, int], list[CarriedSlot]]):
        self.venues = venues
        self._slots = slots
        self.started: int | None = None  # simulated second the simulator started at

    def __len__(self) -> int:
        return sum(len(s) for s in self._slots.values())

    @classmethod
    def from_rows(cls, seed: int, venues: list[dict[str, Any]], slots: list[list[Any]]) -> World:
        """`venues`: {venue_id, name, neighborhood, price_range, url_slug}; `slots`:
        [venue_id, "YYYY-MM-DD", "HH:MM", seating_type, [party sizes]]."""
        by_day: dict[tuple[date, int], list[CarriedSlot]] = defaultdict(list)
        seatings: dict[int, set[str]] = defaultdict(set)
        for venue_id, day, hhmm, seating, sizes in slots:
            seatings[venue_id].add(seating)
            for size in sizes:
                key = mix64(stable_key("carried", seed, venue_id, day, hhmm, seating, size))
                carried = CarriedSlot(int(venue_id), parse_hhmm(hhmm), seating, key)
                by_day[(date.fromisoformat(day), int(size))].append(carried)
        catalog = {
            int(v["venue_id"]): _venue(seed, v, tuple(sorted(seatings[int(v["venue_id"])])))
            for v in venues
            if int(v["venue_id"]) in seatings
        }
        for listed in by_day.values():
            listed[:] = [c for c in listed if c.venue_id in catalog]
            listed.sort(key=lambda c: (c.venue_id, c.minute, c.seating_type))
        return cls(catalog, dict(by_day))

    @classmethod
    def load(cls, path: Path, seed: int) -> World:
        data = json.loads(path.read_text())
        return cls.from_rows(seed, data["venues"], data["slots"])

    def without(self, venue_ids: set[int]) -> World:
        """The world less the venues the model has itself (its own state governs them)."""
        venues = {i: v for i, v in self.venues.items() if i not in venue_ids}
        slots = {k: [c for c in s if c.venue_id in venues] for k, s in self._slots.items()}
        return World(venues, slots)

    def search(
        self, day: date, party_size: int, window: TimeWindow, t: int
    ) -> tuple[VenueAvailability, ...]:
        started = t if self.started is None else self.started
        found: dict[int, list[Slot]] = defaultdict(list)
        for c in self._slots.get((day, party_size), ()):
            if window.contains(c.minute) and c.open_at(t, started):
                venue = self.venues[c.venue_id]
                config = venue.config_id(c.seating_type)
                tpl = template_id(venue.key, t)
                found[c.venue_id].append(
                    Slot(c.venue_id, day, c.minute, c.seating_type, party_size, config, tpl)
                )
        return tuple(VenueAvailability(self.venues[v], tuple(s)) for v, s in found.items())


def _venue(seed: int, row: dict[str, Any], seatings: tuple[str, ...]) -> Venue:
    venue_id = int(row["venue_id"])
    key = stable_key("venue", seed, venue_id)
    return Venue(
        venue_id=venue_id,
        name=str(row.get("name") or f"Venue {venue_id}"),
        url_slug=str(row.get("url_slug") or venue_id),
        neighborhood=str(row.get("neighborhood") or ""),
        price_range_id=int(row.get("price_range") or 2),
        lat_frac=0.02 + 0.96 * (mix64(key ^ 3) / 2.0**64),
        lng_frac=0.02 + 0.96 * (mix64(key ^ 4) / 2.0**64),
        min_party_size=1,
        max_party_size=20,
        seating_types=seatings or ("Dining Room",),
        first_minute=FIRST_SLOT_MINUTE,
        key=key,
    )
