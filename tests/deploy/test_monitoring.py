"""Alert rules, the Grafana dashboard and the services' metrics, checked with promtool.

deploy/prometheus/rules.yaml is the one source of the alerts; the PrometheusRule of
components/monitoring must carry exactly its groups.
"""

from __future__ import annotations

import json
import re
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.conftest import REPO_ROOT
from tests.deploy import registries, tools
from tests.deploy.kustomize import K8S_DIR, load_docs

RULES = REPO_ROOT / "deploy" / "prometheus" / "rules.yaml"
MONITORING = K8S_DIR / "components" / "monitoring" / "monitoring.yaml"
DASHBOARD = REPO_ROOT / "deploy" / "grafana" / "dropwatch.json"
DEPLOY_DOC = REPO_ROOT / "docs" / "deploy.md"
INSTALL_SCRIPT = REPO_ROOT / "scripts" / "install_prometheus.sh"
METRIC_NAME = re.compile(r"\b((?:dropwatch|grpc_server)_[a-z0-9_]+)\b")

Rule = dict[str, Any]


def _groups() -> list[dict[str, Any]]:
    groups: list[dict[str, Any]] = yaml.safe_load(RULES.read_text())["groups"]
    return groups


def _alerts() -> list[Rule]:
    return [rule for group in _groups() for rule in group["rules"]]


def _promtool(*args: str, stdin: str | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [tools.prometheus_tool("promtool"), *args],
        input=stdin,
        capture_output=True,
        text=True,
        timeout=60,
    )


def _anchors(markdown: str) -> set[str]:
    """GitHub's heading anchors: lower case, punctuation dropped, spaces to hyphens."""
    anchors = set()
    for line in markdown.splitlines():
        if line.startswith("#"):
            title = line.lstrip("#").strip().lower()
            anchors.add(re.sub(r"[^\w\- ]", "", title).replace(" ", "-"))
    return anchors


# --- alert rules ---------------------------------------------------------------------------


def test_prometheus_rule_carries_exactly_the_rule_file() -> None:
    rules = [d for d in load_docs(MONITORING) if d["kind"] == "PrometheusRule"]
    assert len(rules) == 1
    assert rules[0]["spec"]["groups"] == _groups()


def test_promtool_accepts_the_rule_files(tmp_path: Path) -> None:
    result = _promtool("check", "rules", str(RULES))
    assert result.returncode == 0, result.stdout + result.stderr
    assert f"SUCCESS: {len(_alerts())} rules found" in result.stdout
    # The operator's copy, extracted as the rule file Prometheus would receive.
    (rule,) = [d for d in load_docs(MONITORING) if d["kind"] == "PrometheusRule"]
    extracted = tmp_path / "operator-rules.yaml"
    extracted.write_text(yaml.safe_dump({"groups": rule["spec"]["groups"]}))
    result = _promtool("check", "rules", str(extracted))
    assert result.returncode == 0, result.stdout + result.stderr


def test_the_required_alerts_exist() -> None:
    alerts = {rule["alert"]: " ".join(rule["expr"].split()) for rule in _alerts()}
    required = {
        "DropwatchBucketsStale": "dropwatch_poller_bucket_last_healthy_poll_timestamp_seconds",
        "DropwatchFeedErrorRatioHigh": "grpc_server_handled_total",
        "DropwatchFeedLatencyHigh": "grpc_server_handling_seconds_bucket",
        "DropwatchDbPoolSaturated": "dropwatch_db_pool_max_overflow_connections",
        "DropwatchMaintenanceNotSucceeded": (
            "dropwatch_maintenance_recorded_last_success_timestamp_seconds"
        ),
        "DropwatchMaintenanceNeverReported": "dropwatch_maintenance_last_success_timestamp_seconds",
        "DropwatchPollerBudgetBelowFloor": "dropwatch_poller_schedule_max_interval_kept",
    }
    for alert, metric in required.items():
        assert metric in alerts[alert], alert
    assert "> 300" in alerts["DropwatchBucketsStale"]
    assert "26 * 3600" in alerts["DropwatchMaintenanceNotSucceeded"]
    assert 'grpc_code!~"OK|' in alerts["DropwatchFeedErrorRatioHigh"]
    assert "histogram_quantile(0.99" in alerts["DropwatchFeedLatencyHigh"]
    assert (
        "dropwatch_db_pool_connections_in_use / (dropwatch_db_pool_size + "
        "dropwatch_db_pool_max_overflow_connections)" in alerts["DropwatchDbPoolSaturated"]
    )


def test_every_alert_has_a_summary_severity_and_a_runbook_section() -> None:
    anchors = _anchors(DEPLOY_DOC.read_text())
    for rule in _alerts():
        name = rule["alert"]
        assert rule["labels"]["severity"] in ("warning", "critical"), name
        annotations = rule["annotations"]
        assert annotations["summary"] and annotations["description"], name
        path, _, anchor = annotations["runbook"].partition("#")
        assert path == "docs/deploy.md" and anchor == name.lower(), name
        assert anchor in anchors, f"docs/deploy.md has no section '{name}'"


