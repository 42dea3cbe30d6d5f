"""The routing table: which backends serve a model, with what weights and policy.

The deployer replaces a model's entry over the admin API; the table is kept in memory for the
request path and persisted to a JSON file (written atomically) so that a restart keeps it.
"""

from __future__ import annotations

import os
import tempfile
import threading
from enum import StrEnum
from pathlib import Path

import orjson
from pydantic import BaseModel, Field, ValidationError, field_validator, model_validator

from gallery_common.contracts.names import MODEL_NAME_RULE, is_model_name
from gallery_common.errors import InvalidRequest


class BackendRole(StrEnum):
    primary = "primary"
    canary = "canary"
    shadow = "shadow"


class Backend(BaseModel):
    """One model server holding one version/variant of the model."""

    id: str = Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")
    url: str = Field(description="base URL of an OIP v2 server, e.g. http://10.0.0.5:8500")
    version: str = ""
    variant: str = ""
    weight: float = Field(default=1.0, ge=0, description="share of traffic; 0 = fallback only")
    role: BackendRole = BackendRole.primary
    fallback_order: int = Field(default=0, description="lower is tried first when another link fails")

    @field_validator("url")
    @classmethod
    def _check_url(cls, value: str) -> str:
        if not value.startswith(("http://", "https://")):
            raise ValueError("must start with http:// or https://")
        return value.rstrip("/")


class RoutePolicy(BaseModel):
    """How traffic is split and what the gateway does besides forwarding."""

    sticky_header: str | None = "x-gallery-session"
    sticky_cookie: str | None = None
    shadow_percent: float = Field(default=0.0, ge=0, le=100)
    cache_enabled: bool = False
    asleep: bool = Field(default=False, description="scaled to zero: wake_url starts a replica on the next request")
    wake_url: str | None = Field(default=None, description="POSTed (once for all waiting requests) to wake the model")


class ModelRoute(BaseModel):
    """A model's backends and policy, as PUT on /admin/routes/{model}."""

    backends: list[Backend] = Field(default_factory=list)
    policy: RoutePolicy = Field(default_factory=RoutePolicy)

    @model_validator(mode="after")
    def _check_backends(self) -> ModelRoute:
        ids = [b.id for b in self.backends]
        if len(set(ids)) != len(ids):
            raise ValueError(f"backend ids must be unique, got {ids}")
        if self.policy.asleep:
            if not self.policy.wake_url:
                raise ValueError("a route that is asleep needs a wake_url")
            return self
        if not any(b.weight > 0 for b in self.serving):
            raise ValueError("backends: at least one primary or canary backend needs a weight above 0")
        if len(self.backends) - len(self.serving) > 1:
            raise ValueError("at most one shadow backend per model")
        return self

    @property
    def serving(self) -> list[Backend]:
        """Backends whose answers reach clients (primary and canary)."""
        return [b for b in self.backends if b.role is not BackendRole.shadow]

    @property
    def shadow(self) -> Backend | None:
        return next((b for b in self.backends if b.role is BackendRole.shadow), None)


def check_model_name(model: str) -> None:
    if not is_model_name(model):
        raise InvalidRequest(f"model name {model!r} must be {MODEL_NAME_RULE}")


class RouteBook:
    """The routing table in memory, persisted to `path` on every change."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._routes: dict[str, ModelRoute] = {}
        self._lock = threading.Lock()

    def load(self) -> RouteBook:
        """Read the file if there is one; a damaged file stops start-up with its path and reason."""
        if not self.path.exists():
            return self
        try:
            raw = orjson.loads(self.path.read_bytes())
            routes = {name: ModelRoute.model_validate(entry) for name, entry in raw.items()}
        except (orjson.JSONDecodeError, ValidationError, AttributeError) as exc:
            raise ValueError(f"routing file {self.path} is not valid: {exc}") from None
        self._routes = routes
        return self

    def get(self, model: str) -> ModelRoute | None:
        return self._routes.get(model)

    def all(self) -> dict[str, ModelRoute]:
        return dict(self._routes)

    def put(self, model: str, route: ModelRoute) -> None:
        check_model_name(model)
        with self._lock:
            routes = {**self._routes, model: route}
            self._save(routes)
            self._routes = routes

    def delete(self, model: str) -> bool:
        with self._lock:
            if model not in self._routes:
                return False
            routes = {k: v for k, v in self._routes.items() if k != model}
            self._save(routes)
            self._routes = routes
            return True

    def _save(self, routes: dict[str, ModelRoute]) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        data = orjson.dumps({k: v.model_dump(mode="json") for k, v in routes.items()}, option=orjson.OPT_INDENT_2)
        fd, tmp = tempfile.mkstemp(dir=self.path.parent, prefix=".routes-", suffix=".json")
        try:
            with os.fdopen(fd, "wb") as fh:
                fh.write(data)
                fh.flush()
                os.fsync(fh.fileno())
            os.replace(tmp, self.path)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise
