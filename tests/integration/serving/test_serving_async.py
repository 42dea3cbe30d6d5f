"""The model server's NATS side: infer.<model> request/reply and infer.jobs.<model> batch jobs."""

from __future__ import annotations

import asyncio
import hashlib
import io
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import httpx
import nats
import numpy as np
import orjson
import pytest
from nats.aio.client import Client
from nats.errors import NoRespondersError
from nats.js.errors import NotFoundError
from test_serving_modelserver import (
    Artifact,
    Server,
    expected_logits,
    put_artifact,
    start_server,
    tiny_model,
    wait_ready,
)

from gallery_common.nats_server import EmbeddedNats

FEATURES = {"name": "features", "datatype": "FP32", "shape": [2, 4], "data": [1, 2, 3, 4, 0, -1, 0.5, 2]}


@pytest.fixture
def artifact(tmp_path: Path) -> Artifact:
    return put_artifact(tmp_path / "gallery", "tiny/1.0.0/model.onnx", tiny_model())


@pytest.fixture
def server(artifact: Artifact, nats_server: EmbeddedNats, monkeypatch: pytest.MonkeyPatch) -> Iterator[Server]:
    monkeypatch.setenv("GALLERY_NATS_URL", nats_server.url)
    running = start_server(artifact, "--max-batch-size", "64", "--max-queue-delay-ms", "5")
    try:
        wait_ready(running)
        yield running
    finally:
        assert running.stop() == 0


@pytest.fixture
async def nc(server: Server, nats_server: EmbeddedNats) -> AsyncIterator[Client]:
    """A client connection, returned once the server answers on infer.tiny and consumes its jobs."""
    client = await nats.connect(nats_server.url)
    js = client.jetstream()
    for _ in range(200):
        try:
            await client.request("infer.tiny", b"{}", timeout=2)
            await js.consumer_info("INFER_JOBS", "modelserver-tiny")
            break
        except (NoRespondersError, NotFoundError):
            await asyncio.sleep(0.1)
    else:
        raise AssertionError(f"the model server never served NATS: {server.log.read_text()}")
    yield client
    await client.close()


async def test_request_reply_answers_like_http(server: Server, nc: Client) -> None:
    body = {"id": "r-1", "inputs": [FEATURES]}
    http = httpx.post(server.url + "/v2/models/tiny/infer", json=body)
    assert http.status_code == 200, http.text

    reply = await nc.request("infer.tiny", orjson.dumps(body), timeout=5)

    assert reply.headers is not None and reply.headers["Gallery-Status"] == "200"
    answer = orjson.loads(reply.data)
    assert answer == http.json()
    assert (answer["model_name"], answer["model_version"], answer["id"]) == ("tiny", "1.0.0", "r-1")
    x = np.reshape(FEATURES["data"], (2, 4))
    np.testing.assert_allclose(np.reshape(answer["outputs"][0]["data"], (2, 3)), expected_logits(x), rtol=1e-5)


async def test_concurrent_requests_each_get_their_own_rows(nc: Client) -> None:
    rows = [np.full((1, 4), i, np.float32) for i in range(20)]
    bodies = [orjson.dumps({"inputs": [{**FEATURES, "shape": [1, 4], "data": r.ravel().tolist()}]}) for r in rows]

    replies = await asyncio.gather(*(nc.request("infer.tiny", b, timeout=10) for b in bodies))

    for x, reply in zip(rows, replies, strict=True):
        logits = orjson.loads(reply.data)["outputs"][0]["data"]
        np.testing.assert_allclose(np.reshape(logits, (1, 3)), expected_logits(x), rtol=1e-5)


@pytest.mark.parametrize(
    ("body", "message"),
    [
        (orjson.dumps({"inputs": [{**FEATURES, "shape": [2, 5]}]}), "'features' has shape [2, 5]"),
        (orjson.dumps({"inputs": [{**FEATURES, "name": "pixels"}]}), "'pixels' is not an input"),
        (b'{"inputs": [', "not valid JSON"),
    ],
)
async def test_bad_request_gets_a_400_reply_with_the_reason(nc: Client, body: bytes, message: str) -> None:
    reply = await nc.request("infer.tiny", body, timeout=5)

    assert reply.headers is not None and reply.headers["Gallery-Status"] == "400"
    assert message in orjson.loads(reply.data)["error"]


def _put_npz(home: Path, key: str, **arrays: np.ndarray) -> tuple[str, str]:
    buffer = io.BytesIO()
    np.savez(buffer, **arrays)  # type: ignore[arg-type]
    path = home / "artifacts" / key
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(buffer.getvalue())
    return path.as_uri(), hashlib.sha256(buffer.getvalue()).hexdigest()


