"""Settings: parsing, validation naming the variable, secrets masked everywhere."""

from __future__ import annotations

import logging

import pytest

from shared.errors import ConfigError
from shared.logs import RedactingFilter
from shared.settings import Settings, load_settings

SECRET_URL = "postgresql://svc:s3cr3t-pw@db.internal:5432/dropwatch"


def test_defaults_match_the_documented_market(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("DROPWATCH_DATABASE_URL", raising=False)
    settings = load_settings(Settings)
    assert settings.market == "nyc"
    assert settings.market_timezone == "America/New_York"
    assert settings.anchors == ("15:00", "19:00")
    assert settings.party_sizes == (2, 4)
    assert settings.window_days == 14
    assert settings.database_url is None


def test_environment_lists_are_comma_separated(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("DROPWATCH_ANCHORS", "19:00, 12:30")
    monkeypatch.setenv("DROPWATCH_PARTY_SIZES", "4,2,6")
    monkeypatch.setenv("DROPWATCH_MARKET_BBOX", "40.7,-74.0,40.8,-73.9")
    settings = load_settings(Settings)
    assert settings.anchors == ("12:30", "19:00")
    assert settings.party_sizes == (2, 4, 6)
    assert settings.market_bbox == (40.7, -74.0, 40.8, -73.9)


@pytest.mark.parametrize(
    ("variable", "value", "fragment"),
    [
        ("DROPWATCH_DB_POOL_SIZE", "many", "integer"),
        ("DROPWATCH_DB_POOL_SIZE", "0", "greater than or equal"),
        ("DROPWATCH_MARKET_TIMEZONE", "Mars/Olympus", "unknown time zone"),
        ("DROPWATCH_ANCHORS", "7pm", "HH:MM"),
        ("DROPWATCH_PARTY_SIZES", "2,40", "between 1 and 20"),
        ("DROPWATCH_MARKET_BBOX", "1,2,3", "four numbers"),
        ("DROPWATCH_DATABASE_URL", "mysql://u:pw@h/db", "postgresql"),
        ("DROPWATCH_METRICS_PORT", "70000", "less than or equal"),
    ],
)
def test_invalid_values_name_the_variable(
    monkeypatch: pytest.MonkeyPatch, variable: str, value: str, fragment: str
) -> None:
    monkeypatch.setenv(variable, value)
    with pytest.raises(ConfigError) as info:
        load_settings(Settings)
    assert str(info.value).startswith(f"{variable}: ")
    assert fragment in str(info.value)


def test_bad_database_url_error_does_not_echo_it(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("DROPWATCH_DATABASE_URL", "mysql://u:leaky-pw@h/db")
    with pytest.raises(ConfigError) as info:
        load_settings(Settings)
    assert "leaky-pw" not in str(info.value)


def test_secrets_are_masked_in_repr_and_display(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("DROPWATCH_DATABASE_URL", SECRET_URL)
    settings = load_settings(Settings)
    for rendering in (repr(settings), str(settings), settings.display_database_url()):
        assert "s3cr3t-pw" not in rendering
    assert settings.display_database_url() == "postgresql://svc:***@db.internal:5432/dropwatch"
    assert "s3cr3t-pw" in settings.secret_values()


def test_settings_are_frozen() -> None:
    settings = Settings()
    with pytest.raises(Exception, match="frozen"):
        settings.market = "la"  # type: ignore[misc]


def test_log_filter_redacts_secrets_in_messages_and_tracebacks(
    caplog: pytest.LogCaptureFixture,
) -> None:
    logger = logging.getLogger("test.redaction")
    redactor = RedactingFilter(["s3cr3t-pw", SECRET_URL])
    logger.addFilter(redactor)
    try:
        with caplog.at_level(logging.INFO, logger="test.redaction"):
            logger.info("connecting to %s", SECRET_URL)
            try:
                raise RuntimeError("auth failed for password s3cr3t-pw")
            except RuntimeError:
                logger.exception("boom")
    finally:
        logger.removeFilter(redactor)
    text = caplog.text
    assert "s3cr3t-pw" not in text
    assert "***" in text
    assert "RuntimeError" in text
