"""The Gallery web app's settings: where each service answers, and the proxy's limits (`GALLERY_*`)."""

from __future__ import annotations

from pydantic import Field, field_validator

from gallery_common.settings import GallerySettings

# the services the gallery reaches, in the order people meet them; `/api/<name>/...` proxies to each
SERVICES = ("registry", "trainer", "optimizer", "deployer", "monitor", "gateway")


def _http_url(value: str) -> str:
    if not value.startswith(("http://", "https://")):
        raise ValueError(f"not an http(s) URL: {value!r}")
    return value.rstrip("/")


class GalleryWebSettings(GallerySettings):
    """Settings of the gallery web app, read from `GALLERY_*` variables."""

    service_name: str = "gallery"
    port: int = Field(default=8000, ge=1, le=65535)

    registry_url: str = Field(default="http://127.0.0.1:8001", description="The registry behind /api/registry.")
    trainer_url: str = Field(default="http://127.0.0.1:8002", description="The trainer behind /api/trainer.")
    optimizer_url: str = Field(default="http://127.0.0.1:8003", description="The optimizer behind /api/optimizer.")
    deployer_url: str = Field(default="http://127.0.0.1:8004", description="The deployer behind /api/deployer.")
    monitor_url: str = Field(default="http://127.0.0.1:8005", description="The monitor behind /api/monitor.")
    gateway_url: str = Field(default="http://127.0.0.1:8080", description="The gateway behind /api/gateway.")

    proxy_timeout_s: float = Field(
        default=60.0, gt=0, description="How long the gallery waits for a service's answer (connecting: 5 s at most)."
    )
    proxy_max_response_bytes: int = Field(
        default=512 * 1024**2, ge=1, description="A service's answer larger than this is cut off (downloads included)."
    )
    max_examples: int = Field(default=64, ge=1, le=1000, description="Most held-out examples one request may ask for.")
    public_url: str | None = Field(
        default=None,
        description="The Gallery's address as browsers see it (behind a proxy), for the sign-in's redirect URI.",
    )

    session_max_age_s: float = Field(
        default=12 * 3600.0,
        ge=60,
        description=(
            "Sign-in: how long a session lasts at most (refresh tokens renew its access token until then); "
            "also how long an unused session stays in NATS."
        ),
    )
    session_max_bytes: int = Field(
        default=256 * 1024**2, ge=1024**2, description="Sign-in: size of the sessions bucket (the oldest give way)."
    )

    @field_validator("registry_url", "trainer_url", "optimizer_url", "deployer_url", "monitor_url", "gateway_url")
    @classmethod
    def _check_url(cls, value: str) -> str:
        return _http_url(value)

    @field_validator("public_url")
    @classmethod
    def _check_public_url(cls, value: str | None) -> str | None:
        return None if value is None else _http_url(value)

    @property
    def sign_in_enabled(self) -> bool:
        """Single sign-on: GALLERY_OIDC_ISSUER and this Gallery's GALLERY_OIDC_CLIENT_ID are set."""
        return self.oidc_issuer is not None and self.oidc_client_id is not None

    @property
    def service_urls(self) -> dict[str, str]:
        """Base URL of every service the gallery proxies to, by name."""
        return {name: getattr(self, f"{name}_url") for name in SERVICES}
