"""The validation gate end to end: real models trained here, a real nats-server, real artifact stores.

Each test publishes `model.trained` events the way a trainer would and watches the gate's answer
on the bus, in the registry and in JetStream's bookkeeping (nothing pending, no dead letters).
"""

from __future__ import annotations

import asyncio
import hashlib
import time
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
import uvicorn
from onnx_builders import (
    Digits,
    TrainedModel,
    classifier_signature,
    logistic_regression,
    mlp_classifier,
    store_model_artifacts,
    with_external_initializer,
)
from waiting import eventually

from gallery_common.artifacts import ArtifactStore, open_store
from gallery_common.bus import EVENTS_STREAM, EventBus
from gallery_common.errors import Unavailable
from gallery_common.events import ArtifactRef, CloudEvent, ModelDegraded, ModelTrained, Signature, make_event
from gallery_common.nats_server import EmbeddedNats
from gallery_common.netutil import free_port
from gallery_common.projects import DEFAULT_PROJECT, ProjectRecord
from gallery_common.projects_kv import ProjectsBucket
from gallery_common.settings import GallerySettings
from gallery_registry.app import create_app_for
from gallery_registry.gate import GATE_DURABLE, ValidationGate, gate_events
from gallery_registry.gate.validator import registration_for
from gallery_registry.schemas import ArtifactRole, ValidationPolicyUpdate, VersionQuery, VersionStatus
from gallery_registry.settings import RegistrySettings
from gallery_registry.store import RegistryStore, open_registry

OUTCOMES = ("validated", "rejected")


@dataclass(frozen=True)
class Models:
    data: Digits
    good: TrainedModel  # MLP, ~0.97
    fair: TrainedModel  # logistic regression on 4 rows per class, ~0.84: passes the policy, loses to `good`
    poor: TrainedModel  # logistic regression on 1 row per class, ~0.45: under the policy minimum 0.7


@pytest.fixture(scope="module")
def models() -> Models:
    data = Digits.load()
    return Models(data, mlp_classifier(data), logistic_regression(data, 4), logistic_regression(data, 1))


@dataclass
class Trainer:
    """The trainer's side: stores artifacts, publishes `model.trained`, watches the outcomes."""

    bus: EventBus
    artifacts: ArtifactStore
    models: Models
    workdir: Path

    def artifacts_for(self, prefix: str, model: TrainedModel) -> dict[str, ArtifactRef]:
        return store_model_artifacts(self.artifacts, prefix, model.onnx, self.models.data, self.workdir)

    def trained_event(
        self,
        artifacts: dict[str, ArtifactRef],
        *,
        signature: Signature | None = None,
        metrics: dict[str, float] | None = None,
        project: str = DEFAULT_PROJECT,
    ) -> CloudEvent[ModelTrained]:
        payload = ModelTrained(
            model="digits",
            project=project,
            run_id=f"run-{uuid.uuid4().hex[:8]}",
            artifacts=artifacts,
            task="classification",
            class_names=self.models.data.class_names,
            signature=signature or classifier_signature(self.models.data.n_features, 10),
            metrics=metrics or {},
        )
        return make_event(payload, "/modelgallery/trainer")

    async def outcomes(self, count: int, *, quiet: float = 0.3, timeout: float = 60.0) -> list[CloudEvent[Any]]:
        """The outcome events in the stream, once there are `count` and no more arrive for `quiet` seconds."""
        seen: list[CloudEvent[Any]] = []
        deadline = time.monotonic() + timeout

        async def collect() -> None:
            async for event in self.bus.tail("model.>", deliver="all"):
                if event.event in OUTCOMES:
                    seen.append(event)

        task = asyncio.create_task(collect())
        try:
            while len(seen) < count:
                if time.monotonic() > deadline:
                    pytest.fail(f"expected {count} outcome events within {timeout}s, got {len(seen)}: {seen}")
                await asyncio.sleep(0.02)
            await asyncio.sleep(quiet)
        finally:
            task.cancel()
        assert len(seen) == count, f"expected exactly {count} outcome events, got {[e.event for e in seen]}"
        return seen


