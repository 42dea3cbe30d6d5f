"""The generated model card of a version: Markdown with YAML front-matter in the Hugging Face layout.

The front-matter holds `model-index` with the gate's metrics on the test split, the data set
fingerprint and the tags; the body the model's card text (description, intended use, limitations),
the training data, a federated model's sites and privacy budget (`card_federation`), the gate's
evaluation (per-class recall, confusion matrix, calibration, latency), the features that matter most
(`card_importance`), the optimizer's summary and the artifacts.
Rendering is deterministic (no clock), so the same inputs give the same bytes and re-attaching an
unchanged card is a no-op.

`ModelCards` renders a card from the store and attaches it to its version as the `model-card`
artifact: when the gate passes the version, when the model's card text changes and when the
optimizer reports on the version. `GET .../versions/{v}/card` always renders afresh.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import math
from collections.abc import Mapping
from typing import Any

from gallery_common.artifacts import ArtifactStore
from gallery_common.contracts.registry import TAG_VALUE_MAX
from gallery_common.errors import GalleryError
from gallery_common.events import ArtifactRef
from gallery_common.telemetry import get_logger

from .card_federation import federation_section
from .card_importance import importance_section
from .catalogue import OPTIMIZER_TAG_PREFIX, headline, version_metrics
from .markdown import fmt, table
from .schemas import ArtifactPublic, ArtifactRole, ModelPublic, ValidationPolicy, VersionPublic, VersionStatus
from .store import RegistryStore
from .store_cards import ModelCardText

log = get_logger(__name__)

CARD_ROLE = ArtifactRole.model_card
BASELINE = "fp32"  # the optimizer's name for the unoptimized model
REPORT_MAX_BYTES = 4 * 1024 * 1024
PIPELINE_TAGS = {"classification": "tabular-classification", "regression": "tabular-regression"}
# the optimizer's tags on the version it optimized (services/optimizer delivery.py sets them)
OPTIMIZER_FIELDS = (
    ("optimizer.recommended", "recommended variant"),
    ("optimizer.recommendation_reason", "why"),
    ("optimizer.recommended_size_bytes", "size"),
    ("optimizer.recommended_p50_ms", "batch-1 p50 latency (ms)"),
    ("optimizer.recommended_accuracy", "accuracy"),
    ("optimizer.recommended_r2", "r2"),
    ("optimizer.fp32_size_bytes", "FP32 size"),
    ("optimizer.fp32_p50_ms", "FP32 batch-1 p50 latency (ms)"),
    ("optimizer.fp32_accuracy", "FP32 accuracy"),
    ("optimizer.fp32_r2", "FP32 r2"),
    ("optimizer.recommended_per_target", "recommended per hardware class / execution provider"),
)
_SIZE_KEYS = frozenset({"optimizer.recommended_size_bytes", "optimizer.fp32_size_bytes"})


def _q(value: Any) -> str:
    """A YAML scalar: JSON's spelling of strings and numbers is valid YAML."""
    if isinstance(value, float):
        return repr(round(value, 6))
    return json.dumps(value, ensure_ascii=False)


def _size(value: float | None) -> str:
    if value is None:
        return "—"
    for unit in ("B", "KiB", "MiB", "GiB"):
        if value < 1024 or unit == "GiB":
            return f"{value:.0f} {unit}" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1024
    return "—"


def _gate_metrics(version: VersionPublic) -> dict[str, float]:
    """The scalar figures of the gate's report (what model-index holds), without the row count."""
    return version_metrics({}, version.evaluation_report)


def front_matter(model: ModelPublic, version: VersionPublic) -> list[str]:
    task = version.task or "classification"
    pipeline = PIPELINE_TAGS.get(task, task)
    fingerprint = version.lineage.dataset_fingerprint
    tags = ["model-gallery", "onnx", pipeline] + [f"{k}:{v}" if v else k for k, v in model.tags.items()]
    lines = ["---", f"model_name: {_q(model.name)}", "library_name: onnx", f"pipeline_tag: {_q(pipeline)}", "tags:"]
    lines += [f"- {_q(t)}" for t in tags]
    if fingerprint:
        lines += ["datasets:", f"- {_q(fingerprint)}"]
    metrics = _gate_metrics(version)
    if metrics:
        lines += ["metrics:"] + [f"- {_q(name)}" for name in metrics]
        lines += [
            "model-index:",
            f"- name: {_q(model.name)}",
            "  results:",
            "  - task:",
            f"      type: {_q(pipeline)}",
            f"      name: {_q(task.capitalize())}",
            "    dataset:",
            f"      name: {_q(fingerprint or 'held-out test split')}",
            f"      type: {_q(fingerprint or 'unknown')}",
            "      split: test",
            "    metrics:",
        ]
        for name, value in metrics.items():
            lines += [f"    - type: {_q(name)}", f"      value: {_q(value)}", f"      name: {_q(name)}"]
        lines.append(f"    source:\n      name: {_q('Model Gallery validation gate')}")
    lines += [
        "model_gallery:",
        f"  version: {version.version}",
        f"  semver: {_q(version.semver)}",
        f"  status: {_q(version.status.value)}",
        f"  aliases: [{', '.join(_q(a) for a in version.aliases)}]",
    ]
    for key, text in (
        ("owner", model.owner),
        ("run_id", version.run_id),
        ("dataset_fingerprint", fingerprint),
        ("training_job_id", version.lineage.training_job_id),
        ("config_hash", version.lineage.config_hash),
    ):
        if text:
            lines.append(f"  {key}: {_q(text)}")
    lines.append("---")
    return lines


