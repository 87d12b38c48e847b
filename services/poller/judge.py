"""Is a completed fetch plausible enough to change state?

Every request and page having succeeded is necessary but not enough: Resy sometimes answers a
blocked client with a 200 and an empty (or much smaller) result. Taken as truth, that "closes"
every open slot and then "reopens" them as false drops on the next poll. So a sharply shrunken
result right after a large one is held as a suspected soft block, changes nothing, and is
accepted only when the next poll confirms it (shrunken again).
"""

from __future__ import annotations

from dataclasses import dataclass

HEALTHY = "healthy"
SUSPECT = "suspect_soft_block"
CONFIRMED = "confirmed_shrink"


@dataclass(frozen=True)
class Verdict:
    apply: bool
    outcome: str


def judge(
    slot_count: int,
    previous_count: int | None,
    suspect_polls: int,
    *,
    min_previous: int,
    shrink_ratio: float,
) -> Verdict:
    """Decide from the new slot count, the last healthy count and earlier suspect polls."""
    if previous_count is None or previous_count < min_previous:
        return Verdict(True, HEALTHY)
    shrunken = slot_count <= previous_count * (1 - shrink_ratio)
    if not shrunken:
        return Verdict(True, HEALTHY)
    if suspect_polls >= 1:
        return Verdict(True, CONFIRMED)
    return Verdict(False, SUSPECT)
