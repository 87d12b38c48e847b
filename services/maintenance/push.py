"""Push a run's figures to a Prometheus Pushgateway (the guidance for batch jobs)."""

from __future__ import annotations

import time

from prometheus_client import CollectorRegistry, Gauge, push_to_gateway

from services.maintenance.run import RunSummary


def push_summary(url: str, job: str, summary: RunSummary) -> None:
    registry = CollectorRegistry()
    Gauge(
        "dropwatch_maintenance_last_success_timestamp_seconds",
        "Unix time the last maintenance run finished successfully.",
        registry=registry,
    ).set(time.time())
    seconds = Gauge(
        "dropwatch_maintenance_step_duration_seconds",
        "Wall time of each step of the last run.",
        ["step"],
        registry=registry,
    )
    rows = Gauge(
        "dropwatch_maintenance_step_rows",
        "Rows aggregated, pruned or created by each step of the last run.",
        ["step"],
        registry=registry,
    )
    Gauge(
        "dropwatch_maintenance_partitions_left_for_operator",
        "Days the last run left alone: a partition with fewer events than its figures count,"
        " or one that reappeared after its figures became final (see the run's JSON summary).",
        registry=registry,
    ).set(sum(what.startswith("day ") for what in summary.skipped))
    for name, step in summary.steps.items():
        seconds.labels(name).set(step.seconds)
        rows.labels(name).set(step.rows)
    push_to_gateway(url, job=job, registry=registry, timeout=10)