def _training_data(version: VersionPublic) -> list[str]:
    report = version.evaluation_report or {}
    lineage = version.lineage
    lines = ["## Training data", ""]
    facts = [
        ("data set fingerprint", f"`{lineage.dataset_fingerprint}`" if lineage.dataset_fingerprint else None),
        ("training job", lineage.training_job_id),
        ("training run", version.run_id),
        ("config hash", f"`{lineage.config_hash}`" if lineage.config_hash else None),
        ("parent version", lineage.parent_version),
    ]
    lines += [f"- {label}: {fmt(value)}" for label, value in facts if value is not None]
    sizes = [
        (split, int(n)) for split in ("train", "validation") if (n := version.metrics.get(f"n_{split}")) is not None
    ]
    if isinstance(report.get("n_test"), int):
        sizes.append(("test", report["n_test"]))
    if sizes:
        lines += ["", "Split sizes (rows):", "", *table(["split", "rows"], sizes)]
    counts = report.get("class_counts")
    if isinstance(counts, dict) and counts:
        total = sum(v for v in counts.values() if isinstance(v, int)) or 1
        lines += ["", "Class balance of the test split:", ""]
        lines += table(["class", "rows", "share"], [(k, v, f"{v / total:.1%}") for k, v in counts.items()])
    if len(lines) == 2:
        lines.append("_Nothing recorded about the data yet._")
    return lines


def _evaluation(version: VersionPublic, policy: ValidationPolicy | None) -> list[str]:
    report = version.evaluation_report or {}
    lines = ["## Evaluation", ""]
    metrics = _gate_metrics(version)
    if not metrics:
        return [*lines, "_Not evaluated by the validation gate yet._"]
    n_test = report.get("n_test")
    lines.append(
        f"Measured by the validation gate ({fmt(report.get('evaluator'))}) on the held-out test split"
        + (f" ({n_test} rows)." if n_test is not None else ".")
    )
    lines.append("")

    def criterion(name: str) -> str:
        if policy is None:
            return ""
        if name in policy.min_metrics:
            return f"≥ {policy.min_metrics[name]:g}"
        if name in policy.max_metrics:
            return f"≤ {policy.max_metrics[name]:g}"
        return ""

    lines += table(["metric", "value", "policy"], [(k, fmt(v), criterion(k)) for k, v in metrics.items()])
    if version.rejection_reasons:
        lines += ["", "Rejected by the gate:", ""] + [f"- {r}" for r in version.rejection_reasons]
    champion = report.get("champion")
    if isinstance(champion, dict) and champion.get("version") is not None:
        compared = (
            champion.get("note")
            or champion.get("error")
            or (f"{champion.get('metric')} {fmt(champion.get('value'))} on the same split")
        )
        lines += ["", f"Champion ({champion.get('alias')}, version {champion.get('version')}): {compared}"]
    recall = report.get("per_class_recall")
    if isinstance(recall, dict) and recall:
        lines += [
            "",
            "### Per-class recall",
            "",
            *table(["class", "recall"], [(k, fmt(v)) for k, v in recall.items()]),
        ]
    matrix = report.get("confusion_matrix")
    if isinstance(matrix, dict) and isinstance(matrix.get("matrix"), list):
        labels = [str(label) for label in matrix.get("labels") or []]
        rows = matrix["matrix"]
        labels = labels if len(labels) == len(rows) else [str(i) for i in range(len(rows))]
        lines += ["", "### Confusion matrix", "", "Rows: true class; columns: predicted class.", ""]
        lines += table(["true \\ predicted", *labels], [[labels[i], *row] for i, row in enumerate(rows)])
    if "ece" in metrics:
        lines += ["", f"Calibration: expected calibration error {fmt(metrics['ece'])} (15 bins)."]
    if "latency_p50_ms" in metrics:
        lines += [
            "",
            f"Latency (batch 1, one CPU thread): p50 {fmt(metrics['latency_p50_ms'])} ms, "
            f"p99 {fmt(metrics.get('latency_p99_ms'))} ms.",
        ]
    return lines


