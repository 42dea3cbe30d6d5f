"""Projects at the gateway: a model is called only by callers holding a role in its project.

Real model server processes (one model in project `alpha`, one in `beta`), a real gateway with its
REST and gRPC fronts, tritonclient.grpc unmodified. A caller holding no role in a model's project
gets exactly the answer of a model that does not exist (REST 404 body, gRPC NOT_FOUND and message);
project-scoped inference tokens call their own project's models; installation-wide tokens call all.
"""

from __future__ import annotations

from collections.abc import Iterator

import httpx
import numpy as np
import pytest
import tritonclient.grpc as triton_grpc
from test_serving_grpc import TOKEN, GrpcServer, features, grpc_error, start_grpc_server
from test_serving_modelserver import expected_logits, put_artifact, tiny_model, wait_ready
from uvicorn_thread import running

from gallery_common.netutil import free_port
from gallery_common.projects import ProjectRecord
from gallery_deployer.gateway.app import create_app_for
from gallery_deployer.gateway.settings import GatewaySettings

ROOT = "root-admin"  # admin in every project
EVERYWHERE = "every-inference"  # inference in every project: what clients without projects hold
ALPHA = "alpha-inference"
ALPHA_ADMIN = "alpha-admin"
BETA = "beta-inference"
TOKENS = f"{ROOT}:admin,{EVERYWHERE}:inference,{ALPHA}:alpha:inference,{ALPHA_ADMIN}:alpha:admin,{BETA}:beta:inference"
X = np.ones((2, 4), np.float32)


def bearer(token: str) -> dict[str, str]:
    return {"authorization": f"Bearer {token}"}


@pytest.fixture(scope="module")
def servers(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, GrpcServer]]:
    """`ours` (alpha's model) and `theirs` (beta's): the same tiny network under two names."""
    home = tmp_path_factory.mktemp("gallery")
    started = {
        name: start_grpc_server(put_artifact(home, f"{name}/1/model.onnx", tiny_model()), "--model", name)
        for name in ("ours", "theirs")
    }
    try:
        for server in started.values():
            wait_ready(server.server)
        yield started
    finally:
        for server in started.values():
            assert server.server.stop() == 0


@pytest.fixture(scope="module")
def gateway(tmp_path_factory: pytest.TempPathFactory, servers: dict[str, GrpcServer]) -> Iterator[tuple[str, str]]:
    """The gateway (REST base, gRPC address) with projects alpha and beta, `ours` routed in alpha and
    `theirs` in beta (put by the installation-wide admin, as the deployer's routes bucket would)."""
    settings = GatewaySettings(
        home=tmp_path_factory.mktemp("gateway"),
        port=free_port(),
        grpc_port=free_port(),
        grpc_forward="grpc",
        api_tokens=TOKENS,  # type: ignore[arg-type]
        model_server_token=TOKEN,  # type: ignore[arg-type]
        sample_rate=0.0,
    )
    directory = settings.project_directory()  # without a bus nothing follows the bucket: the test fills it
    for name in ("alpha", "beta"):
        directory.put(ProjectRecord.new(name, f"team {name}", "test", {}))
    with running(create_app_for(settings, with_bus=False), settings.port):
        base = f"http://127.0.0.1:{settings.port}"
        for model, project in (("ours", "alpha"), ("theirs", "beta")):
            backend = {"id": "only", "url": servers[model].server.url, "grpc": servers[model].grpc, "version": "1"}
            route = {"project": project, "backends": [backend]}
            answer = httpx.put(f"{base}/admin/routes/{model}", json=route, headers=bearer(ROOT))
            assert answer.status_code == 200, answer.text
        yield base, f"127.0.0.1:{settings.grpc_port}"


def infer_json() -> dict[str, object]:
    return {"inputs": [{"name": "features", "datatype": "FP32", "shape": [2, 4], "data": X.ravel().tolist()}]}


def rest_calls(base: str, model: str, token: str) -> list[httpx.Response]:
    """Inference, versioned inference, explain, metadata and readiness of `model` over REST."""
    auth = bearer(token)
    return [
        httpx.post(f"{base}/v2/models/{model}/infer", json=infer_json(), headers=auth),
        httpx.post(f"{base}/v2/models/{model}/versions/1/infer", json=infer_json(), headers=auth),
        httpx.post(f"{base}/v2/models/{model}/explain", json=infer_json(), headers=auth),
        httpx.get(f"{base}/v2/models/{model}", headers=auth),
        httpx.get(f"{base}/v2/models/{model}/ready", headers=auth),
        httpx.get(f"{base}/v2/models/{model}/versions/1/ready", headers=auth),
    ]