@dataclass
class Gate(Trainer):
    """A running gate (the registry's consumer) beside the trainer."""

    registry: RegistryStore
    validator: ValidationGate

    async def settled(self) -> None:
        """Every delivery acked, nothing waiting, nothing dead-lettered."""
        await eventually(lambda: nothing_pending(self.bus), what="the gate consumer to settle")
        assert await self.bus.dead_letters() == []


async def nothing_pending(bus: EventBus) -> bool:
    info = await bus.js.consumer_info(EVENTS_STREAM, GATE_DURABLE)
    return info.num_ack_pending == 0 and info.num_pending == 0


class FlakyStore:
    """An artifact store that is unreachable for its first `outages` downloads, as S3 is in an outage."""

    def __init__(self, inner: ArtifactStore, outages: int) -> None:
        self.inner = inner
        self.outages = outages

    def download(self, key_or_uri: str, dest: Path, sha256: str | None = None) -> Path:
        if self.outages > 0:
            self.outages -= 1
            raise Unavailable(f"artifact store unavailable, could not download {key_or_uri}")
        return self.inner.download(key_or_uri, dest, sha256)

    def __getattr__(self, name: str) -> Any:
        return getattr(self.inner, name)


async def deliveries(bus: EventBus) -> int:
    """How many deliveries the gate's consumer has made, redeliveries included."""
    info = await bus.js.consumer_info(EVENTS_STREAM, GATE_DURABLE)
    return info.delivered.consumer_seq if info.delivered else 0


@asynccontextmanager
async def running_gate(
    nats_url: str, artifact_root: str, workdir: Path, models: Models, *, outages: int = 0, **settings: Any
) -> AsyncIterator[Gate]:
    registry = await asyncio.to_thread(open_registry, f"sqlite:///{workdir / 'registry.db'}")
    gallery_settings = GallerySettings(service_name="registry", artifact_root=artifact_root, home=workdir, **settings)
    artifacts = open_store(artifact_root, gallery_settings)
    gate_store = FlakyStore(artifacts, outages) if outages else artifacts
    async with EventBus(nats_url, "registry") as registry_bus, EventBus(nats_url, "trainer") as trainer_bus:
        gate = ValidationGate(registry, gate_store, registry_bus)
        gate.projects = await ProjectsBucket.open(registry_bus)
        async with gate_events(gate).consumer(registry_bus):
            yield Gate(trainer_bus, artifacts, models, workdir, registry, gate)
    registry.engine.dispose()


@pytest.fixture
async def gate(nats_server: EmbeddedNats, tmp_path: Path, models: Models) -> AsyncIterator[Gate]:
    async with running_gate(nats_server.url, (tmp_path / "artifacts").as_uri(), tmp_path, models) as running:
        yield running


async def test_a_good_model_is_validated_on_the_gates_own_evaluation(gate: Gate, models: Models) -> None:
    event = gate.trained_event(gate.artifacts_for("runs/good", models.good), metrics={"accuracy": 0.999})
    await gate.bus.publish_event(event)

    (outcome,) = await gate.outcomes(1)
    assert outcome.event == "validated"
    assert outcome.id == f"{event.id}:outcome"
    report = outcome.data.report
    # the trainer claimed 0.999; the gate reports what the model does on the test split
    assert report["accuracy"] == pytest.approx(models.good.sklearn_accuracy, abs=0.003)
    assert 0.9 < report["macro_f1"] <= 1 and 0 <= report["ece"] < 0.2 and report["loss"] > 0
    assert report["n_test"] == len(models.data.y_test)
    assert sorted(report["per_class_recall"]) == models.data.class_names
    # measured, in milliseconds (a bound for units, not for speed: the machine may be loaded)
    assert 0 < report["latency_p50_ms"] <= report["latency_p99_ms"] < 1000
    assert outcome.data.version == 1 and outcome.data.semver == "1.0.0"
    assert set(outcome.data.artifacts) == {"onnx", "test_split", "spec"}

    counts = report["class_counts"]
    assert sum(counts.values()) == report["n_test"] and sorted(counts) == models.data.class_names
    matrix = report["confusion_matrix"]
    assert matrix["labels"] == models.data.class_names and sum(map(sum, matrix["matrix"])) == report["n_test"]
    correct = sum(matrix["matrix"][i][i] for i in range(10))
    assert correct / report["n_test"] == pytest.approx(report["accuracy"])
    assert sum(b["count"] for b in report["reliability"]) == report["n_test"]
    # the event names what it announced; the card, replaced when the card text changes, is not in it
    assert "model-card" not in outcome.data.artifacts

    version = gate.registry.get_version("digits", 1)
    assert version.status == VersionStatus.validated
    assert version.evaluation_report == report
    assert version.rejection_reasons == []
    assert version.source_event_id == event.id
    # validated: the generated model card is attached, with the gate's figures in its model-index
    card = version.artifacts[ArtifactRole.model_card]
    text = gate.artifacts.get(card.uri, card.sha256).decode()
    assert text.startswith("---\n") and "model-index:" in text
    assert f"      value: {round(report['accuracy'], 6)!r}" in text
    assert "### Confusion matrix" in text and "### Per-class recall" in text
    assert text == gate.validator.cards.render("digits", 1)
    await gate.settled()


async def test_a_model_under_the_policy_minimum_is_rejected_with_the_criterion(gate: Gate, models: Models) -> None:
    await gate.bus.publish_event(gate.trained_event(gate.artifacts_for("runs/poor", models.poor)))

    (outcome,) = await gate.outcomes(1)
    assert outcome.event == "rejected"
    assert outcome.data.reasons == [f"accuracy {outcome.data.report['accuracy']:.4g} is below the policy minimum 0.7"]
    assert outcome.data.report["accuracy"] == pytest.approx(models.poor.sklearn_accuracy, abs=0.003)
    version = gate.registry.get_version("digits", 1)
    assert version.status == VersionStatus.rejected
    assert version.rejection_reasons == outcome.data.reasons
    assert ArtifactRole.model_card not in version.artifacts  # a card is made when the gate passes a version
    await gate.settled()


def _corrupt_sha(gate: Gate, models: Models) -> tuple[dict[str, ArtifactRef], Signature | None]:
    artifacts = gate.artifacts_for("runs/corrupt", models.good)
    artifacts["onnx"] = ArtifactRef(uri=artifacts["onnx"].uri, sha256=hashlib.sha256(b"other bytes").hexdigest())
    return artifacts, None


def _missing(gate: Gate, models: Models) -> tuple[dict[str, ArtifactRef], Signature | None]:
    artifacts = gate.artifacts_for("runs/missing", models.good)
    artifacts["test_split"] = ArtifactRef(uri=gate.artifacts.uri_for("runs/missing/gone.npz"), sha256="0" * 64)
    return artifacts, None


def _external(gate: Gate, models: Models) -> tuple[dict[str, ArtifactRef], Signature | None]:
    return gate.artifacts_for("runs/external", TrainedModel(with_external_initializer(models.good.onnx), 0.0)), None


def _unloadable(gate: Gate, models: Models) -> tuple[dict[str, ArtifactRef], Signature | None]:
    return gate.artifacts_for("runs/unloadable", TrainedModel(b"PK\x03\x04 a zip, not an ONNX model", 0.0)), None


def _unknown_role(gate: Gate, models: Models) -> tuple[dict[str, ArtifactRef], Signature | None]:
    artifacts = gate.artifacts_for("runs/unknown-role", models.good)
    artifacts["tokenizer"] = gate.artifacts.put("runs/unknown-role/tokenizer.json", b"{}")
    return artifacts, None


def _wrong_signature(gate: Gate, models: Models) -> tuple[dict[str, ArtifactRef], Signature | None]:
    return gate.artifacts_for("runs/signature", models.good), classifier_signature(32, 10, input_name="pixels")


