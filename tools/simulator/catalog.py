"""The simulated market's venues: generated from a seed, or scripted by a test.

Also the hashing every part of the simulator derives its stable "random" values from: a
venue's key, its table configurations, the slots' keys.
"""

from __future__ import annotations

import functools
import hashlib
import random
import re
from dataclasses import dataclass, field

# The market's default search box (south, west, north, east): lower Manhattan to Harlem.
DEFAULT_BBOX_TUPLE = (40.691, -74.030, 40.882, -73.910)

FIRST_SLOT_MINUTE = 11 * 60 + 30
DINNER_FIRST_MINUTE = 17 * 60

MASK64 = (1 << 64) - 1
_HHMM = re.compile(r"^([01]\d|2[0-3]):([0-5]\d)$")

_NAME_FIRST = (
    "Golden", "Little", "Blue", "Silver", "Old", "Red", "Wild", "Quiet", "Salt", "Copper",
    "Olive", "Iron", "Velvet", "Saffron", "Juniper", "Maple", "Harbor", "Lantern", "Paper",
    "Stone", "Cedar", "Smoke", "Fig", "Honey", "Amber", "Tidal", "North", "Crooked", "Bright",
    "Hidden",
)  # fmt: skip
_NAME_SECOND = (
    "Table", "Kitchen", "Tavern", "Oyster Bar", "Trattoria", "Bistro", "Cantina", "Brasserie",
    "Izakaya", "Osteria", "Grill", "Room", "House", "Counter", "Canteen", "Supper Club",
    "Noodle Bar", "Taqueria", "Wine Bar", "Diner", "Garden", "Social", "Hall", "Parlor",
    "Cellar", "Mill", "Pier", "Commons", "Larder", "Market",
)  # fmt: skip
_NEIGHBORHOODS = (
    "West Village", "East Village", "SoHo", "Tribeca", "Lower East Side", "Chelsea",
    "Flatiron", "NoMad", "Midtown", "Upper West Side", "Upper East Side", "Harlem", "Nolita",
    "Chinatown", "Gramercy", "Hell's Kitchen", "Murray Hill", "Financial District",
    "Greenwich Village", "Kips Bay",
)  # fmt: skip
_EXTRA_SEATINGS = ("Bar", "Patio", "Counter", "Outdoor", "Lounge")


def mix64(x: int) -> int:
    """A fast, well-spread 64-bit integer hash (splitmix64 finaliser) for per-request work."""
    x = (x + 0x9E3779B97F4A7C15) & MASK64
    x = ((x ^ (x >> 30)) * 0xBF58476D1CE4E5B9) & MASK64
    x = ((x ^ (x >> 27)) * 0x94D049BB133111EB) & MASK64
    return x ^ (x >> 31)


def _unit(x: int) -> float:
    """Map a hash input to a uniform float in [0, 1)."""
    return mix64(x) / 2.0**64


def stable_key(*parts: object) -> int:
    """A 64-bit key from arbitrary parts, stable across processes (unlike hash())."""
    text = "\x1f".join(str(p) for p in parts).encode()
    return int.from_bytes(hashlib.blake2b(text, digest_size=8).digest(), "big")


def parse_hhmm(text: str) -> int:
    """'HH:MM' -> minutes since midnight; ValueError for anything else."""
    m = _HHMM.match(text)
    if m is None:
        raise ValueError(f"expected HH:MM, got {text!r}")
    return int(m.group(1)) * 60 + int(m.group(2))


@dataclass(frozen=True)
class BoundingBox:
    south: float
    west: float
    north: float
    east: float

    def point(self, lat_frac: float, lng_frac: float) -> tuple[float, float]:
        """A venue's position, kept as fractions of the box, placed into this box."""
        lat = self.south + lat_frac * (self.north - self.south)
        lng = self.west + lng_frac * (self.east - self.west)
        return round(lat, 6), round(lng, 6)


DEFAULT_BBOX = BoundingBox(*DEFAULT_BBOX_TUPLE)


@dataclass(frozen=True)
class Venue:
    venue_id: int
    name: str
    url_slug: str
    neighborhood: str
    price_range_id: int
    lat_frac: float
    lng_frac: float
    min_party_size: int
    max_party_size: int
    seating_types: tuple[str, ...]
    first_minute: int
    key: int

    def seats(self, party_size: int) -> bool:
        return self.min_party_size <= party_size <= self.max_party_size

    def config_id(self, seating_type: str) -> int:
        return config_id(self.key, seating_type)


