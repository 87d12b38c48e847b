"""Helpers for poller tests: settings, contexts and database look-ups."""

from __future__ import annotations

import datetime as dt
from typing import Any

from pydantic import SecretStr
from sqlalchemy import Engine, text

from services.poller.settings import PollerSettings

TODAY = dt.date(2026, 12, 1)


def poller_settings(
    db_url: str, base_url: str = "http://127.0.0.1:9", **extra: Any
) -> PollerSettings:
    values: dict[str, Any] = {
        "database_url": SecretStr(db_url),
        "resy_base_url": base_url,
        "cooldown_seconds": 30.0,
        "backoff_base_seconds": 0.01,
        "requests_per_second": 1000.0,
        "poll_deadline_seconds": 10.0,
        "lease_seconds": 15.0,
        "window_days": 2,
        "metrics_port": 0,
        "health_port": 0,
    }
    values.update(extra)
    return PollerSettings(**values)


def events(engine: Engine, bucket_id: str | None = None) -> list[dict[str, Any]]:
    sql = "SELECT * FROM drop_events"
    params: dict[str, Any] = {}
    if bucket_id is not None:
        sql += " WHERE bucket_id = :b"
        params["b"] = bucket_id
    with engine.connect() as conn:
        return [dict(r._mapping) for r in conn.execute(text(sql + " ORDER BY id"), params)]


def open_slot_ids(engine: Engine, bucket_id: str) -> set[str]:
    with engine.connect() as conn:
        return set(
            conn.execute(
                text("SELECT slot_id FROM open_slots WHERE bucket_id = :b"), {"b": bucket_id}
            ).scalars()
        )


def bucket_row(engine: Engine, bucket_id: str) -> dict[str, Any]:
    with engine.connect() as conn:
        row = conn.execute(
            text("SELECT * FROM discovery_buckets WHERE bucket_id = :b"), {"b": bucket_id}
        ).one()
        return dict(row._mapping)


def make_due(engine: Engine, bucket_id: str | None = None) -> None:
    """Pretend the cooldown has passed."""
    with engine.begin() as conn:
        conn.execute(
            text(
                "UPDATE discovery_buckets SET next_poll_at = now() - interval '1 second'"
                + (" WHERE bucket_id = :b" if bucket_id else "")
            ),
            {"b": bucket_id} if bucket_id else {},
        )
