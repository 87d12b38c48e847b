"""Detection under a budget, in virtual time: the diff, the budget, three policies, the score.

The model (tools/simulator/dropworld.py) is a pure function of time, so a clock we advance
drives it and every policy polls the same world. `Emulation` mirrors the poller's WRITE_POLL
rules (docs/performance.md, Detection under a budget, lists which).
"""

from __future__ import annotations

import datetime as dt
import math
from bisect import bisect_right
from collections import Counter, defaultdict, deque
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import NamedTuple, Protocol

from services.poller import policy
from shared.shares import Share, bucket_share
from tools.simulator.dropworld import Drop, DropWorld

BASELINE_POLLS = 3  # services/poller/store/lease.py: a bucket's first 3 non-empty answers baseline
Key = tuple[int, int, str]  # (venue id, slot minute, seating): the slot id within one bucket
LIFETIMES = ("under 10 s", "10-60 s", "over 60 s")


def at(t: float) -> dt.datetime:
    return dt.datetime.fromtimestamp(t, dt.UTC)


@dataclass(frozen=True)
class Bucket:
    bucket_id: str
    day: dt.date
    anchor: str
    share: Share


def live_buckets(today: dt.date, days: int, anchors: Sequence[str], hours: int) -> list[Bucket]:
    times = [dt.time.fromisoformat(a) for a in anchors]
    window = dt.timedelta(hours=hours)
    return [
        Bucket(f"{day.isoformat()}_{a}", day, a, bucket_share(t, times, window))
        for day in (today + dt.timedelta(days=n) for n in range(days))
        for a, t in zip(anchors, times, strict=True)
    ]


def bucket_of(buckets: Iterable[Bucket], day: dt.date, minute: int) -> Bucket | None:
    """The one bucket whose share holds the slot (shared/shares.py), if any watches it."""
    found = [b for b in buckets if b.day == day and b.share.start <= minute < b.share.end]
    return found[0] if found else None


class Limiter:
    """The request budget as the provider counts it: at most `rate` requests in any 1 s
    window and `60 * rate` in any 60 s window. A poll's requests go out one after the other,
    `1 / rate` apart (as the poller's token bucket paces them); its answer is taken at the
    first (the model moves little in 0.2 s, and a replay of its time line costs much)."""

    def __init__(self, rate: float) -> None:
        self.gap = 1.0 / rate
        self.limits = ((1.0, math.floor(rate)), (60.0, math.floor(rate * 60)))
        self.times: deque[float] = deque(maxlen=self.limits[1][1])

    def earliest(self, t: float, cost: int) -> float:
        """Times are kept on a microsecond grid, so float sums cannot let one in early."""
        if self.times:
            t = max(t, round(self.times[-1] + self.gap, 6))
        for span, most in self.limits:
            for j in range(cost):  # the j-th request: at most `most - j - 1` others before it
                k = most - j
                if k <= 0:
                    return math.inf
                if len(self.times) >= k:
                    t = max(t, round(self.times[-k] + span - j * self.gap, 6))
        return t

    def take(self, t: float, cost: int) -> list[float]:
        stamps = [round(t + j * self.gap, 6) for j in range(cost)]
        self.times.extend(stamps)
        return stamps


def window_max(times: Sequence[float], span: float) -> int:
    """The most requests in any window (t - span, t] (two pointers over sorted times)."""
    best, lo = 0, 0
    for hi, t in enumerate(times):
        while times[lo] <= round(t - span, 6):
            lo += 1
        best = max(best, hi - lo + 1)
    return best


@dataclass
class _State:
    snapshot: set[Key] = field(default_factory=set)
    baseline: set[Key] = field(default_factory=set)
    drops: set[Key] = field(default_factory=set)  # open slots that came in by a NEW_DROP
    nonempty: int = 0  # non-empty answers so far


class NewDrop(NamedTuple):
    bucket_id: str
    key: Key
    t: float


