"""Each model's deployment policy: traffic for a canary, replicas, resources, GPU, batching, whether the
gateway keeps answers for feedback, and what an optimized variant's quality breach does.

Fields left unset fall back to the deployer's settings, so a policy only says what differs.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field
from sqlalchemy import JSON, Column
from sqlalchemy.engine import Engine
from sqlmodel import Field as SQLField
from sqlmodel import Session, SQLModel

from ..modelserver.providers import OpenVinoDevice, ProviderName
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
    execution_providers: list[ProviderName] = Field(
        default_factory=list,
        description="ONNX Runtime execution providers the model server tries in order (tensorrt, cuda, openvino, "
        "cpu), the CPU always last; empty: CUDA where the server's ONNX Runtime has it, else the CPU",
    )
    openvino_device_type: OpenVinoDevice = Field(default="CPU", description="where OpenVINO runs: CPU, GPU or NPU")
    tensorrt_fp16: bool = Field(default=True, description="TensorRT may build FP16 kernels")
    on_variant_breach: Literal["serve_fp32", "roll_back"] = Field(
        default="serve_fp32",
        description="what the deployer does when the answers of an optimized variant (INT8, pruned, distilled) break "
        "the model's quality SLO: serve the version's own FP32 model instead (a rolling update; should FP32 break it "
        "too, the version is rolled back), or roll the version back at once; applies at once",
    )
    record_outcomes: bool = Field(
        default=False,
        description="the gateway keeps every answer for feedback (POST /v2/models/{model}/feedback), which the "
        "monitor turns into online quality; applies to the route at once; answers then never come from the cache",
    )

    def provider_env(self) -> dict[str, str]:
        """The model server's GALLERY_* settings for the providers' options that differ from its defaults."""
        env: dict[str, str] = {}
        if self.openvino_device_type != "CPU":
            env["GALLERY_OPENVINO_DEVICE_TYPE"] = self.openvino_device_type
        if not self.tensorrt_fp16:
            env["GALLERY_TENSORRT_FP16"] = "false"
        return env

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
