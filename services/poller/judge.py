"""Is each request kind's answer plausible enough to change state?

Every request and page having succeeded is necessary but not enough: Resy sometimes answers a
blocked client with a 200 and an empty (or much smaller) result, and it may do so for one party
size while the others answer normally. So health is judged per request kind (a party size, with
all its pages), against what that kind reported before (its count in the open snapshot):

- empty after non-empty is a *block*: held, whatever happens next, until a sell-out is
  confirmed (see `_sellout_confirmed`), so repeated empties close nothing;
- a sharp shrink (by `shrink_ratio` or more after at least `min_previous` slots) is *suspect*:
  held once, applied when the next answer of that kind shrinks again;
- anything else is healthy.

A held kind changes nothing it reported: its slots and party sizes stay as they were, while the
healthy kinds' changes apply. The holds live in the bucket's `held` column, so failed polls in
between neither reset nor advance them. See docs/architecture.md, The poller.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

HEALTHY = "healthy"
SUSPECT = "suspect_soft_block"
BLOCKED = "blocked"
PARTIAL = "partial_block"
CONFIRMED = "confirmed_shrink"
SOLD_OUT = "confirmed_sellout"
IDLE = "idle"  # empty now and before: says nothing either way
_HELD = (BLOCKED, SUSPECT)

EMPTY = "empty"
SHRUNK = "shrunk"


@dataclass(frozen=True)
class Thresholds:
    min_previous: int
    shrink_ratio: float
    sellout_confirm_seconds: float
    sellout_confirm_polls: int


@dataclass(frozen=True)
class Judgement:
    """What a fetch may change: `held` kinds keep their snapshot; `confirmed` kinds apply,
    and what they lose was first seen gone at their `since`."""

    outcome: str
    kinds: dict[int, str]
    held: dict[str, dict[str, Any]] = field(default_factory=dict)
    confirmed: dict[int, dt.datetime] = field(default_factory=dict)

    @property
    def apply(self) -> bool:
        """False when every kind is held or idle with at least one held: a whole-bucket
        block is not applied as a (no-op) healthy write."""
        verdicts = set(self.kinds.values())
        return not (verdicts & set(_HELD)) or bool(verdicts - {*_HELD, IDLE})

    def answered(self, counts: Mapping[int, int]) -> list[int]:
        """Kinds whose non-empty answer is applied: they count towards their own baseline."""
        return sorted(k for k, v in self.kinds.items() if v in (HEALTHY, CONFIRMED) and counts[k])

    @property
    def held_sizes(self) -> list[int]:
        return sorted(int(k) for k in self.held)

    @property
    def suspect_polls(self) -> int:
        return suspect_polls(self.held)


def suspect_polls(held: Mapping[str, Mapping[str, Any]]) -> int:
    """The bucket's `suspect_polls`: the longest-running hold's poll count."""
    return max((int(h["polls"]) for h in held.values()), default=0)


def _since(hold: Mapping[str, Any] | None, now: dt.datetime) -> dt.datetime:
    return dt.datetime.fromisoformat(hold["since"]) if hold else now


def _sellout_confirmed(
    since: dt.datetime,
    polls: int,
    now: dt.datetime,
    evidence_at: dt.datetime | None,
    t: Thresholds,
) -> bool:
    """A lasting empty answer is a sell-out only when it has been seen at least
    `sellout_confirm_polls` times over at least `sellout_confirm_seconds`, and another bucket
    of the market answered healthy and non-empty after it began (the client was not blocked)."""
    return (
        polls >= t.sellout_confirm_polls
        and (now - since).total_seconds() >= t.sellout_confirm_seconds
        and evidence_at is not None
        and evidence_at > since
    )


def judge(
    counts: Mapping[int, int],
    previous: Mapping[int, int],
    held: Mapping[str, Mapping[str, Any]],
    *,
    now: dt.datetime,
    evidence_at: dt.datetime | None,
    thresholds: Thresholds,
) -> Judgement:
    """Judge every requested kind from its new slot count, its count in the snapshot and
    its hold, if any."""
    kinds: dict[int, str] = {}
    new_held: dict[str, dict[str, Any]] = {}
    confirmed: dict[int, dt.datetime] = {}
    for size, count in sorted(counts.items()):
        before = previous.get(size, 0)
        hold = held.get(str(size))
        since = _since(hold, now)
        polls = (int(hold["polls"]) if hold else 0) + 1
        if count == 0 and before > 0:
            if _sellout_confirmed(since, polls, now, evidence_at, thresholds):
                kinds[size], confirmed[size] = SOLD_OUT, since
            else:
                kinds[size] = BLOCKED
                new_held[str(size)] = {"since": since.isoformat(), "polls": polls, "why": EMPTY}
        elif before >= thresholds.min_previous and count <= before * (1 - thresholds.shrink_ratio):
            if hold is not None and hold["why"] == SHRUNK:
                kinds[size], confirmed[size] = CONFIRMED, since
            else:
                kinds[size] = SUSPECT
                new_held[str(size)] = {"since": since.isoformat(), "polls": polls, "why": SHRUNK}
        else:
            kinds[size] = IDLE if count == 0 and before == 0 else HEALTHY
    return Judgement(_outcome(kinds), kinds, new_held, confirmed)


def _outcome(kinds: Mapping[int, str]) -> str:
    verdicts = set(kinds.values())
    held = verdicts & set(_HELD)
    if held and held == verdicts - {IDLE}:
        return BLOCKED if BLOCKED in held else SUSPECT
    if held:
        return PARTIAL
    for verdict in (SOLD_OUT, CONFIRMED):
        if verdict in verdicts:
            return verdict
    return HEALTHY