def _optimization(version: VersionPublic) -> list[str]:
    tags = version.tags
    lines = ["## Optimization", ""]
    found = [(label, key) for key, label in OPTIMIZER_FIELDS if key in tags]
    variants = [
        role
        for role in ("int8", "fp16", "pruned", "distilled", "edge_bundle")
        if ArtifactRole(role) in version.artifacts
    ]
    if not found and not variants:
        return [*lines, "_Not optimized yet._"]
    for label, key in found:
        value = tags[key]
        if key in _SIZE_KEYS:
            with contextlib.suppress(ValueError):
                value = _size(float(value))
        lines.append(f"- {label}: {value}")
    extra = sorted(k for k in tags if k.startswith(OPTIMIZER_TAG_PREFIX) and k not in dict(OPTIMIZER_FIELDS))
    lines += [f"- {k.removeprefix(OPTIMIZER_TAG_PREFIX)}: {tags[k]}" for k in extra]
    if variants:
        lines += ["", "Variants kept with the version:", ""]
        lines += table(
            ["role", "size", "sha256"],
            [
                (r, _size(version.artifacts[ArtifactRole(r)].size), version.artifacts[ArtifactRole(r)].sha256[:12])
                for r in variants
            ],
        )
    report = version.artifacts.get(ArtifactRole.report)
    if report is not None:
        lines += ["", f"Full report: `{report.uri}`"]
    return lines


def _artifacts(version: VersionPublic) -> list[str]:
    shown = {role: a for role, a in version.artifacts.items() if role != CARD_ROLE}
    if not shown:
        return []
    return [
        "",
        "## Artifacts",
        "",
        *table(
            ["role", "format", "size", "sha256", "uri"],
            [(r.value, fmt(a.format), _size(a.size), a.sha256[:12], a.uri) for r, a in shown.items()],
        ),
    ]


def render_card(
    model: ModelPublic, text: ModelCardText, version: VersionPublic, policy: ValidationPolicy | None = None
) -> str:
    """The card of `version` as Markdown with YAML front-matter."""
    metrics = version_metrics(version.metrics, version.evaluation_report)
    best = headline(metrics, policy.champion_metric if policy else None)
    lines = [*front_matter(model, version), "", f"# {model.name} — version {version.version} ({version.semver})", ""]
    status = f"Status: **{version.status.value}**"
    if version.aliases:
        status += f" · aliases: {', '.join(version.aliases)}"
    if best is not None:
        status += f" · {best.name} {fmt(best.value)}"
    if model.owner:
        status += f" · owner: {model.owner}"
    lines += [status, "", "## Description", "", (text.description or "_No description yet._").strip(), ""]
    lines += ["## Intended use", "", (text.intended_use or "_Not stated yet._").strip(), ""]
    lines += ["## Limitations", "", (text.limitations or "_Not stated yet._").strip(), ""]
    lines += [*_training_data(version), ""]
    if version.lineage.federation is not None:
        lines += [*federation_section(version.lineage.federation, version.metrics), ""]
    lines += [*_evaluation(version, policy), ""]
    if _gate_metrics(version):
        lines += [*importance_section(version.evaluation_report), ""]
    lines += _optimization(version)
    lines += _artifacts(version)
    lines += ["", f"_Card text revision {text.revision}; generated by the Model Gallery registry._"]
    return "\n".join(lines) + "\n"


def card_key(name: str, version: int, sha256: str) -> str:
    """Content-addressed, so a card recorded earlier stays readable (and verifiable) after a newer one."""
    return f"cards/{name}/{version}/model-card-{sha256[:16]}.md"


