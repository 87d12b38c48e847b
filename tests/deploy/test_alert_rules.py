"""`promtool test rules` on deploy/prometheus/rules_test.yaml: every alert has a case where it
fires and one where it stays quiet, including a poller restarted during an outage, a counter's
first sample and a Pushgateway that lost its memory."""

from __future__ import annotations

import re
import subprocess
from typing import Any

import yaml

from services.poller.metrics import HEALTHY_OUTCOMES
from tests.conftest import REPO_ROOT
from tests.deploy import registries, tools

RULES_DIR = REPO_ROOT / "deploy" / "prometheus"
RULES = RULES_DIR / "rules.yaml"
RULE_TESTS = RULES_DIR / "rules_test.yaml"


def _alerts() -> dict[str, str]:
    groups = yaml.safe_load(RULES.read_text())["groups"]
    return {rule["alert"]: rule["expr"] for group in groups for rule in group["rules"]}


def _cases() -> list[dict[str, Any]]:
    tests: list[dict[str, Any]] = yaml.safe_load(RULE_TESTS.read_text())["tests"]
    return [case for test in tests for case in test.get("alert_rule_test", [])]


def test_promtool_passes_the_alert_unit_tests() -> None:
    result = subprocess.run(
        [tools.prometheus_tool("promtool"), "test", "rules", RULE_TESTS.name],
        cwd=RULES_DIR,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert "SUCCESS" in result.stdout


def test_the_unit_tests_load_the_rule_file() -> None:
    assert yaml.safe_load(RULE_TESTS.read_text())["rule_files"] == [RULES.name]


def test_every_alert_has_a_firing_and_a_quiet_case() -> None:
    firing = {c["alertname"] for c in _cases() if c["exp_alerts"]}
    quiet = {c["alertname"] for c in _cases() if not c["exp_alerts"]}
    alerts = set(_alerts())
    assert alerts - firing == set(), "alerts never seen firing"
    assert alerts - quiet == set(), "alerts never seen quiet"
    assert (firing | quiet) <= alerts, "cases of alerts that no longer exist"


def test_the_fetch_failure_alert_excludes_exactly_the_healthy_outcomes() -> None:
    expr = _alerts()["DropwatchPollerFetchesFailing"]
    (excluded,) = re.findall(r'reason!~"([^"]+)"', expr)
    assert set(excluded.split("|")) == set(HEALTHY_OUTCOMES)


def test_a_poller_that_never_planned_does_not_look_below_the_floor() -> None:
    """The fixed schedule never sets the gauge: at 0 from the start, DropwatchPollerBudgetBelowFloor
    would fire for every poller with DROPWATCH_SCHEDULE=fixed."""
    assert "== 0" in _alerts()["DropwatchPollerBudgetBelowFloor"]
    samples = registries.poller_metrics().splitlines()
    assert "dropwatch_poller_schedule_max_interval_kept 1.0" in samples
