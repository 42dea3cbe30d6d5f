"""The data plane stands alone: the gateway and a model server (real processes) start, serve and stay
ready while NATS is unreachable; traffic samples wait and go out once the bus is back."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import orjson
import pytest
from nats.js import api
from test_serving_modelserver import Artifact, Server, put_artifact, start_server, tiny_model, wait_ready
from waiting import wait_for

from gallery_common.bus import EventBus
from gallery_common.nats_server import EmbeddedNats
from gallery_common.netutil import free_port

# 15 s in `make test`; `make chaos` holds the bus down the whole minute (reconnect back-off, buffers filling)
OUTAGE_S = float(os.environ.get("GALLERY_TEST_BUS_OUTAGE_S", "15"))
ROWS = {"inputs": [{"name": "features", "datatype": "FP32", "shape": [2, 4], "data": [1, 2, 3, 4, 0, -1, 0.5, 2]}]}


@dataclass
class Gateway:
    process: subprocess.Popen[bytes]
    url: str
    log: Path

    def ready(self) -> httpx.Response:
        return httpx.get(f"{self.url}/readyz", timeout=2)

    def stop(self) -> None:
        self.process.terminate()
        self.process.wait(20)


def start_gateway(home: Path, nats_url: str) -> Gateway:
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("GALLERY_")}
    env.update(
        GALLERY_HOME=str(home),
        GALLERY_NATS_URL=nats_url,
        GALLERY_SERVICE_NAME="gateway",
        GALLERY_PORT=str(port),
        GALLERY_SAMPLE_RATE="1",
    )
    log = home / "gateway.log"
    home.mkdir(parents=True, exist_ok=True)
    with log.open("wb") as out:
        process = subprocess.Popen(
            [sys.executable, "-m", "gallery_common.serve", "gateway"], env=env, stdout=out, stderr=subprocess.STDOUT
        )
    return Gateway(process, f"http://127.0.0.1:{port}", log)


@dataclass
class SteadyLoad:
    """Requests through the gateway, one after another every `interval` s, on a thread, until stopped."""

    url: str
    interval: float = 0.05
    results: list[tuple[float, int]] = field(default_factory=list)  # (time, status; 0 = no answer)
    _stop: threading.Event = field(default_factory=threading.Event)

    def run(self) -> None:
        body = orjson.dumps(ROWS)
        with httpx.Client(timeout=10) as client:
            while not self._stop.is_set():
                try:
                    status = client.post(self.url, content=body).status_code
                except httpx.HTTPError:
                    status = 0
                self.results.append((time.time(), status))
                time.sleep(self.interval)

    def between(self, start: float, end: float) -> list[int]:
        return [status for at, status in self.results if start <= at <= end]

    @property
    def failed(self) -> list[tuple[float, int]]:
        return [(at, status) for at, status in self.results if status != 200]


@pytest.fixture
def served(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[tuple[Artifact, int]]:
    """A model artifact, and a NATS port nothing listens on yet (the tests start nats-server there later)."""
    port = free_port()
    monkeypatch.setenv("GALLERY_NATS_URL", f"nats://127.0.0.1:{port}")
    yield put_artifact(tmp_path / "gallery", "tiny/1.0.0/model.onnx", tiny_model()), port


@pytest.fixture
def data_plane(served: tuple[Artifact, int], tmp_path: Path) -> Iterator[tuple[Server, Gateway, EmbeddedNats]]:
    """A model server and a gateway routed to it, both started with no nats-server anywhere."""
    artifact, nats_port = served
    with EmbeddedNats(tmp_path / "nats") as elsewhere:  # on another port, so nothing can connect yet
        asyncio.run(capture_samples(elsewhere.url))
    nats = EmbeddedNats(tmp_path / "nats", port=nats_port, log_file=tmp_path / "nats.log")
    server = start_server(artifact)
    gateway = start_gateway(tmp_path / "gateway", nats.url)
    try:
        wait_ready(server)
        wait_for(
            "the gateway ready without NATS",
            lambda: gateway.ready().status_code == 200,
            30,
            ignore=(httpx.TransportError,),
        )
        route = {"backends": [{"id": "v1", "url": server.url, "version": "1.0.0", "weight": 1}]}
        assert httpx.put(f"{gateway.url}/admin/routes/tiny", json=route, timeout=5).status_code == 200
        yield server, gateway, nats
    finally:
        gateway.stop()
        server.stop()
        nats.stop()


async def capture_samples(nats_url: str) -> None:
    """A stream in the store that keeps every sample from the moment the server runs, whoever is connected."""
    async with EventBus(nats_url, "test") as bus:
        await bus.js.add_stream(api.StreamConfig(name="SAMPLES", subjects=["inference.sample.>"]))


async def captured_sample_times(nats_url: str) -> list[float]:
    async with EventBus(nats_url, "test", publish_deadline=10) as bus:
        info = await bus.js.stream_info("SAMPLES")
        return [
            float(orjson.loads((await bus.js.get_msg("SAMPLES", seq)).data)["time"])
            for seq in range(max(info.state.first_seq, 1), info.state.last_seq + 1)
        ]


def test_gateway_and_model_server_start_and_serve_with_no_nats_then_samples_flow_once_it_comes(
    data_plane: tuple[Server, Gateway, EmbeddedNats],
) -> None:
    server, gateway, nats = data_plane
    assert gateway.ready().json()["checks"]["nats"] == "disconnected"
    for _ in range(5):
        answer = httpx.post(f"{gateway.url}/v2/models/tiny/infer", content=orjson.dumps(ROWS), timeout=5)
        assert answer.status_code == 200 and answer.json()["model_version"] == "1.0.0"
    assert httpx.get(f"{server.url}/v2/health/ready", timeout=2).status_code == 200

    nats.start()
    wait_for(
        "the gateway on the bus",
        lambda: gateway.ready().json()["checks"]["nats"] == "ok",
        30,
        ignore=(httpx.TransportError,),
    )
    httpx.post(f"{gateway.url}/v2/models/tiny/infer", content=orjson.dumps(ROWS), timeout=5)

    # the five answered before NATS existed waited in the buffer; the sixth follows them
    def six_samples() -> list[float] | None:
        times = asyncio.run(captured_sample_times(nats.url))
        return times if len(times) >= 6 else None

    assert len(wait_for("six samples", six_samples, 30, ignore=(httpx.TransportError,))) == 6


@pytest.mark.slow
def test_nats_down_under_steady_load_fails_no_request_and_samples_resume(
    data_plane: tuple[Server, Gateway, EmbeddedNats],
) -> None:
    _, gateway, nats = data_plane
    nats.start()
    wait_for(
        "the gateway on the bus",
        lambda: gateway.ready().json()["checks"]["nats"] == "ok",
        30,
        ignore=(httpx.TransportError,),
    )
    load = SteadyLoad(f"{gateway.url}/v2/models/tiny/infer")
    worker = threading.Thread(target=load.run, daemon=True)
    worker.start()
    try:
        time.sleep(3)
        nats.stop()
        down_at = time.time()
        while time.time() - down_at < OUTAGE_S:
            assert gateway.ready().status_code == 200, "the gateway stays ready while the bus is down"
            time.sleep(5)
        nats.start()
        up_at = time.time()
        wait_for(
            "the gateway back on the bus",
            lambda: gateway.ready().json()["checks"]["nats"] == "ok",
            30,
            ignore=(httpx.TransportError,),
        )
        time.sleep(3)
    finally:
        load._stop.set()
        worker.join(30)
    assert not load.failed, f"{len(load.failed)} requests failed, first {load.failed[:3]}"
    assert len(load.between(down_at, up_at)) > OUTAGE_S * 5, "the load kept running through the outage"
    times = asyncio.run(captured_sample_times(nats.url))
    assert [t for t in times if down_at < t < up_at], "samples taken while NATS was down arrive once it is back"
    assert [t for t in times if t > up_at], "and sampling goes on"