class Emulation:
    """The poller's diff of healthy polls, per bucket (services/poller WRITE_POLL rules)."""

    def __init__(self, world: DropWorld, buckets: Sequence[Bucket], sizes: Sequence[int]) -> None:
        self.world, self.sizes = world, tuple(sizes)
        self.buckets = {b.bucket_id: b for b in buckets}
        self.state = {b.bucket_id: _State() for b in buckets}
        self.new_drops: list[NewDrop] = []
        self.changes: list[tuple[float, int]] = []  # (time, NEW_DROP + CLOSED) of each poll
        self.keys: dict[tuple[str, int], tuple[object, frozenset[Key]]] = {}

    def answer(self, b: Bucket, t: float) -> set[Key]:
        """The model's answers for the bucket's kinds at `t`, the bucket's share only (an
        answer the model did not change is the same tuple: its keys are kept)."""
        found: set[Key] = set()
        for size in self.sizes:
            got = self.world.search(b.day, size, b.anchor, at(t))
            kept = self.keys.get((b.bucket_id, size))
            if kept is None or kept[0] is not got:
                lo, hi = b.share.start, b.share.end
                keys = frozenset(
                    (s.venue_id, s.minute, s.seating_type) for s in got if lo <= s.minute < hi
                )
                kept = self.keys[(b.bucket_id, size)] = (got, keys)
            found |= kept[1]
        return found

    def poll(self, bucket_id: str, t: float) -> tuple[int, int]:
        """One healthy poll at `t`: (events written, open slots now)."""
        st, seen = self.state[bucket_id], self.answer(self.buckets[bucket_id], t)
        gone, new = st.snapshot - seen, seen - st.snapshot
        closed, drops = len(gone & st.drops), set[Key]()
        st.drops -= gone
        st.baseline -= gone  # a baseline slot leaves the baseline at its first closing
        if st.nonempty < BASELINE_POLLS:
            st.baseline |= new
        else:
            drops = new - st.baseline
            self.new_drops += [NewDrop(bucket_id, k, t) for k in sorted(drops)]
            st.drops |= drops
        st.nonempty += bool(seen)
        st.snapshot = seen
        if closed or drops:
            self.changes.append((t, closed + len(drops)))
        return closed + len(drops), len(seen)

    def fresh(self, bucket_id: str) -> bool:
        st = self.state[bucket_id]
        return st.nonempty < BASELINE_POLLS and bool(st.snapshot)


class Policy(Protocol):
    name: str

    def due(self, t: float) -> list[str]: ...
    def wake(self, t: float) -> float: ...
    def polled(self, bucket_id: str, t: float, events: int) -> None: ...


class Fixed:
    """Today's behaviour: every bucket `cooldown` seconds after its last poll."""

    def __init__(self, buckets: Sequence[Bucket], t0: float, cooldown: float) -> None:
        self.next = {b.bucket_id: t0 for b in buckets}
        self.cooldown, self.name = cooldown, f"fixed {cooldown:g} s round robin"

    def due(self, t: float) -> list[str]:
        return sorted((b for b, n in self.next.items() if n <= t), key=lambda b: (self.next[b], b))

    def wake(self, t: float) -> float:
        return min((n for n in self.next.values() if n > t), default=math.inf)

    def polled(self, bucket_id: str, t: float, events: int) -> None:
        self.next[bucket_id] = t + self.cooldown


