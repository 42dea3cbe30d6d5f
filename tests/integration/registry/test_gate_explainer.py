"""The gate explains what it validates: the `explainer` profile attached before `model.validated`, global
feature importance in the evaluation report and the model card. Real models, a real nats-server, a real
artifact store; importance never decides a verdict."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import onnx
import pytest
from hostile_artifacts import npz_bomb
from onnx import TensorProto, helper
from onnx_builders import OPSET, TrainedModel, classifier_signature, layers_onnx, npz_bytes
from test_gate import Gate, Models, deliveries
from test_gate import gate as gate  # the running gate, over this module's `models`
from test_gate_hostile_artifacts import models as models  # the digits MLP, trained once for the module

from gallery_common.events import ArtifactRef, make_event
from gallery_common.explain.profile import SAMPLE_ROWS, decode_profile
from gallery_registry.gate import ValidationGate
from gallery_registry.gate.explainer import ImportanceConfig, explainer_key
from gallery_registry.schemas import ArtifactRole, VersionStatus

# what the trainer writes into a digits run's spec.json, the parts the layout reads
DIGITS_SPEC = {
    "architecture": {"image_shape": [1, 8, 8], "n_features": 64, "n_outputs": 10},
    "feature_names": [f"pixel_{r}_{c}" for r in range(8) for c in range(8)],
}


def with_training_data(
    gate: Gate, prefix: str, model: TrainedModel, spec: object = DIGITS_SPEC
) -> dict[str, ArtifactRef]:
    """The roles a trainer sends for digits: ONNX, test split, spec, and the training split."""
    data = gate.models.data
    artifacts = gate.artifacts_for(prefix, model)
    train = npz_bytes(gate.workdir / f"{prefix.replace('/', '_')}-train.npz", data.x_train, data.y_train)
    artifacts["train_split"] = gate.artifacts.put(f"{prefix}/train.npz", train)
    artifacts["spec"] = gate.artifacts.put(f"{prefix}/spec.json", json.dumps(spec).encode())
    return artifacts


def explainer_files(gate: Gate, name: str, version: int) -> list[Path]:
    root = Path(gate.artifacts.uri_for(f"explainers/{name}/{version}").removeprefix("file://"))
    return sorted(root.iterdir()) if root.exists() else []


async def test_a_validated_version_carries_its_explainer_and_its_feature_importance(gate: Gate, models: Models) -> None:
    artifacts = with_training_data(gate, "runs/explained", models.good)
    await gate.bus.publish_event(gate.trained_event(artifacts))

    (outcome,) = await gate.outcomes(1)
    assert outcome.event == "validated"
    # the event names the explainer, so the deployer hands it to the model servers with the model
    ref = outcome.data.artifacts["explainer"]
    version = gate.registry.get_version("digits", 1)
    explainer = version.artifacts[ArtifactRole.explainer]
    assert ref == explainer.ref and explainer.format == "npz"
    assert ref.uri == gate.artifacts.uri_for(explainer_key("digits", 1, ref.sha256))
    profile = decode_profile(gate.artifacts.get(ref.uri, ref.sha256))
    layout = profile.layout
    assert (layout.features, layout.image_shape, layout.shape) == (64, (1, 8, 8), (64,))
    assert layout.feature_names == tuple(DIGITS_SPEC["feature_names"])  # type: ignore[arg-type]
    assert profile.background.shape == (10, 64) and profile.sample.shape == (SAMPLE_ROWS, 64)
    assert profile.source_sha256 == artifacts["train_split"].sha256 and profile.task == "classification"
    assert profile.class_names == tuple(models.data.class_names)

    importance = outcome.data.report["feature_importance"]
    assert importance == version.evaluation_report["feature_importance"]  # type: ignore[index]
    assert (importance["method"], importance["target"], importance["rows"]) == ("kernel-shap", "predicted class", 32)
    assert (importance["nsamples"], importance["background_rows"], importance["seed"]) == (400, 10, 0)
    assert importance["image_shape"] == [1, 8, 8] and len(importance["values"]) == 64
    groups = importance["groups"]
    assert len(groups) == 16 and sorted(g["index"] for g in groups) == list(range(16))  # 2x2-pixel patches
    figures = [g["importance"] for g in groups]
    assert figures == sorted(figures, reverse=True) and figures[0] > 0
    # the digits' outer columns are blank in nearly every picture: the model cannot lean on them
    edge = {g["name"]: g["importance"] for g in groups}
    assert edge["patch (0:2, 0:2)"] < figures[0] / 4
    assert sum(importance["values"]) == pytest.approx(sum(figures))  # each pixel holds its share of its patch
    assert importance["seconds"] > 0  # how long it took is reported (a speed limit is a benchmark's, not a test's)

    card = gate.validator.cards.render("digits", 1)
    assert "## Feature importance" in card and "| patch (rows, columns) | mean \\|SHAP\\| | relative |" in card
    assert f"| {groups[0]['name'].removeprefix('patch ')} |" in card and "```\n" in card  # the text heat map
    await gate.settled()


def only_feature_matters(k: int, features: int) -> TrainedModel:
    """Two classes decided by feature `k` alone: logits (-2 x_k, 2 x_k)."""
    weights = np.zeros((features, 2), np.float32)
    weights[k] = [-2.0, 2.0]
    model = layers_onnx(np.zeros(features), np.ones(features), [(weights, np.zeros(2, np.float32))])
    return TrainedModel(model.SerializeToString(), 1.0)


async def test_the_only_feature_a_model_looks_at_ranks_first(gate: Gate, models: Models) -> None:
    k, features = 3, 6
    rng = np.random.default_rng(0)
    x_train, x_test = rng.normal(size=(400, features)), rng.normal(size=(200, features))
    names = [f"f{i}" for i in range(features)]
    model = only_feature_matters(k, features)
    test = npz_bytes(gate.workdir / "k-test.npz", x_test, (x_test[:, k] > 0).astype(np.int64))
    train = npz_bytes(gate.workdir / "k-train.npz", x_train, (x_train[:, k] > 0).astype(np.int64))
    artifacts = {
        "onnx": gate.artifacts.put("runs/k/model.onnx", model.onnx),
        "test_split": gate.artifacts.put("runs/k/test.npz", test),
        "train_split": gate.artifacts.put("runs/k/train.npz", train),
        "spec": gate.artifacts.put("runs/k/spec.json", json.dumps({"feature_names": names}).encode()),
    }
    trained = gate.trained_event(artifacts, signature=classifier_signature(features, 2)).data
    await gate.bus.publish_event(make_event(trained.model_copy(update={"class_names": ["no", "yes"]}), "/trainer"))

    (outcome,) = await gate.outcomes(1)
    assert outcome.event == "validated" and outcome.data.report["accuracy"] == 1.0
    importance = outcome.data.report["feature_importance"]
    assert importance["image_shape"] is None and importance["shape"] == [features]
    first, *others = importance["groups"]
    assert (first["name"], first["index"]) == ("f3", k)
    assert first["importance"] > 0.1 and all(g["importance"] < 1e-6 for g in others)  # SHAP gives them nothing
    assert int(np.argmax(importance["values"])) == k
    card = gate.validator.cards.render("digits", 1)
    assert "| f3 | " in card and card.index("| f3 | ") < card.index("| f0 | ")
    await gate.settled()


def nan_off_the_integers(model_bytes: bytes) -> bytes:
    """The same model, plus 0 · sum(sqrt(floor(x) - x)) on its logits: nothing for pixel values (integers),
    NaN for the fractional rows Kernel SHAP composes from the k-means background."""
    model = onnx.load_model_from_string(model_bytes)
    graph = model.graph
    for node in graph.node:
        node.output[:] = ["raw_logits" if out == "logits" else out for out in node.output]
    graph.initializer.append(helper.make_tensor("zero", TensorProto.FLOAT, [], [0.0]))
    graph.initializer.append(helper.make_tensor("axis", TensorProto.INT64, [1], [1]))
    graph.node.extend(
        [
            helper.make_node("Floor", ["features"], ["floored"]),
            helper.make_node("Sub", ["floored", "features"], ["below"]),
            helper.make_node("Sqrt", ["below"], ["roots"]),
            helper.make_node("ReduceSum", ["roots", "axis"], ["summed"], keepdims=1),
            helper.make_node("Mul", ["summed", "zero"], ["nothing"]),
            helper.make_node("Add", ["raw_logits", "nothing"], ["logits"]),
        ]
    )
    model.opset_import[0].version = OPSET
    onnx.checker.check_model(model)
    return model.SerializeToString()


async def test_a_model_that_breaks_importance_is_still_validated_with_the_reason(gate: Gate, models: Models) -> None:
    fragile = TrainedModel(nan_off_the_integers(models.good.onnx), models.good.sklearn_accuracy)
    await gate.bus.publish_event(gate.trained_event(with_training_data(gate, "runs/fragile", fragile)))

    (outcome,) = await gate.outcomes(1)
    assert outcome.event == "validated"
    assert outcome.data.report["accuracy"] == pytest.approx(models.good.sklearn_accuracy, abs=0.003)
    error = outcome.data.report["feature_importance"]["error"]
    assert error == "the model's outputs on the rows Kernel SHAP composes are not finite"
    # the profile describes the data, not the model: it is attached all the same
    assert "explainer" in outcome.data.artifacts
    card = gate.validator.cards.render("digits", 1)
    assert f"_Not computed: {error}_" in card
    await gate.settled()
    assert await deliveries(gate.bus) == 1


async def test_a_version_without_a_training_split_is_validated_without_importance(gate: Gate, models: Models) -> None:
    await gate.bus.publish_event(gate.trained_event(gate.artifacts_for("runs/no-train", models.good)))
    (outcome,) = await gate.outcomes(1)
    assert outcome.event == "validated" and "explainer" not in outcome.data.artifacts
    assert outcome.data.report["feature_importance"] == {
        "error": "no explainer profile: the version has no train_split artifact to summarise as the explainer's "
        "background"
    }


async def test_hostile_training_data_costs_the_importance_not_the_verdict(gate: Gate, models: Models) -> None:
    artifacts = with_training_data(gate, "runs/bomb", models.good)
    artifacts["train_split"] = gate.artifacts.put("runs/bomb/train.npz", npz_bomb())  # 3.9 MB, inflates to 4 GB
    await gate.bus.publish_event(gate.trained_event(artifacts))
    (outcome,) = await gate.outcomes(1)
    assert outcome.event == "validated" and "explainer" not in outcome.data.artifacts
    assert outcome.data.report["feature_importance"]["error"] == (
        "no explainer profile: train split: arrays 'x' and 'y' declare 3.7 GiB uncompressed, over the 1.0 GiB "
        "an NPZ file may inflate to (GALLERY_MAX_SPLIT_BYTES)"
    )

    # an explainer the producer sent that does not decode is said, and not replaced (artifacts are immutable)
    artifacts = with_training_data(gate, "runs/odd", models.good)
    artifacts["explainer"] = gate.artifacts.put("runs/odd/explainer.npz", b"PK\x03\x04 not an explainer")
    await gate.bus.publish_event(gate.trained_event(artifacts))
    # a spec whose fields are not what the trainer writes is left out of the layout: the signature's is used
    odd_spec = {"architecture": "not an object", "data": 7, "feature_names": "pixels"}
    await gate.bus.publish_event(gate.trained_event(with_training_data(gate, "runs/spec", models.good, odd_spec)))
    _, odd, unread = await gate.outcomes(3)
    assert odd.event == "validated" and odd.data.artifacts["explainer"] == artifacts["explainer"]
    assert odd.data.report["feature_importance"]["error"].startswith(
        "no explainer profile: the version's explainer artifact: not a readable NPZ file"
    )
    assert unread.event == "validated" and "error" not in unread.data.report["feature_importance"]
    assert unread.data.report["feature_importance"]["image_shape"] is None  # 64 features, each its own group
    assert len(unread.data.report["feature_importance"]["groups"]) == 64
    await gate.settled()


async def test_redelivery_after_the_explainer_was_attached_uploads_nothing_twice(gate: Gate, models: Models) -> None:
    event = gate.trained_event(with_training_data(gate, "runs/redelivered", models.good))
    await gate.bus.publish_event(event)
    (first,) = await gate.outcomes(1)
    attached = gate.registry.get_version("digits", 1).artifacts[ArtifactRole.explainer]
    assert [p.name for p in explainer_files(gate, "digits", 1)] == [Path(attached.uri).name]

    # a crash after the explainer was attached, before the verdict was recorded: the version is still validating
    gate.registry.set_version_status("digits", 1, VersionStatus.validating)
    outcome = await gate.validator.on_trained(event)
    assert outcome is not None and outcome.passed
    again = outcome.version.artifacts[ArtifactRole.explainer]
    assert (again.uri, again.sha256, again.created_at) == (attached.uri, attached.sha256, attached.created_at)
    assert len(explainer_files(gate, "digits", 1)) == 1
    # explained again with the profile it has: the same seed, the same profile, the same figures
    assert outcome.report["feature_importance"]["groups"] == first.data.report["feature_importance"]["groups"]
    assert await gate.validator.on_trained(event) is None  # decided now: only the outcome is re-published

    revalidated = await gate.validator.revalidate("digits", 1)
    assert revalidated.version.artifacts[ArtifactRole.explainer].sha256 == attached.sha256
    assert len(explainer_files(gate, "digits", 1)) == 1
    await gate.settled()


async def test_with_importance_turned_off_the_gate_neither_explains_nor_attaches(gate: Gate, models: Models) -> None:
    quiet = ValidationGate(gate.registry, gate.artifacts, None, importance=ImportanceConfig(enabled=False))
    outcome = await quiet.on_trained(gate.trained_event(with_training_data(gate, "runs/off", models.good)))
    assert outcome is not None and outcome.passed
    assert "feature_importance" not in outcome.report and ArtifactRole.explainer not in outcome.version.artifacts
    assert "## Feature importance\n\n_Not computed by the validation gate._" in quiet.cards.render("digits", 1)
