"""The gate's own evaluation, against scikit-learn on a hand-made ONNX model with known outputs, and its policy."""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper
from sklearn.metrics import (
    accuracy_score,
    f1_score,
    log_loss,
    mean_absolute_error,
    r2_score,
    recall_score,
    root_mean_squared_error,
)

from gallery_common.events import Signature, TensorSpec
from gallery_registry.gate.evaluation import EvaluationFailed, HeldOutSplit, LatencyConfig, OnnxModel, evaluate
from gallery_registry.gate.policy import ChampionResult, champion_failure, threshold_failures
from gallery_registry.gate.signature import signature_mismatches
from gallery_registry.schemas import ValidationPolicy

FAST = LatencyConfig(samples=20, warmup=2)


def identity_model(width: int, output: str = "logits", op: str = "Identity") -> bytes:
    """`features` FP32 [-1, width] in, the same values out: the test split's x *is* the logits."""
    graph = helper.make_graph(
        [helper.make_node(op, ["features"], [output])],
        "identity",
        [helper.make_tensor_value_info("features", TensorProto.FLOAT, ["batch", width])],
        [helper.make_tensor_value_info(output, TensorProto.FLOAT, ["batch", width])],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    return model.SerializeToString()


def split_file(tmp_path: Path, x: np.ndarray, y: np.ndarray) -> HeldOutSplit:
    path = tmp_path / "test.npz"
    np.savez(path, x=x, y=y)
    return HeldOutSplit.load(path)


def ece_reference(probs: np.ndarray, labels: np.ndarray, bins: int = 15) -> float:
    """Guo et al.'s ECE written the textbook way, one bin at a time."""
    conf = probs.max(axis=1)
    correct = probs.argmax(axis=1) == labels
    total = 0.0
    for lower, upper in zip(np.linspace(0, 1, bins + 1)[:-1], np.linspace(0, 1, bins + 1)[1:], strict=True):
        members = (conf > lower) & (conf <= upper)
        if members.any():
            total += members.mean() * abs(correct[members].mean() - conf[members].mean())
    return total


@pytest.fixture
def classification_case() -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(7)
    labels = rng.integers(0, 4, size=300)
    logits = rng.normal(size=(300, 4)).astype(np.float32)
    logits[np.arange(300), labels] += rng.uniform(0, 3, size=300).astype(np.float32)  # mostly right, not always
    return logits, labels


def test_classification_metrics_match_scikit_learn(tmp_path: Path, classification_case) -> None:
    logits, labels = classification_case
    split = split_file(tmp_path, logits, labels)
    report = evaluate(OnnxModel(identity_model(4)), split, "classification", ["a", "b", "c", "d"], FAST)

    wide = logits.astype(np.float64)
    probs = np.exp(wide - wide.max(axis=1, keepdims=True))
    probs /= probs.sum(axis=1, keepdims=True)
    predicted = probs.argmax(axis=1)
    assert 0.4 < report["accuracy"] < 0.95
    assert report["accuracy"] == pytest.approx(accuracy_score(labels, predicted))
    assert report["macro_f1"] == pytest.approx(f1_score(labels, predicted, average="macro"))
    assert report["loss"] == pytest.approx(log_loss(labels, probs, labels=[0, 1, 2, 3]), rel=1e-5)
    assert report["ece"] == pytest.approx(ece_reference(probs, labels), abs=1e-9)
    recalls = recall_score(labels, predicted, average=None)
    assert report["per_class_recall"] == pytest.approx(dict(zip("abcd", recalls, strict=True)))
    assert report["n_test"] == 300
    assert 0 < report["latency_p50_ms"] <= report["latency_p99_ms"] < 1000


def test_macro_f1_counts_a_class_only_ever_predicted(tmp_path: Path) -> None:
    logits = np.array([[5, 0, 0], [0, 5, 0], [0, 0, 5], [0, 0, 5]], dtype=np.float32)
    labels = np.array([0, 1, 1, 1])  # class 2 never true, predicted twice
    report = evaluate(OnnxModel(identity_model(3)), split_file(tmp_path, logits, labels), "classification", None, FAST)
    assert report["macro_f1"] == pytest.approx(f1_score(labels, logits.argmax(1), average="macro"))
    assert report["per_class_recall"] == {"0": 1.0, "1": pytest.approx(1 / 3)}


def test_string_labels_are_mapped_through_class_names(tmp_path: Path) -> None:
    logits = np.array([[3, 0], [0, 3], [3, 0]], dtype=np.float32)
    labels = np.array(["cat", "dog", "dog"])
    report = evaluate(
        OnnxModel(identity_model(2)), split_file(tmp_path, logits, labels), "classification", ["cat", "dog"], FAST
    )
    assert report["accuracy"] == pytest.approx(2 / 3)
    assert report["per_class_recall"] == {"cat": 1.0, "dog": 0.5}


def test_perfectly_confident_and_right_has_zero_ece(tmp_path: Path) -> None:
    logits = np.eye(3, dtype=np.float32) * 60
    report = evaluate(OnnxModel(identity_model(3)), split_file(tmp_path, logits, np.arange(3)), "classification")
    assert report["accuracy"] == 1.0
    assert report["ece"] == pytest.approx(0.0, abs=1e-12)


def test_regression_metrics_match_scikit_learn(tmp_path: Path) -> None:
    rng = np.random.default_rng(3)
    predictions = rng.normal(size=(200, 1)).astype(np.float32)
    targets = (predictions[:, 0] + rng.normal(scale=0.3, size=200)).astype(np.float32)
    report = evaluate(
        OnnxModel(identity_model(1)), split_file(tmp_path, predictions, targets), "regression", None, FAST
    )
    assert report["rmse"] == pytest.approx(root_mean_squared_error(targets, predictions[:, 0]), rel=1e-5)
    assert report["mae"] == pytest.approx(mean_absolute_error(targets, predictions[:, 0]), rel=1e-5)
    assert report["r2"] == pytest.approx(r2_score(targets, predictions[:, 0]), rel=1e-5)
    assert report["n_test"] == 200
    assert "accuracy" not in report
    assert report["latency_p99_ms"] > 0


@pytest.mark.parametrize(
    ("labels", "class_names", "reason"),
    [
        (np.array([0, 1, 5]), None, "labels range over 0..5 but the model has 3 classes"),
        (np.array([0, 1, 2]), ["a", "b"], "outputs 3 classes but the event names 2"),
        (np.array([0.5, 1, 2]), None, "fractional"),
        (np.array(["a", "b", "zebra"]), ["a", "b", "c"], "not class names: ['zebra']"),
    ],
)
def test_labels_that_do_not_fit_the_model_are_a_reason(tmp_path: Path, labels, class_names, reason: str) -> None:
    split = split_file(tmp_path, np.eye(3, dtype=np.float32), labels)
    with pytest.raises(EvaluationFailed, match=re.escape(reason)):
        evaluate(OnnxModel(identity_model(3)), split, "classification", class_names, FAST)


def test_a_model_producing_nan_is_refused(tmp_path: Path) -> None:
    x = np.array([[1.0, 2.0], [0.0, 1.0], [3.0, -1.0], [2.0, 1.0]], dtype=np.float32)
    model = OnnxModel(identity_model(2, op="Log"))  # log of 0 is -inf, log of -1 is NaN
    with pytest.raises(EvaluationFailed, match="NaN or infinite outputs for 2 of 4 rows"):
        evaluate(model, split_file(tmp_path, x, np.array([0, 1, 0, 1])), "classification", None, FAST)


def test_feature_count_mismatch_is_a_reason(tmp_path: Path) -> None:
    graph = helper.make_graph(
        [helper.make_node("Identity", ["features"], ["logits"])],
        "fixed",
        [helper.make_tensor_value_info("features", TensorProto.FLOAT, ["batch", 3])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["batch", 3])],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8)
    split = split_file(tmp_path, np.zeros((4, 5), dtype=np.float32), np.zeros(4, dtype=np.int64))
    with pytest.raises(EvaluationFailed, match="takes 3 features but the test split has 5"):
        evaluate(OnnxModel(model.SerializeToString()), split, "classification", None, FAST)


