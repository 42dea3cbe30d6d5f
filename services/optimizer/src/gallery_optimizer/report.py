"""What an optimization found: one measured row per variant, the recommendation, and its renderings."""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from gallery_optimizer.policy import BASELINE
from gallery_optimizer.target_measure import TargetMeasurement, TargetRecommendation

METRICS = (
    "size_bytes",
    "peak_memory_bytes",
    "latency_b1_p50_ms",
    "latency_b1_p99_ms",
    "latency_b32_p50_ms",
    "latency_b32_p99_ms",
    "throughput_per_s",
    "accuracy",
    "macro_f1",
    "agreement",
    "accuracy_delta",
    "r2",
    "rmse",
    "mae",
    "r2_delta",
)
# the registry keeps one artifact per role: the better variant of a family goes under the family's role
REGISTRY_ROLES: dict[str, str] = {
    "int8_dynamic": "int8",
    "int8_static": "int8",
    "fp16": "fp16",
    "pruned_magnitude": "pruned",
    "pruned_structured": "pruned",
    "distilled": "distilled",
}


@dataclass
class VariantReport:
    """One variant as built and measured; every figure is None when the variant failed (`error` says why).

    Latencies are milliseconds per call; `throughput_per_s` is rows per second at batch 32. A classifier's
    `accuracy`, `macro_f1` and `agreement` (share of test rows given FP32's top class) are fractions, and
    `accuracy_delta` is accuracy minus FP32's (negative = worse). A regressor has `r2`, `rmse` and `mae`
    instead, `agreement` is the share of test rows predicted within a tenth of the spread of FP32's
    predictions (`scoring.prediction_agreement`), and `r2_delta` is r2 minus FP32's.
    """

    name: str
    path: Path | None = None
    error: str | None = None
    size_bytes: float | None = None
    peak_memory_bytes: float | None = None
    latency_b1_p50_ms: float | None = None
    latency_b1_p99_ms: float | None = None
    latency_b32_p50_ms: float | None = None
    latency_b32_p99_ms: float | None = None
    throughput_per_s: float | None = None
    accuracy: float | None = None
    macro_f1: float | None = None
    agreement: float | None = None
    accuracy_delta: float | None = None
    r2: float | None = None
    rmse: float | None = None
    mae: float | None = None
    r2_delta: float | None = None
    within_budget: bool = False
    notes: list[str] = field(default_factory=list)
    cpu_target: str | None = None
    measurements: list[TargetMeasurement] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return self.error is None and self.path is not None

    @property
    def score(self) -> float | None:
        """What the budget holds it to: a classifier's accuracy, a regressor's r2."""
        return self.accuracy if self.accuracy is not None else self.r2

    @property
    def score_delta(self) -> float | None:
        return self.accuracy_delta if self.accuracy_delta is not None else self.r2_delta

    def metrics(self) -> dict[str, float]:
        """The measured figures that exist, by name (what `model.optimized` carries per variant)."""
        return {k: float(v) for k in METRICS if (v := getattr(self, k)) is not None and math.isfinite(v)}

    def to_json(self) -> dict[str, Any]:
        data = asdict(self)
        data["path"] = self.path.name if self.path is not None else None
        return data


