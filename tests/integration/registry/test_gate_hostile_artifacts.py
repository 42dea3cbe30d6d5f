"""Hostile artifacts sent through the running gate (real nats-server, real artifact store): a model that never
finishes, one that allocates gigabytes, a test split that is a decompression bomb and an artifact over the
size cap are each rejected once, with the reason, and the gate goes on validating other models."""

from __future__ import annotations

import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest
from hostile_artifacts import allocating_model, loop_model, npz_bomb
from onnx_builders import Digits, TrainedModel, mlp_classifier
from test_gate import Gate, Models, deliveries, running_gate

from gallery_common.artifacts.base import describe_size
from gallery_common.nats_server import EmbeddedNats
from gallery_common.settings import get_settings
from gallery_registry.schemas import VersionStatus

TIME_LIMIT_S = 3
GiB = 1024**3


@pytest.fixture(scope="module")
def models() -> Models:
    data = Digits.load()
    good = mlp_classifier(data)
    return Models(data, good, good, good)  # only `good` is used here


@pytest.fixture
def limits_env(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """A short time limit and a 1 GiB memory limit for the gate's evaluations, as the environment sets them."""
    monkeypatch.setenv("GALLERY_EVALUATION_TIMEOUT_S", str(TIME_LIMIT_S))
    monkeypatch.setenv("GALLERY_EVALUATION_MEMORY_BYTES", str(GiB))
    get_settings.cache_clear()
    yield
    monkeypatch.undo()
    get_settings.cache_clear()


@pytest.fixture
async def gate(nats_server: EmbeddedNats, tmp_path: Path, models: Models, limits_env: None) -> AsyncIterator[Gate]:
    async with running_gate(nats_server.url, (tmp_path / "artifacts").as_uri(), tmp_path, models) as running:
        yield running


async def rejected_once(gate: Gate) -> list[str]:
    (outcome,) = await gate.outcomes(1, quiet=1.5)  # a crash loop would retry after 1 s: wait past that
    assert outcome.event == "rejected"
    assert gate.registry.get_version("digits", 1).status == VersionStatus.rejected
    await gate.settled()
    assert await deliveries(gate.bus) == 1
    return list(outcome.data.reasons)


async def then_a_good_model_is_still_validated(gate: Gate, models: Models) -> None:
    await gate.bus.publish_event(gate.trained_event(gate.artifacts_for("runs/after", models.good)))
    outcomes = await gate.outcomes(2)
    assert outcomes[-1].event == "validated"


async def test_an_endless_loop_model_is_rejected_at_the_time_limit(gate: Gate, models: Models) -> None:
    endless = TrainedModel(loop_model(models.data.n_features, 10), 0.0)  # Loop, trip count 2**40, adds 1
    started = time.monotonic()
    await gate.bus.publish_event(gate.trained_event(gate.artifacts_for("runs/loop", endless)))
    (outcome,) = await gate.outcomes(1, quiet=0.0, timeout=TIME_LIMIT_S + 15)
    elapsed = time.monotonic() - started
    assert outcome.data.reasons == [f"evaluation exceeded its {TIME_LIMIT_S} s time limit"]
    assert TIME_LIMIT_S <= elapsed < TIME_LIMIT_S + 5
    assert await rejected_once(gate) == outcome.data.reasons
    await then_a_good_model_is_still_validated(gate, models)


async def test_a_model_that_allocates_gigabytes_is_rejected_at_the_memory_limit(gate: Gate, models: Models) -> None:
    greedy = TrainedModel(allocating_model(models.data.n_features, 10), 0.0)  # 4 GiB per run, 1 GiB allowed
    await gate.bus.publish_event(gate.trained_event(gate.artifacts_for("runs/greedy", greedy)))
    assert await rejected_once(gate) == ["evaluation exceeded its 1024 MiB memory limit"]
    await then_a_good_model_is_still_validated(gate, models)


async def test_a_test_split_that_is_a_decompression_bomb_is_rejected_with_the_cap(gate: Gate, models: Models) -> None:
    artifacts = gate.artifacts_for("runs/bomb", models.good)
    artifacts["test_split"] = gate.artifacts.put("runs/bomb/test.npz", npz_bomb())  # 3.9 MB, inflates to 4 GB
    await gate.bus.publish_event(gate.trained_event(artifacts))
    assert await rejected_once(gate) == [
        "test split: arrays 'x' and 'y' declare 3.7 GiB uncompressed, over the 1.0 GiB an NPZ file may inflate to "
        "(GALLERY_MAX_SPLIT_BYTES)"
    ]


async def test_an_artifact_over_the_size_cap_is_rejected_unfetched(
    nats_server: EmbeddedNats, tmp_path: Path, models: Models
) -> None:
    root = (tmp_path / "artifacts").as_uri()
    async with running_gate(nats_server.url, root, tmp_path, models, max_artifact_bytes=50_000) as gate:
        artifacts = gate.artifacts_for("runs/big", models.good)  # the digits test split is ~140 KB
        await gate.bus.publish_event(gate.trained_event(artifacts))
        (reason,) = await rejected_once(gate)
    split = artifacts["test_split"]
    assert reason == (
        f"artifact test_split cannot be read: artifact {split.uri} is {describe_size(split.size or 0)}, over the "
        "48.8 KiB (50000 bytes) a service fetches (GALLERY_MAX_ARTIFACT_BYTES); it was not fetched"
    )
