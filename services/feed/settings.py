"""Settings of the feed service."""

from __future__ import annotations

from pydantic import Field, SecretStr, field_validator
from pydantic_settings import SettingsConfigDict

from shared.settings import ENV_PREFIX, Settings

MIN_SECRET_BYTES = 32


class FeedSettings(Settings):
    model_config = SettingsConfigDict(env_prefix=ENV_PREFIX, frozen=True, extra="ignore")

    feed_port: int = Field(default=50051, ge=0, le=65535, description="gRPC port.")
    metrics_port: int = Field(default=9102, ge=0, le=65535)
    db_statement_timeout_ms: int = Field(default=5_000, ge=0, le=3_600_000)
    max_concurrent_rpcs: int = Field(default=64, ge=1, le=10_000)
    cache_ttl_seconds: float = Field(default=2.0, ge=0, le=2.0, description="0 = no cache.")
    cache_max_mb: int = Field(default=64, ge=1, le=4096, description="Cached answers, in MiB.")
    shutdown_grace_seconds: float = Field(default=5.0, ge=0, le=300)
    page_token_secret: SecretStr | None = Field(
        default=None,
        description="HMAC key for page tokens (32 bytes or more); the same on every replica.",
    )
    page_token_previous_secret: SecretStr | None = Field(
        default=None,
        description="The key before a rotation: its tokens stay valid until it is removed.",
    )
    page_token_ttl_seconds: int = Field(
        default=3600, ge=60, le=7 * 86400, description="How long a page token is accepted."
    )

    max_request_bytes: int = Field(
        default=16 * 1024,
        ge=1024,
        le=4 * 1024 * 1024,
        description="Largest request accepted (the largest valid one is about 5 KiB).",
    )
    feed_auth_secret: SecretStr | None = Field(
        default=None,
        description="Key of the callers' tokens (services/feed/auth.py); unset = no auth.",
    )
    feed_auth_previous_secret: SecretStr | None = Field(
        default=None, description="The key before a rotation: its tokens stay valid."
    )
    feed_reflection: bool = Field(default=True, description="gRPC server reflection.")

    # WatchDrops (services/feed/watch): limits of the streams of one replica.
    watch_max_streams: int = Field(
        default=1_000, ge=1, le=100_000, description="Open WatchDrops streams per replica."
    )
    watch_buffer_messages: int = Field(
        default=1_000,
        ge=100,
        le=100_000,
        description="Messages a stream may have waiting; a consumer further behind is ended."
        " The hub reads at most half of it per page, so a stream that keeps up takes a burst.",
    )
    watch_max_age_seconds: float = Field(
        default=1_800, ge=1, le=86_400, description="A stream is ended (ABORTED) after this."
    )
    watch_default_heartbeat_seconds: int = Field(
        default=15, ge=1, le=300, description="`progress` interval when a request sets none."
    )
    watch_check_seconds: float = Field(
        default=1.0, ge=0.05, le=60, description="Read changes at least this often (no NOTIFY)."
    )
    watch_unavailable_seconds: float = Field(
        default=10.0,
        ge=0.1,
        le=600,
        description="Streams end UNAVAILABLE once the database is unreachable this long.",
    )

    @field_validator(
        "page_token_secret",
        "page_token_previous_secret",
        "feed_auth_secret",
        "feed_auth_previous_secret",
    )
    @classmethod
    def _long_enough(cls, value: SecretStr | None) -> SecretStr | None:
        if value is not None and len(value.get_secret_value().encode()) < MIN_SECRET_BYTES:
            raise ValueError(f"needs at least {MIN_SECRET_BYTES} bytes (openssl rand -hex 32)")
        return value
