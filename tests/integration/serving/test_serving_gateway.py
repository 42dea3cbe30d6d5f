"""The gateway in front of real (small) OIP v2 backends, all served by uvicorn on loopback."""

from __future__ import annotations

import asyncio
import re
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import nats
import numpy as np
import orjson
import pytest
import tritonclient.http as triton
import uvicorn
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route
from uvicorn_thread import running

from gallery_common.contracts.serving_metrics import CACHE_HITS
from gallery_common.nats_server import EmbeddedNats
from gallery_common.netutil import free_port
from gallery_deployer.gateway.app import create_app_for
from gallery_deployer.gateway.settings import GatewaySettings


@dataclass
class FakeModelServer:
    """Enough OIP v2 to be a backend: metadata, ready, and infer answering y = x * factor."""

    name: str
    factor: float = 1.0
    failing: bool = False
    infers: int = 0
    url: str = ""
    server: uvicorn.Server | None = field(default=None, repr=False)

    def app(self) -> Starlette:
        async def metadata(request: Request) -> Response:
            model = request.path_params["model"]
            body = {
                "name": model,
                "versions": ["1"],
                "platform": "onnxruntime",
                "inputs": [{"name": "x", "datatype": "FP32", "shape": [-1, 3]}],
                "outputs": [{"name": "y", "datatype": "FP32", "shape": [-1, 3]}],
            }
            return Response(orjson.dumps(body), media_type="application/json")

        async def ready(_: Request) -> Response:
            return Response(status_code=500 if self.failing else 200)

        async def infer(request: Request) -> Response:
            self.infers += 1
            if self.failing:
                return Response(b'{"error":"broken on purpose"}', status_code=500, media_type="application/json")
            payload = orjson.loads(await request.body())
            if "inputs" not in payload:
                return Response(b'{"error":"inputs missing"}', status_code=400, media_type="application/json")
            tensor = payload["inputs"][0]
            data = (np.asarray(tensor["data"], dtype=np.float32) * self.factor).tolist()
            answer = {
                "model_name": request.path_params["model"],
                "parameters": {"backend": self.name},
                "outputs": [{"name": "y", "datatype": "FP32", "shape": tensor["shape"], "data": data}],
            }
            return Response(orjson.dumps(answer), media_type="application/json")

        return Starlette(
            routes=[
                Route("/v2/models/{model}", metadata),
                Route("/v2/models/{model}/ready", ready),
                Route("/v2/models/{model}/infer", infer, methods=["POST"]),
            ]
        )


@contextmanager
def serve(app: object, port: int) -> Iterator[uvicorn.Server]:
    with running(app, port) as server:
        yield server


@contextmanager
def backend(name: str, factor: float = 1.0) -> Iterator[FakeModelServer]:
    fake = FakeModelServer(name, factor)
    port = free_port()
    fake.url = f"http://127.0.0.1:{port}"
    with serve(fake.app(), port) as server:
        fake.server = server
        yield fake


@contextmanager
def gateway(tmp: Path, **overrides: object) -> Iterator[str]:
    options: dict[str, object] = {
        "home": tmp,
        "port": free_port(),
        "request_timeout_s": 1.0,
        "breaker_consecutive_failures": 3,
        "breaker_cooldown_s": 1.0,
        "sample_rate": 0.0,
        **overrides,
    }
    settings = GatewaySettings(**options)  # type: ignore[arg-type]
    with serve(create_app_for(settings, with_bus=False), settings.port):
        yield f"http://127.0.0.1:{settings.port}"


@pytest.fixture(scope="module")
def backends() -> Iterator[dict[str, FakeModelServer]]:
    with backend("a", 1.0) as a, backend("b", 2.0) as b, backend("shadow", 1.0) as s:
        yield {"a": a, "b": b, "shadow": s}