@pytest.mark.parametrize(
    ("make", "reason"),
    [
        (_corrupt_sha, "artifact onnx failed its sha256 check: artifact file://"),
        (_missing, "artifact test_split is missing: nothing is stored at file://"),
        (_external, "the ONNX model references external data (initializer 'W0' in graph)"),
        (_wrong_signature, "signature input 'pixels' is not in the ONNX graph (its inputs: 'features')"),
        (_unloadable, "not an ONNX model: Error parsing message"),
        (_unknown_role, "artifact role 'tokenizer' is not one the registry knows"),
    ],
    ids=["sha-mismatch", "missing-artifact", "external-data", "wrong-signature", "unloadable", "unknown-role"],
)
async def test_a_bad_artifact_is_rejected_once_with_its_reason(gate: Gate, models: Models, make, reason: str) -> None:
    artifacts, signature = make(gate, models)
    await gate.bus.publish_event(gate.trained_event(artifacts, signature=signature))

    (outcome,) = await gate.outcomes(1, quiet=1.5)  # a crash loop would retry after 1 s: wait past that
    assert outcome.event == "rejected"
    assert any(r.startswith(reason) for r in outcome.data.reasons), outcome.data.reasons
    assert gate.registry.get_version("digits", 1).status == VersionStatus.rejected
    await gate.settled()
    assert await deliveries(gate.bus) == 1  # handled on the first delivery: no retry, no loop


async def test_a_challenger_worse_than_production_beyond_tolerance_is_rejected(gate: Gate, models: Models) -> None:
    await gate.bus.publish_event(gate.trained_event(gate.artifacts_for("runs/champion", models.good)))
    await gate.outcomes(1)
    gate.registry.set_alias("digits", "production", 1, actor="test")

    await gate.bus.publish_event(gate.trained_event(gate.artifacts_for("runs/fair", models.fair)))
    _, outcome = await gate.outcomes(2)
    assert outcome.event == "rejected" and outcome.data.version == 2
    champion = outcome.data.report["champion"]
    assert champion["version"] == 1 and champion["value"] == pytest.approx(models.good.sklearn_accuracy, abs=0.003)
    assert outcome.data.reasons == [
        f"accuracy {outcome.data.report['accuracy']:.4g} is worse than the champion (production, version 1) at "
        f"{champion['value']:.4g} on the same test split, beyond the tolerance 0.01"
    ]
    assert models.fair.sklearn_accuracy > 0.7  # it would have passed without a champion

    await gate.bus.publish_event(gate.trained_event(gate.artifacts_for("runs/equal", models.good)))
    *_, outcome = await gate.outcomes(3)
    assert outcome.event == "validated" and outcome.data.version == 3
    assert outcome.data.report["champion"]["value"] == pytest.approx(outcome.data.report["accuracy"])
    await gate.settled()


async def test_redelivery_registers_one_version_and_publishes_one_outcome(gate: Gate, models: Models) -> None:
    event = gate.trained_event(gate.artifacts_for("runs/once", models.good))
    await gate.bus.publish_event(event)
    await gate.bus.publish_event(event)  # the trainer retried its publish: JetStream stores it once
    (first,) = await gate.outcomes(1)

    assert await gate.validator.on_trained(event) is None  # the handler run again on the same event
    # the same event stored a second time, as after JetStream's duplicate window: the consumer gets it again
    await gate.bus.publish_raw(event.nats_subject, event.to_json(), {"Nats-Msg-Id": f"{event.id}:copy"})
    await eventually(lambda: has_deliveries(gate.bus, 2), what="the second copy to be handled")
    await gate.settled()

    await gate.outcomes(1)  # each re-published outcome carried the same id, so JetStream kept one
    page = gate.registry.search_versions(VersionQuery(name="digits"))
    assert [v.version for v in page.versions] == [1]
    assert page.versions[0].evaluation_report == first.data.report


async def has_deliveries(bus: EventBus, count: int) -> bool:
    return await deliveries(bus) >= count


async def test_an_unreachable_artifact_store_is_retried_not_a_rejection(
    nats_server: EmbeddedNats, tmp_path: Path, models: Models
) -> None:
    root = (tmp_path / "artifacts").as_uri()
    async with running_gate(nats_server.url, root, tmp_path, models, outages=1) as gate:
        await gate.bus.publish_event(gate.trained_event(gate.artifacts_for("runs/outage", models.good)))
        (outcome,) = await gate.outcomes(1)
        assert outcome.event == "validated"
        await gate.settled()
        assert await deliveries(gate.bus) == 2  # delivered again after the backoff, then validated


