"""The routing table: which backends serve a model, with what weights and policy.

The deployer writes a model's entry into the routes bucket (`gallery_common.routes_kv`), which every
gateway replica follows; the table is kept in memory for the request path and snapshotted to a JSON
file (written atomically), so that a restart, or a start with the bus down, serves the last known routes.
"""

from __future__ import annotations

import os
import tempfile
import threading
from collections.abc import Mapping
from enum import StrEnum
from pathlib import Path
from typing import Literal

import orjson
from pydantic import BaseModel, Field, ValidationError, field_validator, model_validator

from gallery_common.contracts.names import MODEL_NAME_RULE, is_model_name
from gallery_common.errors import InvalidRequest
from gallery_common.projects import DEFAULT_PROJECT, PROJECT_PATTERN


class BackendRole(StrEnum):
    primary = "primary"
    canary = "canary"
    shadow = "shadow"


class Backend(BaseModel):
    """One model server holding one version/variant of the model."""

    id: str = Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")
    url: str = Field(description="base URL of an OIP v2 server, e.g. http://10.0.0.5:8500")
    grpc: str | None = Field(
        default=None,
        pattern=r"^[A-Za-z0-9.\-]+:[0-9]{1,5}$",
        description="host:port of its OIP gRPC server, e.g. 10.0.0.5:8501; without one, the gateway's gRPC "
        "requests reach this backend over REST",
    )
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
    record_outcomes: bool = Field(
        default=False,
        description="keep each answer (request id, version, top class per row) for POST /v2/models/{model}/feedback "
        "to join; such a route's answers never come from the response cache",
    )


class ModelRoute(BaseModel):
    """A model's backends and policy, as PUT on /admin/routes/{model}.

    `project` is the model's project: a caller holding no role there is answered as for a model
    without a route (routes written before projects are in `default`)."""

    project: str = Field(default=DEFAULT_PROJECT, pattern=PROJECT_PATTERN)
    backends: list[Backend] = Field(default_factory=list)
    policy: RoutePolicy = Field(default_factory=RoutePolicy)
    task: Literal["classification", "regression"] = Field(
        default="classification",
        description="what the model answers: scores per class, or a regressor's predictions (a shadow's answers "
        "are compared by top class, or by prediction)",
    )

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
    """The routing table in memory, with a snapshot of it in `path` (JSON, written atomically).

    The table follows the routes bucket (`apply`, then `persist`); `put` and `delete` are an operator's
    changes to this replica alone. `revision` is the highest bucket revision the table has taken in.
    """

    def __init__(self, path: Path) -> None:
        self.path = path
        self._routes: dict[str, ModelRoute] = {}
        self._revision = 0
        self._lock = threading.Lock()  # held for in-memory swaps only: the event loop takes it too
        self._file_lock = threading.Lock()

    def load(self) -> RouteBook:
        """Read the snapshot if there is one; a damaged file stops start-up with its path and reason.

        A snapshot is `{"revision": N, "routes": {model: route}}`; a file written before the bucket
        existed is the bare `{model: route}` map, read as revision 0.
        """
        if not self.path.exists():
            return self
        try:
            raw = orjson.loads(self.path.read_bytes())
            revision, entries = _snapshot_parts(raw)
            routes = {name: ModelRoute.model_validate(entry) for name, entry in entries.items()}
        except (orjson.JSONDecodeError, ValidationError, AttributeError, TypeError) as exc:
            raise ValueError(f"routing file {self.path} is not valid: {exc}") from None
        self._routes, self._revision = routes, revision
        return self

    @property
    def revision(self) -> int:
        return self._revision

    def get(self, model: str) -> ModelRoute | None:
        return self._routes.get(model)

    def all(self) -> dict[str, ModelRoute]:
        return dict(self._routes)

    def put(self, model: str, route: ModelRoute) -> None:
        """Set a model's route on this replica; the snapshot holds it before this returns."""
        check_model_name(model)
        self.apply({model: route})
        self.persist()

    def delete(self, model: str) -> bool:
        if model not in self._routes:
            return False
        self.apply({model: None})
        self.persist()
        return True

    def apply(self, changes: Mapping[str, ModelRoute | None], revision: int = 0) -> None:
        """Take `changes` into the table at once (None removes a model); `persist` writes the snapshot."""
        with self._lock:
            routes = dict(self._routes)
            for model, route in changes.items():
                if route is None:
                    routes.pop(model, None)
                else:
                    routes[model] = route
            self._routes = routes
            self._revision = max(self._revision, revision)

    def persist(self) -> None:
        """Write the table as it is now; of two writers, the later one writes the later table."""
        with self._file_lock:
            with self._lock:
                routes, revision = self._routes, self._revision
            self._save(routes, revision)

    def _save(self, routes: dict[str, ModelRoute], revision: int) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        snapshot = {"revision": revision, "routes": {k: v.model_dump(mode="json") for k, v in routes.items()}}
        data = orjson.dumps(snapshot, option=orjson.OPT_INDENT_2)
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


def _snapshot_parts(raw: object) -> tuple[int, dict[str, object]]:
    """(revision, routes) of a snapshot, either shape."""
    if not isinstance(raw, dict):
        raise TypeError(f"expected a JSON object, got {type(raw).__name__}")
    if set(raw) == {"revision", "routes"} and isinstance(raw["revision"], int) and isinstance(raw["routes"], dict):
        return raw["revision"], raw["routes"]
    return 0, raw
