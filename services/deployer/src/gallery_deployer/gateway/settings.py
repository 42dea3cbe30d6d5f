"""The gateway's settings, read from `GALLERY_*` environment variables."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import Field, SecretStr

from gallery_common.settings import GallerySettings


class GatewaySettings(GallerySettings):
    """Routing file, time limits, circuit-breaker thresholds, response cache and sampling."""

    service_name: str = "gateway"
    port: int = Field(default=8080, ge=1, le=65535)
    grpc_port: int = Field(
        default=0, ge=0, le=65535, description="also serve OIP v2 over gRPC on this port; 0: no gRPC"
    )
    grpc_forward: Literal["rest", "grpc"] = Field(
        default="rest",
        description="how gRPC requests reach a backend: its REST API (measured cheaper for gateway and model "
        "server alike), or its gRPC address where the route gives one",
    )
    stream_in_flight: int = Field(
        default=64, ge=1, le=4096, description="ModelStreamInfer: requests of one stream forwarded at once"
    )
    routes_file: Path | None = Field(default=None, description="default $GALLERY_HOME/gateway/routes.json")
    request_timeout_s: float = Field(default=2.0, gt=0, description="limit for one attempt at one backend")
    latency_budget_s: float = Field(default=5.0, gt=0, description="limit for all attempts of one request")
    explain_budget_s: float = Field(
        default=60.0,
        gt=0,
        description="limit for all attempts of one explain request; keep it above the model servers' "
        "GALLERY_EXPLAIN_TIMEOUT_S (30 s), so that their own 503 and Retry-After reach the client",
    )
    max_body_bytes: int = Field(default=64 * 1024 * 1024, ge=1, description="larger requests get 413")
    max_connections: int = Field(default=200, ge=1)
    breaker_consecutive_failures: int = Field(default=5, ge=1)
    breaker_error_rate: float = Field(default=0.5, gt=0, le=1)
    breaker_window: int = Field(default=20, ge=2, description="outcomes the error rate is computed over")
    breaker_min_calls: int = Field(default=10, ge=1, description="outcomes needed before the rate can open it")
    breaker_cooldown_s: float = Field(default=5.0, gt=0, description="open time before a half-open probe")
    cache_size: int = Field(default=1024, ge=1, description="responses the in-memory cache keeps")
    cache_ttl_s: float = Field(default=60.0, gt=0)
    cache_max_body_bytes: int = Field(default=1_000_000, ge=1, description="larger answers are not cached")
    redis_url: str | None = Field(default=None, description="redis://host:port/db: share the cache between replicas")
    cold_start_timeout_s: float = Field(default=60.0, gt=0, description="how long a request waits for a wake-up")
    deployer_token: SecretStr | None = Field(default=None, description="bearer token for the deployer's wake call")
    model_server_token: SecretStr | None = Field(
        default=None, description="bearer token sent to model servers that have tokens configured (Kubernetes)"
    )
    sample_rate: float = Field(default=0.01, ge=0, le=1, description="share of requests sent to the monitor")
    usage_report_s: float = Field(
        default=10.0, gt=0, description="how often each replica sends its usage deltas (model.usage events)"
    )
    sample_buffer: int = Field(
        default=10_000, ge=1, description="samples kept while NATS is unreachable (the oldest give way)"
    )
    outcome_ttl_s: float = Field(
        default=86_400.0, gt=0, description="how long answers of routes that record outcomes wait for feedback"
    )
    outcome_max_bytes: int = Field(
        default=256 * 1024 * 1024, ge=1024 * 1024, description="size of the outcome bucket (the oldest give way)"
    )
    outcome_queue: int = Field(
        default=10_000, ge=1, description="answers waiting to be recorded; more are dropped (and counted)"
    )

    @property
    def resolved_routes_file(self) -> Path:
        return self.routes_file or self.home.resolve() / "gateway" / "routes.json"