def test_another_projects_model_answers_over_rest_as_a_model_that_does_not_exist(gateway: tuple[str, str]) -> None:
    base, _ = gateway
    hidden = rest_calls(base, "theirs", ALPHA)
    missing = [
        # the same calls for a name with no route at all, renamed so the bodies can be compared
        httpx.Response(r.status_code, content=r.content.replace(b"'nosuch'", b"'theirs'"))
        for r in rest_calls(base, "nosuch", ALPHA)
    ]
    assert [r.status_code for r in hidden] == [404] * 6
    assert [r.content for r in hidden] == [r.content for r in missing]
    assert b"theirs" in hidden[0].content and b"beta" not in hidden[0].content


def test_a_project_scoped_token_calls_its_own_projects_model(gateway: tuple[str, str]) -> None:
    base, _ = gateway
    answer = httpx.post(f"{base}/v2/models/ours/infer", json=infer_json(), headers=bearer(ALPHA))
    assert answer.status_code == 200, answer.text
    logits = next(o for o in answer.json()["outputs"] if o["name"] == "logits")
    np.testing.assert_allclose(np.array(logits["data"]).reshape(2, 3), expected_logits(X), rtol=1e-5)
    assert httpx.get(f"{base}/v2/models/ours/ready", headers=bearer(ALPHA)).json()["ready"] is True
    # and beta's token calls beta's model, not alpha's
    assert httpx.post(f"{base}/v2/models/theirs/infer", json=infer_json(), headers=bearer(BETA)).status_code == 200
    assert httpx.post(f"{base}/v2/models/ours/infer", json=infer_json(), headers=bearer(BETA)).status_code == 404


def test_an_installation_wide_token_calls_every_projects_models(gateway: tuple[str, str]) -> None:
    base, address = gateway
    for model in ("ours", "theirs"):
        answer = httpx.post(f"{base}/v2/models/{model}/infer", json=infer_json(), headers=bearer(EVERYWHERE))
        assert answer.status_code == 200, answer.text
    client = triton_grpc.InferenceServerClient(address)
    for model in ("ours", "theirs"):
        logits = client.infer(model, [features(X)], headers=bearer(EVERYWHERE)).as_numpy("logits")
        np.testing.assert_allclose(logits, expected_logits(X), rtol=1e-5)
    client.close()


def test_another_projects_model_answers_over_grpc_as_a_model_that_does_not_exist(gateway: tuple[str, str]) -> None:
    _, address = gateway
    client = triton_grpc.InferenceServerClient(address)
    auth = bearer(ALPHA)
    np.testing.assert_allclose(
        client.infer("ours", [features(X)], headers=auth).as_numpy("logits"), expected_logits(X), rtol=1e-5
    )
    calls: list[tuple[object, tuple[object, ...]]] = [
        (client.infer, ([features(X)],)),
        (client.get_model_metadata, ()),
        (client.is_model_ready, ()),
    ]
    for call, rest in calls:
        hidden = grpc_error(call, "theirs", *rest, headers=auth)
        missing = grpc_error(call, "nosuch", *rest, headers=auth)
        assert hidden.status() == missing.status() == "StatusCode.NOT_FOUND"
        assert hidden.message() == missing.message().replace("'nosuch'", "'theirs'")
    assert client.infer("theirs", [features(X)], headers=bearer(BETA)).as_numpy("logits").shape == (2, 3)
    client.close()


def test_the_gateways_routing_table_shows_and_changes_only_routes_of_projects_the_caller_administers(
    gateway: tuple[str, str], servers: dict[str, GrpcServer]
) -> None:
    base, _ = gateway
    assert set(httpx.get(f"{base}/admin/routes", headers=bearer(ALPHA_ADMIN)).json()) == {"ours"}
    assert set(httpx.get(f"{base}/admin/routes", headers=bearer(ROOT)).json()) == {"ours", "theirs"}
    hidden = httpx.get(f"{base}/admin/routes/theirs", headers=bearer(ALPHA_ADMIN))
    missing = httpx.get(f"{base}/admin/routes/nosuch", headers=bearer(ALPHA_ADMIN))
    assert hidden.status_code == missing.status_code == 404
    assert hidden.json()["error"] == missing.json()["error"].replace("'nosuch'", "'theirs'")
    # alpha's admin can neither take beta's route over nor put a route into beta
    backend = {"id": "only", "url": servers["ours"].server.url, "version": "1"}
    taken = httpx.put(
        f"{base}/admin/routes/theirs", json={"project": "alpha", "backends": [backend]}, headers=bearer(ALPHA_ADMIN)
    )
    assert taken.status_code == 404
    placed = httpx.put(
        f"{base}/admin/routes/fresh", json={"project": "beta", "backends": [backend]}, headers=bearer(ALPHA_ADMIN)
    )
    assert placed.status_code == 404 and "project 'beta' not found" in placed.text
    assert httpx.delete(f"{base}/admin/routes/theirs", headers=bearer(ALPHA_ADMIN)).status_code == 404
    assert httpx.get(f"{base}/admin/routes/theirs", headers=bearer(ROOT)).json()["project"] == "beta"
    # its own project's routes it still reads
    assert httpx.get(f"{base}/admin/routes/ours", headers=bearer(ALPHA_ADMIN)).json()["project"] == "alpha"
