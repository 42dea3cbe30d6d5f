"""What the registry takes in and gives out: `XCreate` / `XUpdate` / `XPublic` pydantic models.

Table rows never leave the store; every store call answers with one of these. What its readers get back
(`ModelPublic`, `VersionPublic` with its `ArtifactPublic`s, `AliasPublic`) is defined once in
`gallery_common.contracts.registry`, shared with the REST client, and re-exported here.
"""

from __future__ import annotations

import re
from datetime import datetime
from enum import StrEnum
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

from gallery_common.contracts.refs import FederatedLineage
from gallery_common.contracts.registry import (
    TAG_KEY_PATTERN,
    TAG_VALUE_MAX,
    AliasPublic,
    ArtifactPublic,
    ArtifactRole,
    ModelPublic,
    Tags,
    VersionPublic,
    VersionStatus,
)
from gallery_common.errors import InvalidRequest
from gallery_common.events import NAME_PATTERN, ArtifactRef, Lineage, Signature
from gallery_common.projects import PROJECT_PATTERN

__all__ = [
    "ALIAS_PATTERN",
    "AliasChange",
    "AliasPublic",
    "AliasSet",
    "ArtifactPublic",
    "ArtifactRole",
    "LineagePublic",
    "LineageStep",
    "ModelCreate",
    "ModelOrder",
    "ModelPage",
    "ModelPublic",
    "ModelQuery",
    "ModelUpdate",
    "Tags",
    "ValidationPolicy",
    "ValidationPolicyUpdate",
    "VersionCreate",
    "VersionOrder",
    "VersionPage",
    "VersionPublic",
    "VersionQuery",
    "VersionStatus",
    "VersionUpdate",
    "check_tag",
]

ALIAS_PATTERN = r"^[A-Za-z][A-Za-z0-9_-]{0,63}$"


def check_tag(key: str, value: str) -> None:
    """Raise InvalidRequest unless `key` and `value` make a valid tag (what `Tags` enforces)."""
    if not re.fullmatch(TAG_KEY_PATTERN, key):
        raise InvalidRequest(f"tag key {key!r} is invalid: 1 to 128 of letters, digits, '_', '.', ':', '/', '-'")
    if len(value) > TAG_VALUE_MAX:
        raise InvalidRequest(f"tag {key!r}: a value holds at most {TAG_VALUE_MAX} characters")


class _Input(BaseModel):
    model_config = ConfigDict(extra="forbid")


class ModelCreate(_Input):
    name: str = Field(pattern=NAME_PATTERN, description="unique; letters, digits, '_', '.', '-'")
    description: str | None = Field(default=None, max_length=10_000)
    owner: str | None = Field(default=None, max_length=256)
    tags: Tags = Field(default_factory=dict)
    project: str | None = Field(
        default=None,
        pattern=PROJECT_PATTERN,
        description="the project the model belongs to, fixed from now on; left out: the X-Gallery-Project "
        "header, else the caller's one project, else `default`",
    )


class ModelUpdate(_Input):
    """Fields left out stay as they are; `tags` replaces every tag when given."""

    description: str | None = Field(default=None, max_length=10_000)
    owner: str | None = Field(default=None, max_length=256)
    tags: Tags | None = None


class ModelOrder(StrEnum):
    name = "name"
    created = "created"
    updated = "updated"


class ModelQuery(BaseModel):
    """A model search: every given filter must match."""

    name_contains: str | None = None
    name_like: str | None = Field(default=None, description="SQL LIKE pattern ('%' and '_'), case-sensitive")
    name_ilike: str | None = None
    name_equals: str | None = None
    owner: str | None = None
    tags: dict[str, str | None] = Field(default_factory=dict, description="key -> value, or None for 'has key'")
    tags_not: dict[str, str] = Field(default_factory=dict, description="key -> value the tag must not have")
    projects: list[str] | None = Field(default=None, description="only models of these projects (None: any)")
    order_by: ModelOrder = ModelOrder.name
    descending: bool = False
    limit: int = Field(default=100, ge=1, le=1000)
    offset: int = Field(default=0, ge=0)


class ModelPage(BaseModel):
    models: list[ModelPublic]
    next_page_token: str | None = Field(description="pass as page_token for the next page; null on the last")


