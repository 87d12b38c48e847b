"""The scheduling policy on a fake clock (services/poller/policy.py): pure, no database."""

from __future__ import annotations

import datetime as dt
from dataclasses import replace
from typing import Any
from zoneinfo import ZoneInfo

import pytest

from services.poller import policy
from services.poller.judge import Thresholds, judge
from services.poller.policy import BucketState, PolicySettings, Window
from services.poller.settings import PollerSettings
from shared.errors import ConfigError
from shared.settings import load_settings

NY = ZoneInfo("America/New_York")
NOW = dt.datetime(2026, 12, 1, 17, 0, tzinfo=dt.UTC)  # 12:00 in New York
DAY = dt.date(2026, 12, 1)
S = PolicySettings(budget=5.0, zone=NY)


def bucket(
    n: int,
    *,
    events: float = 0.0,
    ago: float = 10.0,
    cost: int = 2,
    day: dt.date = DAY,
    anchor: str = "19:00",
    **extra: object,
) -> BucketState:
    values: dict[str, object] = {
        "bucket_id": f"b{n:03d}",
        "bucket_date": day,
        "anchor": anchor,
        "cost": cost,
        "last_poll": NOW - dt.timedelta(seconds=ago),
        "decayed_events": events,
        "observed_seconds": 3600.0,
    }
    values.update(extra)
    return BucketState(**values)  # type: ignore[arg-type]


def market(n: int = 28, churning: int = 1, events: float = 40.0) -> list[BucketState]:
    return [bucket(i, events=events if i < churning else 0.0) for i in range(n)]


def spent(p: policy.Plan) -> float:
    return sum(p.costs[b] / p.intervals[b] for b in p.intervals)


def test_a_churning_buckets_interval_shrinks_below_the_quiet_ones() -> None:
    p = policy.plan(market(events=4.0), NOW, S, profile={})
    churn, quiet = p.intervals["b000"], p.intervals["b001"]
    assert churn < quiet / 3
    assert p.classes["b000"] == policy.CHURNING and p.classes["b001"] == policy.QUIET
    # More events: shorter still (monotone in the rate).
    hotter = policy.plan(market(events=40.0), NOW, S, profile={})
    assert hotter.intervals["b000"] < churn


def test_four_times_the_change_rate_buys_more_than_twice_the_frequency() -> None:
    """The rule is `f ~ (lambda / c) ** ALPHA` with ALPHA above the square root's 0.5: the
    busiest buckets get more than the mean-delay optimum would give them, within the floor
    and the budget."""
    assert 0.5 < policy.ALPHA <= 1.0
    buckets = [bucket(0, events=40.0)] + [bucket(i, events=10.0) for i in range(1, 28)]
    p = policy.plan(buckets, NOW, S, profile={})
    ratio = p.rates["b000"] / p.rates["b001"]
    assert ratio == pytest.approx(4.0, rel=0.1)
    speedup = p.intervals["b001"] / p.intervals["b000"]
    assert speedup > 2.0
    assert speedup == pytest.approx(ratio**policy.ALPHA)
    assert S.min_interval < p.intervals["b000"]  # not clamped: the rule itself decided
    assert max(p.intervals.values()) <= S.max_interval + 1e-9  # the floor holds
    assert spent(p) == pytest.approx(S.budget)  # the budget caps, and is spent
    # A request costs the same wherever it goes: twice the cost, (1/2) ** ALPHA the frequency.
    dear = policy.plan([replace(buckets[0], cost=4), *buckets[1:]], NOW, S, profile={})
    assert dear.intervals["b000"] / dear.intervals["b001"] == pytest.approx(
        (2.0 / ratio) ** policy.ALPHA
    )


def test_a_quiet_bucket_grows_to_the_max_interval_and_no_further() -> None:
    hot = [bucket(i, events=500.0) for i in range(5)]
    quiet = [bucket(100 + i) for i in range(23)]
    p = policy.plan(hot + quiet, NOW, S, profile={h: 0.0 for h in range(24)})
    for b in quiet:
        assert p.intervals[b.bucket_id] == pytest.approx(S.max_interval)
    # A quiet bucket last polled 59 s ago is not due; at 60 s it is.
    late = replace(quiet[0], last_poll=NOW - dt.timedelta(seconds=59))
    assert late.bucket_id not in policy.plan([*hot, late], NOW, S, profile={}).due
    overdue = replace(quiet[0], last_poll=NOW - dt.timedelta(seconds=60))
    assert overdue.bucket_id in policy.plan([*hot, overdue], NOW, S, profile={}).due


