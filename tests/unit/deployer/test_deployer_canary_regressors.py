"""A regressor's canary is compared with production on its predictions: the replay of validation rows counts
the rows where the canary's predictions are within a tenth of the spread of production's. Compared as top
classes, a one-output regressor "agrees" on every row whatever it predicts (the argmax of one column is
always 0), so a canary predicting nonsense would be promoted."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import httpx
import numpy as np
import orjson
import pytest
from test_deployer_controller import FakeGateway, FakeRegistry, FakeRuntime, artifact

from gallery_common.artifacts import open_store
from gallery_common.contracts import write_split
from gallery_common.contracts.scoring import prediction_agreement
from gallery_common.db import make_engine
from gallery_common.events import Payload
from gallery_deployer.deployer import canary
from gallery_deployer.deployer.controller import Controller
from gallery_deployer.deployer.migrations import upgrade
from gallery_deployer.deployer.records import DeploymentStore
from gallery_deployer.deployer.settings import DeployerSettings

ROWS = np.random.default_rng(3).normal(size=(120, 4)).astype(np.float32)
WEIGHTS = np.array([[1.5], [-2.0], [0.5], [3.0]], dtype=np.float32)


Handler = Callable[[httpx.Request], httpx.Response]


def server(predict: np.ndarray) -> Handler:
    """A model server answering OIP metadata and JSON infer with `rows @ predict` (one output per row)."""

    def answer(request: httpx.Request) -> httpx.Response:
        if request.method == "GET":
            return httpx.Response(200, json={"inputs": [{"name": "features", "datatype": "FP32", "shape": [-1, 4]}]})
        document = orjson.loads(request.content)
        rows = np.asarray(document["inputs"][0]["data"], dtype=np.float32).reshape(document["inputs"][0]["shape"])
        out = rows @ predict
        tensor = {"name": "logits", "datatype": "FP32", "shape": list(out.shape), "data": out.ravel().tolist()}
        return httpx.Response(200, json={"model_name": "m", "outputs": [tensor]})

    return answer


def routed(**servers: Handler) -> httpx.AsyncClient:
    return httpx.AsyncClient(transport=httpx.MockTransport(lambda request: servers[request.url.host](request)))


@pytest.mark.parametrize(
    ("canary_weights", "low", "high"),
    [
        (WEIGHTS * 1.01, 0.95, 1.0),  # a retrained version: predictions within a hair of production's
        (-WEIGHTS, 0.0, 0.2),  # predicting the opposite
    ],
)
async def test_a_regressors_canary_agrees_as_far_as_its_predictions_do(
    canary_weights: np.ndarray, low: float, high: float
) -> None:
    async with routed(canary=server(canary_weights), production=server(WEIGHTS)) as client:
        agreement = await canary.replay_agreement(
            client, "m", "http://canary", "http://production", ROWS, chunk=50, regression=True
        )
        as_classes = await canary.replay_agreement(client, "m", "http://canary", "http://production", ROWS, chunk=50)
    assert isinstance(agreement, float) and low <= agreement <= high, agreement
    expected = prediction_agreement(ROWS @ canary_weights, ROWS @ WEIGHTS)
    assert agreement == pytest.approx(expected)
    assert as_classes == 1.0  # what the top-class comparison said of every regressor canary


def test_prediction_agreement_is_within_a_tenth_of_the_references_spread() -> None:
    reference = np.array([[0.0], [10.0], [20.0], [30.0]])  # spread (std) 11.18
    close = reference + np.array([[1.0], [-1.1], [0.0], [1.1]])
    assert prediction_agreement(close, reference) == 1.0
    assert prediction_agreement(reference + np.array([[0.0], [0.0], [0.0], [1.2]]), reference) == 0.75
    # a row agrees only when every output does
    two = np.hstack([reference, reference])
    assert prediction_agreement(two + np.array([[0.0, 3.0], [0, 0], [0, 0], [0, 0]]), two) == 0.75
    # constant predictions: their size stands in for the spread
    assert prediction_agreement(np.full((3, 1), 104.0), np.full((3, 1), 100.0)) == 1.0
    assert prediction_agreement(np.full((3, 1), 111.0), np.full((3, 1), 100.0)) == 0.0


@pytest.mark.parametrize("task", ["regression", "classification"])
async def test_the_controller_judges_a_regressors_canary_on_its_predictions(tmp_path: Path, task: str) -> None:
    """The registry says version 2 is a regressor: its canary, predicting the opposite of production, agrees on
    few rows and the analysis fails; the same canary of a version the registry calls a classifier passes the
    replay (one column, one "class"). The route the gateways get says the task too."""
    registry = FakeRegistry()
    registry.tasks[("m", 2)] = registry.tasks[("m", 1)] = task
    settings = DeployerSettings(home=tmp_path, canary_percent=10, drain_s=0, canary_window_s=0.01)
    engine = make_engine(f"sqlite:///{tmp_path / 'deployer.db'}")
    upgrade(engine)

    async def publish(payload: Payload, event_id: str) -> None:
        pass

    controller = Controller(
        settings,
        DeploymentStore(engine),
        FakeRuntime(),  # type: ignore[arg-type]
        FakeGateway(),  # type: ignore[arg-type]
        registry,  # type: ignore[arg-type]
        open_store((tmp_path / "artifacts").as_uri(), settings),
        publish,
    )
    replicas = {"m-v1-0": server(WEIGHTS), "m-v2-0": server(-WEIGHTS)}

    def handler(request: httpx.Request) -> httpx.Response:
        if request.url.path == "/metrics":
            return httpx.Response(503)  # no figures: the replay decides
        return replicas[request.url.host](request)

    await controller._http.aclose()
    controller._http = httpx.AsyncClient(transport=httpx.MockTransport(handler))
    try:
        split_file = tmp_path / "validation.npz"
        write_split(split_file, ROWS, (ROWS @ WEIGHTS)[:, 0])
        split = controller.artifacts.put("models/m/2/validation_split.npz", split_file)
        await controller.deploy("m", 1, artifact(1))
        await controller.deploy("m", 2, artifact(2), validation_split=split)

        verdict = await controller.analyse("m")
        if task == "regression":
            assert not verdict.passed and verdict.agreement is not None and verdict.agreement < 0.2, verdict
            assert any("agrees with the baseline on" in reason for reason in verdict.reasons)
        else:
            assert verdict.agreement == 1.0
        route = await controller.sync_routes("m")
        assert route is not None and route.task == task
    finally:
        await controller.close()