class Adaptive:
    """services/poller/policy.py driven as the scheduler drives it: a plan each tick, polls at
    each bucket's next due time in between; its rates from the emulated diff's events."""

    name = "adaptive (services/poller/policy.py)"

    def __init__(
        self,
        buckets: Sequence[Bucket],
        emulation: Emulation,
        settings: policy.PolicySettings,
        cost: int,
        tick: float,
        profile: dict[int, float],
        windows: Sequence[policy.Window],
    ) -> None:
        self.buckets, self.emulation, self.settings = buckets, emulation, settings
        self.cost, self.tick, self.profile, self.windows = cost, tick, profile, windows
        self.last: dict[str, float] = {}  # and when each bucket was first polled:
        self.first: dict[str, float] = {}
        self.decayed: dict[str, tuple[float, float]] = {}  # (decayed events, as of when)
        self.next, self.interval, self.planned_at = dict[str, float](), dict[str, float](), -1.0
        self.classes: Counter[str] = Counter()  # polls by the class the plan gave the bucket

    def _plan(self, t: float) -> None:
        half = self.settings.half_life
        states = []
        for b in self.buckets:
            bid = b.bucket_id
            value, since = self.decayed.get(bid, (0.0, t))
            states.append(
                policy.BucketState(
                    bid,
                    b.day,
                    b.anchor,
                    self.cost,
                    at(self.last[bid]) if bid in self.last else None,
                    value * policy.decay_weight(t - since, half),
                    t - self.first.get(bid, t),
                    fresh=bid not in self.last or self.emulation.fresh(bid),
                )
            )
        p = policy.plan(states, at(t), self.settings, self.profile, self.windows)
        self.next = {b: n.timestamp() for b, n in p.next_due.items()}
        self.interval, self.planned_at = p.intervals, t
        self.current = p.classes

    def due(self, t: float) -> list[str]:
        if t >= self.planned_at + self.tick:
            self._plan(t)
        found = (b for b, n in self.next.items() if n <= t)
        tier = policy.CLASSES.index  # fresh, then release, then the rest, most overdue first
        return sorted(found, key=lambda b: (min(tier(self.current[b]), 2), self.next[b], b))

    def wake(self, t: float) -> float:
        upcoming = min((n for n in self.next.values() if n > t), default=math.inf)
        return min(upcoming, self.planned_at + self.tick)

    def polled(self, bucket_id: str, t: float, events: int) -> None:
        self.classes[self.current[bucket_id]] += 1
        value, since = self.decayed.get(bucket_id, (0.0, t))
        value *= policy.decay_weight(t - since, self.settings.half_life)
        self.decayed[bucket_id] = (value + events, t)
        self.first.setdefault(bucket_id, t)
        self.last[bucket_id] = t
        self.next[bucket_id] = t + self.interval[bucket_id]


class Oracle:
    """The physical limit at the same budget: it knows when every drop starts. Each bucket's
    baseline first, then, greedy in start order, one poll of a drop's bucket at the earliest
    moment the budget allows while the drop is still open (unless a poll already saw it)."""

    name = "oracle (knows every drop's start)"

    def __init__(
        self,
        buckets: Sequence[Bucket],
        t0: float,
        truth: Sequence[Scored],
        rate: float,
        cost: int,
        earlier: Sequence[Scored] = (),
    ) -> None:
        limiter, last = Limiter(rate), dict.fromkeys((b.bucket_id for b in buckets), -math.inf)
        plan: list[tuple[float, str]] = []
        for bid in [b.bucket_id for _ in range(BASELINE_POLLS) for b in buckets]:
            plan.append((limiter.earliest(plan[-1][0] if plan else t0, cost), bid))
            last[bid] = limiter.take(plan[-1][0], cost)[0]
        # each slot's previous true drop (`earlier`: those that started before t0)
        seen: dict[tuple[str, Key], Drop] = {(d.bucket_id, d.key): d.drop for d in earlier}
        for d in truth:
            before, seen[(d.bucket_id, d.key)] = seen.get((d.bucket_id, d.key)), d.drop
            bid = d.bucket_id
            if before is not None and before.start <= last[bid] < before.end:
                gap = limiter.earliest(max(before.end, plan[-1][0]), cost)  # see it closed
                if gap < d.drop.start:
                    plan.append((gap, bid))
                    last[bid] = limiter.take(gap, cost)[0]
            if d.drop.start <= last[bid] < d.drop.end:
                continue  # seen by a poll already planned
            when = limiter.earliest(max(d.drop.start, plan[-1][0]), cost)
            if when < d.drop.end:
                plan.append((when, bid))
                last[bid] = limiter.take(when, cost)[0]
        self.plan, self.done = plan, 0  # in time order: every poll is at or after the last

    def due(self, t: float) -> list[str]:
        end = bisect_right(self.plan, (t, "~"), lo=self.done)
        found, self.done = [bid for _, bid in self.plan[self.done : end]], end
        return found

    def wake(self, t: float) -> float:
        return self.plan[self.done][0] if self.done < len(self.plan) else math.inf

    def polled(self, bucket_id: str, t: float, events: int) -> None:
        return None