@dataclass
class OptimizationReport:
    """Every variant of one model version (FP32 first) and the one recommended for serving."""

    model: str
    version: int
    variants: list[VariantReport]
    recommended: str
    recommendation_reason: str
    accuracy_budget: float = 0.01  # points of accuracy for a classifier, of r2 for a regressor
    measured_on: dict[str, Any] = field(default_factory=dict)
    recommendations: dict[str, TargetRecommendation] = field(default_factory=dict)
    targets: dict[str, Any] = field(default_factory=dict)
    task: str = "classification"

    @property
    def score_name(self) -> str:
        return score_name(self.task)

    def variant(self, name: str) -> VariantReport:
        """The row named `name`; KeyError if the report has none."""
        for row in self.variants:
            if row.name == name:
                return row
        raise KeyError(name)

    @property
    def recommended_variant(self) -> VariantReport:
        return self.variant(self.recommended)

    def registry_artifacts(self) -> dict[str, VariantReport]:
        """Built variants by registry role (int8, fp16, pruned, distilled): in a family, the fastest at
        batch 32 among those within budget, else the most accurate."""
        chosen: dict[str, VariantReport] = {}
        for row in self.variants:
            role = REGISTRY_ROLES.get(row.name)
            if role is None or not row.ok:
                continue
            if role not in chosen or _better(row, chosen[role]):
                chosen[role] = row
        return chosen

    def to_json(self) -> dict[str, Any]:
        return {
            "model": self.model,
            "version": self.version,
            "recommended": self.recommended,
            "recommendation_reason": self.recommendation_reason,
            "accuracy_budget": self.accuracy_budget,
            "task": self.task,
            "score": self.score_name,
            "ranking_metric": "latency_b32_p50_ms",
            "measured_on": self.measured_on,
            "targets": self.targets,
            "recommendations": {key: rec.to_json() for key, rec in self.recommendations.items()},
            "variants": [row.to_json() for row in self.variants],
        }

    def to_markdown(self) -> str:
        """A Markdown table of every variant, the recommendation and the failures with their reasons."""
        lines = [
            f"# Optimization of {self.model} version {self.version}",
            "",
            f"Recommended: **{self.recommended}** — {self.recommendation_reason}",
            "",
            *self._measured_on_lines(),
            "| variant | size | peak mem | b1 p50 ms | b1 p99 ms | b32 p50 ms | b32 p99 ms | rows/s "
            + ("| r2 | rmse | mae | agreement | Δ r2 " if self.task == "regression" else "")
            + ("| accuracy | macro-F1 | agreement | Δ accuracy " if self.task != "regression" else "")
            + "| within budget |",
            "|---|" + "---:|" * (12 if self.task == "regression" else 11) + ":-:|",
        ]
        for row in self.variants:
            if not row.ok:
                lines.append(f"| {row.name} | failed |" + " |" * (12 if self.task == "regression" else 11))
                continue
            mark = " ★" if row.name == self.recommended else ""
            if self.task == "regression":
                scores = f"| {_num(row.r2, 4)} | {_num(row.rmse, 4)} | {_num(row.mae, 4)} | {_pct(row.agreement)} "
            else:
                scores = f"| {_pct(row.accuracy)} | {_pct(row.macro_f1)} | {_pct(row.agreement)} "
            lines.append(
                f"| {row.name}{mark} | {_size(row.size_bytes)} | {_size(row.peak_memory_bytes)} "
                f"| {_num(row.latency_b1_p50_ms)} | {_num(row.latency_b1_p99_ms)} | {_num(row.latency_b32_p50_ms)} "
                f"| {_num(row.latency_b32_p99_ms)} | {_num(row.throughput_per_s, 0)} {scores}"
                f"| {_points(row.score_delta)} | {'yes' if row.within_budget else 'no'} |"
            )
        failed = [row for row in self.variants if not row.ok]
        notes = [(row.name, note) for row in self.variants for note in row.notes]
        if failed:
            lines += ["", "Failed variants:", ""] + [f"- {row.name}: {row.error}" for row in failed]
        if notes:
            lines += ["", "Notes:", ""] + [f"- {name}: {note}" for name, note in notes]
        lines += self._per_target_lines()
        return "\n".join(lines) + "\n"

    def _per_target_lines(self) -> list[str]:
        """The recommendation per target and every variant's figures on each, with the hardware they came from."""
        if not self.recommendations:
            return []
        lines = ["", "## Per hardware class and execution provider", ""]
        lines += ["| target | recommended | why |", "|---|---|---|"]
        lines += [f"| {key} | {rec.variant or 'none'} | {rec.reason} |" for key, rec in self.recommendations.items()]
        absent = self.targets.get("absent") or {}
        if absent:
            lines += ["", "Not measured: " + "; ".join(f"{p} ({why})" for p, why in absent.items())]
        lines += [
            "",
            f"| variant | hardware class | provider | b1 p50 ms | b32 p50 ms | b32 p99 ms | {self.score_name} | note |",
            "|---|---|---|---:|---:|---:|---:|---|",
        ]
        for row in self.variants:
            for m in row.measurements:
                score = _num(m.r2, 4) if self.task == "regression" else _pct(m.accuracy)
                lines.append(
                    f"| {row.name} | {m.hardware_class} | {m.provider} | {_num(m.latency_b1_p50_ms)} "
                    f"| {_num(m.latency_b32_p50_ms)} | {_num(m.latency_b32_p99_ms)} | {score} "
                    f"| {(m.error or '').replace('|', '/')} |"
                )
        return lines

    def _measured_on_lines(self) -> list[str]:
        if not self.measured_on:
            return []
        cpu = self.measured_on
        return [f"Measured on: {cpu.get('model')} ({cpu.get('hardware_class')}, {cpu.get('cores')} cores)", ""]

    def write_chart(self, path: Path) -> None:
        """A PNG of batch-32 p50 latency against the test score (accuracy, a regressor's r2), one labelled point
        per built variant."""
        import matplotlib

        matplotlib.use("Agg", force=False)
        from matplotlib.figure import Figure

        figure = Figure(figsize=(7, 4.5), dpi=100)
        axes = figure.add_subplot()
        percent = self.task != "regression"
        for row in self.variants:
            if not row.ok or row.latency_b32_p50_ms is None or row.score is None:
                continue
            recommended = row.name == self.recommended
            score = row.score * 100 if percent else row.score
            axes.scatter(
                row.latency_b32_p50_ms,
                score,
                s=80 if recommended else 40,
                marker="*" if recommended else "o",
                color="tab:red" if recommended else "tab:blue",
            )
            axes.annotate(row.name, (row.latency_b32_p50_ms, score), textcoords="offset points", xytext=(5, 5))
        axes.set_xlabel("latency, batch 32, p50 (ms)")
        axes.set_ylabel("test accuracy (%)" if percent else "test r2")
        axes.set_title(f"{self.model} v{self.version}: variants (★ recommended)")
        axes.grid(True, alpha=0.3)
        figure.tight_layout()
        figure.savefig(str(path), format="png")


