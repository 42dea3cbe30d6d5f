"""Settings of one model server process (`GALLERY_*` variables, overridden by command-line flags)."""

from __future__ import annotations

from pydantic import Field, field_validator, model_validator

from gallery_common.artifacts.base import normalize_sha256
from gallery_common.errors import ArtifactError
from gallery_common.settings import GallerySettings

from .providers import OpenVinoDevice, ProviderName, ProviderOptions


class ModelServerSettings(GallerySettings):
    """What one model server serves, how it batches, and how much explaining it may do."""

    service_name: str = "modelserver"
    port: int = Field(default=8500, ge=1, le=65535)
    grpc_port: int = Field(
        default=0, ge=0, le=65535, description="Also serve OIP v2 over gRPC on this port; 0: no gRPC."
    )
    stream_in_flight: int = Field(
        default=64, ge=1, le=4096, description="ModelStreamInfer: requests of one stream answered at once."
    )
    model_name: str = Field(default="", description="The model's registered name.")
    model_version: str = Field(default="", description="The model version served.")
    variant: str = Field(default="fp32", description="Which optimized variant of the version (fp32, int8, ...).")
    artifact_uri: str = Field(default="", description="URI of the ONNX file inside the artifact store.")
    artifact_sha256: str = Field(default="", description="Expected sha256 of the ONNX file.")
    max_batch_size: int = Field(default=32, ge=1, le=65536)
    max_queue_delay_ms: float = Field(default=2.0, ge=0, le=60_000)
    eager_batching: bool = Field(
        default=True,
        description="Run a request at once when nothing else is queued instead of waiting max_queue_delay_ms.",
    )
    max_queue: int = Field(default=256, ge=1, description="Requests waiting for a batch before 503.")
    max_body_bytes: int = Field(
        default=64 * 1024 * 1024,
        ge=1,
        description="Larger request bodies get 413 before a byte is read; at least the gateway's limit.",
    )
    intra_op_threads: int = Field(default=0, ge=0, description="ONNX Runtime intra-op threads; 0 lets it choose.")
    intra_op_spinning: bool = Field(
        default=False,
        description="ONNX Runtime's intra-op threads spin while they wait for work: a little less latency, but "
        "they burn a core between requests (measured here: ~250 µs of CPU per small request).",
    )
    execution_providers: list[ProviderName] = Field(
        default_factory=list,
        description="ONNX Runtime execution providers to try in order (tensorrt, cuda, openvino, cpu; JSON list): "
        "the first this host's ONNX Runtime has and that loads the model serves; the CPU is always the last resort. "
        "Empty: CUDA where this ONNX Runtime has it, else the CPU, with no fallback reported for a CPU-only build.",
    )
    cuda_device_id: int = Field(default=0, ge=0, description="The GPU the CUDA and TensorRT providers use.")
    openvino_device_type: OpenVinoDevice = Field(default="CPU", description="Where OpenVINO runs: CPU, GPU or NPU.")
    tensorrt_fp16: bool = Field(default=True, description="TensorRT may build FP16 kernels.")
    tensorrt_engine_cache: str = Field(
        default="", description="Folder for TensorRT's built engines, so a restart skips the build; empty: no cache."
    )
    serve_nats: bool = Field(default=True, description="Also serve infer.<model> requests and infer.jobs.<model>.")
    nats_connect_timeout_s: float = Field(default=5.0, gt=0, le=300)
    job_ack_wait_s: float = Field(default=30.0, gt=0, le=3600, description="A batch job's heartbeat window.")
    job_max_deliver: int = Field(default=5, ge=1, description="Deliveries of a job before it is marked failed.")
    explainer_uri: str = Field(
        default="", description="URI of the version's explainer artifact (NPZ); empty: this server explains nothing."
    )
    explainer_sha256: str = Field(default="", description="Expected sha256 of the explainer artifact.")
    explain_workers: int = Field(
        default=1, ge=1, le=64, description="Processes that compute explanations, started by the first explain request."
    )
    explain_max_queue: int = Field(default=8, ge=1, description="Explain requests waiting for a worker before 503.")
    explain_timeout_s: float = Field(
        default=30.0, gt=0, le=3600, description="An explanation running longer is stopped (its worker replaced): 503."
    )
    explain_max_nsamples: int = Field(
        default=5000, ge=1, description="The most coalitions (SHAP) or perturbed samples (LIME) a request may ask for."
    )
    explain_max_rows: int = Field(default=16, ge=1, description="The most rows one explain request may hold.")
    explain_cpu_share: float = Field(
        default=0.25,
        gt=0,
        le=1,
        description="The share of its time a worker may spend explaining: after a job of t seconds it rests "
        "t * (1/share - 1) before the next, so back-to-back explanations cannot crowd out inference.",
    )

    def provider_options(self) -> ProviderOptions:
        """The per-provider options these settings give."""
        return ProviderOptions(
            cuda_device_id=self.cuda_device_id,
            openvino_device_type=self.openvino_device_type,
            tensorrt_fp16=self.tensorrt_fp16,
            tensorrt_engine_cache=self.tensorrt_engine_cache,
        )

    @field_validator("model_name", "model_version", "artifact_uri")
    @classmethod
    def _required(cls, value: str) -> str:
        if not value.strip():
            raise ValueError("must not be empty")
        return value.strip()

    @field_validator("artifact_sha256")
    @classmethod
    def _check_sha256(cls, value: str) -> str:
        return _sha256(value)

    @field_validator("explainer_sha256")
    @classmethod
    def _check_explainer_sha256(cls, value: str) -> str:
        return _sha256(value) if value.strip() else ""

    @model_validator(mode="after")
    def _explainer_whole(self) -> ModelServerSettings:
        self.explainer_uri = self.explainer_uri.strip()
        if bool(self.explainer_uri) != bool(self.explainer_sha256):
            raise ValueError("explainer_uri and explainer_sha256 go together: set both, or neither")
        return self


def _sha256(value: str) -> str:
    try:
        return normalize_sha256(value)
    except ArtifactError as exc:
        raise ValueError(exc.message) from None