async def test_an_event_the_registry_can_never_take_is_dead_lettered_with_the_reason(
    gate: Gate, models: Models
) -> None:
    event = gate.trained_event(gate.artifacts_for("runs/orphan", models.good))
    event.data.lineage.parent_version = 5  # no such version: the registry refuses to register it

    await gate.bus.publish_event(event)
    await eventually(lambda: has_dead_letter(gate.bus), what="a dead letter")
    (letter,) = await gate.bus.dead_letters()
    assert letter.event_id == event.id
    assert "lineage.parent_version 5 is not a version of model 'digits'" in letter.reason
    await eventually(lambda: nothing_pending(gate.bus), what="the gate consumer to settle")
    assert gate.registry.search_versions(VersionQuery(name="digits")).versions == []


async def test_a_model_trained_for_a_project_that_does_not_exist_is_dead_lettered_not_hidden(
    gate: Gate, models: Models
) -> None:
    orphan = gate.trained_event(gate.artifacts_for("runs/nowhere", models.good), project="no-such-team")
    await gate.bus.publish_event(orphan)
    await eventually(lambda: has_dead_letter(gate.bus), what="a dead letter")
    (letter,) = await gate.bus.dead_letters()
    assert letter.event_id == orphan.id
    assert "project 'no-such-team' does not exist" in letter.reason
    assert gate.registry.search_versions(VersionQuery(name="digits")).versions == []

    # once the project exists, the same model's event is registered into it
    assert gate.validator.projects is not None
    await gate.validator.projects.create(ProjectRecord.new("team-x", "", "test", {}))
    await gate.bus.publish_event(gate.trained_event(gate.artifacts_for("runs/team-x", models.good), project="team-x"))
    (outcome,) = await gate.outcomes(1)
    assert outcome.event == "validated" and outcome.nats_subject == "model.validated.team-x"
    assert gate.registry.get_model("digits").project == "team-x"


async def has_dead_letter(bus: EventBus) -> bool:
    return bool(await bus.dead_letters())


async def test_a_version_left_validating_by_a_crash_is_finished_on_redelivery(gate: Gate, models: Models) -> None:
    event = gate.trained_event(gate.artifacts_for("runs/crash", models.poor))
    registered = gate.registry.register_version("digits", registration_for(event), create_model=True)
    gate.registry.set_version_status("digits", registered.version, VersionStatus.validating)

    await gate.bus.publish_event(event)
    (outcome,) = await gate.outcomes(1)
    assert outcome.event == "rejected" and outcome.data.version == registered.version
    assert gate.registry.get_version("digits", registered.version).status == VersionStatus.rejected


async def test_a_policy_metric_the_task_does_not_produce_is_a_failed_criterion(gate: Gate, models: Models) -> None:
    event = gate.trained_event(gate.artifacts_for("runs/policy", models.good))
    gate.registry.register_version("digits", registration_for(event), create_model=True)
    gate.registry.set_validation_policy("digits", ValidationPolicyUpdate(min_metrics={"accuracy": 0.9, "r2": 0.5}))

    await gate.bus.publish_event(event)
    (outcome,) = await gate.outcomes(1)
    assert outcome.data.reasons == ["metric r2 not produced (the policy requires r2 >= 0.5)"]


async def test_the_gate_reads_artifacts_from_s3(
    nats_server: EmbeddedNats, s3_server, tmp_path: Path, models: Models
) -> None:
    s3 = {
        "s3_endpoint": s3_server.endpoint,
        "s3_access_key": s3_server.access_key,
        "s3_secret_key": s3_server.secret_key,
    }
    async with running_gate(nats_server.url, s3_server.new_bucket_uri("gallery"), tmp_path, models, **s3) as gate:
        artifacts = await asyncio.to_thread(gate.artifacts_for, "runs/s3", models.good)
        assert artifacts["onnx"].uri.startswith("s3://")
        await gate.bus.publish_event(gate.trained_event(artifacts))
        (outcome,) = await gate.outcomes(1)
        assert outcome.event == "validated"
        assert outcome.data.report["accuracy"] == pytest.approx(models.good.sklearn_accuracy, abs=0.003)
        await gate.settled()


