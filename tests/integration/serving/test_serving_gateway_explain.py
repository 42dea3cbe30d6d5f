"""Explanations through the gateway: the same routes, split, stickiness and token as inference, but never
cached, never counted as inference, and a busy model server's 503 and Retry-After reach the client
without opening the circuit breaker that guards its inference traffic."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import ExitStack

import httpx
import pytest
from explain_models import TABLE, explain_body, model_server, scraped, table_classifier, table_explainer
from prometheus_client import REGISTRY
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route
from uvicorn_thread import served

from gallery_deployer.gateway.app import create_app_for
from gallery_deployer.gateway.settings import GatewaySettings

INFERENCE = {"Authorization": "Bearer itok"}
ADMIN = {"Authorization": "Bearer atok"}
SERVED = "modelgallery_explain_requests_total"  # by the model server
BODY = explain_body("features", TABLE[:1], nsamples=40)


def busy_backend() -> Starlette:
    """A model server whose explain queue is always full while its inference answers (model `busy`), and
    one whose batching queue is always full (model `full`)."""

    async def explain(_: Request) -> Response:
        return JSONResponse({"error": "8 explain requests are already waiting"}, 503, headers={"Retry-After": "7"})

    async def infer(_: Request) -> Response:
        return JSONResponse({"model_name": "busy", "outputs": []})

    async def full(_: Request) -> Response:
        return JSONResponse({"error": "256 requests are already queued"}, 503, headers={"Retry-After": "2"})

    return Starlette(
        routes=[
            Route("/v2/models/busy/explain", explain, methods=["POST"]),
            Route("/v2/models/busy/infer", infer, methods=["POST"]),
            Route("/v2/models/full/infer", full, methods=["POST"]),
        ]
    )


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, str]]:
    home = tmp_path_factory.mktemp("why")
    settings = GatewaySettings(
        home=home,
        api_tokens="itok:inference,atok:admin",  # type: ignore[arg-type]
        sample_rate=0.0,
    )
    with ExitStack() as running:
        urls = {
            "v1": running.enter_context(model_server(home, "why", "1", table_classifier(), table_explainer())),
            "v2": running.enter_context(model_server(home, "why", "2", table_classifier(), table_explainer())),
            "old": running.enter_context(model_server(home, "why", "0", table_classifier(), None)),
            "busy": f"http://127.0.0.1:{running.enter_context(served(busy_backend()))}",
        }
        gateway = f"http://127.0.0.1:{running.enter_context(served(create_app_for(settings, with_bus=False)))}"
        routes = {
            "why": {
                "backends": [
                    {"id": "why-v1", "url": urls["v1"], "version": "1", "weight": 50},
                    {"id": "why-v2", "url": urls["v2"], "version": "2", "weight": 50, "role": "canary"},
                    {"id": "why-v0", "url": urls["old"], "version": "0", "weight": 0, "fallback_order": 1},
                ],
                "policy": {"cache_enabled": True},
            },
            "busy": {"backends": [{"id": "busy-a", "url": urls["busy"]}]},
            "full": {"backends": [{"id": "full-a", "url": urls["busy"]}]},
        }
        for model, route in routes.items():
            assert httpx.put(f"{gateway}/admin/routes/{model}", json=route, headers=ADMIN).status_code == 200
        yield {"gateway": gateway, **urls}


def explain(gateway: str, path: str, body: bytes = BODY, **headers: str) -> httpx.Response:
    return httpx.post(f"{gateway}/v2/models/{path}", content=body, headers={**INFERENCE, **headers}, timeout=120)


def sample(name: str, **labels: str) -> float:
    return REGISTRY.get_sample_value(name, labels) or 0.0


def test_an_explanation_goes_to_the_version_it_names_and_needs_a_token(stack: dict[str, str]) -> None:
    gateway = stack["gateway"]
    for version in ("1", "2"):
        answer = explain(gateway, f"why/versions/{version}/explain")
        assert answer.status_code == 200, answer.text
        assert answer.json()["model_version"] == version
    no_explainer = explain(gateway, "why/versions/0/explain")
    assert no_explainer.status_code == 404
    assert "has no explainer data" in no_explainer.json()["error"]
    assert httpx.post(f"{gateway}/v2/models/why/explain", content=BODY).status_code == 401
    assert explain(gateway, "nobody/explain").status_code == 404


def test_a_session_gets_its_explanations_from_the_version_that_answers_its_inference(stack: dict[str, str]) -> None:
    gateway = stack["gateway"]
    seen = set()
    for row, session in enumerate(("ada", "bob", "cy", "dee", "eve", "fay")):
        sticky = {"x-gallery-session": session}
        body = explain_body("features", TABLE[row : row + 1], nsamples=40)  # another row: no cached answer
        inferred = httpx.post(f"{gateway}/v2/models/why/infer", content=body, headers={**INFERENCE, **sticky})
        assert inferred.status_code == 200, inferred.text
        explained = explain(gateway, "why/explain", body, **sticky)
        assert explained.status_code == 200, explained.text
        assert explained.json()["model_version"] == inferred.json()["model_version"], session
        seen.add(explained.json()["model_version"])
    assert seen == {"1", "2"}  # the canary's share explains too


def test_explanations_are_neither_cached_nor_counted_as_inference(stack: dict[str, str]) -> None:
    gateway, v2 = stack["gateway"], stack["v2"]
    computed = scraped(v2, SERVED, outcome="ok")
    infer_attempts = sample("modelgallery_gateway_requests_total", model="why", backend="why-v2", outcome="ok")
    explained = sample("modelgallery_gateway_explain_requests_total", model="why", backend="why-v2", outcome="ok")
    hits = sample("modelgallery_gateway_cache_hits_total", model="why")

    first = explain(gateway, "why/versions/2/explain")
    again = explain(gateway, "why/versions/2/explain")

    assert first.status_code == again.status_code == 200 and first.content == again.content
    assert scraped(v2, SERVED, outcome="ok") == computed + 2  # both reached the model server
    assert sample("modelgallery_gateway_cache_hits_total", model="why") == hits
    assert sample("modelgallery_gateway_requests_total", model="why", backend="why-v2", outcome="ok") == infer_attempts
    assert sample("modelgallery_gateway_explain_requests_total", model="why", backend="why-v2", outcome="ok") == (
        explained + 2
    )


def test_a_busy_model_server_passes_its_retry_after_and_keeps_its_inference(stack: dict[str, str]) -> None:
    gateway = stack["gateway"]
    for _ in range(8):  # more than the breaker's 5 consecutive failures
        busy = explain(gateway, "busy/explain")
        assert busy.status_code == 503 and busy.headers["Retry-After"] == "7"
        assert busy.json() == {"error": "8 explain requests are already waiting"}
    inferred = httpx.post(f"{gateway}/v2/models/busy/infer", content=BODY, headers=INFERENCE)
    assert inferred.status_code == 200, inferred.text  # the breaker is still closed


def test_an_overloaded_model_servers_retry_after_reaches_an_inference_client(stack: dict[str, str]) -> None:
    inferred = httpx.post(f"{stack['gateway']}/v2/models/full/infer", content=BODY, headers=INFERENCE)
    assert inferred.status_code == 503 and inferred.headers["Retry-After"] == "2"
    assert inferred.json() == {"error": "256 requests are already queued"}
