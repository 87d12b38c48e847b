"""Settings of the daily maintenance run."""

from __future__ import annotations

from pydantic import Field
from pydantic_settings import SettingsConfigDict

from shared.settings import ENV_PREFIX, Settings


class MaintenanceSettings(Settings):
    model_config = SettingsConfigDict(env_prefix=ENV_PREFIX, frozen=True, extra="ignore")

    rolling_days: int = Field(default=14, ge=1, le=90)
    pushgateway_url: str | None = Field(default=None, description="Prometheus Pushgateway.")
    pushgateway_job: str = Field(default="dropwatch_maintenance")
    db_statement_timeout_ms: int = Field(default=600_000, ge=0, le=3_600_000)
    # How far ahead of the database clock a --now may be (clock skew); beyond, it is refused.
    max_clock_skew_seconds: int = Field(default=300, ge=0, le=3600)
