"""Settings shared by every service, read from `GALLERY_*` environment variables."""

from __future__ import annotations

from enum import StrEnum
from functools import lru_cache
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, TypeVar

from pydantic import Field, PrivateAttr, SecretStr, ValidationError, field_validator, model_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

if TYPE_CHECKING:
    from .oidc import TokenVerifier
    from .projects import ProjectDirectory

ENV_PREFIX = "GALLERY_"
# what an issuer's public keys can verify (settings refuse others; gallery_common.oidc verifies with them),
# here so that reading the settings does not load the OIDC client (httpx, PyJWT, cryptography)
ASYMMETRIC_ALGORITHMS = frozenset({"RS256", "RS384", "RS512", "PS256", "PS384", "PS512", "ES256", "ES384", "ES512"})


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
    project_scope: str = Field(
        default="",
        description="comma-separated projects whose events this process consumes (e.g. 'alpha,beta'); empty: all",
    )
    nats_project_users: str = Field(
        default="",
        description="projects (comma separated) `gallery up` makes NATS users <service>_<project> for",
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
    api_tokens: Annotated[dict[str, list[str]], NoDecode] = Field(
        default_factory=dict,
        description="token:role (every project) or token:project:role pairs, comma separated; a token may repeat",
    )
    oidc_issuer: str | None = Field(
        default=None, description="OIDC issuer URL whose signed JWTs are accepted as bearer tokens (besides api_tokens)"
    )
    oidc_audience: str | None = Field(default=None, description="the aud a token must carry (required with an issuer)")
    oidc_algorithms: Annotated[list[str], NoDecode] = Field(
        default_factory=lambda: ["RS256", "ES256"], description="signature algorithms accepted, comma separated"
    )
    oidc_clock_skew_s: float = Field(default=60.0, ge=0, le=600, description="leeway on exp, nbf and iat")
    oidc_groups_claim: str = Field(default="groups", description="the claim that lists the caller's groups")
    oidc_name_claim: str = Field(
        default="sub", description="the claim that names a caller (oidc:<value>); preferred_username reads better"
    )
    oidc_group_roles: Annotated[dict[str, list[str]], NoDecode] = Field(
        default_factory=dict,
        description="group=role pairs, comma separated; a role is global (reader) or per project (team-a:writer)",
    )
    oidc_jwks_ttl_s: float = Field(default=300.0, gt=0, description="how long the issuer's keys are kept")
    oidc_jwks_refresh_interval_s: float = Field(
        default=30.0, ge=0, description="the fewest seconds between two fetches of the keys for an unknown kid"
    )
    oidc_client_id: str | None = Field(
        default=None, description="this service's client at the issuer (client credentials; the Gallery's sign-in)"
    )
    oidc_client_secret: SecretStr | None = Field(default=None, description="secret of GALLERY_OIDC_CLIENT_ID")
    oidc_client_scope: str | None = Field(
        default=None, description="scope asked with client credentials (Entra ID: api://<app>/.default)"
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

    _token_verifier: TokenVerifier | None = PrivateAttr(default=None)
    _token_grants: dict[str, tuple[Role | None, dict[str, Role]]] | None = PrivateAttr(default=None)
    _project_directory: ProjectDirectory | None = PrivateAttr(default=None)

    @field_validator("api_tokens", mode="before")
    @classmethod
    def _parse_tokens(cls, value: object) -> object:
        from .projects import RoleGrant

        if isinstance(value, str):
            pairs: dict[str, list[str]] = {}
            for pair in filter(None, (p.strip() for p in value.split(","))):
                token, sep, grant = pair.partition(":")
                if not sep or not token or not grant:
                    raise ValueError(f"expected token:role or token:project:role, got {pair!r}")
                pairs.setdefault(token, []).append(grant)
            value = pairs
        if isinstance(value, dict):
            value = {token: [grants] if isinstance(grants, str) else list(grants) for token, grants in value.items()}
            for grants in value.values():
                for grant in grants:
                    RoleGrant.parse(str(grant))
        return value

    @field_validator("oidc_algorithms", mode="before")
    @classmethod
    def _parse_algorithms(cls, value: object) -> object:
        if isinstance(value, str):
            value = [a.strip() for a in value.split(",") if a.strip()]
        if isinstance(value, list):
            refused = [a for a in value if a not in ASYMMETRIC_ALGORITHMS]
            if refused:
                raise ValueError(
                    f"{', '.join(map(str, refused))} cannot be verified with an issuer's public keys; "
                    f"use {', '.join(sorted(ASYMMETRIC_ALGORITHMS))}"
                )
            if not value:
                raise ValueError("name at least one algorithm (RS256, ES256)")
        return value

    @field_validator("oidc_group_roles", mode="before")
    @classmethod
    def _parse_group_roles(cls, value: object) -> object:
        if not isinstance(value, str):
            return value
        grants: dict[str, list[str]] = {}
        for pair in filter(None, (p.strip() for p in value.split(","))):
            group, sep, role = pair.rpartition("=")
            if not sep or not group or not role:
                raise ValueError(f"expected group=role or group=project:role, got {pair!r}")
            grants.setdefault(group, []).append(role)
        return grants

    @model_validator(mode="after")
    def _check_oidc(self) -> GallerySettings:
        if self.oidc_group_roles:
            from .projects import RoleGrant

            for group, roles in self.oidc_group_roles.items():
                for role in roles:
                    try:
                        RoleGrant.parse(role)
                    except ValueError as exc:
                        raise ValueError(f"GALLERY_OIDC_GROUP_ROLES, group {group!r}: {exc}") from None
        if self.oidc_issuer is not None:
            if not self.oidc_issuer.startswith(("https://", "http://")):
                raise ValueError(f"GALLERY_OIDC_ISSUER must be an http(s) URL, got {self.oidc_issuer!r}")
            if not self.oidc_audience:
                raise ValueError("GALLERY_OIDC_AUDIENCE is required with GALLERY_OIDC_ISSUER")
        return self

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
        return bool(self.api_tokens) or self.oidc_issuer is not None

    @property
    def nats_project_user_list(self) -> list[str]:
        """The projects of GALLERY_NATS_PROJECT_USERS, each checked as a project name."""
        from .projects import check_project_name

        return [check_project_name(p.strip()) for p in self.nats_project_users.split(",") if p.strip()]

    def token_grants(self) -> dict[str, tuple[Role | None, dict[str, Role]]]:
        """Each static token's installation-wide role and its roles per project."""
        if self._token_grants is None:
            from .projects import RoleGrant, fold_grants

            self._token_grants = {
                token: fold_grants(RoleGrant.parse(str(g)) for g in grants) for token, grants in self.api_tokens.items()
            }
        return self._token_grants

    def project_directory(self) -> ProjectDirectory:
        """This process's view of the projects and their members (one per settings object; a service
        with a bus follows the `projects` bucket into it)."""
        if self._project_directory is None:
            from .projects import ProjectDirectory

            self._project_directory = ProjectDirectory()
        return self._project_directory

    def token_verifier(self) -> TokenVerifier | None:
        """The verifier of this issuer's tokens (one per settings object, holding its key and token caches)."""
        if self.oidc_issuer is None:
            return None
        if self._token_verifier is None:
            from .oidc import GroupRoles, OidcConfig, TokenVerifier
            from .projects import RoleGrant

            assert self.oidc_audience is not None
            config = OidcConfig(
                issuer=self.oidc_issuer,
                audience=self.oidc_audience,
                algorithms=tuple(self.oidc_algorithms),
                clock_skew_s=self.oidc_clock_skew_s,
                groups_claim=self.oidc_groups_claim,
                name_claim=self.oidc_name_claim,
                group_roles=GroupRoles(
                    {group: tuple(RoleGrant.parse(r) for r in roles) for group, roles in self.oidc_group_roles.items()}
                ),
                jwks_ttl_s=self.oidc_jwks_ttl_s,
                refresh_interval_s=self.oidc_jwks_refresh_interval_s,
            )
            self._token_verifier = TokenVerifier(config)
        return self._token_verifier

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
        message = first["msg"].removeprefix("Value error, ")
        if not first["loc"]:  # a check across fields: its message names the variables
            raise SettingsError(f"invalid settings: {message}") from None
        name = ENV_PREFIX + str(first["loc"][0]).upper()
        raise SettingsError(f"invalid setting {name}: {message}") from None


@lru_cache
def get_settings() -> GallerySettings:
    return load_settings(GallerySettings)
