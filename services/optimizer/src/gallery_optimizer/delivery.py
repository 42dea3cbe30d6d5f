"""A finished optimization's outputs: stored under `optimized/<model>/<version>/`, attached to the
version in the registry, and announced as `model.optimized`."""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from gallery_common.artifacts import ArtifactStore
from gallery_common.events import ArtifactRef, ModelOptimized, VariantResult
from gallery_common.registry_client import RegistryClient

from .policy import BASELINE
from .report import OptimizationReport

PublishFn = Callable[[ModelOptimized, str], object]
"""Publishes a payload under an event id, blocking until JetStream stored it."""

REPORT_ROLE = "report"
EDGE_BUNDLE_ROLE = "edge_bundle"


def optimized_event_id(model: str, version: int) -> str:
    """The id of a version's `model.optimized`: fixed, so a repeated publish is stored once."""
    return f"optimized:{model}:{version}"


def artifact_key(model: str, version: int, name: str) -> str:
    return f"optimized/{model}/{version}/{name}"


@dataclass
class StoredOutputs:
    """Where each output went: variant name -> ref, the report and its renderings, the edge bundle."""

    variants: dict[str, ArtifactRef] = field(default_factory=dict)
    report: ArtifactRef | None = None
    markdown: ArtifactRef | None = None
    chart: ArtifactRef | None = None
    edge_bundle: ArtifactRef | None = None
    report_doc: dict[str, Any] = field(default_factory=dict)


def _put(
    store: ArtifactStore, key: str, source: Path | bytes, fmt: str, content_type: str | None = None
) -> ArtifactRef:
    return store.put(key, source, content_type=content_type).model_copy(update={"format": fmt})


def store_outputs(
    store: ArtifactStore,
    report: OptimizationReport,
    workdir: Path,
    *,
    fp32: ArtifactRef,
    edge_bundle: Path | None,
    edge_bundle_error: str | None = None,
) -> StoredOutputs:
    """Upload every built variant, the edge bundle, the chart, the Markdown table and the JSON report.

    The JSON report is the library's report plus where everything was stored, so the one `report`
    artifact leads to all the others. FP32 is not copied: it stays the version's `onnx` artifact.
    """
    model, version = report.model, report.version
    out = StoredOutputs(variants={BASELINE: fp32})
    for row in report.variants:
        if row.ok and row.name != BASELINE and row.path is not None:
            out.variants[row.name] = _put(store, artifact_key(model, version, f"{row.name}.onnx"), row.path, "onnx")
    if edge_bundle is not None:
        out.edge_bundle = _put(
            store, artifact_key(model, version, edge_bundle.name), edge_bundle, "tar.gz", "application/gzip"
        )
    chart = workdir / "report.png"
    report.write_chart(chart)
    out.chart = _put(store, artifact_key(model, version, "report.png"), chart, "png", "image/png")
    markdown = report.to_markdown()
    out.markdown = _put(
        store, artifact_key(model, version, "report.md"), markdown.encode(), "md", "text/markdown; charset=utf-8"
    )
    doc = report.to_json()
    doc["artifacts"] = {name: ref.model_dump(mode="json", exclude_none=True) for name, ref in out.variants.items()}
    doc["documents"] = {
        name: ref.model_dump(mode="json", exclude_none=True)
        for name, ref in (("markdown", out.markdown), ("chart", out.chart), ("edge_bundle", out.edge_bundle))
        if ref is not None
    }
    if edge_bundle_error is not None:
        doc["edge_bundle_error"] = edge_bundle_error
    out.report = _put(
        store,
        artifact_key(model, version, "report.json"),
        json.dumps(doc, indent=2, sort_keys=True).encode(),
        "json",
        "application/json",
    )
    out.report_doc = {**doc, "markdown": markdown}
    return out


def attach_to_registry(registry: RegistryClient, report: OptimizationReport, stored: StoredOutputs) -> dict[str, str]:
    """Attach the better variant of each family under its role, the edge bundle and the report.

    Returns role -> variant name (or the document) attached. The registry keeps one artifact per
    role: the same bytes again are a no-op, so a job run twice attaches nothing twice.
    """
    attached: dict[str, str] = {}
    for role, row in sorted(report.registry_artifacts().items()):
        ref = stored.variants.get(row.name)
        if ref is not None:
            registry.attach_artifact(report.model, report.version, role, ref)
            attached[role] = row.name
    if stored.edge_bundle is not None:
        registry.attach_artifact(report.model, report.version, EDGE_BUNDLE_ROLE, stored.edge_bundle)
        attached[EDGE_BUNDLE_ROLE] = report.recommended
    if stored.report is not None:
        registry.attach_artifact(report.model, report.version, REPORT_ROLE, stored.report)
        attached[REPORT_ROLE] = "report.json"
    return attached


def optimized_payload(report: OptimizationReport, stored: StoredOutputs, project: str) -> ModelOptimized:
    """The `model.optimized` payload, in the job's project: the recommendation with its artifact and
    every variant's result."""
    recommended = stored.variants.get(report.recommended)
    if recommended is None:
        # The recommendation is always a built variant; should it be missing, FP32 is the safe answer.
        recommended_name, recommended = BASELINE, stored.variants[BASELINE]
    else:
        recommended_name = report.recommended
    return ModelOptimized(
        model=report.model,
        project=project,
        version=report.version,
        recommended=recommended_name,
        recommended_artifact=recommended,
        variants=[
            VariantResult(
                name=row.name,
                artifact=stored.variants.get(row.name),
                metrics=row.metrics(),
                error=row.error,
                cpu_target=row.cpu_target,
            )
            for row in report.variants
        ],
        report=stored.report,
        hardware_class=report.measured_on.get("hardware_class"),
        recommendations={
            key: rec.variant
            for key, rec in report.recommendations.items()
            if rec.variant is not None and rec.variant in stored.variants
        },
    )
