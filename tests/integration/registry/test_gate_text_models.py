"""The validation gate on text models (one BYTES input `text`, the vectorizer inside the graph) and text
splits (`x` one text per row): evaluated in the sandbox like a table model, held to the policy, and a model
and split of different kinds rejected with that reason. A real registry database and artifact store."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator
from pathlib import Path

import numpy as np
import pytest
from onnx import TensorProto, helper
from onnx_builders import classifier_signature
from text_models import CLASS_NAMES, FILLER, TOPICS, accuracy, corpus, text_classifier, write_text_splits

from gallery_common.artifacts import ArtifactStore, open_store
from gallery_common.contracts import read_split, write_split
from gallery_common.events import ArtifactRef, Signature, TensorSpec, make_event
from gallery_common.events import ModelTrained as Trained
from gallery_common.settings import GallerySettings
from gallery_registry.gate import ValidationGate
from gallery_registry.gate.validator import GateOutcome
from gallery_registry.gate.word_importance import occlusions
from gallery_registry.schemas import VersionStatus
from gallery_registry.store import open_registry

TEXT_SIGNATURE = Signature(
    inputs=[TensorSpec(name="text", datatype="BYTES", shape=[-1])],
    outputs=[TensorSpec(name="logits", datatype="FP32", shape=[-1, len(CLASS_NAMES)])],
)


@pytest.fixture
async def gate(tmp_path: Path) -> AsyncIterator[ValidationGate]:
    registry = await asyncio.to_thread(open_registry, f"sqlite:///{tmp_path / 'registry.db'}")
    root = (tmp_path / "artifacts").as_uri()
    artifacts = open_store(root, GallerySettings(service_name="registry", artifact_root=root, home=tmp_path))
    yield ValidationGate(registry, artifacts)
    registry.engine.dispose()


def put_version(store: ArtifactStore, model: bytes, split: Path) -> dict[str, ArtifactRef]:
    prefix = f"runs/{uuid.uuid4().hex[:8]}"
    return {
        "onnx": store.put(f"{prefix}/model.onnx", model),
        "test_split": store.put(f"{prefix}/test.npz", split.read_bytes()),
        "spec": store.put(f"{prefix}/spec.json", b'{"architecture": "text"}'),
    }


def identity_classifier(width: int) -> bytes:
    """A table model: `features` FP32 [-1, width] in, the same values out as `logits`."""
    graph = helper.make_graph(
        [helper.make_node("Identity", ["features"], ["logits"])],
        "identity",
        [helper.make_tensor_value_info("features", TensorProto.FLOAT, ["batch", width])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["batch", width])],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    return model.SerializeToString()


async def judged(gate: ValidationGate, artifacts: dict[str, ArtifactRef], signature: Signature) -> GateOutcome:
    trained = Trained(
        model="topics",
        run_id=f"run-{uuid.uuid4().hex[:8]}",
        artifacts=artifacts,
        task="classification",
        class_names=CLASS_NAMES,
        signature=signature,
    )
    outcome = await gate.on_trained(make_event(trained, "/modelgallery/trainer"))
    assert outcome is not None
    return outcome


async def test_a_good_text_model_is_validated_on_the_text_test_split(gate: ValidationGate, tmp_path: Path) -> None:
    model = text_classifier()
    splits = write_text_splits(tmp_path)
    test = read_split(splits["test"])
    assert test.is_text
    outcome = await judged(gate, put_version(gate.artifacts, model.onnx, splits["test"]), TEXT_SIGNATURE)

    assert outcome.passed, outcome.reasons
    report = outcome.report
    # the gate's own figures: what ONNX Runtime gives on the texts, not a number the trainer sent
    assert report["accuracy"] == pytest.approx(accuracy(model.onnx, test.x, test.y))
    assert report["accuracy"] > 0.85 and report["n_test"] == len(test)
    assert sorted(report["per_class_recall"]) == sorted(CLASS_NAMES)
    assert 0 < report["latency_p50_ms"] <= report["latency_p99_ms"]
    version = gate.registry.get_version("topics", outcome.version.version)
    assert version.status == VersionStatus.validated

    # word importance by occlusion: the words the classifier leans on are its topics' words, not the filler
    importance = report["feature_importance"]
    assert (importance["method"], importance["target"], importance["rows"]) == ("word-occlusion", "predicted class", 32)
    groups = importance["groups"]
    figures = [g["importance"] for g in groups]
    assert figures == sorted(figures, reverse=True) and figures[-1] > 0 and importance["values"] is None
    topic_words = {w for words in TOPICS.values() for w in words}
    assert {g["name"] for g in groups[:10]} <= topic_words
    filler = [g["importance"] for g in groups if g["name"] in FILLER]
    assert all(f < figures[9] for f in filler)  # "the", "in", "today" matter less than any of the top ten
    # the model card ranks those words and says how they were measured
    card = gate.artifacts.get(version.artifacts["model-card"].uri, version.artifacts["model-card"].sha256).decode()
    assert "Mean drop of the predicted class's probability when a word is removed from a text" in card
    assert f"| {groups[0]['name']} | " in card and "| word | mean probability drop | relative |" in card


def test_a_word_is_occluded_whatever_its_case_and_punctuation() -> None:
    words, texts = occlusions('Rain, rain (RAIN) and "storm"! Today: rain.')
    assert words == ["rain", "and", "storm", "today"]
    assert texts == [
        'and "storm"! Today:',
        'Rain, rain (RAIN) "storm"! Today: rain.',
        "Rain, rain (RAIN) and Today: rain.",
        'Rain, rain (RAIN) and "storm"! rain.',
    ]


async def test_a_text_challenger_worse_than_the_text_champion_is_rejected(gate: ValidationGate, tmp_path: Path) -> None:
    splits = write_text_splits(tmp_path)
    champion = await judged(gate, put_version(gate.artifacts, text_classifier().onnx, splits["test"]), TEXT_SIGNATURE)
    gate.registry.set_alias("topics", "production", champion.version.version, actor="test")
    weaker = text_classifier(rows=20).onnx  # fitted on 20 texts: passes the policy's 0.7, loses to the champion
    outcome = await judged(gate, put_version(gate.artifacts, weaker, splits["test"]), TEXT_SIGNATURE)

    entry = outcome.report["champion"]
    assert entry["version"] == champion.version.version
    assert entry["value"] == pytest.approx(champion.report["accuracy"])  # the champion run on the same texts
    assert 0.7 < outcome.report["accuracy"] < entry["value"] - 0.1
    assert outcome.reasons == [
        f"accuracy {outcome.report['accuracy']:.4g} is worse than the champion (production, version 1) at "
        f"{entry['value']:.4g} on the same test split, beyond the tolerance 0.01"
    ]


async def test_a_text_model_no_better_than_chance_is_rejected_with_its_accuracy(
    gate: ValidationGate, tmp_path: Path
) -> None:
    splits = write_text_splits(tmp_path)
    useless = text_classifier(useless=True).onnx
    outcome = await judged(gate, put_version(gate.artifacts, useless, splits["test"]), TEXT_SIGNATURE)

    assert outcome.reasons == [f"accuracy {outcome.report['accuracy']:.4g} is below the policy minimum 0.7"]
    assert outcome.report["accuracy"] < 0.6
    assert gate.registry.get_version("topics", outcome.version.version).status == VersionStatus.rejected


async def test_a_text_model_with_a_numeric_split_is_rejected_with_the_reason(
    gate: ValidationGate, tmp_path: Path
) -> None:
    numeric = tmp_path / "numeric.npz"
    write_split(numeric, np.random.default_rng(0).normal(size=(40, 5)), np.zeros(40, dtype=np.int64))
    model = text_classifier().onnx
    outcome = await judged(gate, put_version(gate.artifacts, model, numeric), TEXT_SIGNATURE)

    assert outcome.reasons == [
        "the model takes texts (input 'text' BYTES [-1]) but the test split holds numeric features [40, 5]"
    ]
    assert gate.registry.get_version("topics", outcome.version.version).status == VersionStatus.rejected


async def test_a_table_model_with_a_text_split_is_rejected_with_the_reason(
    gate: ValidationGate, tmp_path: Path
) -> None:
    texts = tmp_path / "texts.npz"
    x, y = corpus(30, seed=1)
    write_split(texts, x, y)
    table = identity_classifier(len(CLASS_NAMES))
    signature = classifier_signature(len(CLASS_NAMES), len(CLASS_NAMES))
    outcome = await judged(gate, put_version(gate.artifacts, table, texts), signature)

    assert outcome.reasons == [
        "the model takes numeric features (input 'features' FP32 [-1, 3]) but the test split holds texts [30]"
    ]
