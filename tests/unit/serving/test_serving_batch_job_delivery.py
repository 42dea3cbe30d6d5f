"""How a batch inference job message ends: ack, a nak that retries, or term with a failed status."""

from __future__ import annotations

import asyncio
import io
import time
from dataclasses import dataclass, field
from types import SimpleNamespace

import numpy as np
import orjson

from gallery_common.artifacts.base import ArtifactRef
from gallery_common.contracts.oip import TensorSpec
from gallery_deployer.modelserver.batch_jobs import BatchJobRunner
from gallery_deployer.modelserver.model import ServedModel


class DoublingSession:
    """Stands in for an ONNX Runtime session: y = 2x, optionally slow."""

    def __init__(self, seconds: float = 0.0) -> None:
        self.seconds = seconds

    def run(self, names: list[str], feeds: dict[str, np.ndarray]) -> list[np.ndarray]:
        time.sleep(self.seconds)
        return [feeds["x"] * 2]


def npz(**arrays: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    np.savez(buffer, **arrays)  # type: ignore[arg-type]
    return buffer.getvalue()


class FlakyStore:
    """Fails the first `failures` downloads with an I/O error, then serves the input."""

    def __init__(self, data: bytes, failures: int) -> None:
        self.data, self.failures = data, failures
        self.stored: dict[str, bytes] = {}

    def get(self, uri: str, sha256: str | None = None) -> bytes:
        if self.failures:
            self.failures -= 1
            raise OSError("connection reset by the store")
        return self.data

    def put(self, key: str, data: bytes) -> ArtifactRef:
        self.stored[key] = data
        return ArtifactRef(uri=f"file:///store/{key}", sha256="0" * 64, size=len(data))


@dataclass
class Message:
    data: bytes
    delivered: int
    calls: list[str] = field(default_factory=list)

    @property
    def metadata(self) -> SimpleNamespace:
        return SimpleNamespace(num_delivered=self.delivered)

    async def ack(self) -> None:
        self.calls.append("ack")

    async def nak(self, delay: float | None = None) -> None:
        self.calls.append("nak")

    async def term(self) -> None:
        self.calls.append("term")

    async def in_progress(self) -> None:
        self.calls.append("in_progress")


class StatusLog:
    def __init__(self) -> None:
        self.statuses: list[dict[str, object]] = []

    async def publish(self, subject: str, payload: bytes) -> None:
        self.statuses.append(orjson.loads(payload))


JOB = orjson.dumps({"job_id": "j1", "input": {"uri": "file:///in.npz", "sha256": "0" * 64}, "output_prefix": "out"})


def runner(store: FlakyStore, seconds: float = 0.0, ack_wait: float = 30.0) -> tuple[BatchJobRunner, StatusLog]:
    spec_in, spec_out = TensorSpec("x", "FP32", (-1, 2)), TensorSpec("y", "FP32", (-1, 2))
    model = ServedModel("m", "1", "fp32", DoublingSession(seconds), (spec_in,), (spec_out,))  # type: ignore[arg-type]
    job_runner = BatchJobRunner(model, store, chunk_rows=4, ack_wait=ack_wait, max_deliver=3)  # type: ignore[arg-type]
    log = StatusLog()
    job_runner._nc = log  # type: ignore[assignment]
    return job_runner, log


async def test_a_transient_failure_is_retried_and_the_redelivery_finishes_the_job() -> None:
    store = FlakyStore(npz(x=np.ones((6, 2), np.float32)), failures=1)
    job_runner, log = runner(store)

    first = Message(JOB, delivered=1)
    await job_runner.handle(first)
    second = Message(JOB, delivered=2)
    await job_runner.handle(second)

    assert first.calls == ["nak"]
    assert second.calls == ["ack"]
    assert log.statuses[-1]["state"] == "succeeded"
    assert [s["state"] for s in log.statuses].count("failed") == 0
    with np.load(io.BytesIO(store.stored["batch-outputs/m/out/j1.npz"])) as result:
        np.testing.assert_array_equal(result["y"], np.full((6, 2), 2, np.float32))


async def test_the_last_delivery_of_a_failing_job_terminates_it_with_the_reason() -> None:
    job_runner, log = runner(FlakyStore(b"", failures=10))

    last = Message(JOB, delivered=3)
    await job_runner.handle(last)

    assert last.calls == ["term"]
    assert log.statuses == [
        {"job_id": "j1", "state": "failed", "done": 0, "total": 0, "error": log.statuses[0]["error"]}
    ]
    assert "connection reset by the store" in str(log.statuses[0]["error"])


async def test_a_long_job_sends_heartbeats_so_it_is_not_redelivered_while_running() -> None:
    store = FlakyStore(npz(x=np.ones((12, 2), np.float32)), failures=0)
    job_runner, _ = runner(store, seconds=0.1, ack_wait=0.09)  # three chunks of 0.1 s, a heartbeat every 0.03 s

    message = Message(JOB, delivered=1)
    await asyncio.wait_for(job_runner.handle(message), 5)

    assert message.calls[-1] == "ack"
    assert message.calls.count("in_progress") >= 3
