"""Settings of the poller: the provider, scheduling, request budget and health thresholds."""

from __future__ import annotations

import ipaddress
from typing import Literal
from urllib.parse import urlsplit

from pydantic import Field, SecretStr, field_validator, model_validator
from pydantic_settings import SettingsConfigDict

from shared.settings import ENV_PREFIX, Settings


class PollerSettings(Settings):
    """Everything the poller reads from `DROPWATCH_*` variables."""

    model_config = SettingsConfigDict(env_prefix=ENV_PREFIX, frozen=True, extra="ignore")

    metrics_port: int = Field(default=9101, ge=0, le=65535)
    health_port: int = Field(default=50052, ge=0, le=65535, description="gRPC health service.")

    # --- provider -------------------------------------------------------------------------
    provider: str = Field(default="resy", pattern=r"^resy$")
    resy_base_url: str = Field(default="https://api.resy.com", pattern=r"^https?://")
    resy_api_key: SecretStr | None = None
    resy_auth_token: SecretStr | None = None
    per_page: int = Field(default=100, ge=1, le=200)
    max_pages: int = Field(default=5, ge=1, le=50)
    search_window_hours: int = Field(default=2, ge=0, le=12, description="anchor +/- hours.")
    request_timeout_seconds: float = Field(default=10.0, gt=0, le=120)
    requests_per_second: float = Field(
        default=5.0, gt=0, le=1000, description="For the market: all replicas together."
    )
    # A provider counts requests per second in a window, not on average: with a burst of 1 the
    # market's requests are paced 1/rate apart, so no 1 s window holds more than the rate.
    request_burst: float = Field(
        default=1.0, ge=1, le=1000, description="Requests the market may send at once."
    )
    max_attempts: int = Field(default=4, ge=1, le=10, description="Tries per request.")
    backoff_base_seconds: float = Field(default=0.5, gt=0, le=30)
    # Bounds on what one answer may hold; any excess makes the whole fetch unhealthy.
    max_body_bytes: int = Field(
        default=8 * 1024 * 1024,
        ge=1024,
        le=256 * 1024 * 1024,
        description="Largest response body after decompression (a page of 100 venues is ~1 MB).",
    )
    max_hits_per_page: int = Field(default=200, ge=1, le=10_000, description="Venues per page.")
    max_slots_per_venue: int = Field(default=500, ge=1, le=100_000, description="Per venue.")

    # --- scheduling -----------------------------------------------------------------------
    cooldown_seconds: float = Field(default=30.0, gt=0, le=3600)
    concurrency: int = Field(default=8, ge=1, le=64, description="Buckets in flight.")
    tick_seconds: float = Field(default=2.0, gt=0, le=60)
    poll_deadline_seconds: float = Field(default=20.0, gt=0, le=600)
    lease_seconds: float = Field(default=25.0, gt=0, le=3600)
    shutdown_grace_seconds: float = Field(default=10.0, ge=0, le=300)
    # Change-rate-aware scheduling (services/poller/policy.py); `fixed` is the cooldown above.
    schedule: Literal["adaptive", "fixed"] = "adaptive"
    min_interval_seconds: float = Field(default=1.0, ge=0.1, le=600)
    max_interval_seconds: float = Field(
        default=60.0, ge=1, le=3600, description="Every bucket is polled at least this often."
    )
    change_rate_half_life_seconds: float = Field(default=600.0, ge=10, le=86400)
    release_window_before_seconds: float = Field(default=30.0, ge=0, le=3600)
    release_window_after_seconds: float = Field(default=120.0, ge=0, le=3600)

    # --- fetch plausibility (soft-block detection) -----------------------------------------
    soft_block_min_previous: int = Field(default=10, ge=1)
    soft_block_shrink_ratio: float = Field(default=0.5, gt=0, lt=1)
    sellout_confirm_seconds: float = Field(
        default=1800.0, ge=0, le=86400, description="How long a kind stays empty before a sell-out."
    )
    sellout_confirm_polls: int = Field(
        default=3, ge=2, le=100, description="Empty answers of a kind before a sell-out."
    )

    @field_validator("resy_base_url")
    @classmethod
    def _https_unless_loopback(cls, value: str) -> str:
        """The provider's answers (and our API key) cross the internet: plain http only to a
        loopback address (the simulator, tests)."""
        parts = urlsplit(value)
        if not parts.hostname:
            raise ValueError("has no host")
        if parts.scheme == "https" or (parts.scheme == "http" and _is_loopback(parts.hostname)):
            return value
        raise ValueError("must be an https:// URL (plain http only to a loopback address)")

    @model_validator(mode="after")
    def _lease_outlives_poll(self) -> PollerSettings:
        if self.lease_seconds <= self.poll_deadline_seconds:
            raise ValueError("lease_seconds: must be longer than DROPWATCH_POLL_DEADLINE_SECONDS")
        if self.min_interval_seconds > self.max_interval_seconds:
            raise ValueError("min_interval_seconds: must not exceed DROPWATCH_MAX_INTERVAL_SECONDS")
        return self


def _is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False
