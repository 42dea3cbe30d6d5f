"""Text drift through the monitor's real paths: a text model's train_split (texts, per the split contract) in
the registry and the file store, texts sampled onto a real nats-server as the gateway publishes them, with
the answers of a real text classifier (StringNormalizer → StringSplit → TfIdfVectorizer in ONNX Runtime).

Texts from the training distribution drift on no row; texts on another topic drift on the token row, open
one alert and publish one `model.degraded` whose evidence names the rows and the unseen-token share.
"""

from __future__ import annotations

import io
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import onnxruntime as ort
import orjson
import pytest
from monitor_service_harness import publish_samples, put_file, serve, stored_events
from monitor_texts import text_classifier, texts
from waiting import wait_for

from gallery_common.contracts.splits import write_split
from gallery_common.nats_server import EmbeddedNats
from gallery_monitor.app import create
from gallery_monitor.settings import MonitorSettings
from gallery_registry.app import create_app_for
from gallery_registry.settings import RegistrySettings

WINDOW_S = 4.0
SUBJECT = "inference.sample.news"


@dataclass
class Stack:
    monitor: str
    nats_url: str
    classifier: ort.InferenceSession

    def drift(self) -> dict[str, Any]:
        return httpx.get(f"{self.monitor}/api/v1/models/news/drift", timeout=10).json()

    def messages(self, batch: list[str], per_message: int = 5) -> list[bytes]:
        """Sample messages as the gateway publishes them: the request's BYTES input, the served logits."""
        found = []
        for start in range(0, len(batch), per_message):
            chunk = batch[start : start + per_message]
            logits = self.classifier.run(None, {"text": np.array(chunk)})[0]
            doc = {
                "model": "news",
                "version": "1",
                "variant": "fp32",
                "inputs": [{"name": "text", "datatype": "BYTES", "shape": [len(chunk)], "data": chunk}],
                "outputs": [
                    {"name": "logits", "datatype": "FP32", "shape": list(logits.shape), "data": logits.tolist()}
                ],
                "latency_ms": 1.0,
                "time": time.time(),
            }
            found.append(orjson.dumps(doc))
        return found


@pytest.fixture
def stack(tmp_path: Path, nats_server: EmbeddedNats) -> Iterator[Stack]:
    classifier = ort.InferenceSession(text_classifier(), providers=["CPUExecutionProvider"])
    training = texts(np.random.default_rng(0), 2000)
    labels = classifier.run(None, {"text": np.array(training)})[0].argmax(axis=1)
    buffer = io.BytesIO()
    write_split(buffer, np.array(training, dtype=object), labels.astype(np.int64))
    split = put_file(tmp_path, "news/1/train.npz", buffer.getvalue())
    artifact_root = (tmp_path / "artifacts").as_uri()
    registry_settings = RegistrySettings(
        home=tmp_path, nats_url=nats_server.url, artifact_root=artifact_root, api_tokens={}
    )
    settings = MonitorSettings(
        home=tmp_path,
        nats_url=nats_server.url,
        artifact_root=artifact_root,
        api_tokens={},
        deployer_url=None,
        gateway_url=None,
        evaluate_interval_s=0.5,
        slo_window_s=WINDOW_S,
        slo_drift_min_samples=100,
    )
    with serve(create_app_for(registry_settings, with_bus=False)) as registry:
        httpx.post(f"{registry}/api/v1/models", json={"name": "news"}).raise_for_status()
        version = {"artifacts": {"train_split": split}}
        httpx.post(f"{registry}/api/v1/models/news/versions", json=version).raise_for_status()
        with serve(create(settings.model_copy(update={"registry_url": registry}))) as monitor:
            yield Stack(monitor, nats_server.url, classifier)


def test_texts_on_another_topic_drift_and_texts_like_training_do_not(stack: Stack) -> None:
    rng = np.random.default_rng(1)
    # texts like the training texts, and three odd ones: empty, marked as not UTF-8, huge
    odd = ["", "caf\ufffd goal", "goal " * 100_000]
    publish_samples(stack.nats_url, SUBJECT, stack.messages(texts(rng, 297) + odd))
    drift = wait_for("300 texts", lambda: (d := stack.drift())["samples"] == 300 and d, 30)
    assert drift["version"] == 1 and not drift["drifted"] and drift["reasons"] == []
    rows = {f["name"]: f for f in drift["features"]}
    assert set(rows) == {"text length (tokens)", "text length (characters)", "tokens"}
    assert all(f["psi"] < 0.1 and f["threshold"] == 0.25 for f in rows.values())
    assert drift["ranked_by"].startswith("PSI: a text input's")
    text = drift["text"]
    assert (text["texts"], text["empty_texts"], text["undecodable_texts"], text["truncated_texts"]) == (300, 1, 1, 1)
    assert text["unseen_token_share"] < 0.01 and text["warnings"] == []

    # texts on cooking instead of sport keep coming for several evaluations
    deadline = time.monotonic() + 4 * WINDOW_S
    while time.monotonic() < deadline:
        publish_samples(stack.nats_url, SUBJECT, stack.messages(texts(rng, 60, topic="cooking")))
        time.sleep(0.5)
    drift = stack.drift()
    assert drift["drifted"] and drift["reasons"][0].startswith("tokens: PSI ")
    rows = {f["name"]: f for f in drift["features"]}
    assert rows["tokens"]["psi"] > 0.25 and rows["text length (tokens)"]["psi"] < 0.25
    assert drift["text"]["unseen_token_share"] > 0.4

    degraded = [e for e in stored_events(stack.nats_url, "model.degraded") if e.data.kind == "drift"]
    assert len(degraded) == 1, [e.id for e in degraded]
    event = degraded[0]
    assert event.id == "degraded:news:1:drift:1" and event.data.reason.startswith("drift over 4 s")
    assert "tokens: PSI " in event.data.reason
    evidence = event.data.evidence
    assert evidence["features"][0]["name"] == "tokens" and evidence["features"][0]["psi_threshold"] == 0.25
    # the event opened as the cooking texts came in: the window was still partly sport then
    assert evidence["text"]["unseen_token_share"] > 0.05 and evidence["text"]["psi_threshold"] == 0.25
    [alert] = httpx.get(f"{stack.monitor}/api/v1/alerts", params={"model": "news", "open": "true"}).json()
    assert alert["kind"] == "drift" and alert["event_id"] == event.id