@dataclass(frozen=True)
class ScriptedSlot:
    """One scripted table. `open_during`: the [start, end) intervals (POSIX seconds of the
    simulator's clock) it is open in, so a test can script short-lived drops and knows their
    exact ground truth; empty (the default) = always open."""

    time: str
    seating_type: str = "Dining Room"
    party_sizes: tuple[int, ...] = (2, 4)
    open_during: tuple[tuple[float, float], ...] = ()

    def __post_init__(self) -> None:
        parse_hhmm(self.time)
        if not self.party_sizes or any(p < 1 for p in self.party_sizes):
            raise ValueError(f"party_sizes must be positive, got {self.party_sizes!r}")
        if any(not start < end for start, end in self.open_during):
            raise ValueError(f"open_during needs start < end, got {self.open_during!r}")

    def is_open_at(self, t: float) -> bool:
        """Open at POSIX second `t` (always, without `open_during`)."""
        return not self.open_during or any(s <= t < e for s, e in self.open_during)

    @property
    def minute(self) -> int:
        return parse_hhmm(self.time)


@dataclass(frozen=True)
class ScriptedVenue:
    venue_id: int
    name: str
    slots: list[ScriptedSlot] = field(default_factory=list)


def _slugify(name: str) -> str:
    return re.sub(r"[^a-z0-9]+", "-", name.lower()).strip("-")


@functools.lru_cache(maxsize=65_536)
def config_id(venue_key: int, seating_type: str) -> int:
    """Stable per venue and seating type, like a real table configuration (cached: hot path)."""
    return 100_000 + mix64(venue_key ^ stable_key("config", seating_type)) % 900_000


def generate_venues(count: int, seed: int) -> tuple[Venue, ...]:
    rng = random.Random(seed)
    ids = sorted(rng.sample(range(1_000, 1_000 + max(100_000, count * 10)), count))
    combos = [f"{a} {b}" for a in _NAME_FIRST for b in _NAME_SECOND]
    rng.shuffle(combos)
    return tuple(_random_venue(rng, seed, vid, combos, i) for i, vid in enumerate(ids))


def _random_venue(rng: random.Random, seed: int, venue_id: int, combos: list[str], i: int) -> Venue:
    name = combos[i % len(combos)]
    if i >= len(combos):
        name = f"{name} No. {i // len(combos) + 1}"
    first = "Dining Room" if rng.random() < 0.85 else "Bar"
    seatings: tuple[str, ...] = (first,)
    if rng.random() < 0.4:
        seatings += (rng.choice([s for s in _EXTRA_SEATINGS if s != first]),)
    return Venue(
        venue_id=venue_id,
        name=name,
        url_slug=f"{_slugify(name)}-{venue_id}" if i >= len(combos) else _slugify(name),
        neighborhood=rng.choice(_NEIGHBORHOODS),
        price_range_id=rng.choices((1, 2, 3, 4), weights=(1, 4, 4, 2))[0],
        lat_frac=rng.uniform(0.02, 0.98),
        lng_frac=rng.uniform(0.02, 0.98),
        min_party_size=1 if rng.random() < 0.7 else 2,
        max_party_size=rng.choices((2, 4, 6, 8), weights=(1, 3, 4, 2))[0],
        seating_types=seatings,
        first_minute=FIRST_SLOT_MINUTE if rng.random() < 0.6 else DINNER_FIRST_MINUTE,
        key=stable_key("venue", seed, venue_id),
    )


def scripted_venue_info(seed: int, scripted: ScriptedVenue) -> Venue:
    """Plausible metadata for a scripted venue, derived from its id so it is stable."""
    key = stable_key("venue", seed, scripted.venue_id)
    sizes = [p for s in scripted.slots for p in s.party_sizes] or [2]
    seatings = tuple(dict.fromkeys(s.seating_type for s in scripted.slots)) or ("Dining Room",)
    return Venue(
        venue_id=scripted.venue_id,
        name=scripted.name,
        url_slug=_slugify(scripted.name) or str(scripted.venue_id),
        neighborhood=_NEIGHBORHOODS[mix64(key ^ 1) % len(_NEIGHBORHOODS)],
        price_range_id=1 + mix64(key ^ 2) % 4,
        lat_frac=0.02 + 0.96 * _unit(key ^ 3),
        lng_frac=0.02 + 0.96 * _unit(key ^ 4),
        min_party_size=min(sizes),
        max_party_size=max(sizes),
        seating_types=seatings,
        first_minute=min((s.minute for s in scripted.slots), default=FIRST_SLOT_MINUTE),
        key=key,
    )
