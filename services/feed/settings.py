"""Settings of the feed service."""

from __future__ import annotations

from pydantic import Field, SecretStr
from pydantic_settings import SettingsConfigDict

from shared.settings import ENV_PREFIX, Settings


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
        description="HMAC key for page tokens; set the same value on every replica.",
    )
