"""What the registry's REST API answers, defined once for the registry and every reader of it: a model, a
version with its artifacts by role, an alias, and `RegistryReader`, the reads every way in offers.

The registry's own store, `gallery_common.registry_client.RegistryClient` (over HTTP) and the tests'
in-memory fakes all implement `RegistryReader` (as MLflow's stores implement its `AbstractStore`), so a
caller that only reads, say the deployer checking an event against the system of record, works with any
of them and gets a `VersionPublic`, never a dict to dig in.
"""

from __future__ import annotations

from datetime import datetime
from enum import StrEnum
from typing import Annotated, Any, Protocol

from pydantic import BaseModel, Field, StringConstraints

from .refs import ArtifactRef, Lineage, Signature

TAG_KEY_PATTERN = r"^[A-Za-z0-9_.:/-]{1,128}$"
TAG_VALUE_MAX = 5000

TagKey = Annotated[str, StringConstraints(pattern=TAG_KEY_PATTERN)]
TagValue = Annotated[str, StringConstraints(max_length=TAG_VALUE_MAX)]
Tags = dict[TagKey, TagValue]


class VersionStatus(StrEnum):
    """Where a version stands in validation: pending → validating → validated | rejected → archived."""

    pending = "pending"
    validating = "validating"
    validated = "validated"
    rejected = "rejected"
    archived = "archived"


class ArtifactRole(StrEnum):
    """What an artifact is to its version; one artifact per role."""

    weights = "weights"
    onnx = "onnx"
    int8 = "int8"
    fp16 = "fp16"
    pruned = "pruned"
    distilled = "distilled"
    edge_bundle = "edge_bundle"
    report = "report"
    spec = "spec"
    train_split = "train_split"
    validation_split = "validation_split"
    test_split = "test_split"
    curves = "curves"  # the training curves PNG the trainer attaches to every run
    # what explaining the version's answers needs (gallery_common.explain.profile): the gate attaches it
    explainer = "explainer"
    # the generated model card (Markdown): derived from the version and the model's card text, so the
    # registry replaces it when either changes (the one role that is not immutable)
    model_card = "model-card"


class ModelPublic(BaseModel):
    name: str
    description: str | None
    owner: str | None
    tags: Tags
    created_at: datetime
    updated_at: datetime
    latest_version: int | None = Field(description="highest version number, if any")
    aliases: dict[str, int] = Field(description="alias -> version")
    project: str = Field(default="default", description="the project the model belongs to (fixed when created)")


class ArtifactPublic(ArtifactRef):
    """An artifact the registry holds for a version: the reference, its role and when it was attached."""

    role: ArtifactRole
    created_at: datetime

    @property
    def ref(self) -> ArtifactRef:
        """The plain reference, for events and for comparing with other references."""
        return ArtifactRef(uri=self.uri, sha256=self.sha256, size=self.size, format=self.format)


class VersionPublic(BaseModel):
    name: str = Field(description="the model's name")
    version: int
    semver: str
    status: VersionStatus
    description: str | None
    signature: Signature | None
    metrics: dict[str, float]
    tags: Tags
    lineage: Lineage
    run_id: str | None
    source_event_id: str | None
    source: str | None
    task: str | None
    class_names: list[str] | None
    evaluation_report: dict[str, Any] | None
    rejection_reasons: list[str] | None
    artifacts: dict[ArtifactRole, ArtifactPublic]
    aliases: list[str]
    created_at: datetime
    updated_at: datetime
    project: str = Field(default="default", description="the project of the version's model")

    def artifact(self, role: str) -> ArtifactRef | None:
        """The artifact attached as `role` (the FP32 `onnx`, a variant such as `int8`, a split, ...), or None."""
        try:
            found = self.artifacts.get(ArtifactRole(role))
        except ValueError:
            return None
        return None if found is None else found.ref

    def holds(self, ref: ArtifactRef) -> bool:
        """Whether `ref` (same URI, same sha256) is one of the artifacts attached to this version."""
        return any(a.uri == ref.uri and a.sha256 == ref.sha256 for a in self.artifacts.values())


class AliasPublic(BaseModel):
    name: str
    alias: str
    version: int
    updated_at: datetime
    updated_by: str | None


class RegistryReader(Protocol):
    """Reads of the registry, in process or over HTTP; they block (SQL or HTTP), so call them from a
    worker thread or a plain `def` route. What is missing raises `gallery_common.errors.NotFound`; a
    registry that cannot answer now raises `Unavailable`."""

    def get_model(self, name: str, /) -> ModelPublic:
        """The model `name` with its latest version number and its aliases."""
        ...

    def get_version(self, name: str, version: int, /) -> VersionPublic:
        """Version `version` of model `name`, with its status, metrics and artifacts by role."""
        ...

    def get_version_by_alias(self, name: str, alias: str, /) -> VersionPublic:
        """The version `name@alias` points at."""
        ...
