"""The policy's validation and the report: recommendation rule, registry roles, Markdown, JSON and chart."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from pydantic import ValidationError

from gallery_optimizer.policy import ALL_VARIANTS, OptimizationPolicy
from gallery_optimizer.report import OptimizationReport, VariantReport, recommend


def row(name: str, accuracy: float, b32: float, **extra: object) -> VariantReport:
    return VariantReport(
        name=name,
        path=Path(f"/work/{name}.onnx"),
        size_bytes=1000.0,
        latency_b32_p50_ms=b32,
        accuracy=accuracy,
        accuracy_delta=accuracy - 0.95,
        **extra,  # type: ignore[arg-type]
    )


def test_policy_defaults_build_every_variant_with_a_one_point_budget() -> None:
    policy = OptimizationPolicy()
    assert policy.variants == list(ALL_VARIANTS)
    assert policy.accuracy_budget == 0.01
    assert OptimizationPolicy(variants=["fp16", "fp16", "int8_dynamic"]).variants == ["fp16", "int8_dynamic"]


@pytest.mark.parametrize(
    ("field", "value", "says"),
    [
        ("variants", ["int4"], "int8_dynamic"),
        ("accuracy_budget", -0.1, "greater than or equal to 0"),
        ("target_sparsity", 1.0, "less than 1"),
        ("student_hidden", [], "at least 1"),
        ("colour", "red", "Extra inputs"),
    ],
)
def test_policy_refuses_bad_fields_saying_which(field: str, value: object, says: str) -> None:
    with pytest.raises(ValidationError) as error:
        OptimizationPolicy(**{field: value})
    assert field in str(error.value) and says in str(error.value)


def test_recommends_the_fastest_variant_within_budget() -> None:
    rows = [
        row("fp32", 0.95, 2.0),
        row("int8_dynamic", 0.945, 0.6),
        row("int8_static", 0.95, 0.8),
        row("distilled", 0.90, 0.1),  # fastest, but 5 points worse
    ]
    name, reason = recommend(rows, 0.01)
    assert name == "int8_dynamic"
    assert "3.33x FP32" in reason and "batch 32" in reason
    assert [r.within_budget for r in rows] == [True, True, True, False]


def test_falls_back_to_fp32_when_no_variant_beats_it_within_budget() -> None:
    rows = [row("fp32", 0.95, 1.0), row("int8_dynamic", 0.90, 0.5), row("fp16", 0.95, 1.5)]
    assert recommend(rows, 0.01)[0] == "fp32"
    assert recommend([row("fp32", 0.95, 1.0), row("int8_dynamic", 0.90, 0.5)], 0.0)[0] == "fp32"


def test_a_failed_variant_is_never_recommended() -> None:
    rows = [row("fp32", 0.95, 1.0), VariantReport(name="int8_static", error="calibration failed")]
    assert recommend(rows, 0.01)[0] == "fp32"
    assert not rows[1].within_budget


def report() -> OptimizationReport:
    rows = [
        row("fp32", 0.95, 2.0),
        row("int8_dynamic", 0.948, 0.6),
        row("int8_static", 0.95, 0.8),
        row("pruned_magnitude", 0.93, 1.9),
        row("pruned_structured", 0.92, 0.9),
        VariantReport(name="fp16", error="FP16 conversion failed: unsupported op"),
    ]
    name, reason = recommend(rows, 0.01)
    return OptimizationReport("digits", 3, rows, name, reason)


def test_registry_roles_hold_the_better_variant_of_each_family() -> None:
    roles = report().registry_artifacts()
    assert set(roles) == {"int8", "pruned"}  # fp16 failed
    assert roles["int8"].name == "int8_dynamic"  # both within budget: the faster
    assert roles["pruned"].name == "pruned_magnitude"  # neither within budget: the more accurate


def test_markdown_lists_every_variant_the_recommendation_and_each_failure_reason() -> None:
    markdown = report().to_markdown()
    assert "Recommended: **int8_dynamic**" in markdown
    assert "| int8_dynamic ★ |" in markdown
    assert "| fp16 | failed |" in markdown
    assert "- fp16: FP16 conversion failed: unsupported op" in markdown
    assert sum(line.startswith("| ") for line in markdown.splitlines()) == 1 + 6  # header, one line per variant


def test_json_report_is_serialisable_and_names_the_ranking_metric() -> None:
    data = json.loads(json.dumps(report().to_json()))
    assert data["recommended"] == "int8_dynamic" and data["ranking_metric"] == "latency_b32_p50_ms"
    assert data["variants"][0]["name"] == "fp32"
    assert data["variants"][1]["path"] == "int8_dynamic.onnx"
    assert data["variants"][5]["error"].startswith("FP16")


def test_chart_is_a_png(tmp_path: Path) -> None:
    report().write_chart(tmp_path / "chart.png")
    data = (tmp_path / "chart.png").read_bytes()
    assert data.startswith(b"\x89PNG\r\n\x1a\n") and len(data) > 5000
