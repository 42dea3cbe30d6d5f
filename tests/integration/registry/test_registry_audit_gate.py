"""The validation gate's registrations and verdicts in the audit trail (real gate, real nats-server):
recorded as `service:registry` with the gate's reasons, once however often model.trained is delivered."""

from __future__ import annotations

import asyncio
import uuid
from pathlib import Path

from onnx_builders import Digits, classifier_signature, logistic_regression, store_model_artifacts

from gallery_common.artifacts import open_store
from gallery_common.audit_log import AuditLog
from gallery_common.audit_trail import AuditTrail
from gallery_common.bus import EventBus
from gallery_common.events import ModelTrained, make_event
from gallery_common.nats_server import EmbeddedNats
from gallery_common.settings import GallerySettings
from gallery_registry.gate import ValidationGate
from gallery_registry.store import open_registry


async def test_a_redelivered_trained_event_is_registered_and_judged_once_in_the_trail(
    nats_server: EmbeddedNats, tmp_path: Path
) -> None:
    data = Digits.load()
    weak = logistic_regression(data, 1)  # one row per class: below the default policy's accuracy
    root = (tmp_path / "artifacts").as_uri()
    artifacts = open_store(root, GallerySettings(artifact_root=root, home=tmp_path))
    registry = await asyncio.to_thread(open_registry, f"sqlite:///{tmp_path / 'registry.db'}")
    refs = store_model_artifacts(artifacts, "runs/weak", weak.onnx, data, tmp_path)
    trained = ModelTrained(
        model="digits", run_id=f"run-{uuid.uuid4().hex[:8]}", artifacts=refs, task="classification",
        class_names=data.class_names, signature=classifier_signature(data.n_features, 10),
    )  # fmt: skip
    event = make_event(trained, "/modelgallery/trainer")
    async with EventBus(nats_server.url, "registry") as bus:
        audit = AuditLog(bus)
        gate = ValidationGate(registry, artifacts, None)
        gate.audit = AuditTrail(audit, tmp_path / "outbox.jsonl", service="registry")
        first = await gate.on_trained(event)
        assert first is not None and not first.passed
        assert await gate.on_trained(event) is None  # redelivered: already decided
        records = await audit.records("default")
        assert (await audit.verify("default")).ok
    registered, judged = records
    assert (registered.action, registered.actor, registered.target) == ("registration", "service:registry", "digits/1")
    assert registered.reason == f"trained: {event.id}"
    assert (judged.action, judged.before, judged.after) == (
        "status_change",
        {"status": "pending"},
        {"status": "rejected"},
    )
    assert judged.reason == "; ".join(first.reasons) and "accuracy" in judged.reason
    registry.engine.dispose()
