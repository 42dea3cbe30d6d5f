"""Settings shared by every service, read from `GALLERY_*` environment variables."""

from __future__ import annotations

from enum import StrEnum
from functools import lru_cache
from pathlib import Path
from typing import Annotated, Any, TypeVar

from pydantic import Field, SecretStr, ValidationError, field_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

ENV_PREFIX = "GALLERY_"


class Role(StrEnum):
    """What a bearer token may do; each role includes the ones before it.

    `inference`: infer and read what a model server serves (model metadata, readiness), nothing
    else. `reader`: every read. `writer`: register models and versions, attach artifacts, submit
    training and optimization jobs, set tags and unprotected aliases. `admin`: what decides what
    serves and what the gate lets through: deploy, promote, roll back, scale, weights, routes,
    policies, SLOs, version status, deletions, protected aliases.
    """

    inference = "inference"
    reader = "reader"
    writer = "writer"
    admin = "admin"

    @property
    def rank(self) -> int:
        return _ROLE_RANKS[self]  # every request's access check asks; listing the enum each time cost ~2 us


_ROLE_RANKS = {role: rank for rank, role in enumerate(Role)}


class GallerySettings(BaseSettings):
    """The settings every service and the CLI understand.

    A service subclasses this with its own fields and its default port.
    """

    model_config = SettingsConfigDict(env_prefix=ENV_PREFIX, extra="ignore")

    service_name: str = "gallery"
    home: Path = Field(default=Path(".gallery"), description="Where embedded state lives.")
    nats_url: str = "nats://127.0.0.1:4222"
    nats_user: str | None = Field(
        default=None, description="NATS user; default: the password file of this service under $GALLERY_HOME"
    )
    nats_password: SecretStr | None = Field(default=None, description="password of GALLERY_NATS_USER")
    nats_tls_ca: Path | None = Field(
        default=None, description="CA bundle that signed the NATS server's certificate (tls:// URLs)"
    )
    stream_replicas: int | None = Field(
        default=None, ge=1, le=5, description="JetStream replicas of the event streams (3 on a 3-server cluster)"
    )
    events_max_age_days: float = Field(
        default=90.0, ge=0, description="Lifecycle events older than this are dropped from the stream; 0: never"
    )
    events_max_bytes: int = Field(
        default=1024**3, ge=0, description="The lifecycle stream drops its oldest events past this size; 0: no limit"
    )
    dead_letters_max_age_days: float = Field(
        default=30.0, ge=0, description="Dead letters older than this are dropped; 0: never"
    )
    dead_letters_max_bytes: int = Field(
        default=256 * 1024**2, ge=0, description="The dead-letter stream drops its oldest past this size; 0: no limit"
    )
    database_url: str | None = Field(
        default=None, description="SQLAlchemy URL; default sqlite:///$GALLERY_HOME/<service>.db"
    )
    artifact_root: str | None = Field(
        default=None, description="file:///path or s3://bucket[/prefix]; default file://$GALLERY_HOME/artifacts"
    )
    s3_endpoint: str = "127.0.0.1:9000"
    s3_access_key: SecretStr = SecretStr("")
    s3_secret_key: SecretStr = SecretStr("")
    s3_secure: bool = False
    s3_region: str = "us-east-1"
    otlp_endpoint: str | None = None
    api_tokens: Annotated[dict[str, Role], NoDecode] = Field(
        default_factory=dict, description="token:role pairs, comma separated"
    )
    max_body_bytes: int = Field(
        default=16 * 1024 * 1024, ge=1, description="larger request bodies get 413 before a byte of them is read"
    )
    max_artifact_bytes: int = Field(
        default=2 * 1024**3,
        ge=1,
        description="an artifact larger than this is refused before it is fetched from the store, and a fetch "
        "that grows past it is stopped",
    )
    max_split_bytes: int = Field(
        default=1024**3,
        ge=1,
        description="the most an NPZ file (a split, a data set, a batch job's input) may inflate to; checked "
        "against its declared sizes before anything is inflated",
    )
    evaluation_timeout_s: float = Field(
        default=300.0,
        gt=0,
        description="wall-time limit of one run of an untrusted model (the gate's evaluation, one optimizer "
        "measurement or calibration), in its own process",
    )
    evaluation_memory_bytes: int = Field(
        default=4 * 1024**3,
        ge=256 * 1024**2,
        description="address space that process may map beyond what it maps at its start (RLIMIT_AS)",
    )
    host: str = "127.0.0.1"
    port: int = Field(default=8000, ge=1, le=65535)
    log_level: str = "INFO"

    @field_validator("api_tokens", mode="before")
    @classmethod
    def _parse_tokens(cls, value: object) -> object:
        if not isinstance(value, str):
            return value
        tokens: dict[str, str] = {}
        for pair in filter(None, (p.strip() for p in value.split(","))):
            token, sep, role = pair.rpartition(":")
            if not sep or not token:
                raise ValueError(f"expected token:role, got {pair!r}")
            tokens[token] = role
        return tokens

    @field_validator("nats_url")
    @classmethod
    def _check_nats_url(cls, value: str) -> str:
        for url in value.split(","):
            if not url.strip().startswith(("nats://", "tls://", "ws://", "wss://")):
                raise ValueError(f"not a NATS URL: {url!r}")
        return value

    @field_validator("artifact_root")
    @classmethod
    def _check_artifact_root(cls, value: str | None) -> str | None:
        if value is not None and not value.startswith(("file://", "s3://")):
            raise ValueError("must start with file:// or s3://")
        return value

    @field_validator("log_level")
    @classmethod
    def _check_log_level(cls, value: str) -> str:
        level = value.upper()
        if level not in {"DEBUG", "INFO", "WARNING", "ERROR"}:
            raise ValueError("must be one of DEBUG, INFO, WARNING, ERROR")
        return level

    @property
    def resolved_database_url(self) -> str:
        return self.database_url or f"sqlite:///{self.home.resolve() / (self.service_name + '.db')}"

    @property
    def resolved_artifact_root(self) -> str:
        return self.artifact_root or (self.home.resolve() / "artifacts").as_uri()

    @property
    def auth_enabled(self) -> bool:
        return bool(self.api_tokens)

    @property
    def bind_host(self) -> str:
        """Without tokens a service is open to anyone who reaches it, so it stays on loopback."""
        return self.host if self.auth_enabled else "127.0.0.1"


class JobWorkerSettings(GallerySettings):
    """What a service that takes jobs from a JetStream work queue (trainer, optimizer) adds."""

    job_ack_wait_s: float = Field(
        default=30.0,
        ge=0.5,
        le=3600,
        description="a job whose replica stops sending heartbeats this long goes to another replica",
    )
    job_max_attempts: int = Field(
        default=3, ge=1, le=100, description="times a job is started before it fails because its replicas died"
    )


S = TypeVar("S", bound=GallerySettings)


class SettingsError(SystemExit):
    """Invalid settings: start-up stops with one line naming the variable."""


def load_settings(cls: type[S] = GallerySettings, **overrides: Any) -> S:  # type: ignore[assignment]
    """Read and validate settings; on error raise SettingsError with one clear line."""
    try:
        return cls(**overrides)
    except ValidationError as exc:
        first = exc.errors()[0]
        field = str(first["loc"][0]) if first["loc"] else "?"
        name = ENV_PREFIX + field.upper()
        message = first["msg"].removeprefix("Value error, ")
        raise SettingsError(f"invalid setting {name}: {message}") from None


@lru_cache
def get_settings() -> GallerySettings:
    return load_settings(GallerySettings)
