"""The poller's Prometheus metrics (plus the shared pool metrics in the same registry)."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

from services.poller import judge
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
        # Every labelled series exists at zero: increase() ignores a series' first sample.
        for reason in FETCH_OUTCOMES:
            self.fetch_outcomes.labels(reason)
            self.poll_duration.labels(reason)
        for verdict in KIND_VERDICTS:
            self.kind_verdicts.labels(verdict)
        for status_class in STATUS_CLASSES:
            self.upstream_requests.labels(status_class)
        for event_type in ("NEW_DROP", "CLOSED", "SIZE_CHANGE"):
            self.events_written.labels(event_type)

    def forget_buckets(self, live: set[str]) -> None:
        """Drop the per-bucket series of buckets that are no longer live."""
        for gauge in (self.last_healthy_poll, self.held_kinds):
            for labels in list(gauge._metrics):
                if labels[0] not in live:
                    gauge.remove(*labels)