# --- the services' metrics -----------------------------------------------------------------


@pytest.mark.parametrize("service", ["feed", "poller", "maintenance"])
def test_promtool_accepts_each_services_metrics(
    service: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    text = registries.all_metrics(monkeypatch)[service]
    result = _promtool("check", "metrics", stdin=text)
    assert result.returncode == 0, result.stdout + result.stderr


def test_rules_and_dashboard_query_only_exported_metrics(monkeypatch: pytest.MonkeyPatch) -> None:
    exported = set()
    for text in registries.all_metrics(monkeypatch).values():
        exported |= registries.sample_names(text)
    queried = set(METRIC_NAME.findall(RULES.read_text()))
    queried |= {m for expr in _dashboard_exprs() for m in METRIC_NAME.findall(expr)}
    assert queried, "no metric names found"
    assert queried <= exported, sorted(queried - exported)


# --- the Grafana dashboard -----------------------------------------------------------------


def _dashboard() -> dict[str, Any]:
    dashboard: dict[str, Any] = json.loads(DASHBOARD.read_text())
    return dashboard


def _panels() -> list[dict[str, Any]]:
    return [p for p in _dashboard()["panels"] if p["type"] != "row"]


def _dashboard_exprs() -> list[str]:
    return [t["expr"] for p in _panels() for t in p["targets"]]


def test_dashboard_is_provisionable_with_a_datasource_variable() -> None:
    dashboard = _dashboard()
    assert dashboard["uid"] == "dropwatch" and dashboard["id"] is None
    assert "__inputs" not in dashboard, "file provisioning does not resolve __inputs"
    (variable,) = [v for v in dashboard["templating"]["list"] if v["type"] == "datasource"]
    assert variable["query"] == "prometheus"
    reference = {"type": "prometheus", "uid": f"${{{variable['name']}}}"}
    ids = [p["id"] for p in dashboard["panels"]]
    assert len(ids) == len(set(ids))
    for panel in _panels():
        assert panel["datasource"] == reference, panel["title"]
        assert set(panel["gridPos"]) == {"h", "w", "x", "y"}, panel["title"]
        assert panel["targets"], panel["title"]
        for target in panel["targets"]:
            assert target["datasource"] == reference, panel["title"]


def test_dashboard_shows_what_operators_need() -> None:
    exprs = " ".join(_dashboard_exprs())
    latency = "sum by (le, grpc_method) (rate(grpc_server_handling_seconds_bucket"
    for needle in (
        f"histogram_quantile(0.5, {latency}",
        f"histogram_quantile(0.99, {latency}",
        "sum by (grpc_method, grpc_code) (rate(grpc_server_handled_total",
        'dropwatch_feed_cache_requests_total{result="hit"}',
        "rate(dropwatch_poller_events_written_total",
        "dropwatch_poller_bucket_last_healthy_poll_timestamp_seconds",
        "sum by (reason) (rate(dropwatch_poller_fetch_outcomes_total",
        "dropwatch_db_pool_connections_in_use",
        "dropwatch_maintenance_recorded_last_success_timestamp_seconds",
        "dropwatch_maintenance_step_duration_seconds",
        # What the pool really holds open (size + negative overflow would say 10 for 2).
        "sum by (pool) (dropwatch_db_pool_open_connections)",
        # The adaptive schedule: what it plans against the budget, and what that costs in delay.
        "max(dropwatch_poller_planned_requests_per_second)",
        "max(dropwatch_poller_request_budget_per_second)",
        "dropwatch_poller_expected_detection_delay_seconds",
    ):
        assert needle in exprs, needle
    assert "clamp_min(dropwatch_db_pool_overflow_connections" not in exprs


def test_promtool_parses_every_dashboard_query(tmp_path: Path) -> None:
    """Each query, with Grafana's interval variable filled in, as a recording rule."""
    rules = [
        {"record": f"dashboard:query_{i}", "expr": expr.replace("$__rate_interval", "5m")}
        for i, expr in enumerate(_dashboard_exprs())
    ]
    path = tmp_path / "dashboard-queries.yaml"
    path.write_text(yaml.safe_dump({"groups": [{"name": "dashboard", "rules": rules}]}))
    result = _promtool("check", "rules", str(path))
    assert result.returncode == 0, result.stdout + result.stderr


# --- scripts/install_prometheus.sh ---------------------------------------------------------


def test_install_script_does_nothing_when_prometheus_is_installed() -> None:
    tools.prometheus_tool("promtool")
    tools.prometheus_tool("prometheus")
    result = subprocess.run(
        ["bash", str(INSTALL_SCRIPT)], capture_output=True, text=True, timeout=30
    )
    assert result.returncode == 0, result.stderr
    assert "already installed" in result.stdout