@pytest.fixture(scope="module")
def gw(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    with gateway(tmp_path_factory.mktemp("gateway")) as url:
        yield url


def put_route(base: str, model: str, backends: list[dict[str, object]], **policy: object) -> None:
    response = httpx.put(f"{base}/admin/routes/{model}", json={"backends": backends, "policy": policy})
    assert response.status_code == 200, response.text


def body(x: list[float]) -> bytes:
    return orjson.dumps({"inputs": [{"name": "x", "datatype": "FP32", "shape": [1, len(x)], "data": x}]})


async def infer_many(url: str, payloads: list[bytes], headers: dict[str, str] | None = None) -> list[httpx.Response]:
    limit = asyncio.Semaphore(32)
    # a connection idle as long as the server's keep-alive (uvicorn: 5 s, httpx's default expiry too) may be
    # closed by the server as the client reuses it (a ReadError, seen once on a loaded machine): reuse
    # only connections idle for less
    async with httpx.AsyncClient(timeout=10, limits=httpx.Limits(keepalive_expiry=1.0)) as client:

        async def one(payload: bytes) -> httpx.Response:
            async with limit:
                return await client.post(url, content=payload, headers=headers)

        return await asyncio.gather(*(one(p) for p in payloads))


def served_by(response: httpx.Response) -> str:
    return str(response.json()["parameters"]["backend"])


def metric(base: str, name: str, **labels: str) -> float:
    text = httpx.get(f"{base}/metrics").text
    total = 0.0
    for line in text.splitlines():
        match = re.match(rf"^{name}\{{(.*)\}} (\S+)$", line)
        if match and all(f'{k}="{v}"' in match.group(1) for k, v in labels.items()):
            total += float(match.group(2))
    return total


async def test_canary_split_lands_within_three_points(gw: str, backends: dict[str, FakeModelServer]) -> None:
    a, b = backends["a"], backends["b"]
    put_route(
        gw,
        "canary",
        [{"id": "a", "url": a.url, "weight": 90}, {"id": "b", "url": b.url, "weight": 10, "role": "canary"}],
    )
    responses = await infer_many(f"{gw}/v2/models/canary/infer", [body([1.0, 2.0, 3.0])] * 2000)
    assert all(r.status_code == 200 for r in responses)
    share = sum(served_by(r) == "b" for r in responses) / len(responses)
    assert 0.07 <= share <= 0.13, share


async def test_sticky_session_keeps_its_backend(gw: str, backends: dict[str, FakeModelServer]) -> None:
    put_route(
        gw,
        "ab",
        [{"id": "a", "url": backends["a"].url, "weight": 50}, {"id": "b", "url": backends["b"].url, "weight": 50}],
    )
    url = f"{gw}/v2/models/ab/infer"
    seen = set()
    for i in range(30):
        responses = await infer_many(url, [body([1.0])] * 5, headers={"x-gallery-session": f"user-{i}"})
        chosen = {served_by(r) for r in responses}
        assert len(chosen) == 1, f"session user-{i} was split over {chosen}"
        seen |= chosen
    assert seen == {"a", "b"}


async def test_shadow_gets_its_share_and_never_answers(gw: str, backends: dict[str, FakeModelServer]) -> None:
    shadow = backends["shadow"]
    before = shadow.infers
    put_route(
        gw,
        "mirrored",
        [{"id": "a", "url": backends["a"].url}, {"id": "shadow", "url": shadow.url, "role": "shadow"}],
        shadow_percent=30,
    )
    responses = await infer_many(f"{gw}/v2/models/mirrored/infer", [body([3.0, 1.0])] * 400)
    assert {served_by(r) for r in responses} == {"a"}
    await asyncio.sleep(0.5)
    mirrored = shadow.infers - before
    assert 80 <= mirrored <= 160, mirrored
    assert metric(gw, "modelgallery_gateway_shadow_agreement_total", model="mirrored", agree="true") == mirrored


async def test_a_regressors_shadow_is_compared_by_its_predictions(
    gw: str, backends: dict[str, FakeModelServer]
) -> None:
    """Shadow "b" predicts twice what "a" serves. As top classes the one-column answers always agree (the
    argmax of one column is 0); on a regressor's route (task "regression", as the deployer sets it) they
    are compared by value, and a shadow predicting the same agrees."""

    async def mirror(model: str, shadow: str, task: str) -> dict[str, float]:
        mirrored = {"id": shadow, "url": backends[shadow].url, "role": "shadow"}
        route = {
            "backends": [{"id": "a", "url": backends["a"].url}, mirrored],
            "policy": {"shadow_percent": 100},
            "task": task,
        }
        assert httpx.put(f"{gw}/admin/routes/{model}", json=route).status_code == 200
        responses = await infer_many(f"{gw}/v2/models/{model}/infer", [body([3.0])] * 20)
        assert all(r.status_code == 200 for r in responses)
        await asyncio.sleep(0.5)
        name = "modelgallery_gateway_shadow_agreement_total"
        return {agree: metric(gw, name, model=model, agree=agree) for agree in ("true", "false")}

    assert await mirror("twice-as-class", "b", "classification") == {"true": 20, "false": 0}
    assert await mirror("twice", "b", "regression") == {"true": 0, "false": 20}
    assert await mirror("same", "shadow", "regression") == {"true": 20, "false": 0}


async def test_backend_killed_mid_load_falls_back_without_client_failures(
    gw: str, backends: dict[str, FakeModelServer]
) -> None:
    with backend("doomed") as doomed:
        put_route(
            gw,
            "resilient",
            [
                {"id": "doomed", "url": doomed.url, "weight": 1},
                {"id": "a", "url": backends["a"].url, "weight": 1, "fallback_order": 1},
            ],
        )
        task = asyncio.create_task(infer_many(f"{gw}/v2/models/resilient/infer", [body([1.0])] * 200))
        while doomed.infers < 30:
            await asyncio.sleep(0.005)
        assert doomed.server is not None
        doomed.server.should_exit = True
        responses = await task
    assert [r.status_code for r in responses] == [200] * 200
    assert metric(gw, "modelgallery_gateway_fallbacks_total", model="resilient") > 0


async def test_breaker_opens_then_half_opens(gw: str, backends: dict[str, FakeModelServer]) -> None:
    with backend("flaky") as flaky:
        flaky.failing = True
        put_route(
            gw, "guarded", [{"id": "flaky", "url": flaky.url}, {"id": "a", "url": backends["a"].url, "weight": 0}]
        )
        url = f"{gw}/v2/models/guarded/infer"
        async with httpx.AsyncClient() as client:
            for _ in range(3):
                response = await client.post(url, content=body([1.0]))
                assert response.status_code == 200 and served_by(response) == "a"
            assert metric(gw, "modelgallery_gateway_breaker_state", model="guarded", backend="flaky") == 2
            calls = flaky.infers
            await client.post(url, content=body([1.0]))
            assert flaky.infers == calls, "an open breaker must not send traffic"
            flaky.failing = False
            await asyncio.sleep(1.1)
            response = await client.post(url, content=body([1.0]))
            assert served_by(response) == "flaky"
            assert metric(gw, "modelgallery_gateway_breaker_state", model="guarded", backend="flaky") == 0


def test_all_backends_down_gives_503_with_reason(gw: str) -> None:
    dead = [{"id": f"dead{i}", "url": f"http://127.0.0.1:{free_port()}", "fallback_order": i} for i in range(2)]
    put_route(gw, "orphan", dead)
    response = httpx.post(f"{gw}/v2/models/orphan/infer", content=body([1.0]))
    assert response.status_code == 503
    error = response.json()["error"]
    assert "dead0: unreachable" in error and "dead1: unreachable" in error


def test_backend_5xx_everywhere_gives_502_and_4xx_passes_through(gw: str, backends: dict[str, FakeModelServer]) -> None:
    put_route(gw, "plain", [{"id": "a", "url": backends["a"].url}])
    bad = httpx.post(f"{gw}/v2/models/plain/infer", content=b'{"no_inputs": 1}')
    assert bad.status_code == 400 and bad.json() == {"error": "inputs missing"}
    assert httpx.post(f"{gw}/v2/models/unknown/infer", content=body([1.0])).status_code == 404
    assert httpx.post(f"{gw}/v2/models/plain/versions/9/infer", content=body([1.0])).status_code == 404
    with backend("broken") as broken:
        broken.failing = True
        put_route(gw, "broken", [{"id": "broken", "url": broken.url}])
        failed = httpx.post(f"{gw}/v2/models/broken/infer", content=body([1.0]))
    assert failed.status_code == 502 and "broken: answered 500" in failed.json()["error"]


def test_identical_request_is_answered_from_cache(gw: str, backends: dict[str, FakeModelServer]) -> None:
    b = backends["b"]
    put_route(gw, "cached", [{"id": "b", "url": b.url}], cache_enabled=True)
    payload = body([4.0, 5.0])
    before, hits = b.infers, metric(gw, CACHE_HITS, model="cached")
    first = httpx.post(f"{gw}/v2/models/cached/infer", content=payload)
    second = httpx.post(f"{gw}/v2/models/cached/infer", content=payload)
    assert first.status_code == second.status_code == 200
    assert second.json() == first.json() and first.json()["outputs"][0]["data"] == [8.0, 10.0]
    assert b.infers == before + 1
    assert metric(gw, CACHE_HITS, model="cached") == hits + 1
    httpx.post(f"{gw}/v2/models/cached/infer", content=body([6.0]))
    assert b.infers == before + 2


def test_tritonclient_runs_through_the_gateway(gw: str, backends: dict[str, FakeModelServer]) -> None:
    put_route(gw, "triton", [{"id": "b", "url": backends["b"].url}])
    client = triton.InferenceServerClient(url=gw.removeprefix("http://"))
    assert client.is_server_live() and client.is_server_ready()
    assert client.is_model_ready("triton")
    assert client.get_model_metadata("triton")["inputs"][0]["name"] == "x"
    x = triton.InferInput("x", [1, 3], "FP32")
    x.set_data_from_numpy(np.array([[1, 2, 3]], dtype=np.float32), binary_data=False)
    result = client.infer("triton", [x], outputs=[triton.InferRequestedOutput("y", binary_data=False)])
    np.testing.assert_allclose(result.as_numpy("y"), [[2, 4, 6]])
    client.close()


def test_inference_needs_an_inference_token_and_a_body_within_the_limit(
    tmp_path: Path, backends: dict[str, FakeModelServer]
) -> None:
    route = {"backends": [{"id": "a", "url": backends["a"].url}]}
    admin = {"Authorization": "Bearer atok"}
    inference = {"Authorization": "Bearer itok"}
    tokens = "itok:inference,rtok:reader,atok:admin"
    with gateway(tmp_path, api_tokens=tokens, max_body_bytes=2_000) as url:
        assert httpx.put(f"{url}/admin/routes/guarded", json=route, headers=admin).status_code == 200
        infer = f"{url}/v2/models/guarded/infer"
        answered = {"route": "/v2/models/{model}/infer", "method": "POST", "service": "gateway"}
        before = {
            code: metric(url, "modelgallery_http_requests_total", status=code, **answered)
            for code in ["200", "401", "413"]
        }

        missing = httpx.post(infer, content=body([1.0]))
        assert missing.status_code == 401 and "bearer token" in missing.json()["error"]
        assert missing.headers["www-authenticate"] == "Bearer"
        too_big = httpx.post(infer, content=body([1.0] * 1_000), headers=inference)
        assert too_big.status_code == 413 and "2000 bytes" in too_big.json()["error"]
        assert served_by(httpx.post(infer, content=body([1.0]), headers=inference)) == "a"
        versioned = httpx.post(f"{url}/v2/models/guarded/versions/9/infer", content=body([1.0]), headers=inference)
        assert versioned.status_code == 404 and "version '9'" in versioned.json()["error"]
        # the ladder: a reader may do what an inference token may
        reader = httpx.post(infer, content=body([1.0]), headers={"Authorization": "Bearer rtok"})
        assert served_by(reader) == "a"

        after = {code: metric(url, "modelgallery_http_requests_total", status=code, **answered) for code in before}
        assert {code: after[code] - before[code] for code in before} == {"200": 2, "401": 1, "413": 1}


def test_admin_routes_need_admin_and_persist(tmp_path: Path, backends: dict[str, FakeModelServer]) -> None:
    route = {"backends": [{"id": "a", "url": backends["a"].url}]}
    with gateway(tmp_path, api_tokens="rtok:reader,wtok:writer,atok:admin") as url:
        target = f"{url}/admin/routes/secured"
        assert httpx.put(target, json=route).status_code == 401
        assert httpx.put(target, json=route, headers={"Authorization": "Bearer rtok"}).status_code == 403
        # a writer may not point a model's traffic (and the model-server token) at a host of its choosing
        by_writer = httpx.put(target, json=route, headers={"Authorization": "Bearer wtok"})
        assert by_writer.status_code == 403 and "admin role" in by_writer.json()["error"]
        assert httpx.put(target, json=route, headers={"Authorization": "Bearer atok"}).status_code == 200
        bad = httpx.put(target, json={"backends": []}, headers={"Authorization": "Bearer atok"})
        assert bad.status_code == 422 and "backends" in bad.json()["error"]
        # the table names every internal backend: reading it is admin too
        assert httpx.get(target, headers={"Authorization": "Bearer wtok"}).status_code == 403
        got = httpx.get(target, headers={"Authorization": "Bearer atok"})
        assert got.json()["backends"][0]["id"] == "a"
    saved = orjson.loads((tmp_path / "gateway" / "routes.json").read_bytes())["routes"]  # the snapshot
    assert saved["secured"]["backends"][0]["url"] == backends["a"].url
    with gateway(tmp_path) as url:  # a restart keeps the table
        response = httpx.post(f"{url}/v2/models/secured/infer", content=body([1.0]))
        assert served_by(response) == "a"
        assert httpx.delete(f"{url}/admin/routes/secured").status_code == 204
        assert httpx.post(f"{url}/v2/models/secured/infer", content=body([1.0])).status_code == 404


async def test_a_sample_of_traffic_is_published_for_drift_checks(
    tmp_path: Path, nats_server: EmbeddedNats, backends: dict[str, FakeModelServer]
) -> None:
    options: dict[str, object] = {
        "home": tmp_path,
        "port": free_port(),
        "sample_rate": 1.0,
        "nats_url": nats_server.url,
    }
    settings = GatewaySettings(**options)  # type: ignore[arg-type]
    received: list[dict[str, object]] = []
    connection = await nats.connect(nats_server.url)
    subscription = await connection.subscribe("inference.sample.sampled")
    with serve(create_app_for(settings, with_bus=True), settings.port):
        base = f"http://127.0.0.1:{settings.port}"
        put_route(base, "sampled", [{"id": "a", "url": backends["a"].url, "version": "1", "weight": 1}])
        responses = await infer_many(f"{base}/v2/models/sampled/infer", [body([1.0, 2.0])] * 5)
        assert all(r.status_code == 200 for r in responses)
        deadline = time.monotonic() + 10
        while len(received) < 5 and time.monotonic() < deadline:
            try:
                message = await subscription.next_msg(timeout=1.0)
            except nats.errors.TimeoutError:
                continue
            received.append(orjson.loads(message.data))
    await connection.close()
    assert len(received) == 5
    sample = received[0]
    assert sample["model"] == "sampled" and sample["version"] == "1"
    assert sample["inputs"] and sample["outputs"] and float(sample["latency_ms"]) > 0  # type: ignore[arg-type]


async def test_the_redis_cache_is_shared_between_gateway_replicas(
    tmp_path: Path, redis_url: str, backends: dict[str, FakeModelServer]
) -> None:
    route = [{"id": "a", "url": backends["a"].url, "version": "1", "weight": 1}]
    payload = body([4.0, 5.0])
    calls_before = backends["a"].infers
    with (
        gateway(tmp_path / "one", redis_url=redis_url) as first,
        gateway(tmp_path / "two", redis_url=redis_url) as second,
    ):
        for base in (first, second):
            put_route(base, "shared", route, cache_enabled=True)
        answer = httpx.post(f"{first}/v2/models/shared/infer", content=payload)
        again = httpx.post(f"{second}/v2/models/shared/infer", content=payload)
        assert answer.status_code == again.status_code == 200
        assert again.content == answer.content
        # the second replica answered from Redis: the backend saw one request only
        assert backends["a"].infers == calls_before + 1
        assert metric(second, CACHE_HITS, model="shared") == 1


async def test_a_model_scaled_to_zero_is_woken_once_and_held_requests_are_answered(
    gw: str, backends: dict[str, FakeModelServer]
) -> None:
    wakes: list[float] = []

    async def wake(_: Request) -> Response:
        # what the deployer does: start a replica (here: take a moment), route to it, then answer
        wakes.append(time.monotonic())
        await asyncio.sleep(0.5)
        async with httpx.AsyncClient() as client:
            awake = {"backends": [{"id": "a", "url": backends["a"].url}], "policy": {}}
            assert (await client.put(f"{gw}/admin/routes/sleepy", json=awake)).status_code == 200
        return Response(status_code=204)

    port = free_port()
    with serve(Starlette(routes=[Route("/wake", wake, methods=["POST"])]), port):
        put_route(gw, "sleepy", [], asleep=True, wake_url=f"http://127.0.0.1:{port}/wake")
        started = time.monotonic()
        responses = await infer_many(f"{gw}/v2/models/sleepy/infer", [body([float(i)]) for i in range(10)])

    assert [r.status_code for r in responses] == [200] * 10, [r.text for r in responses if r.status_code != 200]
    assert {served_by(r) for r in responses} == {"a"}
    assert len(wakes) == 1, "concurrent requests must share one wake-up"
    assert time.monotonic() - started >= 0.5
    assert metric(gw, "modelgallery_gateway_cold_start_duration_seconds_count", model="sleepy") == 10


def test_an_asleep_route_needs_a_wake_url(gw: str) -> None:
    response = httpx.put(f"{gw}/admin/routes/nowake", json={"backends": [], "policy": {"asleep": True}})
    assert response.status_code == 422 and "wake_url" in response.json()["error"]
