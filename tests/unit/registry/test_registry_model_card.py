"""The pieces of the generated model card and of the catalogue's entries, without a database."""

from __future__ import annotations

from datetime import UTC, datetime

import numpy as np
import pytest
from federated_lineage import WORST_SITE, federation, site_metrics
from gate_reports import feature_importance

from gallery_common.contracts.refs import FederatedLineage
from gallery_common.contracts.registry import ArtifactPublic, ArtifactRole, ModelPublic, VersionPublic, VersionStatus
from gallery_common.events import Lineage
from gallery_registry.catalogue import headline, recommended_variant, version_metrics
from gallery_registry.gate.metrics import classification_metrics, confusion_matrix, expected_calibration_error
from gallery_registry.model_card import card_key, recommendation_tags, render_card
from gallery_registry.schemas import ValidationPolicy
from gallery_registry.store_cards import ModelCardText

AT = datetime(2026, 1, 1, tzinfo=UTC)


def model() -> ModelPublic:
    return ModelPublic(
        name="iris",
        description="Three species.",
        owner="ann",
        tags={"team": "bio"},
        created_at=AT,
        updated_at=AT,
        latest_version=1,
        aliases={"production": 1},
    )


def version(report: dict[str, object] | None = None, tags: dict[str, str] | None = None) -> VersionPublic:
    return VersionPublic(
        name="iris",
        version=1,
        semver="1.0.0",
        status=VersionStatus.validated,
        description=None,
        signature=None,
        metrics={"accuracy": 0.5},
        tags=tags or {},
        lineage=Lineage(dataset_fingerprint="sha256:abc"),
        run_id="run-1",
        source_event_id=None,
        source=None,
        task="classification",
        class_names=["a", "b"],
        evaluation_report=report,
        rejection_reasons=[],
        artifacts={
            ArtifactRole.int8: ArtifactPublic(
                role=ArtifactRole.int8, uri="file:///x/int8.onnx", sha256="c" * 64, size=2048, created_at=AT
            )
        },
        aliases=["production"],
        created_at=AT,
        updated_at=AT,
    )


def text(revision: int = 0, **fields: str) -> ModelCardText:
    return ModelCardText(
        name="iris",
        revision=revision,
        description=fields.get("description", "Three species."),
        intended_use=fields.get("intended_use"),
        limitations=fields.get("limitations"),
        updated_at=AT,
        updated_by=None,
    )


def test_the_card_is_deterministic_and_quotes_what_could_break_its_yaml() -> None:
    report = {"accuracy": 0.9, "n_test": 30, "per_class_recall": {"a": 1.0, "b|c": 0.8}}
    tricky = model().model_copy(update={"tags": {"note": 'say "hi"\nthere: yes'}})
    card = render_card(tricky, text(2, intended_use="Teaching."), version(report), ValidationPolicy())
    assert card == render_card(tricky, text(2, intended_use="Teaching."), version(report), ValidationPolicy())
    meta = card.split("\n---\n", 1)[0]
    assert '- "note:say \\"hi\\"\\nthere: yes"' in meta  # one quoted scalar, not a new key
    assert "      value: 0.9" in meta and '"n_test"' not in meta and "per_class_recall" not in meta
    assert "| b\\|c | 0.8 |" in card  # a '|' in a class name does not split the table
    assert "Status: **validated** · aliases: production · accuracy 0.9 · owner: ann" in card
    assert "_Card text revision 2;" in card
    assert "| int8 | 2.0 KiB | cccccccccccc |" in card  # a variant kept with the version


def test_a_card_without_evaluation_says_so_and_has_no_model_index() -> None:
    card = render_card(model(), text(), version(None), None)
    assert "model-index" not in card and "_Not evaluated by the validation gate yet._" in card
    assert "_Not stated yet._" in card and 'datasets:\n- "sha256:abc"' in card


def test_the_recommendation_per_hardware_class_and_provider_becomes_one_tag() -> None:
    doc = {
        "recommended": "int8_dynamic",
        "variants": [],
        "recommendations": {
            "cpu-x86-avx2/cpu": {"target": "cpu-x86-avx2/cpu", "variant": "int8_dynamic", "reason": "fastest"},
            "cpu-x86-avx2/openvino": {"target": "cpu-x86-avx2/openvino", "variant": None, "reason": "IR 14"},
        },
    }
    assert recommendation_tags(doc)["optimizer.recommended_per_target"] == (
        "cpu-x86-avx2/cpu: int8_dynamic; cpu-x86-avx2/openvino: none"
    )


