"""Each model's deployment policy: traffic for a canary, replicas, resources, GPU and batching.

Fields left unset fall back to the deployer's settings, so a policy only says what differs.
"""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict, Field
from sqlalchemy import JSON, Column
from sqlalchemy.engine import Engine
from sqlmodel import Field as SQLField
from sqlmodel import Session, SQLModel

from .settings import DeployerSettings


class DeploymentPolicy(BaseModel):
    """How a model's versions are deployed (PUT /api/v1/policies/{model})."""

    model_config = ConfigDict(extra="forbid")

    canary_percent: float | None = Field(default=None, gt=0, lt=100)
    auto_promote: bool | None = None
    replicas: int | None = Field(default=None, ge=1, le=64)
    gpu: bool = False
    gpu_memory_mb: int = Field(default=0, ge=0, description="what one replica needs on a GPU, for bin-packing")
    cpu: str = Field(default="1", description="Kubernetes CPU request per replica")
    memory: str = Field(default="1Gi", description="Kubernetes memory request per replica")
    max_batch_size: int | None = Field(default=None, ge=1, le=65536)
    max_queue_delay_ms: float | None = Field(default=None, ge=0, le=60_000)
    intra_op_threads: int = Field(default=0, ge=0)

    def resolved(self, settings: DeployerSettings) -> DeploymentPolicy:
        """This policy with the settings' defaults filled in."""
        return self.model_copy(
            update={
                "canary_percent": self.canary_percent or settings.canary_percent,
                "auto_promote": settings.auto_promote if self.auto_promote is None else self.auto_promote,
                "replicas": self.replicas or settings.replicas,
                "max_batch_size": self.max_batch_size or settings.max_batch_size,
                "max_queue_delay_ms": (
                    settings.max_queue_delay_ms if self.max_queue_delay_ms is None else self.max_queue_delay_ms
                ),
            }
        )


class PolicyRecord(SQLModel, table=True):
    __tablename__ = "deployer_policy"

    model: str = SQLField(primary_key=True)
    policy: dict[str, Any] = SQLField(sa_column=Column(JSON, nullable=False))


class PolicyStore:
    def __init__(self, engine: Engine) -> None:
        self.engine = engine

    def get(self, model: str) -> DeploymentPolicy:
        with Session(self.engine) as session:
            row = session.get(PolicyRecord, model)
            return DeploymentPolicy.model_validate(row.policy) if row else DeploymentPolicy()

    def put(self, model: str, policy: DeploymentPolicy) -> DeploymentPolicy:
        with Session(self.engine) as session:
            session.merge(PolicyRecord(model=model, policy=policy.model_dump(mode="json", exclude_defaults=True)))
            session.commit()
        return policy
