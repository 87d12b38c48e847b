"""Database URL conversions, written once.

`DROPWATCH_DATABASE_URL` is a libpq URL (`postgresql://user@host/db?sslmode=...`), as
Kubernetes secrets and other tools write it. SQLAlchemy wants the psycopg 3 driver named in
it; psycopg itself (LISTEN, admin statements) wants plain libpq syntax; logs want it masked.
"""

from __future__ import annotations

from urllib.parse import quote

from sqlalchemy.engine import URL, make_url

from shared.errors import ConfigError

MASK = "***"


def _query_password_keys(url: URL) -> list[str]:
    """libpq also takes the password as a `?password=` parameter (any case of the key)."""
    return [key for key in url.query if key.lower() == "password"]


def _values(value: str | tuple[str, ...]) -> tuple[str, ...]:
    return (value,) if isinstance(value, str) else value


def to_sqlalchemy_url(raw: str) -> URL:
    """Accept `postgres://`, `postgresql://` and `postgresql+psycopg://`; use psycopg 3.

    A `?password=` parameter becomes the URL's password, which SQLAlchemy masks in every repr
    (an engine's, a pool's) as it does not mask query parameters."""
    if raw.startswith("postgres://"):
        raw = "postgresql://" + raw.removeprefix("postgres://")
    url = make_url(raw)
    if url.get_backend_name() != "postgresql":
        raise ConfigError("DROPWATCH_DATABASE_URL", "must be a postgresql:// URL")
    keys = _query_password_keys(url)
    if keys:
        password = _values(url.query[keys[0]])[-1]
        url = url.difference_update_query(keys)
        if url.password is None:
            url = url.set(password=password)
    return url.set(drivername="postgresql+psycopg")


def libpq_url(raw: str, *, database: str | None = None, username: str | None = None) -> str:
    """`raw` in libpq syntax (what psycopg connects with), optionally naming another database
    or user of the same server."""
    url = to_sqlalchemy_url(raw).set(drivername="postgresql", database=database, username=username)
    return url.render_as_string(hide_password=False)


def masked_url(raw: str) -> str:
    """`raw` with its password shown as `***`, for logs and messages (a `?password=`
    parameter too)."""
    url = make_url(raw)
    keys = _query_password_keys(url)
    if keys:
        url = url.update_query_dict({key: MASK for key in keys})
    return url.render_as_string(hide_password=True).replace(quote(MASK, safe=""), MASK)


def url_passwords(raw: str) -> list[str]:
    """Every password `raw` carries (user info and `?password=`), as given and as written in
    a URL, for the log redaction filter."""
    url = make_url(raw)
    found = [str(url.password)] if url.password else []
    for key in _query_password_keys(url):
        found += [value for value in _values(url.query[key]) if value]
    return found + [quote(value, safe="") for value in found]
