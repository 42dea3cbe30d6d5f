"""The runtime interface the deployer drives: run, update, scale and remove model-server replicas.

A *deployment* here is one model version and variant served by N replicas of the model server
(`python -m gallery_deployer.modelserver`). The deployer owns which deployments exist and how
traffic is split between them; a runtime only makes the replicas exist and says where they answer.
"""

from __future__ import annotations

import json
import re
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Protocol, runtime_checkable

_ID = re.compile(r"[^a-z0-9-]+")


def deployment_id(model: str, version: int | str, variant: str) -> str:
    """A DNS-1123 label naming one model version and variant, e.g. `digits-mlp-v3-int8-dynamic`."""
    raw = f"{model}-v{version}-{variant}".lower().replace("_", "-")
    label = _ID.sub("-", raw).strip("-")
    return label[:63].rstrip("-")


@dataclass(frozen=True)
class ServerSpec:
    """What one deployment runs: the artifact, its replicas, resources and batching."""

    deployment_id: str
    model: str
    version: int
    variant: str
    artifact_uri: str
    artifact_sha256: str
    replicas: int = 1
    gpu: bool = False
    gpu_memory_mb: int = 0  # what one replica needs on a GPU, for placement
    cpu: str = "1"  # Kubernetes quantity, requested per replica
    memory: str = "1Gi"
    max_batch_size: int = 32
    max_queue_delay_ms: float = 2.0
    intra_op_threads: int = 0
    # ONNX Runtime execution providers the model server tries in order; empty: its default (CUDA, CPU)
    execution_providers: tuple[str, ...] = ()
    env: dict[str, str] = field(default_factory=dict)  # extra GALLERY_* settings for the model server

    def __post_init__(self) -> None:
        # a spec read back from JSON (the Kubernetes annotation) has a list here; keys compare equal only as tuples
        object.__setattr__(self, "execution_providers", tuple(self.execution_providers))

    def provider_env(self) -> dict[str, str]:
        """GALLERY_EXECUTION_PROVIDERS for the model server when the spec names a preference."""
        if not self.execution_providers:
            return {}
        return {"GALLERY_EXECUTION_PROVIDERS": json.dumps(list(self.execution_providers))}


class RuntimeState(StrEnum):
    starting = "starting"  # replicas requested, not all ready yet
    ready = "ready"  # every desired replica answers /v2/health/ready
    degraded = "degraded"  # some replicas ready, others crashing or pending
    failed = "failed"  # none can become ready (crash loop, unschedulable, bad artifact)
    scaled_to_zero = "scaled_to_zero"  # no replicas on purpose; wake by scaling up


@dataclass(frozen=True)
class ReplicaStatus:
    """One replica as the runtime sees it."""

    name: str  # process id / pod name
    url: str | None  # base URL of its OIP v2 server, when it has one
    ready: bool
    restarts: int = 0
    detail: str = ""


@dataclass(frozen=True)
class DeploymentStatus:
    """Where a deployment stands; `endpoints` are base URLs the gateway may route to."""

    deployment_id: str
    state: RuntimeState
    desired: int
    ready: int
    endpoints: tuple[str, ...] = ()
    replicas: tuple[ReplicaStatus, ...] = ()
    detail: str = ""
    fallback: str | None = None  # why a fallback placement (e.g. CPU instead of GPU) or provider was used
    execution_provider: str | None = None  # the ONNX Runtime provider its replicas serve on, where known
    # the OIP gRPC address (host:port) of each endpoint that serves gRPC too; the gateway's gRPC front
    # reaches an endpoint without one over REST
    grpc_endpoints: Mapping[str, str] = field(default_factory=dict)


class Runtime(Protocol):
    """Implemented by `local.LocalRuntime` and `kubernetes.KubernetesRuntime`."""

    name: str

    async def apply(self, spec: ServerSpec) -> DeploymentStatus:
        """Create the deployment or roll it to `spec` (new artifact, replicas, resources) without downtime."""
        ...

    async def wait_ready(self, deployment_id: str, timeout_s: float) -> DeploymentStatus:
        """Block until every desired replica is ready, the deployment failed, or the timeout passed."""
        ...

    async def status(self, deployment_id: str) -> DeploymentStatus:
        """The deployment now; NotFound when the runtime has no such deployment."""
        ...

    async def scale(self, deployment_id: str, replicas: int) -> DeploymentStatus:
        """Set the replica count (0 scales to zero)."""
        ...

    async def delete(self, deployment_id: str) -> None:
        """Stop and remove every replica; deleting an unknown deployment is a no-op."""
        ...

    async def close(self) -> None:
        """Release the runtime's own resources (the local runtime stops its processes)."""
        ...


ChangeCallback = Callable[[DeploymentStatus], Awaitable[None] | None]


@runtime_checkable
class ReportsChanges(Protocol):
    """A runtime that says when a deployment's set of ready endpoints changes (the local one; a
    Kubernetes Service follows its pods by itself)."""

    def watch(self, on_change: ChangeCallback) -> None:
        """Call `on_change(status)`, sync or async, on every change from now on, in order and before a
        leaving replica stops."""
        ...
