"""The real model server process: a request ONNX Runtime refuses fails alone, over HTTP with its reason,
while the requests batched with it are answered; a request past max_batch_size gets 400 with the limit."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator

import httpx
import orjson
import pytest
from hostile_artifacts import LOOKUP_TABLE as TABLE
from hostile_artifacts import lookup_model
from test_serving_modelserver import Server, put_artifact, start_server, wait_ready


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    artifact = put_artifact(tmp_path_factory.mktemp("gallery"), "tiny/1.0.0/model.onnx", lookup_model())
    # a long queue delay without eager batching: concurrent requests surely share a batch
    running = start_server(artifact, "--max-batch-size", "4", "--max-queue-delay-ms", "300", "--no-eager-batching")
    try:
        wait_ready(running)
        yield running
    finally:
        assert running.stop() == 0


def lookup(*indices: int) -> bytes:
    return orjson.dumps({"inputs": [{"name": "index", "datatype": "INT64", "shape": [len(indices)], "data": indices}]})


async def test_only_the_request_at_fault_fails(server: Server) -> None:
    url = f"{server.url}/v2/models/tiny/infer"
    async with httpx.AsyncClient(timeout=10) as client:
        good, bad, other = await asyncio.gather(
            client.post(url, content=lookup(0, 1)),
            client.post(url, content=lookup(7)),
            client.post(url, content=lookup(4)),
        )
    assert good.status_code == other.status_code == 200
    assert good.json()["outputs"][0]["data"] == TABLE[[0, 1]].ravel().tolist()
    assert other.json()["outputs"][0]["data"] == TABLE[[4]].ravel().tolist()
    assert bad.status_code == 500
    assert "idx=7 must be within the inclusive range" in bad.json()["error"]


def test_a_request_past_max_batch_size_gets_400_with_the_limit(server: Server) -> None:
    url = f"{server.url}/v2/models/tiny/infer"
    refused = httpx.post(url, content=lookup(0, 1, 2, 3, 4))
    assert refused.status_code == 400
    assert refused.json() == {
        "error": "the request has 5 rows and this model server runs at most 4 at once (its max_batch_size): "
        "send them in smaller requests"
    }
    assert httpx.post(url, content=lookup(0, 1, 2, 3)).status_code == 200