class VersionCreate(_Input):
    """A new version of a model; the registry numbers it and, unless `semver` is given, versions it."""

    semver: str | None = Field(default=None, description="explicit SemVer; must be greater than the latest")
    description: str | None = Field(default=None, max_length=10_000)
    signature: Signature | None = None
    metrics: dict[str, float] = Field(default_factory=dict)
    tags: Tags = Field(default_factory=dict)
    lineage: Lineage = Field(default_factory=Lineage)
    run_id: str | None = Field(default=None, max_length=256)
    source_event_id: str | None = Field(
        default=None, max_length=256, description="id of the model.trained event; registering it twice is a no-op"
    )
    source: str | None = Field(default=None, max_length=2048, description="where the model came from (a URI)")
    task: Literal["classification", "regression"] | None = None
    class_names: list[str] | None = None
    artifacts: dict[ArtifactRole, ArtifactRef] = Field(default_factory=dict)


class VersionUpdate(_Input):
    """Fields left out stay as they are; `tags` replaces every tag when given."""

    status: VersionStatus | None = None
    description: str | None = Field(default=None, max_length=10_000)
    tags: Tags | None = None


class VersionOrder(StrEnum):
    version = "version"
    created = "created"
    updated = "updated"


class VersionQuery(BaseModel):
    """A version search: every given filter must match."""

    name: str | None = None
    name_like: str | None = None
    version: int | None = None
    run_id: str | None = None
    source: str | None = None
    status: VersionStatus | None = None
    tags: dict[str, str | None] = Field(default_factory=dict, description="key -> value, or None for 'has key'")
    tags_not: dict[str, str] = Field(default_factory=dict, description="key -> value the tag must not have")
    projects: list[str] | None = Field(default=None, description="only versions of these projects' models (None: any)")
    order_by: VersionOrder = VersionOrder.version
    descending: bool = True
    limit: int = Field(default=100, ge=1, le=1000)
    offset: int = Field(default=0, ge=0)


class VersionPage(BaseModel):
    versions: list[VersionPublic]
    next_page_token: str | None


class AliasSet(_Input):
    version: int = Field(ge=1)
    reason: str | None = Field(default=None, max_length=2000)


class AliasChange(BaseModel):
    """One move of an alias; `to_version` is null when the alias was deleted."""

    alias: str
    from_version: int | None
    to_version: int | None
    actor: str
    reason: str | None
    at: datetime


class LineageStep(BaseModel):
    version: int
    semver: str
    run_id: str | None
    training_job_id: str | None
    dataset_fingerprint: str | None
    config_hash: str | None
    parent_version: int | None
    federation: FederatedLineage | None = Field(default=None, description="a federated version's sites and rounds")


class LineagePublic(BaseModel):
    """A version and its ancestors, newest first; stops at a parent that no longer exists."""

    name: str
    version: int
    chain: list[LineageStep]
    missing_parent: int | None = Field(default=None, description="a parent that was deleted, ending the chain")


class ValidationPolicyUpdate(_Input):
    """The validation gate's criteria for one model."""

    min_metrics: dict[str, float] = Field(default_factory=lambda: {"accuracy": 0.7})
    max_metrics: dict[str, float] = Field(default_factory=lambda: {"latency_p99_ms": 50.0})
    champion_alias: str = Field(default="production", pattern=ALIAS_PATTERN)
    champion_metric: str = "accuracy"
    champion_tolerance: float = Field(default=0.01, ge=0, description="how much worse the challenger may be")


class ValidationPolicy(ValidationPolicyUpdate):
    """The policy in force; `updated_at` is null while the defaults apply."""

    model_config = ConfigDict(extra="ignore")

    updated_at: datetime | None = None

    @classmethod
    def defaults_for(cls, task: str | None) -> ValidationPolicy:
        """The policy of a model that set none. A classifier: accuracy >= 0.7, compared with the champion on
        accuracy. A regressor, which has no accuracy: r2 >= 0.5 (scale-free, as accuracy is), compared on r2."""
        if task == "regression":
            return cls(min_metrics={"r2": 0.5}, champion_metric="r2")
        return cls()
