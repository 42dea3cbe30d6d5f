"""The optimizer service against a real nats-server, a real registry and a real small trained model.

A model.validated event gets the version optimized once: its variants attached in the registry and
model.optimized published with the recommended artifact; a second announcement of the same version
creates no second job or variants. A version without weights is optimized by hand with the CLI:
pruning and distillation fail with their reason, the other variants go on.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
from optimizer_service_harness import publish, serve, stored_events
from typer.testing import CliRunner

from gallery_cli.main import app as cli
from gallery_common.artifacts import ArtifactStore, open_store
from gallery_common.bus import EVENTS_STREAM, EventBus
from gallery_common.events import ArtifactRef, ModelOptimized, ModelValidated
from gallery_common.nats_server import EmbeddedNats
from gallery_common.netutil import free_port
from gallery_common.settings import GallerySettings
from gallery_optimizer.app import create
from gallery_optimizer.settings import OptimizerSettings
from gallery_registry.app import create_app_for
from gallery_registry.settings import RegistrySettings
from gallery_trainer.pipeline import JobOutputs, run_job
from gallery_trainer.spec import parse_spec

QUICK_POLICY = {"finetune_epochs": 1, "distill_epochs": 10, "student_hidden": [8]}


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory) -> JobOutputs:
    """The smallest real training run: iris, an MLP with 16 hidden units, one DDP rank (DeepSpeed starts slower)."""
    spec = parse_spec(
        {
            "name": "iris-mlp",
            "data": {"source": "builtin", "name": "iris"},
            "model": {"hidden": [16]},
            "training": {"epochs": 10, "batch_size": 16, "learning_rate": 0.05},
            "engine": {"kind": "ddp", "ranks": 1},
        }
    )
    return run_job(spec, tmp_path_factory.mktemp("train"))


@dataclass
class Stack:
    nats_url: str
    registry: httpx.Client
    optimizer: httpx.Client
    optimizer_url: str
    store: ArtifactStore

    def register(self, model: str, outputs: JobOutputs, roles: tuple[str, ...]) -> dict[str, ArtifactRef]:
        """Register version 1 of `model` with the given artifacts of a training run; returns them."""
        refs = {role: self.store.put(f"runs/{model}/{outputs.files[role].name}", outputs.files[role]) for role in roles}
        self.registry.post("/api/v1/models", json={"name": model}).raise_for_status()
        body = {
            "artifacts": {role: ref.model_dump(mode="json") for role, ref in refs.items()},
            "class_names": outputs.class_names,
            "task": "classification",
            "signature": outputs.signature.model_dump(mode="json"),
        }
        self.registry.post(f"/api/v1/models/{model}/versions", json=body).raise_for_status()
        return refs

    def artifacts(self, model: str) -> dict[str, dict[str, Any]]:
        return self.registry.get(f"/api/v1/models/{model}/versions/1").json()["artifacts"]  # type: ignore[no-any-return]


@pytest.fixture
def stack(tmp_path: Path, nats_server: EmbeddedNats) -> Iterator[Stack]:
    artifact_root = (tmp_path / "artifacts").as_uri()
    registry_settings = RegistrySettings(home=tmp_path / "registry", artifact_root=artifact_root)
    optimizer_port = free_port()
    with serve(create_app_for(registry_settings, with_bus=False), free_port()) as registry_url:
        settings = OptimizerSettings(
            home=tmp_path / "optimizer",
            nats_url=nats_server.url,
            artifact_root=artifact_root,
            registry_url=registry_url,
            port=optimizer_port,
            progress_interval=0.1,
        )
        with (
            serve(create(settings), optimizer_port) as optimizer_url,
            httpx.Client(base_url=registry_url, timeout=30) as registry,
            httpx.Client(base_url=optimizer_url, timeout=30) as optimizer,
        ):
            store = open_store(artifact_root, GallerySettings())
            yield Stack(nats_server.url, registry, optimizer, optimizer_url, store)


def consumer_settled(nats_url: str, timeout: float = 30) -> None:
    """Wait until the optimizer's durable consumer has acked everything in the stream."""

    async def go() -> None:
        async with EventBus(nats_url, "test") as bus:
            deadline = time.monotonic() + timeout
            while time.monotonic() < deadline:
                info = await bus.js.consumer_info(EVENTS_STREAM, "optimizer")
                if info.num_pending == 0 and info.num_ack_pending == 0:
                    return
                await asyncio.sleep(0.1)
        raise AssertionError("the optimizer did not settle its events")

    asyncio.run(go())