def test_missing_output_and_bad_split_are_reasons(tmp_path: Path) -> None:
    graph = helper.make_graph(
        [helper.make_node("Identity", ["features"], ["scores"]), helper.make_node("Neg", ["features"], ["negated"])],
        "two_outputs",
        [helper.make_tensor_value_info("features", TensorProto.FLOAT, ["batch", 2])],
        [
            helper.make_tensor_value_info("scores", TensorProto.FLOAT, ["batch", 2]),
            helper.make_tensor_value_info("negated", TensorProto.FLOAT, ["batch", 2]),
        ],
    )
    two_outputs = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8)
    with pytest.raises(EvaluationFailed, match="no output 'logits' \\(its outputs: scores, negated\\)"):
        OnnxModel(two_outputs.SerializeToString())
    assert OnnxModel(identity_model(2, output="scores")).output_name == "scores"  # the only output will do
    bad = tmp_path / "bad.npz"
    np.savez(bad, features=np.zeros((2, 2)))
    with pytest.raises(EvaluationFailed, match="lacks array"):
        HeldOutSplit.load(bad)
    pickled = tmp_path / "pickled.npz"
    np.savez(pickled, x=np.zeros((2, 2)), y=np.array([{"a": 1}, None], dtype=object))
    with pytest.raises(EvaluationFailed, match="not a readable NPZ"):
        HeldOutSplit.load(pickled)


