"""The shapes lifecycle events and the registry's records share: an artifact by URI and digest, a model's
tensor signature and its lineage.

They live here, not in `gallery_common.events` (which re-exports them), so that the registry's contract
(`contracts.registry`) can build on them without importing the events module that imports this package.
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

SHA256_PATTERN = r"^[0-9a-f]{64}$"


class ArtifactRef(BaseModel):
    """A pointer to bytes in an artifact store, with the digest that proves them."""

    model_config = ConfigDict(frozen=True)

    uri: str = Field(pattern=r"^(file|s3)://")
    sha256: str = Field(pattern=SHA256_PATTERN)
    size: int | None = Field(default=None, ge=0)
    format: str | None = None


class TensorSpec(BaseModel):
    name: str
    datatype: str
    shape: list[int]


class Signature(BaseModel):
    """Input and output tensors of a model; -1 marks a variable dimension."""

    inputs: list[TensorSpec]
    outputs: list[TensorSpec]


class FederatedSite(BaseModel):
    """A site that trained part of a federated model: its name and a fingerprint of its data, never data."""

    name: str
    data_fingerprint: str | None = Field(default=None, pattern=SHA256_PATTERN)
    examples: int | None = Field(default=None, ge=0, description="its training rows, as it reported them")
    rounds: int | None = Field(default=None, ge=0, description="the rounds it returned weights in")


class PrivacyBudget(BaseModel):
    """A differentially private training's mechanism and the (epsilon, delta) it spent."""

    mechanism: str
    noise_multiplier: float = Field(gt=0)
    clipping_norm: float = Field(gt=0)
    epsilon: float = Field(ge=0)
    delta: float = Field(gt=0, lt=1)


class FederatedLineage(BaseModel):
    """How a federated model was trained: the sites, the rounds, the aggregation strategy, whether the
    updates were securely aggregated and, with differential privacy, the privacy budget."""

    kind: Literal["federated"] = "federated"
    strategy: str
    rounds: int = Field(ge=0)
    min_sites: int = Field(ge=1)
    sites: list[FederatedSite]
    privacy: PrivacyBudget | None = None
    secure_aggregation: bool = Field(default=False, description="the sites' weights were masked (SecAgg+)")


class Lineage(BaseModel):
    training_job_id: str | None = None
    dataset_fingerprint: str | None = None
    config_hash: str | None = None
    parent_version: int | None = None
    federation: FederatedLineage | None = None
