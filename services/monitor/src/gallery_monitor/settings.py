"""The monitor's settings: what it scrapes, how long it remembers, and the default SLOs (`GALLERY_*`)."""

from __future__ import annotations

from typing import Annotated

from pydantic import Field, SecretStr, ValidationInfo, field_validator
from pydantic_settings import NoDecode

from gallery_common.leader import LeaderSettings


def _http_url(value: str) -> str:
    if not value.startswith(("http://", "https://")):
        raise ValueError(f"not an http(s) URL: {value!r}")
    return value.rstrip("/")


class MonitorSettings(LeaderSettings):
    """Settings of the monitor service, read from `GALLERY_*` variables."""

    service_name: str = "monitor"
    port: int = Field(default=8005, ge=1, le=65535)

    registry_url: str = Field(default="http://127.0.0.1:8001", description="Where training references come from.")
    registry_token: SecretStr | None = Field(default=None, description="Bearer token for the registry (reader).")
    deployer_url: str | None = Field(
        default="http://127.0.0.1:8004", description="Model servers are discovered from its deployments; empty: off."
    )
    gateway_url: str | None = Field(
        default="http://127.0.0.1:8080", description="Scraped for cache figures; empty: off."
    )
    scrape_targets: Annotated[list[str], NoDecode] = Field(
        default_factory=list, description="More base URLs whose /metrics are scraped, comma separated."
    )
    scrape_token: SecretStr | None = Field(
        default=None, description="Bearer token (reader) for the deployer's API and every /metrics scraped."
    )
    scrape_interval_s: float = Field(default=5.0, gt=0, le=3600)
    scrape_timeout_s: float = Field(default=2.0, gt=0, description="Limit for one target's /metrics.")
    series_retention_s: float = Field(default=900.0, gt=0, description="How far back the in-memory series reach.")

    slo_p99_ms: float = Field(default=100.0, gt=0, description="Default p99 latency SLO per model.")
    slo_error_rate: float = Field(default=0.01, ge=0, le=1, description="Default error-rate SLO per model.")
    slo_drift_psi: float = Field(default=0.2, gt=0, description="Default largest feature PSI before drift.")
    slo_drift_min_samples: int = Field(default=200, ge=10, description="Samples a drift window needs.")
    slo_window_s: float = Field(default=60.0, gt=0, description="Default SLO and drift window.")
    slo_min_online_accuracy: float | None = Field(
        default=None, ge=0, le=1, description="Default floor of a version's online accuracy (feedback labels); off."
    )
    slo_max_accuracy_drop: float | None = Field(
        default=None, ge=0, le=1, description="Default largest fall of online accuracy below the gate's; off."
    )
    slo_max_online_rmse: float | None = Field(
        default=None, gt=0, description="Default ceiling of a regressor's online rmse (feedback values); off."
    )
    slo_max_rmse_ratio: float | None = Field(
        default=None, ge=1, description="Default largest ratio of online rmse to the gate's (1.2: 20 % worse); off."
    )
    slo_quality_min_rows: int = Field(
        default=50, ge=1, description="Rows with feedback a version needs in the quality window before it is judged."
    )
    slo_quality_window_s: float = Field(
        default=3600.0, gt=0, description="Default window online quality is judged over."
    )
    outcome_retention_s: float = Field(
        default=7 * 86400.0, gt=0, description="How long outcomes (feedback joined to answers) are kept for quality."
    )
    slo_min_requests: int = Field(
        default=20, ge=1, description="Requests a version needs in the window before its p99 and error rate count."
    )
    drift_ks_alpha: float = Field(
        default=0.001, gt=0, lt=1, description="KS significance, divided by the number of features (Bonferroni)."
    )
    evaluate_interval_s: float = Field(default=5.0, gt=0, description="How often SLOs and drift are evaluated.")
    text_warn_psi: float = Field(
        default=0.1, gt=0, description="A text input's length or token PSI past which it is a warning (the usual 0.1)."
    )
    text_drift_psi: float = Field(
        default=0.25, gt=0, description="A text input's length or token PSI past which it drifts (the usual 0.25)."
    )
    text_top_tokens: int = Field(
        default=200, ge=1, le=100_000, description="Commonest training tokens the token distribution follows."
    )
    text_max_tokens: int = Field(
        default=256, ge=1, le=100_000, description="Tokens read per sampled or training text; the rest is cut off."
    )

    sample_subject: str = Field(default="inference.sample.>", description="Where the gateway publishes samples.")
    sample_buffer_rows: int = Field(default=20_000, ge=100, description="Sampled rows kept per model version.")
    reference_max_rows: int = Field(
        default=50_000, ge=100, description="Training rows kept as the drift reference (an even subsample)."
    )
    reference_retry_s: float = Field(default=30.0, gt=0, description="Wait before asking again for a missing one.")

    @field_validator("text_drift_psi")
    @classmethod
    def _drift_above_warning(cls, value: float, info: ValidationInfo) -> float:
        warn = info.data.get("text_warn_psi")
        if warn is not None and value <= warn:
            raise ValueError(f"must be above GALLERY_TEXT_WARN_PSI ({warn:g}): past it a text input drifts")
        return value

    @field_validator("registry_url")
    @classmethod
    def _check_registry_url(cls, value: str) -> str:
        return _http_url(value)

    @field_validator("deployer_url", "gateway_url")
    @classmethod
    def _check_optional_url(cls, value: str | None) -> str | None:
        return _http_url(value) if value else None

    @field_validator("scrape_targets", mode="before")
    @classmethod
    def _split_targets(cls, value: object) -> object:
        if isinstance(value, str):
            return [part.strip() for part in value.split(",") if part.strip()]
        return value

    @field_validator("scrape_targets")
    @classmethod
    def _check_targets(cls, value: list[str]) -> list[str]:
        return [_http_url(url) for url in value]

    @field_validator("slo_window_s")
    @classmethod
    def _window_fits_retention(cls, value: float, info: ValidationInfo) -> float:
        retention = info.data.get("series_retention_s")
        if retention is not None and value > retention:
            raise ValueError(f"must not exceed GALLERY_SERIES_RETENTION_S ({retention:g})")
        return value

    @field_validator("outcome_retention_s")
    @classmethod
    def _quality_window_fits_retention(cls, value: float, info: ValidationInfo) -> float:
        window = info.data.get("slo_quality_window_s")
        if window is not None and window > value:
            raise ValueError(f"must be at least GALLERY_SLO_QUALITY_WINDOW_S ({window:g})")
        return value

    @property
    def scrape_headers(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.scrape_token.get_secret_value()}"} if self.scrape_token else {}
