"""Text classification through the real trainer: the example job (WordNet topics) submitted to the service
trains, publishes `model.trained` with text splits and an ONNX model that answers raw strings at the stated
accuracy; and a folder of text files trains on two DeepSpeed ranks."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest
import yaml
from trainer_harness import serve_trainer, stored_events, trainer_settings, wait_job

from gallery_common.artifacts import open_store
from gallery_common.contracts import read_split
from gallery_common.events import ModelTrained
from gallery_common.nats_server import EmbeddedNats
from gallery_trainer.pipeline import run_job
from gallery_trainer.spec import parse_spec
from gallery_trainer.text_data import WORDNET_TOPICS, wordnet_topics

EXAMPLE = Path(__file__).resolve().parents[3] / "examples" / "text-topics.yaml"
# measured 0.86-0.89 with the example spec (split seeds 0-2); six classes, so chance is 0.17
STATED_ACCURACY = 0.75


def text_accuracy(model: bytes | str, texts: np.ndarray, labels: np.ndarray) -> float:
    session = ort.InferenceSession(model, providers=["CPUExecutionProvider"])
    (logits,) = session.run(["logits"], {"text": texts})
    return float((logits.argmax(axis=1) == labels).mean())


def test_the_example_text_job_publishes_a_model_that_classifies_raw_strings(
    tmp_path: Path, nats_server: EmbeddedNats
) -> None:
    settings = trainer_settings(tmp_path, nats_server.url)
    with serve_trainer(settings) as client:
        submitted = client.post(
            "/api/v1/jobs", content=EXAMPLE.read_bytes(), headers={"content-type": "application/yaml"}
        )
        assert submitted.status_code == 202, submitted.text
        job = wait_job(client, submitted.json()["id"], timeout=600)
        assert job["status"] == "succeeded", job

    [event] = stored_events(nats_server.url, "model.trained", 1)
    trained: ModelTrained = event.data
    assert trained.model == "wordnet-topics" and trained.task == "classification"
    assert trained.class_names == list(WORDNET_TOPICS)
    assert trained.signature is not None
    assert [s.model_dump() for s in trained.signature.inputs] == [{"name": "text", "datatype": "BYTES", "shape": [-1]}]
    assert [s.model_dump() for s in trained.signature.outputs] == [
        {"name": "logits", "datatype": "FP32", "shape": [-1, len(WORDNET_TOPICS)]}
    ]
    assert trained.metrics["test_accuracy"] >= STATED_ACCURACY
    assert trained.metrics["onnx_parity_max_abs_diff"] < 1e-4

    store = open_store(settings.resolved_artifact_root, settings)

    def fetch(role: str) -> bytes:
        return store.get(trained.artifacts[role].uri, trained.artifacts[role].sha256)

    splits = {name: read_split(fetch(f"{name}_split"), name=name) for name in ("train", "validation", "test")}
    assert all(split.is_text and split.x.dtype.kind == "U" for split in splits.values())
    # the published splits hold the data set's own texts, never augmented copies
    originals = wordnet_topics().x.tolist()
    assert all(set(split.x.tolist()) <= set(originals) for split in splits.values())
    assert sum(len(split) for split in splits.values()) <= len(originals)

    model = fetch("onnx")
    test = splits["test"]
    accuracy = text_accuracy(model, test.x, test.y)
    assert accuracy == pytest.approx(trained.metrics["test_accuracy"], abs=1e-6)
    assert accuracy >= STATED_ACCURACY
    # strings a person types, in any case and with punctuation, as OIP's BYTES rows reach the model
    session = ort.InferenceSession(model, providers=["CPUExecutionProvider"])
    asked = np.array(["A small songbird with brown feathers.", "SWEET DESSERT MADE OF BAKED FRUIT AND PASTRY"])
    (logits,) = session.run(["logits"], {"text": asked})
    assert logits.shape == (2, len(WORDNET_TOPICS)) and np.isfinite(logits).all()


def test_a_folder_of_text_files_trains_on_two_deepspeed_ranks(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("GALLERY_DATA_ROOTS", str(tmp_path))
    topics = wordnet_topics()
    chosen = ("animal", "food", "plant")
    for label, topic in enumerate(WORDNET_TOPICS):
        if topic in chosen:
            for i, text in enumerate(topics.x[topics.y == label][:200].tolist()):
                (tmp_path / "docs" / topic).mkdir(parents=True, exist_ok=True)
                (tmp_path / "docs" / topic / f"{i:03d}.txt").write_text(text + "\n", encoding="utf-8")
    doc = yaml.safe_load(EXAMPLE.read_text())
    doc |= {
        "name": "folder-topics",
        "data": {"source": "text_folder", "path": str(tmp_path / "docs")},
        "engine": {"kind": "deepspeed", "ranks": 2},
    }
    doc["training"]["batch_size"] = 16
    outputs = run_job(parse_spec(doc), tmp_path / "work")
    assert outputs.engine == "deepspeed" and outputs.class_names == sorted(chosen)
    assert outputs.signature.inputs[0].datatype == "BYTES"
    test = read_split(outputs.files["test_split"])
    assert test.is_text
    # three classes, chance 0.33
    assert text_accuracy(str(outputs.files["onnx"]), test.x, test.y) >= 0.7
    assert outputs.leakage["augmented_train_rows"] > 0