def test_intervals_stay_within_min_and_max() -> None:
    buckets = [bucket(i, events=10.0**i) for i in range(8)]
    p = policy.plan(buckets, NOW, replace(S, budget=1000.0), profile={})
    assert all(S.min_interval - 1e-9 <= i <= S.max_interval + 1e-9 for i in p.intervals.values())
    assert p.intervals["b007"] == pytest.approx(S.min_interval)


@pytest.mark.parametrize(("n", "budget"), [(28, 5.0), (28, 1.0), (500, 20.0), (3, 0.5)])
def test_the_budget_caps_every_plan(n: int, budget: float) -> None:
    buckets = [bucket(i, events=float(i % 7) ** 3, cost=1 + i % 4) for i in range(n)]
    fresh = [replace(b, fresh=True) for b in buckets[: n // 3]]
    settings = replace(S, budget=budget)
    windows = [Window(lead_days=0, release_minute=12 * 60, time_slots=())]
    p = policy.plan(fresh + buckets[n // 3 :], NOW, settings, profile={}, windows=windows)
    assert spent(p) <= budget * (1 + 1e-9)
    assert p.planned_rate == pytest.approx(spent(p))


def test_a_budget_below_the_floor_stretches_every_interval_alike_and_says_so() -> None:
    buckets = [bucket(i, events=float(i)) for i in range(100)]  # floor: 200 / 60 = 3.3 req/s
    p = policy.plan(buckets, NOW, replace(S, budget=2.0), profile={})
    assert not p.floor_kept
    assert list(p.intervals.values()) == pytest.approx([200 / 2.0] * 100)
    assert spent(p) == pytest.approx(2.0)
    assert policy.plan(buckets, NOW, replace(S, budget=4.0), profile={}).floor_kept


def test_a_fresh_bucket_baselines_quickly_and_comes_first() -> None:
    buckets = market()
    never = replace(bucket(50), last_poll=None, fresh=True)
    baselining = replace(bucket(60, ago=1.5), fresh=True)
    p = policy.plan([*buckets, never, baselining], NOW, S, profile={})
    assert p.due[0] == never.bucket_id
    assert p.intervals[baselining.bucket_id] == pytest.approx(S.min_interval)
    assert p.due[1] == baselining.bucket_id  # due again after min_interval, ahead of the rest
    assert p.classes[never.bucket_id] == policy.FRESH


def test_fresh_buckets_share_what_is_left_when_they_cannot_all_have_the_min() -> None:
    buckets = [replace(bucket(i), fresh=True) for i in range(28)]  # all fresh at start
    p = policy.plan(buckets, NOW, S, profile={})
    assert spent(p) == pytest.approx(S.budget)
    assert len(set(p.intervals.values())) == 1
    assert p.intervals["b000"] < 15  # three baseline polls within ~35 s


def test_a_learned_release_window_polls_densely_around_the_moment_only() -> None:
    # Released 7 days ahead at 09:15 New York time into the 19:00 buckets.
    windows = [Window(lead_days=7, release_minute=9 * 60 + 15, time_slots=("19:00",))]
    target = dt.date(2026, 12, 8)
    moment = dt.datetime(2026, 12, 1, 9, 15, tzinfo=NY)
    hot = bucket(1, day=target)
    other_anchor = bucket(2, day=target, anchor="15:00")
    other_day = bucket(3, day=target + dt.timedelta(days=1))
    quiet = [bucket(10 + i) for i in range(25)]

    def polled(now: dt.datetime, ago: float) -> list[BucketState]:
        last = now - dt.timedelta(seconds=ago)
        return [replace(b, last_poll=last) for b in (hot, other_anchor, other_day, *quiet)]

    def at(seconds: float, settings: PolicySettings = S) -> policy.Plan:
        now = moment + dt.timedelta(seconds=seconds)
        return policy.plan(polled(now, 5.0), now, settings, {}, windows)

    for offset in (-S.window_before, -5, 0, 30, S.window_after):
        p = at(offset)
        assert p.classes[hot.bucket_id] == policy.RELEASE, offset
        assert p.intervals[hot.bucket_id] == pytest.approx(S.min_interval)
        assert p.due[0] == hot.bucket_id  # 5 s since its last poll: due, first
        assert p.classes[other_anchor.bucket_id] != policy.RELEASE
        assert p.classes[other_day.bucket_id] != policy.RELEASE
    for offset in (-S.window_before - 1, S.window_after + 1, -3600, 86400):
        p = at(offset)
        assert p.classes[hot.bucket_id] != policy.RELEASE, offset
        assert p.intervals[hot.bucket_id] > 5 * S.min_interval
    # Before the window, the next poll is pulled forward to the window's start (a small
    # budget: every interval near the max).
    start = moment - dt.timedelta(seconds=S.window_before)
    p = at(-S.window_before - 10, replace(S, budget=1.0))
    assert p.intervals[hot.bucket_id] > 30
    assert p.next_due[hot.bucket_id] == start
    assert p.wake_at is not None and p.wake_at <= p.next_due[hot.bucket_id]
    # The moments are cached per bucket and windows: a window moved or gone is seen at once.
    now = moment
    moved = [replace(windows[0], release_minute=10 * 60)]
    assert policy.plan(polled(now, 5.0), now, S, {}, moved).classes[hot.bucket_id] != policy.RELEASE
    assert policy.plan(polled(now, 5.0), now, S, {}, []).classes[hot.bucket_id] != policy.RELEASE
    assert (
        policy.plan(polled(now, 5.0), now, S, {}, windows).classes[hot.bucket_id] == policy.RELEASE
    )
    assert policy.release_moments(hot, windows, NY) == [moment]


def test_a_release_window_is_paid_from_the_budget() -> None:
    windows = [Window(lead_days=0, release_minute=12 * 60)]  # every bucket of today, now
    buckets = [bucket(i, events=5.0) for i in range(28)]
    p = policy.plan(buckets, NOW, S, profile={}, windows=windows)
    assert spent(p) <= S.budget * (1 + 1e-9)
    assert all(c == policy.RELEASE for c in p.classes.values())
    assert max(p.intervals.values()) <= S.max_interval


def test_the_hour_profile_is_the_prior_of_a_bucket_with_little_history() -> None:
    profile = {h: 0.0 for h in range(24)} | {12: 1 / 60}  # noon NY: one change a minute
    fresh = bucket(0, observed_seconds=0.0)
    assert policy.estimate_rate(0.0, 0.0, policy.hour_prior(profile, NOW, NY), S) == (
        pytest.approx(1 / 60)
    )
    p_noon = policy.plan([fresh, bucket(1)], NOW, S, profile)
    p_night = policy.plan([fresh, bucket(1)], NOW + dt.timedelta(hours=10), S, profile)
    assert p_noon.rates["b000"] > p_night.rates["b000"]
    # Long watched and quiet: its own evidence outweighs the prior.
    assert p_noon.rates["b001"] < p_noon.rates["b000"] / 4


def test_the_decayed_count_halves_each_half_life() -> None:
    assert policy.decay_weight(0, 600) == 1.0
    assert policy.decay_weight(600, 600) == pytest.approx(0.5)
    assert policy.decay_weight(-5, 600) == 1.0  # a clock behind the events: no weight above 1
    steady = sum(policy.decay_weight(60 * k, 600) for k in range(1000))  # one event a minute
    assert policy.estimate_rate(steady, 1e9, 1 / 60, S) == pytest.approx(1 / 60, rel=0.05)
    # With a prior of zero the estimate is biased low by the prior's weight, not more.
    assert policy.estimate_rate(steady, 1e9, 0.0, S) > (1 / 60) * 0.75


def test_the_plan_is_deterministic_and_ties_break_by_bucket_id() -> None:
    buckets = [bucket(i, ago=120.0) for i in range(10)]
    first = policy.plan(buckets, NOW, S, profile={})
    again = policy.plan(list(reversed(buckets)), NOW, S, profile={})
    assert first.due == again.due == sorted(b.bucket_id for b in buckets)
    assert first.intervals == again.intervals


def test_leased_buckets_are_never_due_but_count_in_the_budget() -> None:
    buckets = [bucket(i, ago=120.0, leased=i < 5) for i in range(10)]
    p = policy.plan(buckets, NOW, S, profile={})
    assert not {f"b{i:03d}" for i in range(5)} & set(p.due)
    assert len(p.intervals) == 10


def test_the_expected_delay_follows_the_rates() -> None:
    p = policy.plan(market(), NOW, S, profile={})
    weighted = sum(p.rates[b] * p.intervals[b] / 2 for b in p.rates) / sum(p.rates.values())
    assert p.expected_delay == pytest.approx(weighted)
    # The rule beats spending the same budget evenly.
    even = sum(p.costs.values()) / S.budget
    assert p.expected_delay < even / 2


def test_hostile_inputs_do_not_break_the_plan() -> None:
    odd = [
        bucket(0, events=-3.0, cost=0),  # negative decayed sum, zero cost: treated as 0 and 1
        bucket(1, ago=-30.0),  # polled "in the future" (clock skew): not due, still planned
        bucket(2, events=1e12),  # an absurd burst
    ]
    p = policy.plan(odd, NOW, S, profile={3: -1.0})
    assert p.costs["b000"] == 1 and p.rates["b000"] >= 0
    assert "b001" not in p.due
    assert spent(p) <= S.budget * (1 + 1e-9)
    assert policy.plan([], NOW, S).due == []
    nonsense = [
        Window(lead_days=0, release_minute=24 * 60),
        Window(lead_days=-3, release_minute=-1),
    ]
    assert all(c != policy.RELEASE for c in policy.plan(odd, NOW, S, {}, nonsense).classes.values())
    with pytest.raises(ValueError):
        PolicySettings(min_interval=10, max_interval=5)


def test_polling_faster_cannot_confirm_a_sellout_sooner() -> None:
    """A kind that went empty is held until empty for `sellout_confirm_seconds` as well as
    `sellout_confirm_polls` polls: at one poll a second, 100 empty polls in 100 s still hold."""
    limits = Thresholds(
        min_previous=10, shrink_ratio=0.5, sellout_confirm_seconds=1800, sellout_confirm_polls=3
    )
    held: dict[str, dict[str, Any]] = {}
    start = NOW
    for second in range(100):
        now = start + dt.timedelta(seconds=second)
        verdict = judge({2: 0}, {2: 40}, held, now=now, evidence_at=now, thresholds=limits)
        assert verdict.kinds[2] == "blocked", second
        held = verdict.held
    assert held["2"]["polls"] == 100
    later = start + dt.timedelta(seconds=1800)
    verdict = judge({2: 0}, {2: 40}, held, now=later, evidence_at=later, thresholds=limits)
    assert verdict.kinds[2] == "confirmed_sellout"


def test_the_schedule_settings_default_to_adaptive_and_are_bounded(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    for name in ("SCHEDULE", "MIN_INTERVAL_SECONDS", "MAX_INTERVAL_SECONDS"):
        monkeypatch.delenv(f"DROPWATCH_{name}", raising=False)
    settings = load_settings(PollerSettings)
    assert settings.schedule == "adaptive"
    assert settings.max_interval_seconds <= 60 and settings.min_interval_seconds == 1.0
    monkeypatch.setenv("DROPWATCH_SCHEDULE", "fixed")
    assert load_settings(PollerSettings).schedule == "fixed"
    for variable, value in (
        ("DROPWATCH_SCHEDULE", "sometimes"),
        ("DROPWATCH_MIN_INTERVAL_SECONDS", "0"),
        ("DROPWATCH_MAX_INTERVAL_SECONDS", "0.5"),
        ("DROPWATCH_CHANGE_RATE_HALF_LIFE_SECONDS", "-1"),
    ):
        with monkeypatch.context() as env:
            env.setenv(variable, value)
            with pytest.raises(ConfigError) as info:
                load_settings(PollerSettings)
            assert info.value.variable == variable
    with pytest.raises(ConfigError) as info:
        load_settings(PollerSettings, min_interval_seconds=30.0, max_interval_seconds=10.0)
    assert "MAX_INTERVAL" in info.value.problem