def test_a_validated_version_is_optimized_once_and_announced(stack: Stack, trained: JobOutputs) -> None:
    roles = ("onnx", "weights", "spec", "train_split", "validation_split", "test_split")
    refs = stack.register("iris-mlp", trained, roles)
    stack.optimizer.put("/api/v1/policies/iris-mlp", json=QUICK_POLICY).raise_for_status()
    validated = ModelValidated(model="iris-mlp", version=1, semver="1.0.0", artifacts=refs)
    publish(stack.nats_url, validated, "validated:iris-mlp:1")

    (event,) = stored_events(stack.nats_url, "model.optimized", timeout=240)
    optimized: ModelOptimized = event.data
    assert event.id == "optimized:iris-mlp:1" and event.subject == "iris-mlp/1"
    variants = {v.name: v for v in optimized.variants}
    assert set(variants) == {
        "fp32",
        "int8_dynamic",
        "int8_static",
        "fp16",
        "pruned_magnitude",
        "pruned_structured",
        "distilled",
    }
    assert {name: v.error for name, v in variants.items() if v.error} == {}
    assert optimized.recommended in variants
    assert optimized.recommended_artifact == variants[optimized.recommended].artifact
    stack.store.verify(optimized.recommended_artifact.uri, optimized.recommended_artifact.sha256)
    assert variants["fp32"].artifact == refs["onnx"]

    attached = stack.artifacts("iris-mlp")
    assert {"int8", "fp16", "pruned", "distilled", "edge_bundle", "report"} <= set(attached)
    int8_shas = {variants[name].artifact.sha256 for name in ("int8_dynamic", "int8_static")}  # type: ignore[union-attr]
    assert attached["int8"]["sha256"] in int8_shas
    assert attached["fp16"]["sha256"] == variants["fp16"].artifact.sha256  # type: ignore[union-attr]
    assert optimized.report is not None and attached["report"]["sha256"] == optimized.report.sha256

    (job,) = stack.optimizer.get("/api/v1/optimize", params={"model": "iris-mlp"}).json()
    assert job["status"] == "succeeded" and job["source_event_id"] == "validated:iris-mlp:1"
    assert job["recommended"] == optimized.recommended
    markdown = stack.optimizer.get(f"/api/v1/optimize/{job['id']}/report.md").text
    assert f"| {optimized.recommended} ★ |" in markdown

    # the registry announces the same version again (a replay, a revalidation): nothing is built twice
    stored_keys = sorted(info.key for info in stack.store.list("optimized/iris-mlp/1/"))
    publish(stack.nats_url, validated, "validated:iris-mlp:1:again")
    consumer_settled(stack.nats_url)
    assert len(stack.optimizer.get("/api/v1/optimize", params={"model": "iris-mlp"}).json()) == 1
    assert stack.artifacts("iris-mlp") == attached
    assert sorted(info.key for info in stack.store.list("optimized/iris-mlp/1/")) == stored_keys
    assert [e.id for e in stored_events(stack.nats_url, "model.optimized")] == ["optimized:iris-mlp:1"]


def test_without_weights_pruning_fails_with_a_reason_and_the_student_learns_from_the_model(
    stack: Stack, trained: JobOutputs, monkeypatch: pytest.MonkeyPatch
) -> None:
    stack.register("iris-bare", trained, ("onnx", "train_split", "validation_split", "test_split"))
    monkeypatch.setenv("GALLERY_OPTIMIZER_URL", stack.optimizer_url)
    monkeypatch.setenv("COLUMNS", "200")
    args = ["optimize", "iris-bare:1", "--poll", "0.2", "--variant", "int8_dynamic", "--variant", "pruned_structured"]
    result = CliRunner().invoke(cli, [*args, "--variant", "distilled"])

    assert result.exit_code == 0, result.output
    assert "int8_dynamic" in result.output and "recommended:" in result.output
    assert "pruned_structured failed:" in result.output and "distilled failed:" not in result.output
    (event,) = stored_events(stack.nats_url, "model.optimized")
    variants = {v.name: v for v in event.data.variants}
    assert variants["pruned_structured"].error
    # distillation only runs the teacher: its student needs neither the weights nor the stored spec
    assert variants["distilled"].error is None and variants["distilled"].artifact is not None
    assert variants["int8_dynamic"].error is None and variants["int8_dynamic"].artifact is not None
    attached = stack.artifacts("iris-bare")
    assert {"int8", "distilled", "edge_bundle", "report"} <= set(attached)
    assert "pruned" not in attached

    # asking again shows the finished job's report instead of building a second set
    again = CliRunner().invoke(cli, ["optimize", "iris-bare:1"])
    assert again.exit_code == 0, again.output
    assert "following job" in again.output and "recommended:" in again.output
    overridden = CliRunner().invoke(cli, ["optimize", "iris-bare:1", "--variant", "fp16"])
    assert overridden.exit_code == 1
    assert "(409): iris-bare:1 was already optimized by job" in overridden.output