@asynccontextmanager
async def registry_app(settings: RegistrySettings) -> AsyncIterator[httpx.AsyncClient]:
    """The real registry app (its own startup runs the gate) served by uvicorn on a free port."""
    server = uvicorn.Server(
        uvicorn.Config(create_app_for(settings), host="127.0.0.1", port=settings.port, log_level="warning")
    )
    task = asyncio.create_task(server.serve())
    try:
        async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{settings.port}", timeout=30) as client:

            async def ready() -> bool:
                try:
                    return (await client.get("/readyz")).status_code == 200
                except httpx.TransportError:
                    return False

            await eventually(ready, what="the registry to be ready")
            yield client
    finally:
        server.should_exit = True
        await task


async def test_the_registry_app_runs_the_gate_and_revalidates_on_request(
    nats_server: EmbeddedNats, tmp_path: Path, models: Models
) -> None:
    settings = RegistrySettings(
        home=tmp_path, nats_url=nats_server.url, artifact_root=(tmp_path / "artifacts").as_uri(), port=free_port()
    )
    async with registry_app(settings) as api, EventBus(nats_server.url, "trainer") as trainer:
        side = Trainer(trainer, open_store(settings.resolved_artifact_root), models, tmp_path)
        await trainer.publish_event(side.trained_event(side.artifacts_for("runs/app", models.good)))
        (validated,) = await side.outcomes(1)
        assert validated.event == "validated"
        first = (await api.get("/api/v1/models/digits/versions/1")).json()
        assert first["status"] == "validated"
        first_card = first["artifacts"]["model-card"]["sha256"]

        degraded = ModelDegraded(model="digits", version=1, kind="drift", reason="feature 3 PSI 0.41 above 0.2")
        await trainer.publish(degraded, event_id="degraded:digits:1:drift:1")

        async def marked() -> bool:
            return (await api.get("/api/v1/models/digits/versions/1")).json()["tags"].get(
                "needs_revalidation"
            ) == "true"

        await eventually(marked, what="the degraded version to be marked for revalidation")
        tags = (await api.get("/api/v1/models/digits/versions/1")).json()["tags"]
        assert (tags["degraded_kind"], tags["degraded_reason"]) == ("drift", "feature 3 PSI 0.41 above 0.2")

        policy = await api.put("/api/v1/models/digits/validation-policy", json={"min_metrics": {"accuracy": 0.99}})
        assert policy.status_code == 200, policy.text
        answer = await api.post("/api/v1/models/digits/versions/1/validate")
        assert answer.status_code == 200, answer.text
        body = answer.json()
        assert (body["status"], body["passed"]) == ("rejected", False)
        assert body["reasons"] == [f"accuracy {body['report']['accuracy']:.4g} is below the policy minimum 0.99"]
        assert body["report"]["accuracy"] == pytest.approx(models.good.sklearn_accuracy, abs=0.003)
        _, rejected = await side.outcomes(2)
        assert (rejected.event, rejected.data.version, rejected.data.reasons) == (
            "rejected",
            1,
            body["reasons"],
        )
        revalidated = (await api.get("/api/v1/models/digits/versions/1")).json()
        assert revalidated["rejection_reasons"] == body["reasons"]
        # the evaluation changed, so did the card: it now says why the gate rejected the version
        assert revalidated["artifacts"]["model-card"]["sha256"] != first_card
        card = (await api.get("/api/v1/models/digits/versions/1/card")).text
        assert "Rejected by the gate:" in card and body["reasons"][0] in card
        assert "needs_revalidation" not in revalidated["tags"]  # the gate ran again: the mark is cleared

        missing = await api.post("/api/v1/models/digits/versions/7/validate")
        assert missing.status_code == 404 and "no version 7" in missing.json()["error"]
        archived = await api.patch("/api/v1/models/digits/versions/1", json={"status": "archived"})
        assert archived.status_code == 200, archived.text
        refused = await api.post("/api/v1/models/digits/versions/1/validate")
        assert refused.status_code == 409 and "archived" in refused.json()["error"]
