"""Small fakes of the optimizer's collaborators: the optimization library and the bus (the registry's is
`registry_fakes.InMemoryRegistry`)."""

from __future__ import annotations

import hashlib
import tarfile
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from gallery_common.artifacts import ArtifactStore
from gallery_common.events import ArtifactRef, ModelOptimized
from gallery_optimizer.policy import OptimizationPolicy
from gallery_optimizer.report import OptimizationReport, VariantReport, recommend

ROLES = ("onnx", "weights", "spec", "train_split", "validation_split", "test_split")


@dataclass
class FakeInputs:
    onnx: Path
    weights: Path | None
    spec: dict[str, Any] | None
    train_split: Path
    validation_split: Path
    test_split: Path
    class_names: list[str] | None
    task: str


# name -> (b32 p50 ms, accuracy); FP32 has 0.90 accuracy.
FIGURES = {
    "fp32": (4.0, 0.90),
    "int8_dynamic": (1.0, 0.895),
    "int8_static": (1.5, 0.90),
    "fp16": (3.0, 0.90),
    "pruned_magnitude": (3.5, 0.85),
    "pruned_structured": (2.5, 0.80),
    "distilled": (0.5, 0.70),
}


@dataclass
class FakePipeline:
    """Builds a file per variant (the variant name as content) with fixed figures; records its calls."""

    failing: dict[str, str] = field(default_factory=dict)
    bundle_error: str | None = None
    calls: list[dict[str, Any]] = field(default_factory=list)

    def optimize(
        self,
        inputs: FakeInputs,
        policy: OptimizationPolicy,
        workdir: Path,
        *,
        model: str,
        version: int,
        on_progress: Callable[[str, float], None] | None = None,
    ) -> OptimizationReport:
        self.calls.append({"inputs": inputs, "policy": policy, "model": model, "version": version})
        workdir.mkdir(parents=True, exist_ok=True)
        rows = []
        for index, name in enumerate(["fp32", *policy.variants]):
            if on_progress is not None:
                on_progress(f"building {name}", index / (len(policy.variants) + 1))
            if name in self.failing:
                rows.append(VariantReport(name=name, error=self.failing[name]))
                continue
            path = inputs.onnx if name == "fp32" else workdir / f"{name}.onnx"
            if name != "fp32":
                path.write_bytes(f"{model}:{version}:{name}".encode())
            latency, accuracy = FIGURES[name]
            rows.append(
                VariantReport(
                    name=name,
                    path=path,
                    size_bytes=float(path.stat().st_size),
                    latency_b32_p50_ms=latency,
                    accuracy=accuracy,
                    accuracy_delta=accuracy - FIGURES["fp32"][1],
                )
            )
        recommended, reason = recommend(rows, policy.accuracy_budget)
        return OptimizationReport(model, version, rows, recommended, reason, policy.accuracy_budget)

    def build_edge_bundle(self, report: OptimizationReport, inputs: FakeInputs, workdir: Path) -> Path:
        if self.bundle_error is not None:
            raise RuntimeError(self.bundle_error)
        workdir.mkdir(parents=True, exist_ok=True)
        bundle = workdir / "edge_bundle.tar.gz"
        with tarfile.open(bundle, "w:gz") as tar:
            tar.add(report.recommended_variant.path, arcname="model.onnx")  # type: ignore[arg-type]
        return bundle

    def factory(self) -> Callable[[], tuple[Any, Any, Any]]:
        return lambda: (self.optimize, self.build_edge_bundle, FakeInputs)


class RecordingPublisher:
    def __init__(self) -> None:
        self.events: list[tuple[ModelOptimized, str]] = []

    def __call__(self, payload: ModelOptimized, event_id: str) -> None:
        self.events.append((payload, event_id))


def put_version_artifacts(store: ArtifactStore, model: str, version: int) -> dict[str, ArtifactRef]:
    """Stand-in artifacts of a registered version (contents are only moved, never loaded, by the fakes)."""
    refs = {}
    for role in ROLES:
        content = b'{"task": "classification"}' if role == "spec" else f"{model}:{version}:{role}".encode()
        refs[role] = store.put(f"models/{model}/{version}/{role}", content)
        assert refs[role].sha256 == hashlib.sha256(content).hexdigest()
    return refs
