"""A password given as a `?password=` URL parameter is a password everywhere: masked where the
URL is shown, registered with the log filter, hidden in the engine's repr."""

from __future__ import annotations

import logging

import pytest
from pydantic import SecretStr

from shared.db.urls import libpq_url, masked_url, to_sqlalchemy_url, url_passwords
from shared.logs import RedactingFilter
from shared.settings import Settings

PW = "qu3ry-pw/&x"
RAW = "postgresql://svc@db.internal:5432/dropwatch?sslmode=require&password=qu3ry-pw%2F%26x"


@pytest.mark.parametrize(
    "raw",
    [RAW, RAW.replace("password=", "PassWord="), "postgresql://svc:qu3ry-pw%2F%26x@db/d"],
)
def test_masked_everywhere_the_url_is_shown(raw: str) -> None:
    for shown in (
        masked_url(raw),
        Settings(database_url=SecretStr(raw)).display_database_url(),
        repr(to_sqlalchemy_url(raw)),
        str(to_sqlalchemy_url(raw)),
    ):
        assert "qu3ry" not in shown, shown
        assert "***" in shown
    assert "sslmode" in masked_url(RAW)


def test_the_query_password_still_connects_as_the_password() -> None:
    url = to_sqlalchemy_url(RAW)
    assert url.password == PW and "password" not in url.query
    assert url.query["sslmode"] == "require"
    assert "qu3ry-pw" in libpq_url(RAW)


def test_registered_with_the_log_filter(caplog: pytest.LogCaptureFixture) -> None:
    settings = Settings(database_url=SecretStr(RAW))
    assert PW in settings.secret_values() and PW in url_passwords(RAW)
    record = logging.LogRecord(
        "t", logging.ERROR, __file__, 1, "could not connect: %s / %s", (PW, RAW), None
    )
    RedactingFilter(settings.secret_values()).filter(record)
    assert "qu3ry" not in record.getMessage()
