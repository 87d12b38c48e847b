"""Engine factory: URL forms, statement timeout, pool sizing and pool metrics."""

from __future__ import annotations

import threading

import httpx
import pytest
from prometheus_client import CollectorRegistry, generate_latest
from pydantic import SecretStr
from sqlalchemy import exc as sa_exc
from sqlalchemy import text

from shared.db.engine import make_async_engine, make_engine
from shared.db.pool_metrics import PoolMetrics
from shared.db.urls import to_sqlalchemy_url
from shared.errors import ConfigError
from shared.metrics_http import serve_metrics
from shared.settings import Settings


@pytest.mark.parametrize(
    "raw",
    [
        "postgresql://u:pw@db.example:5433/app?sslmode=require",
        "postgres://u:pw@db.example:5433/app?sslmode=require",
        "postgresql+psycopg://u:pw@db.example:5433/app?sslmode=require",
    ],
)
def test_libpq_and_sqlalchemy_urls_use_psycopg3(raw: str) -> None:
    url = to_sqlalchemy_url(raw)
    assert url.drivername == "postgresql+psycopg"
    assert (url.host, url.port, url.database) == ("db.example", 5433, "app")
    assert url.query["sslmode"] == "require"
    assert "pw" not in str(url)


def test_non_postgres_url_is_rejected() -> None:
    with pytest.raises(ConfigError, match="DROPWATCH_DATABASE_URL"):
        to_sqlalchemy_url("mysql://u@h/db")


def test_statement_timeout_and_application_name_are_set(db_url: str) -> None:
    settings = Settings(database_url=SecretStr(db_url), db_statement_timeout_ms=200)
    engine = make_engine(settings, name="feed")
    try:
        with engine.connect() as conn:
            assert conn.execute(text("SHOW statement_timeout")).scalar_one() == "200ms"
            assert conn.execute(text("SHOW application_name")).scalar_one() == "dropwatch-feed"
            with pytest.raises(sa_exc.OperationalError, match="statement timeout"):
                conn.execute(text("SELECT pg_sleep(2)"))
    finally:
        engine.dispose()


def test_default_pool_fits_eight_bucket_workers_plus_api() -> None:
    settings = Settings()
    assert settings.db_pool_size >= 8 + 2


def _scrape(registry: CollectorRegistry) -> str:
    return generate_latest(registry).decode()


def _sample(body: str, name: str, pool: str) -> float:
    for line in body.splitlines():
        if line.startswith(f'{name}{{pool="{pool}"}}'):
            return float(line.rsplit(" ", 1)[1])
    raise AssertionError(f"{name} for pool {pool} not in scrape")


def test_pool_metrics_report_size_in_use_wait_and_timeouts(db_url: str) -> None:
    registry = CollectorRegistry()
    metrics = PoolMetrics(registry)
    settings = Settings(
        database_url=SecretStr(db_url),
        db_pool_size=2,
        db_max_overflow=0,
        db_pool_timeout_seconds=0.2,
    )
    engine = make_engine(settings, name="poller", metrics=metrics)
    try:
        first = engine.connect()
        second = engine.connect()
        body = _scrape(registry)
        assert _sample(body, "dropwatch_db_pool_size", "poller") == 2
        assert _sample(body, "dropwatch_db_pool_connections_in_use", "poller") == 2
        assert _sample(body, "dropwatch_db_pool_max_overflow_connections", "poller") == 0
        with pytest.raises(sa_exc.TimeoutError):
            engine.connect()
        body = _scrape(registry)
        assert _sample(body, "dropwatch_db_pool_checkout_timeouts_total", "poller") == 1
        assert _sample(body, "dropwatch_db_pool_checkout_wait_seconds_count", "poller") == 3
        assert _sample(body, "dropwatch_db_pool_checkout_wait_seconds_sum", "poller") >= 0.2
        first.close()
        second.close()
        assert _sample(_scrape(registry), "dropwatch_db_pool_connections_in_use", "poller") == 0
        # A disposed engine builds a new pool; it must keep reporting.
        engine.dispose()
        with engine.connect():
            assert _sample(_scrape(registry), "dropwatch_db_pool_connections_in_use", "poller") == 1
    finally:
        engine.dispose()


async def test_async_engine_reports_pool_metrics(db_url: str) -> None:
    registry = CollectorRegistry()
    metrics = PoolMetrics(registry)
    engine = make_async_engine(
        Settings(database_url=SecretStr(db_url)), name="feed", metrics=metrics
    )
    try:
        async with engine.connect() as conn:
            assert (await conn.execute(text("SELECT 1"))).scalar_one() == 1
            body = _scrape(registry)
            assert _sample(body, "dropwatch_db_pool_connections_in_use", "feed") == 1
        assert (
            _sample(_scrape(registry), "dropwatch_db_pool_checkout_wait_seconds_count", "feed") == 1
        )
    finally:
        await engine.dispose()


def test_metrics_endpoint_on_a_free_port() -> None:
    registry = CollectorRegistry()
    PoolMetrics(registry)
    server = serve_metrics(registry, 0, addr="127.0.0.1")
    try:
        assert server.port > 0
        response = httpx.get(f"http://127.0.0.1:{server.port}/metrics", timeout=5)
        assert response.status_code == 200
        assert "dropwatch_db_pool_checkout_wait_seconds" in response.text
    finally:
        server.stop()
    assert threading.active_count() >= 1
