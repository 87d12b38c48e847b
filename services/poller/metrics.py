"""The poller's Prometheus metrics (plus the shared pool metrics in the same registry)."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Protocol

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
from prometheus_client.core import CounterMetricFamily
from prometheus_client.registry import Collector

from services.poller import judge, policy
from services.poller.errors import FetchError
from shared.db.pool_metrics import PoolMetrics

POLL_BUCKETS = (0.05, 0.1, 0.25, 0.5, 1, 2, 5, 10, 20, 30, 60)

# Fetch outcomes that are not failures (the fetch-failure alert's `reason!~` list; tests/deploy
# checks it): applied, or discarded because another replica wrote the bucket first.
HEALTHY_OUTCOMES = (judge.HEALTHY, judge.CONFIRMED, judge.SOLD_OUT, "lease_conflict")
HELD_OUTCOMES = (judge.SUSPECT, judge.BLOCKED, judge.PARTIAL)
KIND_VERDICTS = (
    judge.HEALTHY,
    judge.SUSPECT,
    judge.BLOCKED,
    judge.CONFIRMED,
    judge.SOLD_OUT,
    judge.IDLE,
)
STATUS_CLASSES = ("2xx", "3xx", "4xx", "5xx", "error")


def _failure_reasons() -> list[str]:
    """The `reason` of every fetch error class (a new one is counted at zero too)."""
    found, todo = [], [FetchError]
    while todo:
        cls = todo.pop()
        found.append(cls.reason)
        todo += cls.__subclasses__()
    return found


FETCH_OUTCOMES = tuple(dict.fromkeys([*HEALTHY_OUTCOMES, *HELD_OUTCOMES, *_failure_reasons()]))


class BudgetFigures(Protocol):
    """What `budget.BudgetCounters` carries (this replica's figures since start)."""

    granted: int
    refused: int


class BudgetCollector(Collector):
    """This replica's grants and refusals of the market's request budget, read at scrape time:
    budget used = sum over replicas of rate(granted), against the configured budget gauge."""

    def __init__(self, figures: BudgetFigures) -> None:
        self._figures = figures

    def collect(self) -> Iterator[CounterMetricFamily]:
        yield CounterMetricFamily(
            "dropwatch_poller_budget_granted_requests",
            "Requests the market's shared budget allowed this replica.",
            value=self._figures.granted,
        )
        yield CounterMetricFamily(
            "dropwatch_poller_budget_refused_requests",
            "Requests refused a token (deadline, or the budget's database unavailable).",
            value=self._figures.refused,
        )


class PollerMetrics:
    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry if registry is not None else CollectorRegistry()
        self.pool = PoolMetrics(self.registry)
        self.poll_duration = Histogram(
            "dropwatch_poller_poll_duration_seconds",
            "Wall time of one bucket poll (fetch + write), by outcome.",
            ["outcome"],
            buckets=POLL_BUCKETS,
            registry=self.registry,
        )
        self.events_written = Counter(
            "dropwatch_poller_events_written",
            "Drop events committed, by type.",
            ["event_type"],
            registry=self.registry,
        )
        self.fetch_outcomes = Counter(
            "dropwatch_poller_fetch_outcomes",
            "Bucket fetches by outcome (healthy, or the reason they changed nothing).",
            ["reason"],
            registry=self.registry,
        )
        self.upstream_requests = Counter(
            "dropwatch_poller_upstream_requests",
            "Requests to the provider by HTTP status class (error = no response).",
            ["status_class"],
            registry=self.registry,
        )
        self.last_healthy_poll = Gauge(
            "dropwatch_poller_bucket_last_healthy_poll_timestamp_seconds",
            "Unix time of each live bucket's last healthy poll.",
            ["bucket_id"],
            registry=self.registry,
        )
        self.lease_conflicts = Counter(
            "dropwatch_poller_lease_conflicts",
            "Polls discarded because another writer changed the bucket first.",
            registry=self.registry,
        )
        self.in_flight = Gauge(
            "dropwatch_poller_buckets_in_flight",
            "Bucket polls running now in this replica.",
            registry=self.registry,
        )
        self.kind_verdicts = Counter(
            "dropwatch_poller_request_kind_verdicts",
            "Request kinds (party sizes) judged, by verdict: healthy, blocked (empty after "
            "non-empty), suspect_soft_block (sharp shrink), confirmed_shrink, confirmed_sellout.",
            ["verdict"],
            registry=self.registry,
        )
        self.held_kinds = Gauge(
            "dropwatch_poller_bucket_held_request_kinds",
            "Request kinds of each live bucket held as blocked or suspect (0 = nothing held).",
            ["bucket_id"],
            registry=self.registry,
        )
        # Scheduling (services/poller/policy.py). Budget used vs configured:
        # sum(rate(dropwatch_poller_upstream_requests_total)) against the budget gauge.
        self.scheduled_requests = Counter(
            "dropwatch_poller_scheduled_requests",
            "Requests of the polls this replica started (each poll's cost as last seen), by "
            "bucket class: fresh, release, churning, quiet.",
            ["class"],
            registry=self.registry,
        )
        self.poll_interval = Gauge(
            "dropwatch_poller_bucket_poll_interval_seconds",
            "Each live bucket's current poll interval as the schedule plans it.",
            ["bucket_id"],
            registry=self.registry,
        )
        self.request_budget = Gauge(
            "dropwatch_poller_request_budget_per_second",
            "The market's configured request budget (all replicas together).",
            registry=self.registry,
        )
        self.planned_requests = Gauge(
            "dropwatch_poller_planned_requests_per_second",
            "Requests per second the planned intervals add up to (at most the budget).",
            registry=self.registry,
        )
        self.max_interval_kept = Gauge(
            "dropwatch_poller_schedule_max_interval_kept",
            "1 while the budget affords every bucket its maximum interval; 0 when it does not "
            "and every interval is stretched alike.",
            registry=self.registry,
        )
        self.expected_delay = Gauge(
            "dropwatch_poller_expected_detection_delay_seconds",
            "The schedule's expected detection delay: sum(rate * interval / 2) / sum(rate).",
            registry=self.registry,
        )
        self.max_interval_kept.set(1)
        # Every labelled series exists at zero: increase() ignores a series' first sample.
        for bucket_class in policy.CLASSES:
            self.scheduled_requests.labels(bucket_class)
        for reason in FETCH_OUTCOMES:
            self.fetch_outcomes.labels(reason)
            self.poll_duration.labels(reason)
        for verdict in KIND_VERDICTS:
            self.kind_verdicts.labels(verdict)
        for status_class in STATUS_CLASSES:
            self.upstream_requests.labels(status_class)
        for event_type in ("NEW_DROP", "CLOSED", "SIZE_CHANGE"):
            self.events_written.labels(event_type)

    def track_budget(self, figures: BudgetFigures, rate: float) -> None:
        self.registry.register(BudgetCollector(figures))
        self.request_budget.set(rate)

    def forget_buckets(self, live: set[str]) -> None:
        """Drop the per-bucket series of buckets that are no longer live."""
        for gauge in (self.last_healthy_poll, self.held_kinds, self.poll_interval):
            for labels in list(gauge._metrics):
                if labels[0] not in live:
                    gauge.remove(*labels)