def test_recommendation_tags_from_an_optimizer_report() -> None:
    doc = {
        "recommended": "fp16",
        "recommendation_reason": "smallest within budget",
        "variants": [
            {"name": "fp32", "size_bytes": 4000.0, "latency_b1_p50_ms": 0.2, "accuracy": 0.9},
            {"name": "fp16", "size_bytes": 2000.0, "latency_b1_p50_ms": float("nan"), "accuracy": None},
        ],
    }
    assert recommendation_tags(doc) == {
        "optimizer.recommended": "fp16",
        "optimizer.recommendation_reason": "smallest within budget",
        "optimizer.recommended_size_bytes": "2000",
        "optimizer.fp32_size_bytes": "4000",
        "optimizer.fp32_p50_ms": "0.2",
        "optimizer.fp32_accuracy": "0.9",
    }
    assert recommendation_tags({"variants": []}) == {}
    regressor = {
        "recommended": "distilled",
        "variants": [
            {"name": "fp32", "size_bytes": 72000.0, "accuracy": None, "r2": 0.9721},
            {"name": "distilled", "size_bytes": 4300.0, "accuracy": None, "r2": 0.9773},
        ],
    }
    tags = recommendation_tags(regressor)
    assert tags["optimizer.recommended_r2"] == "0.9773" and tags["optimizer.fp32_r2"] == "0.9721"
    assert not any(key.endswith("accuracy") for key in tags)
    found = recommended_variant({"optimizer.recommended": "fp16", "optimizer.recommended_size_bytes": "2000"})
    assert found is not None and (found.name, found.size_bytes, found.p50_ms) == ("fp16", 2000.0, None)
    assert recommended_variant({}) is None


def test_headline_prefers_the_policys_metric_then_accuracy_then_the_first() -> None:
    metrics = version_metrics({"accuracy": 0.5, "val_loss": 1.0}, {"accuracy": 0.8, "macro_f1": 0.7, "n_test": 9})
    assert metrics == {"accuracy": 0.8, "val_loss": 1.0, "macro_f1": 0.7}
    assert headline(metrics, "macro_f1") is not None and headline(metrics, "macro_f1").name == "macro_f1"  # type: ignore[union-attr]
    assert headline(metrics, "r2").name == "accuracy"  # type: ignore[union-attr]
    assert headline({"latency_p50_ms": 1.0, "rmse": 0.3}, None).name == "rmse"  # type: ignore[union-attr]
    assert headline({}, None) is None


def test_card_keys_are_content_addressed() -> None:
    assert card_key("iris", 3, "ab" * 32) == "cards/iris/3/model-card-abababababababab.md"


def test_the_gate_reports_a_confusion_matrix_class_counts_and_reliability_bins() -> None:
    labels = np.array([0, 0, 1, 1, 2])
    logits = np.array([[3.0, 0, 0], [0, 3.0, 0], [0, 3.0, 0], [0, 3.0, 0], [0, 0, 0.1]])
    assert confusion_matrix(labels, logits.argmax(axis=1), 3) == [[1, 1, 0], [0, 2, 0], [0, 0, 1]]
    report = classification_metrics(logits, labels, ["x", "y", "z"])
    assert report["class_counts"] == {"x": 2, "y": 2, "z": 1}
    assert report["confusion_matrix"] == {"labels": ["x", "y", "z"], "matrix": [[1, 1, 0], [0, 2, 0], [0, 0, 1]]}
    bins = report["reliability"]
    assert isinstance(bins, list) and sum(b["count"] for b in bins) == 5
    ece = sum(b["count"] / 5 * abs(b["accuracy"] - b["confidence"]) for b in bins)
    assert (
        ece
        == pytest.approx(report["ece"])
        == pytest.approx(expected_calibration_error(np.exp(logits) / np.exp(logits).sum(axis=1, keepdims=True), labels))
    )


def test_the_card_ranks_the_features_that_matter_and_says_how_they_were_measured() -> None:
    names = ["sepal length", "sepal width", "petal length", "petal width"]
    report = {"accuracy": 0.9, "feature_importance": feature_importance([0.03, 0.01, 0.45, 0.1], names)}
    card = render_card(model(), text(), version(report), ValidationPolicy())
    assert card.index("## Evaluation") < card.index("## Feature importance") < card.index("## Optimization")
    assert (
        "Mean |SHAP| of each feature over 32 rows of the test split, for the probability of the predicted class "
        "(kernel-shap, 400 coalitions per row against a 10-row k-means summary of the training split; seed 0), "
        "computed by the validation gate." in card
    )
    rows = [line for line in card.splitlines() if line.startswith("| ") and "SHAP" not in line]
    importance_rows = rows[rows.index("| petal length | 0.45 | ████████████████████ |") :][:4]
    assert importance_rows == [
        "| petal length | 0.45 | ████████████████████ |",
        "| petal width | 0.1 | ████ |",
        "| sepal length | 0.03 | █ |",
        "| sepal width | 0.01 | █ |",
    ]


