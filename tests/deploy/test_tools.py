"""A missing Prometheus binary skips locally but fails where CI demands it."""

from __future__ import annotations

import pytest

from tests.deploy import tools


def test_missing_binary_skips_with_install_instructions(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(tools, "_which", lambda name: None)
    monkeypatch.delenv(tools.REQUIRE_PROMETHEUS_ENV, raising=False)
    with pytest.raises(pytest.skip.Exception) as skipped:
        tools.prometheus_tool("promtool")
    assert "apt-get install prometheus" in str(skipped.value)
    assert "scripts/install_prometheus.sh" in str(skipped.value)


def test_missing_binary_fails_when_required(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(tools, "_which", lambda name: None)
    monkeypatch.setenv(tools.REQUIRE_PROMETHEUS_ENV, "1")
    with pytest.raises(pytest.fail.Exception, match="DROPWATCH_REQUIRE_PROMETHEUS=1"):
        tools.prometheus_tool("prometheus")
