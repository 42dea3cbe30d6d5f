"""The deployer's settings (`GALLERY_*` variables)."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Literal

from pydantic import Field, SecretStr

from gallery_common.leader import LeaderSettings

from ..runtime.kubernetes_options import KubernetesOptions


class DeployerSettings(LeaderSettings):
    """Which runtime, where the gateway and registry are, and the default rollout policy."""

    service_name: str = "deployer"
    port: int = Field(default=8004, ge=1, le=65535)
    runtime: Literal["local", "kubernetes"] = "local"
    gateway_url: str = "http://127.0.0.1:8080"
    gateway_token: SecretStr | None = None
    registry_url: str = "http://127.0.0.1:8001"
    registry_token: SecretStr | None = None
    model_server_token: SecretStr | None = Field(
        default=None, description="bearer token for model servers with tokens configured (canary replay)"
    )
    public_url: str | None = Field(
        default=None, description="how the gateway reaches this deployer to wake a scaled-to-zero model"
    )
    canary_percent: float = Field(default=10.0, gt=0, lt=100, description="traffic a new version gets first")
    canary_window_s: float = Field(default=60.0, gt=0, description="how long a canary is watched before judging")
    canary_min_requests: int = Field(default=20, ge=0, description="canary requests needed before judging")
    canary_max_error_rate: float = Field(default=0.01, ge=0, le=1)
    canary_max_p99_ratio: float = Field(default=1.5, gt=0, description="canary p99 over baseline p99")
    canary_min_latency_requests: int = Field(
        default=100, ge=1, description="canary requests needed before its p99 is compared (fewer: too noisy)"
    )
    canary_p99_slack_ms: float = Field(default=5.0, ge=0, description="p99 differences below this always pass")
    canary_min_agreement: float = Field(default=0.95, ge=0, le=1, description="same top class on replayed rows")
    canary_replay_rows: int = Field(default=256, ge=0, description="validation rows replayed to both versions")
    auto_promote: bool = Field(default=True, description="promote a passing canary without a person")
    drain_s: float = Field(default=10.0, ge=0, description="the old version stays a fallback this long")
    replicas: int = Field(default=1, ge=0, le=64)
    ready_timeout_s: float = Field(default=120.0, gt=0)
    max_batch_size: int = Field(default=32, ge=1)
    max_queue_delay_ms: float = Field(default=2.0, ge=0)
    idle_scale_to_zero_s: float = Field(default=0.0, ge=0, description="0 keeps replicas running when idle")
    kubernetes: KubernetesOptions = Field(
        default_factory=KubernetesOptions, description='runtime=kubernetes: JSON, e.g. {"namespace": "ml"}'
    )
    log_dir: Path | None = Field(default=None, description="model-server logs; default $GALLERY_HOME/deployer/logs")
    openvino_python: Path | None = Field(
        default=None,
        description="runtime=local: the interpreter of a venv with onnxruntime-openvino, which runs the model "
        "servers whose policy prefers OpenVINO; default .venv-openvino/bin/python beside this venv, when it exists",
    )

    @property
    def resolved_log_dir(self) -> Path:
        return self.log_dir or self.home.resolve() / "deployer" / "logs"

    @property
    def resolved_openvino_python(self) -> Path | None:
        """The OpenVINO interpreter: the one set, else `.venv-openvino` beside this venv when it is there."""
        if self.openvino_python is not None:
            return self.openvino_python
        beside = Path(sys.prefix).parent / ".venv-openvino" / "bin" / "python"
        return beside if beside.exists() else None

    @property
    def resolved_public_url(self) -> str:
        return (self.public_url or f"http://127.0.0.1:{self.port}").rstrip("/")
