"""What the Kubernetes runtime can be told (`KubernetesOptions`) and what it refuses in a `ServerSpec`."""

from __future__ import annotations

import math
import re
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from gallery_common.errors import InvalidRequest

from .base import ServerSpec

GPU_RESOURCE = "nvidia.com/gpu"

# A Service name is a DNS-1035 label: it must start with a letter.
_DNS_1035 = re.compile(r"^[a-z]([-a-z0-9]*[a-z0-9])?$")
_DNS_1123 = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$")
_CPU = re.compile(r"^(\d+(?:\.\d+)?)(m?)$")
_MEMORY = re.compile(r"^\d+(\.\d+)?(m|k|Ki|M|Mi|G|Gi|T|Ti|P|Pi|E|Ei|[eE]\d+)?$")


class Toleration(BaseModel):
    """A pod toleration (core/v1 Toleration), checked before it reaches the API."""

    model_config = ConfigDict(extra="forbid", populate_by_name=True)

    key: str | None = None
    operator: Literal["Exists", "Equal"] = "Equal"
    value: str | None = None
    effect: Literal["NoSchedule", "PreferNoSchedule", "NoExecute"] | None = None
    toleration_seconds: int | None = Field(default=None, alias="tolerationSeconds")


class KubernetesOptions(BaseModel):
    """How the Kubernetes runtime lays out model servers.

    The ConfigMap and the Secret reach the pod as environment variables: they carry the
    model server's `GALLERY_*` settings (artifact root, S3 endpoint and credentials, NATS URL).
    The Secret must set `GALLERY_API_TOKENS`: without tokens the model server binds to loopback
    only, where the kubelet's probes and the Service cannot reach it.

    NATS credentials are not in that Secret: the pod gets user `modelserver` and only that user's
    password, the key `modelserver` of `nats_secret`; with `nats_tls_ca_secret` it also mounts that
    Secret's `ca.crt` and names it in `GALLERY_NATS_TLS_CA` (for `tls://` NATS URLs).
    """

    model_config = ConfigDict(extra="forbid")

    namespace: str = "modelgallery"
    image: str = "modelgallery/modelserver:0.1.0"
    gpu_image: str = "modelgallery/modelserver-gpu:0.1.0"
    openvino_image: str = Field(
        default="modelgallery/modelserver-openvino:0.1.0",
        description="the model server with onnxruntime-openvino, for CPU pods whose policy prefers OpenVINO",
    )
    image_pull_policy: Literal["Always", "IfNotPresent", "Never"] = "IfNotPresent"
    service_account: str | None = None
    config_map: str | None = "modelgallery-config"
    secret: str | None = "modelgallery-secrets"
    nats_secret: str | None = Field(
        default="modelgallery-nats-users",
        description="Secret with a NATS password per user (key: the user); None: connect without credentials.",
    )
    nats_tls_ca_secret: str | None = Field(
        default=None, description="Secret whose ca.crt signed the NATS server's certificate (tls:// URLs)."
    )
    gpu_node_selector: dict[str, str] = Field(default_factory=lambda: {"nvidia.com/gpu.present": "true"})
    gpu_tolerations: list[Toleration] = Field(
        default_factory=lambda: [Toleration(key=GPU_RESOURCE, operator="Exists", effect="NoSchedule")]
    )
    gpu_fallback_timeout_s: float = Field(default=120.0, gt=0)
    rollout_timeout_s: int = Field(default=600, ge=10, description="The Deployment's progressDeadlineSeconds.")
    startup_timeout_s: int = Field(default=600, ge=5, description="How long a pod may take to load its model.")
    termination_grace_period_s: int = Field(default=45, ge=5, description="Time to drain in-flight requests.")
    autoscale_metric: Literal["cpu", "requests_per_second"] = "cpu"
    target_cpu_utilization: int = Field(default=70, ge=1, le=1000, description="Percent of the CPU request.")
    target_requests_per_second: float = Field(default=50.0, gt=0, description="Average per pod.")
    min_replicas: int = Field(default=1, ge=1)
    max_replicas: int = Field(default=4, ge=1)
    serve_nats: bool = True
    tmp_size_limit: str = "1Gi"
    cluster_domain: str = "cluster.local"
    request_timeout_s: float = Field(default=30.0, gt=0, description="Per Kubernetes API call.")
    status_poll_s: float = Field(
        default=5.0,
        gt=0,
        description="wait_ready re-reads pods at least this often: a crash loop does not touch the Deployment.",
    )
    field_manager: str = Field(default="modelgallery-deployer", min_length=1, max_length=128)

    @field_validator("namespace")
    @classmethod
    def _check_namespace(cls, value: str) -> str:
        if len(value) > 63 or not _DNS_1123.match(value):
            raise ValueError(f"{value!r} is not a DNS-1123 label")
        return value

    @field_validator("tmp_size_limit")
    @classmethod
    def _check_size(cls, value: str) -> str:
        if not _MEMORY.match(value):
            raise ValueError(f"{value!r} is not a Kubernetes quantity")
        return value

    @model_validator(mode="after")
    def _check_replica_bounds(self) -> KubernetesOptions:
        if self.max_replicas < self.min_replicas:
            raise ValueError(f"max_replicas ({self.max_replicas}) is below min_replicas ({self.min_replicas})")
        return self


def check_spec(spec: ServerSpec) -> None:
    """Raise InvalidRequest naming what in `spec` Kubernetes would refuse."""
    name = spec.deployment_id
    if len(name) > 63 or not _DNS_1035.match(name):
        raise InvalidRequest(
            f"deployment id {name!r} cannot name a Kubernetes Service: lowercase letters, digits and '-', "
            "starting with a letter, at most 63 characters"
        )
    if spec.replicas < 0:
        raise InvalidRequest(f"replicas must not be negative, got {spec.replicas}")
    cpu_millis(spec.cpu)
    if not _MEMORY.match(spec.memory):
        raise InvalidRequest(f"memory {spec.memory!r} is not a Kubernetes quantity (e.g. 512Mi, 2Gi)")
    bad = sorted(k for k in spec.env if not re.match(r"^[A-Za-z_][A-Za-z0-9_.-]*$", k))
    if bad:
        raise InvalidRequest(f"environment variable names not allowed: {', '.join(bad)}")


def cpu_millis(quantity: str) -> int:
    """A CPU quantity (`500m`, `1`, `2.5`) in millicores."""
    match = _CPU.match(quantity.strip())
    if not match:
        raise InvalidRequest(f"cpu {quantity!r} is not a Kubernetes CPU quantity (e.g. 500m, 1, 2.5)")
    number, milli = match.groups()
    millis = float(number) if milli else float(number) * 1000
    if millis < 1:
        raise InvalidRequest(f"cpu {quantity!r} must be at least 1m")
    return math.ceil(millis)