async def _statuses(nc: Client, job_id: str, job: dict[str, object]) -> list[dict[str, object]]:
    """Publish a job and collect its status messages until a final state."""
    sub = await nc.subscribe(f"infer.jobs.status.{job_id}")
    await nc.jetstream().publish("infer.jobs.tiny", orjson.dumps(job))
    statuses: list[dict[str, object]] = []
    while not statuses or statuses[-1]["state"] == "running":
        statuses.append(orjson.loads((await sub.next_msg(timeout=15)).data))
    await sub.unsubscribe()
    return statuses


async def test_batch_job_writes_the_models_outputs_and_reports_progress(artifact: Artifact, nc: Client) -> None:
    x = np.random.default_rng(7).normal(size=(1000, 4)).astype(np.float32)
    uri, sha256 = _put_npz(artifact.home, "jobs/in/job-1.npz", x=x)
    job = {"job_id": "job-1", "input": {"uri": uri, "sha256": sha256}, "output_prefix": "jobs/out"}

    statuses = await _statuses(nc, "job-1", job)

    final = statuses[-1]
    assert final["state"] == "succeeded", final
    assert (final["done"], final["total"]) == (1000, 1000)
    progress = [s["done"] for s in statuses[:-1]]
    assert len(progress) >= 3 and progress == sorted(progress) and 0 < progress[-1] < 1000
    output = final["output"]
    assert isinstance(output, dict) and output["uri"].endswith("/batch-outputs/tiny/jobs/out/job-1.npz")
    data = Path(output["uri"].removeprefix("file://")).read_bytes()
    assert hashlib.sha256(data).hexdigest() == output["sha256"]
    with np.load(io.BytesIO(data)) as result:
        np.testing.assert_allclose(result["logits"], expected_logits(x), rtol=1e-5, atol=1e-5)
        assert result["probabilities"].shape == (1000, 3)


@pytest.mark.parametrize(
    ("job", "reason"),
    [
        ({"job_id": "bad-1", "output_prefix": "jobs/out"}, "input: Field required"),
        (
            {"job_id": "bad-2", "input": {"uri": "file:///nowhere.npz", "sha256": "0" * 64}, "output_prefix": "o"},
            "is not inside the artifact store",
        ),
    ],
)
async def test_malformed_job_gets_a_failed_status_with_the_reason(
    nc: Client, job: dict[str, object], reason: str
) -> None:
    statuses = await _statuses(nc, str(job["job_id"]), job)

    assert [s["state"] for s in statuses] == ["failed"]
    assert reason in str(statuses[0]["error"])
    consumer = await nc.jetstream().consumer_info("INFER_JOBS", "modelserver-tiny")
    assert consumer.num_ack_pending == 0 and consumer.num_redelivered == 0  # terminated, not retried


async def test_a_job_cannot_write_outside_the_model_servers_own_outputs(artifact: Artifact, nc: Client) -> None:
    # aimed at the served model file itself: models/tiny/1.0.0/model.onnx
    uri, sha256 = _put_npz(artifact.home, "jobs/in/job-3.npz", x=np.zeros((2, 4), np.float32))
    model_file = artifact.home / "artifacts" / "models" / "tiny" / "1.0.0" / "model.onnx"
    before = model_file.read_bytes()
    job = {"job_id": "model", "input": {"uri": uri, "sha256": sha256}, "output_prefix": "models/tiny/1.0.0"}

    statuses = await _statuses(nc, "model", job)

    output = statuses[-1]["output"]
    assert isinstance(output, dict) and output["uri"].endswith("/batch-outputs/tiny/models/tiny/1.0.0/model.npz")
    assert model_file.read_bytes() == before
    escape = {"job_id": "escape", "input": {"uri": uri, "sha256": sha256}, "output_prefix": "../models/tiny"}
    refused = await _statuses(nc, "escape", escape)
    assert refused[-1]["state"] == "failed" and "output_prefix" in str(refused[-1]["error"])


@pytest.mark.parametrize(
    ("arrays", "wrong_digest", "reason"),
    [
        ({"x": np.zeros((3, 4), np.float32)}, True, "sha256"),
        ({"x": np.zeros((3, 5), np.float32)}, False, "array 'features' has shape [3, 5]; the model expects [-1, 4]"),
        ({"pixels": np.zeros((3, 4), np.float32)}, False, "the input NPZ has no array 'features' (it has: pixels)"),
        ({"x": np.zeros((3, 4), np.int64)}, False, "array 'features' has dtype int64; the model expects FP32"),
    ],
)
async def test_job_with_an_unusable_input_fails_with_the_reason(
    artifact: Artifact, nc: Client, arrays: dict[str, np.ndarray], wrong_digest: bool, reason: str
) -> None:
    uri, sha256 = _put_npz(artifact.home, "jobs/in/job-2.npz", **arrays)
    job = {
        "job_id": "job-2",
        "input": {"uri": uri, "sha256": "a" * 64 if wrong_digest else sha256},
        "output_prefix": "o",
    }

    statuses = await _statuses(nc, "job-2", job)

    assert statuses[-1]["state"] == "failed"
    assert reason in str(statuses[-1]["error"])
