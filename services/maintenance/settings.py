"""Settings of the daily maintenance run."""

from __future__ import annotations

from pydantic import Field
from pydantic_settings import SettingsConfigDict

from services.maintenance.store import WindowParams
from shared.settings import ENV_PREFIX, Settings


class MaintenanceSettings(Settings):
    model_config = SettingsConfigDict(env_prefix=ENV_PREFIX, frozen=True, extra="ignore")

    rolling_days: int = Field(default=14, ge=1, le=90)
    pushgateway_url: str | None = Field(default=None, description="Prometheus Pushgateway.")
    pushgateway_job: str = Field(default="dropwatch_maintenance")
    db_statement_timeout_ms: int = Field(default=600_000, ge=0, le=3_600_000)
    # How far ahead of the database clock a --now may be (clock skew); beyond, it is refused.
    max_clock_skew_seconds: int = Field(default=300, ge=0, le=3600)
    # Release windows (docs/architecture.md, Release windows and the shared budget).
    window_min_burst: int = Field(default=3, ge=2, le=1000, description="Drops in a release.")
    window_burst_minutes: int = Field(default=5, ge=1, le=60, description="Gap within one.")
    window_min_days: int = Field(default=3, ge=2, le=90, description="Days a moment recurs.")
    window_drift_minutes: int = Field(default=10, ge=0, le=120, description="Same moment.")
    window_history_days: int = Field(default=28, ge=1, le=366, description="Days looked at.")

    @property
    def window_params(self) -> WindowParams:
        return WindowParams(
            min_burst=self.window_min_burst,
            burst_minutes=self.window_burst_minutes,
            min_days=self.window_min_days,
            drift_minutes=self.window_drift_minutes,
            history_days=self.window_history_days,
        )
