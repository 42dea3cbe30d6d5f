"""A canary whose validation split is hostile (a decompression bomb, corrupt, over the size cap): the replay
is refused with the reason, so the canary analysis fails with it and the canary is rolled back, instead of
the deployer inflating 4 GB or crashing on every analysis."""

from __future__ import annotations

import asyncio
import hashlib
from collections.abc import AsyncIterator
from pathlib import Path

import httpx
import numpy as np
import pytest
from hostile_artifacts import npz_bomb
from test_deployer_controller import FakeGateway, FakeRegistry, FakeRuntime, artifact, weights

from gallery_common.artifacts import FileArtifactStore, open_store
from gallery_common.contracts import write_split
from gallery_common.db import make_engine
from gallery_common.events import Payload
from gallery_deployer.deployer import canary
from gallery_deployer.deployer.controller import Controller
from gallery_deployer.deployer.migrations import upgrade
from gallery_deployer.deployer.records import DeploymentStore, Stage
from gallery_deployer.deployer.settings import DeployerSettings

BOMB_REASON = (
    "arrays 'x' and 'y' declare 3.7 GiB uncompressed, over the 1.0 GiB an NPZ file may inflate to "
    "(GALLERY_MAX_SPLIT_BYTES)"
)


def model_servers(request: httpx.Request) -> httpx.Response:
    """Replicas that have no figures yet and must never be asked to infer a refused replay."""
    if request.url.path == "/metrics":
        return httpx.Response(503)
    raise AssertionError(f"a refused replay sent {request.method} {request.url}")


@pytest.fixture
async def controller(tmp_path: Path) -> AsyncIterator[Controller]:
    settings = DeployerSettings(home=tmp_path, canary_percent=10, drain_s=0, canary_window_s=0.01)
    engine = make_engine(f"sqlite:///{tmp_path / 'deployer.db'}")
    upgrade(engine)

    async def publish(payload: Payload, event_id: str) -> None:
        pass

    built = Controller(
        settings,
        DeploymentStore(engine),
        FakeRuntime(),  # type: ignore[arg-type]
        FakeGateway(),  # type: ignore[arg-type]
        FakeRegistry(),  # type: ignore[arg-type]
        open_store((tmp_path / "artifacts").as_uri(), settings),
        publish,
    )
    await built._http.aclose()
    built._http = httpx.AsyncClient(transport=httpx.MockTransport(model_servers))
    yield built
    await built.close()


async def test_a_bomb_of_a_validation_split_fails_the_canary_analysis_with_the_reason(controller: Controller) -> None:
    split = controller.artifacts.put("models/m/2/validation_split.npz", npz_bomb())  # 3.9 MB, inflates to 4 GB
    await controller.deploy("m", 1, artifact(1))
    await controller.deploy("m", 2, artifact(2), validation_split=split)

    verdict = await controller.analyse("m")
    assert not verdict.passed and verdict.agreement is None
    assert verdict.reasons[0] == f"the replay of validation rows failed: validation split {split.uri}: {BOMB_REASON}"

    await asyncio.sleep(0.05)
    await controller.judge_due_canaries()  # the window is over: the failed analysis rolls the canary back
    assert weights(controller) == {"m-v1-0": 100.0}
    (production,) = await controller._db(controller.store.for_model, "m", [Stage.production])
    assert production.version == 1


async def test_a_refused_split_is_a_refused_replay_not_an_error(tmp_path: Path) -> None:
    store = FileArtifactStore(tmp_path.as_uri(), max_bytes=50_000)
    big = tmp_path / "big.npz"
    write_split(big, np.ones((1000, 16)), np.zeros(1000, np.int64))  # ~72 KB
    ref = store.put("big.npz", big)
    over = await canary.load_replay_rows(store, {"uri": ref.uri, "sha256": ref.sha256}, 100)
    assert isinstance(over, canary.ReplayRefused)
    assert over.reason.startswith(f"validation split {ref.uri}: artifact {ref.uri} is ")
    assert over.reason.endswith("a service fetches (GALLERY_MAX_ARTIFACT_BYTES); it was not fetched")

    small = tmp_path / "small.npz"
    write_split(small, np.arange(40, dtype=np.float64).reshape(10, 4), np.zeros(10, np.int64))
    ok = store.put("small.npz", small)
    rows = await canary.load_replay_rows(store, {"uri": ok.uri, "sha256": ok.sha256}, 3)
    assert isinstance(rows, np.ndarray) and rows.dtype == np.float32 and rows.tolist()[2] == [8.0, 9.0, 10.0, 11.0]
    corrupt = await canary.load_replay_rows(store, {"uri": ok.uri, "sha256": hashlib.sha256(b"x").hexdigest()}, 3)
    assert isinstance(corrupt, canary.ReplayRefused) and f"artifact {ok.uri} is corrupt" in corrupt.reason

    pickled = store.put("pickled.npz", _npz_with_objects(tmp_path))
    refused = await canary.load_replay_rows(store, {"uri": pickled.uri, "sha256": pickled.sha256}, 3)
    assert isinstance(refused, canary.ReplayRefused) and "object arrays are refused" in refused.reason


def _npz_with_objects(tmp_path: Path) -> Path:
    path = tmp_path / "pickled.npz"
    np.savez(path, x=np.ones((2, 2)), y=np.array([{"label": 1}, None], dtype=object))
    return path
