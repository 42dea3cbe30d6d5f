"""The optimizer on text models (one string input `text`, the vectorizer inside the ONNX graph) with text
splits: INT8 dynamic and static (calibrated on texts), FP16, the pruned network and the distilled student,
both behind the teacher's own vectorizer, are built and measured on texts; a model without the trainer's
spec and weights gets no pruned variant and the report says why; the edge bundle runs raw texts in an
interpreter that has only numpy and onnxruntime."""

from __future__ import annotations

import tarfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from test_optimizer_variants import run_bundle
from text_models import CLASS_NAMES, stored_text_model, write_text_splits
from text_models import text_classifier as fitted_text_classifier

from gallery_common.contracts import read_split, write_split
from gallery_optimizer.pipeline import (
    OptimizationError,
    OptimizationReport,
    OptimizeInputs,
    build_edge_bundle,
    optimize,
)
from gallery_optimizer.policy import OptimizationPolicy

POLICY = OptimizationPolicy(student_hidden=[32], distill_epochs=40, accuracy_budget=0.03)
BUILT = ("fp32", "int8_dynamic", "int8_static", "fp16", "distilled")
PRUNED = ("pruned_magnitude", "pruned_structured")


@dataclass
class Optimized:
    inputs: OptimizeInputs
    report: OptimizationReport
    workdir: Path


def text_inputs(folder: Path) -> OptimizeInputs:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "model.onnx").write_bytes(fitted_text_classifier().onnx)
    splits = write_text_splits(folder)
    return OptimizeInputs(
        onnx=folder / "model.onnx",
        weights=None,
        spec=None,
        train_split=splits["train"],
        validation_split=splits["validation"],
        test_split=splits["test"],
        class_names=CLASS_NAMES,
    )


@pytest.fixture(scope="module")
def optimized(tmp_path_factory: pytest.TempPathFactory) -> Optimized:
    """A hand-built text classifier with no spec or weights of the trainer's."""
    folder = tmp_path_factory.mktemp("text-optimizer")
    inputs = text_inputs(folder / "inputs")
    report = optimize(inputs, POLICY, folder / "work", model="topics", version=1)
    return Optimized(inputs, report, folder / "work")


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory) -> Optimized:
    """A text model as the trainer stores one: vectorizer and network joined by merge_models, spec, weights."""
    folder = tmp_path_factory.mktemp("text-optimizer-trained")
    stored = stored_text_model(folder / "model")
    splits = write_text_splits(folder)
    inputs = OptimizeInputs(
        onnx=stored.onnx,
        weights=stored.weights,
        spec=stored.spec,
        train_split=splits["train"],
        validation_split=splits["validation"],
        test_split=splits["test"],
        class_names=CLASS_NAMES,
    )
    report = optimize(inputs, POLICY, folder / "work", model="topics", version=1)
    return Optimized(inputs, report, folder / "work")


def check_built(optimized: Optimized, names: tuple[str, ...]) -> None:
    """Each variant named was built, takes raw texts, and its report row holds its own figures on the test
    texts as ONNX Runtime gives them here."""
    test = read_split(optimized.inputs.test_split)
    fp32 = predictions(optimized.inputs.onnx, test.x)
    for name in names:
        row = optimized.report.variant(name)
        assert row.error is None, (name, row.error)
        assert row.path is not None and row.path.exists()
        graph = onnx.load(str(row.path)).graph
        assert [i.name for i in graph.input] == ["text"]
        assert graph.input[0].type.tensor_type.elem_type == onnx.TensorProto.STRING
        served = predictions(row.path, test.x)
        assert row.accuracy == pytest.approx(float((served == test.y).mean()))
        assert row.agreement == pytest.approx(float((served == fp32).mean()))
        assert row.accuracy > 0.85, (name, row.accuracy)
        assert row.latency_b1_p50_ms and row.latency_b32_p50_ms and row.peak_memory_bytes
        assert row.size_bytes == row.path.stat().st_size


def predictions(model: Path, texts: np.ndarray) -> np.ndarray:
    (logits,) = ort.InferenceSession(model.read_bytes()).run(["logits"], {"text": texts})
    return np.asarray(logits).argmax(axis=1)


def test_the_variants_that_apply_are_built_and_measured_on_texts(optimized: Optimized) -> None:
    check_built(optimized, BUILT)
    distilled = optimized.report.variant("distilled")
    assert any("behind the teacher's own vectorizer" in note for note in distilled.notes)
    assert any("calibrated on 120 validation rows" in note for note in optimized.report.variant("int8_static").notes)


def test_without_the_trainers_spec_pruning_is_not_built_and_the_report_says_why(optimized: Optimized) -> None:
    markdown = optimized.report.to_markdown()
    for name in PRUNED:
        row = optimized.report.variant(name)
        reason = (
            f"{name} is built from the trainer's PyTorch weights and stored spec, and this version has no such spec"
            " (an imported model has neither)"
        )
        assert row.error == reason and row.path is None and not row.within_budget
        assert f"{name}: {reason}" in markdown
    assert optimized.report.recommended in BUILT


def test_a_trainer_text_model_gets_every_variant_pruned_and_distilled_behind_its_vectorizer(
    trained: Optimized,
) -> None:
    check_built(trained, (*BUILT, *PRUNED))
    structured = trained.report.variant("pruned_structured")
    assert any("50% of hidden units removed: " in note for note in structured.notes)
    fp32_size = trained.report.variant("fp32").size_bytes
    assert structured.size_bytes and fp32_size and structured.size_bytes < fp32_size
    assert trained.report.recommended in (*BUILT, *PRUNED)


def test_the_edge_bundle_of_a_text_model_runs_raw_texts(optimized: Optimized, tmp_path: Path) -> None:
    bundle = build_edge_bundle(optimized.report, optimized.inputs, tmp_path / "bundle")
    with tarfile.open(bundle) as archive:
        readme = archive.extractfile("README.txt").read().decode()  # type: ignore[union-attr]
    assert "one text per line" in readme
    test = read_split(optimized.inputs.test_split)
    chosen = optimized.report.recommended_variant.path
    assert chosen is not None
    expected = predictions(chosen, test.x)
    result = run_bundle(bundle, test.x, tmp_path)
    assert result["class_indices"] == expected.tolist()
    assert result["predictions"] == [CLASS_NAMES[i] for i in expected]


def test_a_text_model_with_numeric_splits_is_refused_with_the_reason(tmp_path: Path) -> None:
    inputs = text_inputs(tmp_path)
    rng = np.random.default_rng(0)
    for path in (inputs.train_split, inputs.validation_split, inputs.test_split):
        write_split(path, rng.normal(size=(30, 4)), rng.integers(0, 3, size=30))
    with pytest.raises(OptimizationError, match=r"^the model takes texts but its splits hold numbers$"):
        optimize(inputs, POLICY, tmp_path / "work", model="topics", version=1)
    texts = read_split(text_inputs(tmp_path / "again").test_split)
    write_split(inputs.test_split, texts.x, texts.y)
    with pytest.raises(OptimizationError, match=r"all hold texts or all numbers \(train: numbers, .*test: texts\)"):
        optimize(inputs, POLICY, tmp_path / "work", model="topics", version=1)
