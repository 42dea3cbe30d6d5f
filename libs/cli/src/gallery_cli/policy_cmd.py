"""`gallery policy NAME [options]`: a model's deployment policy, shown and changed from the terminal.

Every field of the deployer's `DeploymentPolicy` has an option; the deployer checks the values (a bad one
is its 422, naming the field) and fills unset fields from its settings.
"""

from __future__ import annotations

from enum import StrEnum
from typing import Annotated, Any
from urllib.parse import quote

import typer

from .console import print_fields
from .service_client import DeployerClient

POLICY_SHOWN = (
    ("record_outcomes", "the gateway keeps each answer for feedback (online quality)"),
    ("canary_percent", "share of traffic a new version's canary gets, %"),
    ("auto_promote", "a passing canary is promoted without a person"),
    ("on_variant_breach", "an optimized variant answering below the quality SLO: serve_fp32 or roll_back"),
    ("replicas", "model-server replicas per version"),
    ("cpu", "Kubernetes CPU request per replica"),
    ("memory", "Kubernetes memory request per replica"),
    ("gpu", "replicas run on a GPU node"),
    ("gpu_memory_mb", "what one replica needs on a GPU, for bin-packing"),
    ("max_batch_size", "the model server's largest batch"),
    ("max_queue_delay_ms", "how long a request may wait for others to batch with, ms"),
    ("intra_op_threads", "ONNX Runtime threads per inference (0: its default)"),
    ("execution_providers", "ONNX Runtime execution providers tried in order"),
    ("openvino_device_type", "where OpenVINO runs: CPU, GPU or NPU"),
    ("tensorrt_fp16", "TensorRT may build FP16 kernels"),
)


class VariantBreach(StrEnum):
    """What an optimized variant's quality breach does (the deployment policy's `on_variant_breach`)."""

    serve_fp32 = "serve_fp32"
    roll_back = "roll_back"


def _policy_value(value: object) -> str:
    if isinstance(value, list):
        return ", ".join(str(item) for item in value) or "default"
    return str(value).lower() if isinstance(value, bool) or value is None else str(value)


def _providers(given: str | None) -> list[str] | None:
    """`--execution-providers openvino,cpu` as a list; `default` (or nothing between commas) empties it."""
    if given is None:
        return None
    names = [name.strip() for name in given.split(",") if name.strip()]
    return [] if names == ["default"] else names


def policy(
    model: Annotated[str, typer.Argument(help="model name")],
    record_outcomes: Annotated[
        bool | None,
        typer.Option(
            "--record-outcomes/--no-record-outcomes",
            help="keep every answer for feedback (POST /v2/models/{model}/feedback); the serving route at once",
        ),
    ] = None,
    canary_percent: Annotated[float | None, typer.Option("--canary-percent", min=0.1, max=99.9)] = None,
    auto_promote: Annotated[bool | None, typer.Option("--auto-promote/--no-auto-promote")] = None,
    on_variant_breach: Annotated[
        VariantBreach | None,
        typer.Option(
            "--on-variant-breach",
            help="when an optimized variant's answers break the quality SLO: serve the version's FP32 model instead "
            "(should FP32 break it too, the version rolls back) or roll the version back at once",
        ),
    ] = None,
    replicas: Annotated[int | None, typer.Option("--replicas", min=1, max=64)] = None,
    cpu: Annotated[str | None, typer.Option("--cpu", help="Kubernetes CPU request per replica (500m, 2)")] = None,
    memory: Annotated[str | None, typer.Option("--memory", help="Kubernetes memory request per replica (2Gi)")] = None,
    gpu: Annotated[bool | None, typer.Option("--gpu/--no-gpu", help="run the replicas on a GPU node")] = None,
    gpu_memory_mb: Annotated[int | None, typer.Option("--gpu-memory-mb", min=0)] = None,
    max_batch_size: Annotated[int | None, typer.Option("--max-batch-size", min=1, max=65536)] = None,
    max_queue_delay_ms: Annotated[float | None, typer.Option("--max-queue-delay-ms", min=0, max=60000)] = None,
    intra_op_threads: Annotated[int | None, typer.Option("--intra-op-threads", min=0)] = None,
    execution_providers: Annotated[
        str | None,
        typer.Option(
            "--execution-providers",
            help="comma-separated, tried in order (tensorrt, cuda, openvino, cpu); `default`: the deployer's choice",
        ),
    ] = None,
    openvino_device_type: Annotated[str | None, typer.Option("--openvino-device-type", help="CPU, GPU or NPU")] = None,
    tensorrt_fp16: Annotated[bool | None, typer.Option("--tensorrt-fp16/--no-tensorrt-fp16")] = None,
) -> None:
    """Show a model's deployment policy; with options, change those fields (an admin token in its project),
    the others keep their value. Resources, batching and providers apply to versions deployed from then on;
    feedback and what a variant's quality breach does apply at once."""
    given: dict[str, Any] = {
        "record_outcomes": record_outcomes,
        "canary_percent": canary_percent,
        "auto_promote": auto_promote,
        "on_variant_breach": on_variant_breach.value if on_variant_breach is not None else None,
        "replicas": replicas,
        "cpu": cpu,
        "memory": memory,
        "gpu": gpu,
        "gpu_memory_mb": gpu_memory_mb,
        "max_batch_size": max_batch_size,
        "max_queue_delay_ms": max_queue_delay_ms,
        "intra_op_threads": intra_op_threads,
        "execution_providers": _providers(execution_providers),
        "openvino_device_type": openvino_device_type,
        "tensorrt_fp16": tensorrt_fp16,
    }
    changes = {name: value for name, value in given.items() if value is not None}
    path = f"/api/v1/policies/{quote(model, safe='')}"
    with DeployerClient(timeout=60) as client:
        current = client.json("PATCH", path, json=changes) if changes else client.json("GET", path)
    rows = [(name, _policy_value(current.get(name)), meaning) for name, meaning in POLICY_SHOWN]
    print_fields(f"deployment policy of {model}", rows, set(changes))