class Scored(NamedTuple):
    bucket_id: str
    key: Key
    drop: Drop


def ground_truth(drops: Iterable[Drop], buckets: Sequence[Bucket]) -> list[Scored]:
    """The true drops a bucket watches (by its share), sorted by start."""
    found = []
    for d in drops:
        b = bucket_of(buckets, d.day, d.minute)
        if b is not None:
            found.append(Scored(b.bucket_id, (d.venue_id, d.minute, d.seating_type), d))
    return sorted(found, key=lambda s: s.drop.start)


@dataclass
class Run:
    name: str
    requests: list[float]
    new_drops: list[NewDrop]
    polls: int
    seconds: float  # virtual time covered
    wall: float = 0.0
    changes: list[tuple[float, int]] = field(default_factory=list)
    classes: Counter[str] = field(default_factory=Counter)  # the adaptive policy's polls


def drive(pol: Policy, emulation: Emulation, t0: float, t1: float, rate: float, cost: int) -> Run:
    """The virtual clock: poll what the policy says is due, as the budget allows, then jump
    to the next moment something becomes due (or the budget frees)."""
    limiter, requests, polls, t = Limiter(rate), [], 0, t0
    while t < t1:
        blocked = math.inf
        for bid in pol.due(t):
            if (free := limiter.earliest(t, cost)) > t:
                blocked = free
                break
            requests += limiter.take(t, cost)
            polls += 1
            pol.polled(bid, t, emulation.poll(bid, t)[0])
        t = max(min(pol.wake(t), blocked), t + 0.001)
    return Run(pol.name, requests, emulation.new_drops, polls, t1 - t0)


@dataclass
class Score:
    """One policy's figures on the ground truth: recall, delays, budget, false drops."""

    run: Run
    found: dict[int, float]  # scored truth index -> first detection time
    false: int  # NEW_DROPs matching no true open interval, or a second one for the same drop
    by_class: dict[str, list[int]]  # "under 10 s", ..., "churning", "release" -> truth indexes
    budget: float
    unmatched: list[NewDrop] = field(default_factory=list)  # the false drops

    def recall(self, what: str = "all") -> tuple[int, int]:
        members = self.by_class[what]
        return sum(1 for i in members if i in self.found), len(members)

    def delays(self, truth: Sequence[Scored], what: str = "all") -> list[float]:
        return sorted(
            self.found[i] - truth[i].drop.start for i in self.by_class[what] if i in self.found
        )

    @property
    def max_1s(self) -> int:
        return window_max(sorted(self.run.requests), 1.0)

    @property
    def max_60s(self) -> int:
        return window_max(sorted(self.run.requests), 60.0)


def score(
    run: Run, truth: Sequence[Scored], classes: dict[str, list[int]], rate: float, lag: float = 0
) -> Score:
    """Match each NEW_DROP to a true drop of the same slot open at its detection time (or
    `lag` seconds before it: a real poll stamps its events after the whole fetch)."""
    index: dict[tuple[str, Key], list[int]] = defaultdict(list)
    for i, s in enumerate(truth):
        index[(s.bucket_id, s.key)].append(i)
    scored, found, matched, false = set(classes["all"]), {}, set(), []
    for new in run.new_drops:
        hit = [
            i
            for i in index.get((new.bucket_id, new.key), ())
            if truth[i].drop.start <= new.t <= truth[i].drop.end + lag
        ]
        if not hit or hit[0] in matched:
            false.append(new)  # no true drop open then, or a second NEW_DROP for one true drop
            continue
        matched.add(hit[0])
        if hit[0] in scored:
            found[hit[0]] = new.t
    return Score(run, found, len(false), classes, rate, false)
