"""One engine factory for every service.

`DROPWATCH_DATABASE_URL` is a plain libpq URL, used with the psycopg 3 driver
(`shared.db.urls.to_sqlalchemy_url`). Each engine gets a pool sized from settings, a
server-side statement timeout, an application name, and pool metrics.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from sqlalchemy import Engine, create_engine
from sqlalchemy import exc as sa_exc
from sqlalchemy.engine import URL
from sqlalchemy.ext.asyncio import AsyncEngine, create_async_engine
from sqlalchemy.pool import AsyncAdaptedQueuePool, ConnectionPoolEntry, QueuePool

from shared.db.pool_metrics import PoolMetrics
from shared.db.urls import to_sqlalchemy_url
from shared.errors import ConfigError, DatabaseUnavailableError
from shared.settings import Settings


class _TimedCheckout:
    """Mixin: time every checkout and count timeouts into the engine's `PoolMetrics`."""

    dw_metrics: PoolMetrics | None = None
    dw_name: str = "default"

    def _do_get(self) -> ConnectionPoolEntry:
        started = time.perf_counter()
        try:
            return super()._do_get()  # type: ignore[misc,no-any-return]
        except sa_exc.TimeoutError:
            if self.dw_metrics is not None:
                self.dw_metrics.checkout_timeouts.labels(self.dw_name).inc()
            raise
        finally:
            if self.dw_metrics is not None:
                self.dw_metrics.checkout_wait.labels(self.dw_name).observe(
                    time.perf_counter() - started
                )

    def recreate(self) -> Any:
        # `engine.dispose()` builds a fresh pool; keep reporting into the same metrics.
        fresh = super().recreate()  # type: ignore[misc]
        fresh.dw_metrics = self.dw_metrics
        fresh.dw_name = self.dw_name
        return fresh


class InstrumentedQueuePool(_TimedCheckout, QueuePool):
    """QueuePool that reports checkout wait and timeouts."""


class InstrumentedAsyncPool(_TimedCheckout, AsyncAdaptedQueuePool):
    """The asyncio flavour of `InstrumentedQueuePool`."""


def _engine_options(
    settings: Settings, application_name: str, server_settings: dict[str, str] | None = None
) -> dict[str, Any]:
    values = {"statement_timeout": str(settings.db_statement_timeout_ms), **(server_settings or {})}
    options = " ".join(f"-c {name}={value}" for name, value in values.items())
    return {
        "pool_size": settings.db_pool_size,
        "max_overflow": settings.db_max_overflow,
        "pool_timeout": settings.db_pool_timeout_seconds,
        "pool_pre_ping": True,
        "hide_parameters": True,
        "connect_args": {
            "application_name": application_name,
            "options": options,
            "connect_timeout": 5,
        },
    }


def _url(settings: Settings, url: str | None) -> URL:
    if url is None:
        if settings.database_url is None:
            raise ConfigError(
                "DROPWATCH_DATABASE_URL", "is not set and no embedded server was started"
            )
        url = settings.database_url.get_secret_value()
    return to_sqlalchemy_url(url)


def make_engine(
    settings: Settings,
    *,
    name: str,
    metrics: PoolMetrics | None = None,
    url: str | None = None,
) -> Engine:
    """A synchronous engine named `name` (used as pool label and application name)."""
    engine = create_engine(
        _url(settings, url),
        poolclass=InstrumentedQueuePool,
        **_engine_options(settings, f"dropwatch-{name}"),
    )
    _attach(engine, name, metrics)
    return engine


def make_async_engine(
    settings: Settings,
    *,
    name: str,
    metrics: PoolMetrics | None = None,
    url: str | None = None,
    server_settings: dict[str, str] | None = None,
) -> AsyncEngine:
    """An asyncio engine named `name`, for the gRPC and polling event loops.

    `server_settings` are PostgreSQL settings for every connection (e.g. the feed's
    `plan_cache_mode`).
    """
    engine = create_async_engine(
        _url(settings, url),
        poolclass=InstrumentedAsyncPool,
        **_engine_options(settings, f"dropwatch-{name}", server_settings),
    )
    _attach(engine.sync_engine, name, metrics)
    return engine


def _attach(engine: Engine, name: str, metrics: PoolMetrics | None) -> None:
    pool = engine.pool
    assert isinstance(pool, _TimedCheckout)
    pool.dw_metrics = metrics
    pool.dw_name = name
    if metrics is not None:
        metrics.track(name, lambda: engine.pool)


@contextmanager
def unavailable_as_error(what: str = "PostgreSQL") -> Iterator[None]:
    """Translate "cannot connect" driver errors into `DatabaseUnavailableError`.

    The message keeps libpq's first line (which names host and port, never the password).
    """
    try:
        yield
    except (sa_exc.OperationalError, sa_exc.InterfaceError) as exc:
        if not _is_connection_error(exc):
            raise
        reason = str(exc.orig).strip().splitlines()[0] if exc.orig else type(exc).__name__
        raise DatabaseUnavailableError(f"cannot reach {what}: {reason}") from exc
    except sa_exc.TimeoutError as exc:
        raise DatabaseUnavailableError(f"no free connection to {what} in time") from exc


def _is_connection_error(exc: sa_exc.DBAPIError) -> bool:
    if exc.connection_invalidated:
        return True
    sqlstate = getattr(exc.orig, "sqlstate", None)
    # No SQLSTATE: the connection attempt itself failed. 08xxx: connection exceptions;
    # 57P01-57P03: server shutting down or not accepting connections yet.
    return sqlstate is None or sqlstate.startswith("08") or sqlstate in {"57P01", "57P02", "57P03"}
