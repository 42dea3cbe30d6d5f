"""A batch job whose input NPZ is hostile (a decompression bomb, object arrays, an input over the artifact
cap) fails on its first delivery with the reason in its status; the model server inflates nothing."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import orjson
import pytest
from hostile_artifacts import npz_bomb
from test_serving_batch_job_delivery import DoublingSession, Message, StatusLog

from gallery_common.artifacts import FileArtifactStore
from gallery_common.contracts.oip import TensorSpec
from gallery_deployer.modelserver.batch_jobs import BatchJobRunner, JobFailed, read_inputs
from gallery_deployer.modelserver.model import ServedModel

SPECS = (TensorSpec("x", "FP32", (-1, 1000)),)


def npz(**arrays: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    np.savez(buffer, **arrays)  # type: ignore[arg-type]
    return buffer.getvalue()


async def run_job(store: FileArtifactStore, key: str, data: bytes) -> tuple[Message, StatusLog]:
    ref = store.put(key, data)
    model = ServedModel("m", "1", "fp32", DoublingSession(), SPECS, (TensorSpec("y", "FP32", (-1, 1000)),))  # type: ignore[arg-type]
    job_runner = BatchJobRunner(model, store, chunk_rows=4, max_deliver=3)
    log = StatusLog()
    job_runner._nc = log  # type: ignore[assignment]
    job = {"job_id": "j1", "input": {"uri": ref.uri, "sha256": ref.sha256}, "output_prefix": "out"}
    message = Message(orjson.dumps(job), delivered=1)
    await job_runner.handle(message)  # type: ignore[arg-type]
    return message, log


async def test_a_bomb_of_an_input_fails_the_job_at_once_with_the_cap(tmp_path: Path) -> None:
    store = FileArtifactStore((tmp_path / "artifacts").as_uri())
    message, log = await run_job(store, "inputs/bomb.npz", npz_bomb())  # 3.9 MB that inflates to 4 GB
    assert message.calls == ["term"]  # failed on the first delivery: no retry, no loop
    assert log.statuses == [
        {
            "job_id": "j1",
            "state": "failed",
            "done": 0,
            "total": 0,
            "error": "the input NPZ: array 'x' declares 3.7 GiB uncompressed, over the 1.0 GiB an NPZ file may "
            "inflate to (GALLERY_MAX_SPLIT_BYTES)",
        }
    ]
    assert not list(store.list("batch-outputs"))


async def test_an_input_over_the_artifact_cap_fails_the_job_unfetched(tmp_path: Path) -> None:
    root = (tmp_path / "artifacts").as_uri()
    data = npz(x=np.ones((20, 1000), np.float32))
    FileArtifactStore(root).put("inputs/big.npz", data)
    message, log = await run_job(FileArtifactStore(root, max_bytes=10_000), "inputs/big.npz", data)
    assert message.calls == ["term"]
    error = str(log.statuses[-1]["error"])
    assert log.statuses[-1]["state"] == "failed" and error.endswith("(GALLERY_MAX_ARTIFACT_BYTES); it was not fetched")


def test_object_arrays_in_an_input_are_refused_unread() -> None:
    with pytest.raises(JobFailed) as refused:
        read_inputs(npz(x=np.array([{"a": 1}, None], dtype=object)), SPECS)
    assert refused.value.message.startswith("the input is not a readable NPZ file: array 'x' holds Python objects")
