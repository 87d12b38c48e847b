"""Typed settings from `DROPWATCH_*` environment variables, validated once at start-up.

Each service builds one frozen `Settings` (or a subclass with its own fields) and passes it
explicitly; nothing reads the environment later. Secrets are `SecretStr`, so they are masked in
every repr, and `load_settings` turns validation failures into a `ConfigError` that names the
variable without echoing its value.
"""

from __future__ import annotations

import re
from datetime import time
from pathlib import Path
from typing import Annotated, Any, TypeVar
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from pydantic import Field, SecretStr, ValidationError, field_validator, model_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict
from sqlalchemy.engine import make_url

from shared.db.urls import masked_url, url_passwords
from shared.errors import ConfigError

ENV_PREFIX = "DROPWATCH_"
_HHMM = re.compile(r"^([01]\d|2[0-3]):[0-5]\d$")

CsvStr = Annotated[tuple[str, ...], NoDecode]
CsvInt = Annotated[tuple[int, ...], NoDecode]
CsvFloat = Annotated[tuple[float, ...], NoDecode]


def _split_csv(value: Any) -> Any:
    if isinstance(value, str):
        return tuple(part.strip() for part in value.split(",") if part.strip())
    return value


class Settings(BaseSettings):
    """Settings every service shares: database, pool, metrics port, market and buckets."""

    model_config = SettingsConfigDict(env_prefix=ENV_PREFIX, frozen=True, extra="ignore")

    # --- database -------------------------------------------------------------------------
    database_url: SecretStr | None = Field(
        default=None,
        description="libpq URL of PostgreSQL; unset = embedded PostgreSQL under data_dir.",
    )
    data_dir: Path = Field(default=Path(".dropwatch"), description="Local state for `make run`.")
    db_pool_size: int = Field(default=10, ge=1, le=200, description="Pooled connections.")
    db_max_overflow: int = Field(default=5, ge=0, le=200, description="Extra connections.")
    db_pool_timeout_seconds: float = Field(default=5.0, gt=0, le=120)
    db_statement_timeout_ms: int = Field(default=15_000, ge=0, le=3_600_000)

    # --- observability --------------------------------------------------------------------
    metrics_port: int = Field(default=9100, ge=0, le=65535, description="0 = pick a free port.")
    bind_host: str = Field(
        default="0.0.0.0", description="Interface of /metrics and gRPC (`make run`: 127.0.0.1)."
    )
    log_level: str = Field(default="INFO", pattern=r"(?i)^(DEBUG|INFO|WARNING|ERROR|CRITICAL)$")

    # --- market and discovery buckets -----------------------------------------------------
    market: str = Field(default="nyc", pattern=r"^[a-z][a-z0-9_-]{0,31}$")
    market_timezone: str = Field(default="America/New_York")
    market_bbox: CsvFloat = Field(default=(40.691, -74.030, 40.882, -73.910))
    anchors: CsvStr = Field(default=("15:00", "19:00"), description="Bucket anchor times.")
    prime_anchors: CsvStr = Field(default=("19:00",), description="Anchors counted as prime.")
    party_sizes: CsvInt = Field(default=(2, 4))
    window_days: int = Field(default=14, ge=1, le=60, description="Live days of buckets.")
    cutoff_time: str = Field(
        default="15:00", description="Buckets before today HH:MM (market time) are past."
    )

    @field_validator("market_bbox", "anchors", "prime_anchors", "party_sizes", mode="before")
    @classmethod
    def _csv(cls, value: Any) -> Any:
        return _split_csv(value)

    @field_validator("database_url")
    @classmethod
    def _valid_url(cls, value: SecretStr | None) -> SecretStr | None:
        if value is None or not value.get_secret_value():
            return None
        raw = value.get_secret_value()
        try:
            url = make_url(raw)
        except Exception as exc:  # sqlalchemy raises ArgumentError; never echo the value
            raise ValueError("is not a valid database URL") from exc
        if url.get_backend_name() != "postgresql":
            raise ValueError("must be a postgresql:// URL")
        return value

    @field_validator("market_timezone")
    @classmethod
    def _valid_zone(cls, value: str) -> str:
        try:
            ZoneInfo(value)
        except (ZoneInfoNotFoundError, ValueError) as exc:
            raise ValueError(f"unknown time zone {value!r}") from exc
        return value

    @field_validator("market_bbox")
    @classmethod
    def _valid_bbox(cls, value: tuple[float, ...]) -> tuple[float, ...]:
        if len(value) != 4:
            raise ValueError("needs four numbers: south,west,north,east")
        south, west, north, east = value
        if not (-90 <= south < north <= 90 and -180 <= west < east <= 180):
            raise ValueError("must satisfy south < north and west < east")
        return value

    @field_validator("cutoff_time")
    @classmethod
    def _valid_cutoff(cls, value: str) -> str:
        if not _HHMM.match(value):
            raise ValueError(f"{value!r} is not HH:MM")
        return value

    @field_validator("anchors", "prime_anchors")
    @classmethod
    def _valid_anchors(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        for anchor in value:
            if not _HHMM.match(anchor):
                raise ValueError(f"{anchor!r} is not HH:MM")
        return tuple(sorted(set(value)))

    @field_validator("party_sizes")
    @classmethod
    def _valid_party_sizes(cls, value: tuple[int, ...]) -> tuple[int, ...]:
        if not value or any(not 1 <= size <= 20 for size in value):
            raise ValueError("needs one or more sizes between 1 and 20")
        return tuple(sorted(set(value)))

    @model_validator(mode="after")
    def _anchors_present(self) -> Settings:
        if not self.anchors:
            raise ValueError("anchors: needs at least one HH:MM anchor")
        return self

    # --- derived values -------------------------------------------------------------------
    @property
    def zone(self) -> ZoneInfo:
        return ZoneInfo(self.market_timezone)

    @property
    def anchor_times(self) -> tuple[time, ...]:
        return tuple(time.fromisoformat(a) for a in self.anchors)

    def display_database_url(self) -> str:
        """The database URL with its password masked, safe for logs."""
        if self.database_url is None:
            return f"embedded PostgreSQL in {self.data_dir / 'pgdata'}"
        return masked_url(self.database_url.get_secret_value())

    def secret_values(self) -> list[str]:
        """Every secret in these settings, for the log redaction filter."""
        secrets: list[str] = []
        for name in type(self).model_fields:
            value = getattr(self, name)
            if isinstance(value, SecretStr) and value.get_secret_value():
                raw = value.get_secret_value()
                secrets.append(raw)
                if name == "database_url":
                    secrets += url_passwords(raw)
        return secrets


S = TypeVar("S", bound=Settings)


def load_settings(cls: type[S] = Settings, **overrides: Any) -> S:  # type: ignore[assignment]
    """Build settings from the environment; raise `ConfigError` naming the bad variable."""
    try:
        return cls(**overrides)
    except ValidationError as exc:
        first = exc.errors()[0]
        field = str(first["loc"][0]) if first["loc"] else "settings"
        message = str(first["msg"]).removeprefix("Value error, ")
        raise ConfigError(f"{ENV_PREFIX}{field.upper()}", message) from None