class ModelCards:
    """Renders cards from the registry and attaches them to their versions (blocking: SQL and store I/O)."""

    def __init__(self, registry: RegistryStore, artifacts: ArtifactStore | None) -> None:
        self.registry = registry
        self.artifacts = artifacts

    def render(self, name: str, version: int) -> str:
        model = self.registry.get_model(name)
        found = self.registry.get_version(name, version)
        return render_card(model, self.registry.get_card(name), found, self.registry.get_validation_policy(name))

    def attach(self, name: str, version: int) -> ArtifactPublic | None:
        """Render the card and record it as the version's `model-card` (None without an artifact store)."""
        if self.artifacts is None:
            return None
        data = self.render(name, version).encode()
        key = card_key(name, version, hashlib.sha256(data).hexdigest())
        ref = self.artifacts.put(key, data, content_type="text/markdown; charset=utf-8")
        return self.registry.replace_artifact(name, version, CARD_ROLE, ref.model_copy(update={"format": "md"}))

    def refresh(self, name: str, version: VersionPublic | int) -> ArtifactPublic | None:
        """Attach a fresh card if the version is validated or already has one; never raises (a card
        that cannot be stored now is logged: the route renders it afresh anyway)."""
        try:
            found = version if isinstance(version, VersionPublic) else self.registry.get_version(name, version)
            if found.status != VersionStatus.validated and CARD_ROLE not in found.artifacts:
                return None
            return self.attach(name, found.version)
        except (GalleryError, OSError) as exc:
            log.warning(
                "model card not stored", model=name, version=getattr(version, "version", version), reason=str(exc)
            )
            return None

    def take_optimizer_report(self, name: str, version: int, report: ArtifactRef) -> None:
        """The optimizer attached its report: keep its recommendation as `optimizer.*` tags on the
        version (the catalogue shows them) and regenerate the card. Never raises: a report that cannot
        be read leaves the version as it was, logged."""
        if self.artifacts is None:
            return
        try:
            with self.artifacts.open(report.uri) as stream:
                data = stream.read(REPORT_MAX_BYTES + 1)
            if len(data) > REPORT_MAX_BYTES or hashlib.sha256(data).hexdigest() != report.sha256:
                log.warning("optimizer report not read: too large or not the recorded bytes", model=name)
                return
            doc = json.loads(data)
            tags = recommendation_tags(doc) if isinstance(doc, dict) else {}
            if tags:
                self.registry.merge_version_tags(name, version, dict(tags))
        except (GalleryError, OSError, ValueError) as exc:
            log.warning("optimizer report not read", model=name, version=version, reason=str(exc))
        self.refresh(name, version)

    def refresh_model(self, name: str) -> None:
        """After the card text changed: a fresh card on every version that has one."""
        try:
            numbers = self.registry.versions_with_artifact(name, CARD_ROLE)
        except GalleryError as exc:
            log.warning("model cards not refreshed", model=name, reason=str(exc))
            return
        for number in numbers:
            self.refresh(name, number)


# a variant's figures the card keeps (tag suffix, report field): a classifier's report has accuracy, a
# regressor's r2 (the other is null, and not kept)
_CARD_FIGURES = (("size_bytes", "size_bytes"), ("p50_ms", "latency_b1_p50_ms"), ("accuracy", "accuracy"), ("r2", "r2"))


def recommendation_tags(doc: Mapping[str, Any]) -> dict[str, str]:
    """The `optimizer.*` tags for the recommendation of an optimizer report (its `report.json`)."""
    recommended = doc.get("recommended")
    if not isinstance(recommended, str) or not recommended:
        return {}
    rows = {row.get("name"): row for row in doc.get("variants") or [] if isinstance(row, dict)}
    tags = {"optimizer.recommended": recommended[:TAG_VALUE_MAX]}
    reason = doc.get("recommendation_reason")
    if isinstance(reason, str) and reason:
        tags["optimizer.recommendation_reason"] = reason[:TAG_VALUE_MAX]
    for prefix, row in (("optimizer.recommended", rows.get(recommended)), ("optimizer.fp32", rows.get(BASELINE))):
        for suffix, field in _CARD_FIGURES:
            value = _number_of(row, field)
            if value is not None:
                tags[f"{prefix}_{suffix}"] = f"{value:.6g}"
    # reports since the optimizer measures per target: `<hardware class>/<provider>` -> {"variant": ...}
    per_target = doc.get("recommendations")
    if isinstance(per_target, dict):
        pairs = [
            f"{target}: {rec.get('variant') or 'none'}"
            for target, rec in per_target.items()
            if isinstance(target, str) and isinstance(rec, dict)
        ]
        if pairs:
            tags["optimizer.recommended_per_target"] = "; ".join(pairs)[:TAG_VALUE_MAX]
    return tags


def _number_of(row: Mapping[str, Any] | None, field: str) -> float | None:
    value = (row or {}).get(field)
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        return None
    return float(value)


def optimizer_changed(changes: Mapping[str, Any]) -> bool:
    return any(key.startswith(OPTIMIZER_TAG_PREFIX) for key in changes)