def test_a_picture_shows_its_top_patches_and_a_heat_map_of_every_patch() -> None:
    # 1x8x8 in 2x2-pixel patches: 4 rows of 4; patch 9 (rows 4:6, columns 2:4) matters most
    values = [0.0] * 16
    values[9], values[10], values[5] = 0.2, 0.1, 0.05
    names = [f"patch ({r * 2}:{r * 2 + 2}, {c * 2}:{c * 2 + 2})" for r in range(4) for c in range(4)]
    report = {"accuracy": 0.9, "feature_importance": feature_importance(values, names, [1, 8, 8])}
    card = render_card(model(), text(), version(report), ValidationPolicy())
    assert "The input is a 1x8x8 picture, explained in 2x2-pixel patches." in card
    assert "| patch (rows, columns) | mean \\|SHAP\\| | relative |" in card
    assert "| (4:6, 2:4) | 0.2 | ████████████████████ |" in card
    assert "6 more patches, each less important than these." in card
    heat = card.split("Every patch, darker is more important:\n\n```\n", 1)[1].split("\n```", 1)[0]
    assert heat.splitlines() == ["        ", "  ░░    ", "  ██▒▒  ", "        "]


@pytest.mark.parametrize(
    ("report", "said"),
    [
        ({"accuracy": 0.9}, "_Not computed by the validation gate._"),
        (
            {"accuracy": 0.9, "feature_importance": {"error": "feature importance exceeded its 300 s time limit"}},
            "_Not computed: feature importance exceeded its 300 s time limit_",
        ),
    ],
    ids=["importance-off", "importance-failed"],
)
def test_a_card_says_why_it_has_no_feature_importance(report: dict[str, object], said: str) -> None:
    card = render_card(model(), text(), version(report), ValidationPolicy())
    assert f"## Feature importance\n\n{said}\n" in card
    assert "## Feature importance" not in render_card(model(), text(), version(None), None)  # not evaluated yet


def federated(federation: FederatedLineage, metrics: dict[str, float]) -> VersionPublic:
    trained = version({"accuracy": 0.93})
    lineage = trained.lineage.model_copy(update={"federation": federation})
    return trained.model_copy(update={"lineage": lineage, "metrics": {**trained.metrics, **metrics}})


def test_a_federated_card_names_its_sites_their_accuracy_the_worst_and_the_privacy_budget() -> None:
    card = render_card(model(), text(), federated(federation(), site_metrics()), ValidationPolicy())
    assert card.index("## Training data") < card.index("## Federated training") < card.index("## Evaluation")
    section = card.split("## Federated training\n", 1)[1].split("\n## ", 1)[0]
    assert "Trained across 3 sites without their data leaving them" in section
    for fact in (
        "- strategy: fedavg",
        "- rounds: 12",
        "- minimum sites per round: 2",
        "- secure aggregation: no",
        "- privacy budget: ε 3.2, δ 1e-05 (dp-sgd, noise multiplier 1.1, clipping norm 1)",
    ):
        assert fact in section.splitlines()
    assert "| site | data fingerprint | examples | rounds | validation accuracy |" in section
    assert "| clinic-north | `111111111111` | 420 | 12 | 0.962 |" in section
    assert "| lab-east | `333333333333` | 160 | 11 | 0.887 |" in section
    assert "1" * 13 not in section, "a short fingerprint only"
    worst = f"Worst site: {WORST_SITE} (validation accuracy 0.887); spread between the best and the worst site: "
    assert worst + "0.075 (7.5 points)." in section


def test_a_federated_card_without_privacy_says_none_and_a_site_without_figures_is_not_the_worst() -> None:
    figures = {k: v for k, v in site_metrics(private=False).items() if not k.startswith(f"site.{WORST_SITE}.")}
    card = render_card(model(), text(), federated(federation(private=False, secure=True), figures), None)
    assert "- secure aggregation: yes (SecAgg+)" in card
    assert "- privacy budget: none (no differential privacy)" in card
    assert "| lab-east | `333333333333` | 160 | 11 | — |" in card
    assert "Worst site: clinic-south (validation accuracy 0.941)" in card and "(2.1 points)" in card


def test_a_card_trained_in_one_place_has_no_federated_section() -> None:
    card = render_card(model(), text(), version({"accuracy": 0.9}), ValidationPolicy())
    assert "Federated" not in card and "site" not in card.lower()
