"""The optimizer on regressors: a trainer-trained MLP on Friedman's regression problem #1 (scikit-learn's
`make_friedman1`: five of ten features matter, non-linearly; its spec and weights known) gets every
variant, held to FP32's r2 instead of accuracy, and an imported one (only its ONNX file and splits) gets a
distilled student that predicts in the targets' units. The edge bundle's runner prints predictions, not
classes."""

from __future__ import annotations

import json
import tarfile
from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest
from edge_bundles import run_bundle
from foreign_models import FittedRegressor, fit_regressor, optimizer_inputs, vector_regressor
from sklearn.datasets import make_friedman1
from sklearn.linear_model import LinearRegression
from sklearn.metrics import r2_score

from gallery_common.artifacts import FileArtifactStore
from gallery_common.contracts import write_split
from gallery_common.onnx_safety import verify_self_contained_onnx
from gallery_optimizer.pipeline import (
    OptimizationError,
    OptimizationReport,
    OptimizeInputs,
    build_edge_bundle,
    optimize,
)
from gallery_optimizer.policy import ALL_VARIANTS, OptimizationPolicy
from gallery_trainer.onnx_adapt import adapt_model
from gallery_trainer.pipeline import run_job
from gallery_trainer.spec import parse_spec

# r2 may drop by 0.02 (the budget is in points of r2 for a regressor)
POLICY = OptimizationPolicy(student_hidden=[64], distill_epochs=30, finetune_epochs=3, accuracy_budget=0.02)


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory) -> OptimizeInputs:
    """An MLP regressor trained by the trainer on 1,500 rows of Friedman #1 (noise 0.5), given as an NPZ."""
    folder = tmp_path_factory.mktemp("friedman")
    store = FileArtifactStore((folder / "artifacts").as_uri())
    x, y = make_friedman1(n_samples=1500, noise=0.5, random_state=0)
    data = folder / "friedman.npz"
    np.savez(data, x=x.astype(np.float32), y=y.astype(np.float32))
    ref = store.put("data/friedman.npz", data.read_bytes())
    spec = parse_spec(
        {
            "name": "friedman-mlp",
            "data": {"source": "npz", "uri": ref.uri, "sha256": ref.sha256, "task": "regression"},
            "model": {"hidden": [64, 64]},
            "training": {"epochs": 20, "batch_size": 32, "seed": 0},
            "engine": {"kind": "ddp", "ranks": 1},
        }
    )
    outputs = run_job(spec, folder / "work", store=store)
    files = outputs.files
    return OptimizeInputs(
        onnx=files["onnx"],
        weights=files["weights"],
        spec=json.loads(files["spec"].read_text()),
        train_split=files["train_split"],
        validation_split=files["validation_split"],
        test_split=files["test_split"],
        task="regression",
    )


@pytest.fixture(scope="module")
def report(trained: OptimizeInputs, tmp_path_factory: pytest.TempPathFactory) -> OptimizationReport:
    return optimize(trained, POLICY, tmp_path_factory.mktemp("optimized"), model="friedman", version=1)


def fp32_predictions(inputs: OptimizeInputs) -> tuple[np.ndarray, np.ndarray]:
    with np.load(inputs.test_split) as split:
        x, y = split["x"].astype(np.float32), split["y"]
    session = ort.InferenceSession(inputs.onnx.read_bytes(), providers=["CPUExecutionProvider"])
    return session.run(["logits"], {"features": x})[0], y


def test_every_variant_of_a_trained_regressor_is_built_and_held_to_fp32s_r2(
    trained: OptimizeInputs, report: OptimizationReport
) -> None:
    assert report.task == "regression" and report.score_name == "r2"
    assert [row.name for row in report.variants] == ["fp32", *ALL_VARIANTS]
    fp32 = report.variant("fp32")
    predictions, targets = fp32_predictions(trained)
    # the r2 the report gives FP32 is scikit-learn's on the same predictions
    assert fp32.r2 == pytest.approx(r2_score(targets, predictions[:, 0]), abs=1e-5)
    assert fp32.r2 is not None and fp32.r2 > 0.9, fp32.r2
    for row in report.variants:
        assert row.error is None, f"{row.name}: {row.error}"
        assert row.path is not None
        verify_self_contained_onnx(row.path.read_bytes())
        # a regressor has no accuracy: its figures are r2, rmse and mae, and the budget reads r2
        assert row.accuracy is None and row.macro_f1 is None and row.accuracy_delta is None
        assert row.r2 is not None and row.rmse is not None and row.mae is not None and row.r2_delta is not None
        assert row.r2_delta == pytest.approx(row.r2 - fp32.r2)
        assert row.within_budget == (row.r2_delta >= -POLICY.accuracy_budget), row.name
        assert row.agreement is not None and 0 <= row.agreement <= 1
        assert row.rmse > 0 and row.latency_b32_p50_ms
    # INT8 and FP16 barely move a regressor's predictions off FP32's
    for name in ("int8_dynamic", "int8_static", "fp16"):
        row = report.variant(name)
        assert row.within_budget and row.agreement is not None and row.agreement > 0.9, (name, row.r2, row.agreement)
    student = report.variant("distilled")
    assert any("on the teacher's predictions" in note for note in student.notes)
    assert student.r2 is not None and student.r2 > fp32.r2 - 0.1, (student.r2, fp32.r2)
    assert report.recommended in {row.name for row in report.variants if row.within_budget}
    assert "FP32 r2" in report.recommendation_reason