def _better(candidate: VariantReport, current: VariantReport) -> bool:
    if candidate.within_budget != current.within_budget:
        return candidate.within_budget
    if candidate.within_budget:
        return (candidate.latency_b32_p50_ms or math.inf) < (current.latency_b32_p50_ms or math.inf)
    return (candidate.score or -math.inf) > (current.score or -math.inf)


def score_name(task: str) -> str:
    """The figure a model's variants are held to: accuracy, or a regressor's r2."""
    return "r2" if task == "regression" else "accuracy"


def recommend(variants: list[VariantReport], budget: float) -> tuple[str, str]:
    """The fastest built variant at batch 32 (p50) whose score (accuracy, a regressor's r2) dropped by at
    most `budget`, and why; FP32 when none qualifies. Marks each row's `within_budget` on the way."""
    for row in variants:
        delta = row.score_delta
        row.within_budget = row.ok and delta is not None and delta >= -budget - 1e-12
    qualified = [row for row in variants if row.within_budget and row.latency_b32_p50_ms is not None]
    baseline = next((row for row in variants if row.name == BASELINE), None)
    score = "r2" if baseline is not None and baseline.r2 is not None else "accuracy"
    if not qualified:
        return BASELINE, f"no variant kept its {score} within {budget * 100:g} point(s) of FP32"
    best = min(qualified, key=lambda row: row.latency_b32_p50_ms or math.inf)
    if best.name == BASELINE or baseline is None or not baseline.latency_b32_p50_ms:
        return best.name, (
            f"fastest at batch 32 (p50 {_num(best.latency_b32_p50_ms)} ms) among variants within "
            f"{budget * 100:g} point(s) of FP32 {score}; no variant beat FP32"
        )
    speedup = baseline.latency_b32_p50_ms / (best.latency_b32_p50_ms or math.inf)
    return best.name, (
        f"fastest at batch 32 (p50 {_num(best.latency_b32_p50_ms)} ms, {speedup:.2f}x FP32) among variants within "
        f"{budget * 100:g} point(s) of FP32 {score} (Δ {_points(best.score_delta)})"
    )


def _num(value: float | None, digits: int = 3) -> str:
    return "" if value is None else f"{value:,.{digits}f}"


def _pct(value: float | None) -> str:
    return "" if value is None else f"{value * 100:.2f}%"


def _points(value: float | None) -> str:
    return "" if value is None else f"{value * 100:+.2f} pt"


def _size(value: float | None) -> str:
    if value is None:
        return ""
    for unit in ("B", "KiB", "MiB"):
        if value < 1024 or unit == "MiB":
            return f"{value:.0f} {unit}" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1024
    return f"{value:.1f} GiB"
