"""Database URL conversions, written once.

`DROPWATCH_DATABASE_URL` is a libpq URL (`postgresql://user@host/db?sslmode=...`), as
Kubernetes secrets and other tools write it. SQLAlchemy wants the psycopg 3 driver named in
it; psycopg itself (LISTEN, admin statements) wants plain libpq syntax; logs want it masked.
"""

from __future__ import annotations

from sqlalchemy.engine import URL, make_url

from shared.errors import ConfigError


def to_sqlalchemy_url(raw: str) -> URL:
    """Accept `postgres://`, `postgresql://` and `postgresql+psycopg://`; use psycopg 3."""
    if raw.startswith("postgres://"):
        raw = "postgresql://" + raw.removeprefix("postgres://")
    url = make_url(raw)
    if url.get_backend_name() != "postgresql":
        raise ConfigError("DROPWATCH_DATABASE_URL", "must be a postgresql:// URL")
    return url.set(drivername="postgresql+psycopg")


def libpq_url(raw: str, *, database: str | None = None, username: str | None = None) -> str:
    """`raw` in libpq syntax (what psycopg connects with), optionally naming another database
    or user of the same server."""
    url = to_sqlalchemy_url(raw).set(drivername="postgresql", database=database, username=username)
    return url.render_as_string(hide_password=False)


def masked_url(raw: str) -> str:
    """`raw` with its password shown as `***`, for logs and messages."""
    return make_url(raw).render_as_string(hide_password=True)