def test_a_regressors_report_reads_in_r2(report: OptimizationReport) -> None:
    written = report.to_json()
    assert written["task"] == "regression" and written["score"] == "r2"
    fp32 = next(row for row in written["variants"] if row["name"] == "fp32")
    assert fp32["accuracy"] is None and fp32["r2"] is not None
    metrics = report.variant("fp32").metrics()
    assert {"r2", "rmse", "mae", "r2_delta"} <= set(metrics) and "accuracy" not in metrics
    markdown = report.to_markdown()
    assert "| r2 | rmse | mae | agreement | Δ r2 " in markdown and "| accuracy |" not in markdown


def test_the_edge_bundle_of_a_regressor_prints_its_predictions(
    trained: OptimizeInputs, report: OptimizationReport, tmp_path: Path
) -> None:
    bundle = build_edge_bundle(report, trained, tmp_path / "bundle")
    with tarfile.open(bundle) as archive:
        signature = json.loads(archive.extractfile("signature.json").read())  # type: ignore[union-attr]
        classes = json.loads(archive.extractfile("classes.json").read())  # type: ignore[union-attr]
        readme = archive.extractfile("README.txt").read().decode()  # type: ignore[union-attr]
    assert signature["task"] == "regression" and classes == [] and "a regressor" in readme
    with np.load(trained.test_split) as split:
        x = split["x"].astype(np.float32)
    recommended = report.recommended_variant.path
    assert recommended is not None
    session = ort.InferenceSession(recommended.read_bytes(), providers=["CPUExecutionProvider"])
    expected = session.run(["logits"], {"features": x})[0]
    printed = lambda rows: [",".join(f"{v:.6g}" for v in row) for row in rows]  # noqa: E731
    result = run_bundle(bundle, x, tmp_path, printed)
    np.testing.assert_allclose(np.array(result["predictions"]), expected, rtol=1e-5, atol=1e-4)


def test_an_imported_regressor_gets_a_student_in_its_targets_units(tmp_path: Path) -> None:
    """No spec and no weights: the student standardises the features and predicts through the targets' mean
    and spread (targets here are around 500, far from a fresh network's outputs)."""
    given = fit_regressor()
    y_train, y_test = 10 * given.y_train + 500, 10 * given.y_test + 500  # far from a fresh network's outputs
    regressor = LinearRegression().fit(given.x_train, y_train)
    fitted = FittedRegressor(regressor, given.x_train, y_train, given.x_test, y_test)
    model = tmp_path / "model.onnx"
    model.write_bytes(adapt_model(vector_regressor(fitted), task="regression").model)
    train, held_out = (fitted.x_train, fitted.y_train), (fitted.x_test, fitted.y_test)
    inputs = optimizer_inputs(tmp_path, model, train, held_out, task="regression")
    policy = POLICY.model_copy(update={"variants": ["distilled", "pruned_structured"]})
    report = optimize(inputs, policy, tmp_path / "work", model="linear", version=1)
    student = report.variant("distilled")
    assert student.error is None and student.r2 is not None, student.error
    fp32 = report.variant("fp32")
    assert fp32.r2 is not None and fp32.r2 > 0.99  # a linear model of linear data
    assert student.r2 > 0.9, student.r2
    assert "an imported model has neither" in (report.variant("pruned_structured").error or "")


def test_a_regressors_splits_must_hold_what_it_predicts(tmp_path: Path) -> None:
    fitted = fit_regressor()
    model = tmp_path / "model.onnx"
    model.write_bytes(adapt_model(vector_regressor(fitted), task="regression").model)
    for name in ("train", "validation", "test"):
        write_split(tmp_path / f"{name}.npz", fitted.x_test, np.stack([fitted.y_test, fitted.y_test], axis=1))
    inputs = OptimizeInputs(
        model, None, None, tmp_path / "train.npz", tmp_path / "validation.npz", tmp_path / "test.npz", task="regression"
    )
    with pytest.raises(OptimizationError, match="the train split holds 2 target"):
        optimize(inputs, POLICY, tmp_path / "work", model="linear", version=1)
