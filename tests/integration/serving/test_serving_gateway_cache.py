"""The gateway's response cache with Triton's binary tensors, in front of the real model server.

A cached binary answer must come back with its `Inference-Header-Content-Length` (or a client cannot
split it), and the same body bytes sent with another binary-data header (or none) are another request.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import httpx
import numpy as np
import orjson
import pytest
import tritonclient.http as triton
from test_serving_gateway import gateway, metric, put_route
from test_serving_modelserver import Server, expected_logits, put_artifact, start_server, tiny_model, wait_ready

from gallery_common.contracts.serving_metrics import CACHE_HITS
from gallery_deployer.gateway.cache import CachedAnswer, RedisResponseCache


@pytest.fixture(scope="module")
def model_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    artifact = put_artifact(tmp_path_factory.mktemp("gallery"), "tiny/1.0.0/model.onnx", tiny_model())
    running = start_server(artifact, "--max-queue-delay-ms", "1")
    try:
        wait_ready(running)
        yield running
    finally:
        running.stop()


def binary_request(x: np.ndarray) -> tuple[bytes, int]:
    """What tritonclient sends by default: a JSON header, then the raw FP32 tensor; and the header's length."""
    header = orjson.dumps(
        {
            "inputs": [
                {
                    "name": "features",
                    "shape": list(x.shape),
                    "datatype": "FP32",
                    "parameters": {"binary_data_size": x.nbytes},
                }
            ],
            "parameters": {"binary_data_output": True},
        }
    )
    return header + x.tobytes(), len(header)


@pytest.mark.parametrize("shared", [False, True], ids=["memory", "redis"])
def test_a_cached_binary_answer_is_readable_by_tritonclient(
    tmp_path: Path, model_server: Server, shared: bool, request: pytest.FixtureRequest
) -> None:
    options = {"redis_url": request.getfixturevalue("redis_url")} if shared else {}
    model = "tiny"  # the gateway passes the path on: the model server's own name
    with gateway(tmp_path, request_timeout_s=10.0, **options) as gw:
        put_route(gw, model, [{"id": "m", "url": model_server.url}], cache_enabled=True)
        hits = metric(gw, CACHE_HITS, model=model)  # one registry per process
        client = triton.InferenceServerClient(gw.removeprefix("http://"))
        x = np.random.default_rng(7).normal(size=(5, 4)).astype(np.float32)
        results = []
        for _ in range(2):
            features = triton.InferInput("features", [5, 4], "FP32")
            features.set_data_from_numpy(x)  # binary tensors in and out: tritonclient's default
            results.append(client.infer(model, [features]))
        client.close()
        assert metric(gw, CACHE_HITS, model=model) == hits + 1
    for result in results:
        np.testing.assert_allclose(result.as_numpy("logits"), expected_logits(x), rtol=1e-5, atol=1e-5)
        np.testing.assert_allclose(result.as_numpy("probabilities").sum(axis=1), np.ones(5), rtol=1e-5)


def test_the_same_bytes_without_the_binary_header_are_not_answered_from_the_cache(
    tmp_path: Path, model_server: Server
) -> None:
    x = np.arange(8, dtype=np.float32).reshape(2, 4)
    payload, header_length = binary_request(x)
    with gateway(tmp_path, request_timeout_s=10.0) as gw:
        put_route(gw, "tiny", [{"id": "m", "url": model_server.url}], cache_enabled=True)
        url = f"{gw}/v2/models/tiny/infer"
        hits = metric(gw, CACHE_HITS, model="tiny")  # one registry per process
        binary = httpx.post(url, content=payload, headers={"Inference-Header-Content-Length": str(header_length)})
        cached = httpx.post(url, content=payload, headers={"Inference-Header-Content-Length": str(header_length)})
        plain = httpx.post(url, content=payload, headers={"content-type": "application/json"})
        assert metric(gw, CACHE_HITS, model="tiny") == hits + 1
    assert binary.status_code == cached.status_code == 200
    assert cached.content == binary.content
    assert cached.headers["inference-header-content-length"] == binary.headers["inference-header-content-length"]
    assert cached.headers["content-type"] == "application/octet-stream"
    # read as JSON, the bytes are not a request: the model server says so, the cache does not answer for it
    assert plain.status_code == 400 and "inference-header-content-length" not in plain.headers
    assert "error" in plain.json()


async def test_redis_entries_keep_the_binary_header_and_junk_is_a_miss(redis_url: str) -> None:
    import redis.asyncio as redis

    cache = RedisResponseCache(redis_url, ttl_s=30)
    binary = CachedAnswer(200, "application/octet-stream", b'{"outputs":[]}\n\x00\x01\n', header_length=14)
    await cache.put("entry-binary", binary)
    await cache.put("entry-json", CachedAnswer(200, "application/json", b'{"outputs":[]}'))
    assert await cache.get("entry-binary") == binary
    assert await cache.get("entry-json") == CachedAnswer(200, "application/json", b'{"outputs":[]}', None)
    raw = redis.from_url(redis_url)
    await raw.set(RedisResponseCache.prefix + "entry-junk", b"200\napplication/json")  # a framing this code never wrote
    await raw.aclose()
    assert await cache.get("entry-junk") is None
    await cache.close()