def test_signature_mismatches_name_every_difference() -> None:
    model = onnx.load_model_from_string(identity_model(4))
    good = Signature(
        inputs=[TensorSpec(name="features", datatype="FP32", shape=[-1, 4])],
        outputs=[TensorSpec(name="logits", datatype="float32", shape=[-1, 4])],
    )
    assert signature_mismatches(good, model) == []
    bad = Signature(
        inputs=[TensorSpec(name="pixels", datatype="FP32", shape=[-1, 4])],
        outputs=[TensorSpec(name="logits", datatype="INT64", shape=[-1])],
    )
    problems = signature_mismatches(bad, model)
    assert any("input 'pixels' is not in the ONNX graph" in p for p in problems)
    assert any("output 'logits' is INT64 but the ONNX graph has FP32" in p for p in problems)
    assert any("output 'logits' has rank 1 but the ONNX graph has rank 2" in p for p in problems)
    assert any("graph input 'features' is not in the signature" in p for p in problems)


def test_policy_names_every_failed_threshold_and_missing_metric() -> None:
    policy = ValidationPolicy(min_metrics={"accuracy": 0.9, "r2": 0.5}, max_metrics={"latency_p99_ms": 5.0})
    report = {"accuracy": 0.85, "latency_p99_ms": 7.25, "per_class_recall": {"a": 1.0}}
    assert threshold_failures(policy, report) == [
        "accuracy 0.85 is below the policy minimum 0.9",
        "metric r2 not produced (the policy requires r2 >= 0.5)",
        "latency_p99_ms 7.25 is above the policy maximum 5",
    ]
    assert threshold_failures(policy, {"accuracy": 0.9, "r2": 0.5, "latency_p99_ms": 5.0}) == []


@pytest.mark.parametrize(
    ("metric", "challenger", "champion", "loses"),
    [
        ("accuracy", 0.94, 0.95, False),  # within the tolerance
        ("accuracy", 0.93, 0.95, True),
        ("loss", 0.30, 0.295, False),  # lower is better: slightly higher is within the tolerance
        ("loss", 0.40, 0.30, True),
        ("latency_p99_ms", 0.5, 3.0, False),  # much faster than the champion is not worse
    ],
)
def test_champion_comparison_respects_direction_and_tolerance(
    metric: str, challenger: float, champion: float, loses: bool
) -> None:
    policy = ValidationPolicy(champion_metric=metric, champion_tolerance=0.01)
    failure = champion_failure(policy, {metric: challenger}, ChampionResult("production", 4, metric, champion))
    assert (failure is not None) == loses
    if loses:
        assert failure is not None and "than the champion (production, version 4)" in failure
