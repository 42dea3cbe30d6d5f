"""OIDC bearer tokens on the inference path: an application's client-credentials token through the
gateway (REST and gRPC) to a model server that knows only the gateway's own token, or only OIDC tokens
(the gateway then calls it as its own OIDC client).
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import orjson
import pytest
import tritonclient.grpc as triton_grpc
from fastapi import FastAPI
from oidc_provider import RunningProvider, running_provider
from onnx import TensorProto, helper, numpy_helper
from prometheus_client import CollectorRegistry
from tritonclient.utils import InferenceServerException
from uvicorn_thread import served

from gallery_common.netutil import free_port
from gallery_deployer.gateway.app import create_app_for
from gallery_deployer.gateway.settings import GatewaySettings
from gallery_deployer.modelserver.app import create_app as create_model_server
from gallery_deployer.modelserver.model import load_model
from gallery_deployer.modelserver.settings import ModelServerSettings

W = np.arange(12, dtype=np.float32).reshape(4, 3) / 10
SERVICE = {"grant_types": ["client_credentials"], "groups": ["ml-apps"]}
CLIENTS = [
    {"client_id": "shop-app", "client_secret": "shop-secret", **SERVICE},
    {"client_id": "crm-app", "client_secret": "crm-secret", "audience": "crm-api", **SERVICE},
    # the gateway's own client: its group is what model servers map to `inference`
    {
        "client_id": "gateway",
        "client_secret": "gateway-secret",
        "grant_types": ["client_credentials"],
        "groups": ["gallery-gateways"],
    },
]


def tiny_model() -> bytes:
    """logits = features @ W (FP32 [-1, 4] → [-1, 3])."""
    graph = helper.make_graph(
        [helper.make_node("MatMul", ["features", "W"], ["logits"])],
        "tiny",
        [helper.make_tensor_value_info("features", TensorProto.FLOAT, ["batch", 4])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["batch", 3])],
        initializer=[numpy_helper.from_array(W, "W")],
    )
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8).SerializeToString()


def infer_body(rows: list[list[float]]) -> bytes:
    return orjson.dumps({"inputs": [{"name": "features", "datatype": "FP32", "shape": [len(rows), 4], "data": rows}]})


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


@pytest.fixture
def provider(tmp_path: Path) -> Iterator[RunningProvider]:
    with running_provider(tmp_path, users=[], clients=CLIENTS) as running:
        yield running


def model_server_settings(tmp_path: Path, **identity: Any) -> ModelServerSettings:
    """A model server of the tiny model, checking callers as `identity` (its token settings) says."""
    data = tiny_model()
    path = tmp_path / "artifacts" / "tiny.onnx"
    path.parent.mkdir(parents=True)
    path.write_bytes(data)
    return ModelServerSettings(
        home=tmp_path,
        model_name="tiny",
        model_version="1",
        artifact_uri=path.as_uri(),
        artifact_sha256=hashlib.sha256(data).hexdigest(),
        serve_nats=False,
        intra_op_threads=1,
        **identity,
    )


@contextmanager
def routed(server_settings: ModelServerSettings, gateway_app: FastAPI) -> Iterator[tuple[str, str]]:
    """The model server and the gateway (admin token `atok`) serving, the route to the model set; yields
    the gateway's and the model server's base URLs."""
    model_server = create_model_server(server_settings, load_model(server_settings), CollectorRegistry())
    with served(model_server) as server_port, served(gateway_app) as port:
        base, backend = f"http://127.0.0.1:{port}", f"http://127.0.0.1:{server_port}"
        route = {"backends": [{"id": "a", "url": backend}]}
        assert httpx.put(f"{base}/admin/routes/tiny", json=route, headers=bearer("atok")).status_code == 200
        yield base, backend


@pytest.fixture
def gateway(tmp_path: Path, provider: RunningProvider) -> Iterator[str]:
    server_settings = model_server_settings(tmp_path, api_tokens="gateway-identity:inference")
    gateway_settings = GatewaySettings(
        home=tmp_path,
        api_tokens="atok:admin",  # type: ignore[arg-type]
        model_server_token="gateway-identity",  # type: ignore[arg-type]
        oidc_issuer=provider.issuer,
        oidc_audience=provider.audience,
        oidc_group_roles="ml-apps=inference",  # type: ignore[arg-type]
        sample_rate=0.0,
    )
    with routed(server_settings, create_app_for(gateway_settings, with_bus=False)) as (base, _):
        yield base


def test_an_application_infers_through_the_gateway_with_its_client_credentials_token(
    gateway: str, provider: RunningProvider
) -> None:
    token = provider.client_credentials_token("shop-app", "shop-secret")
    for _ in range(3):  # the first verifies the signature, the others come from the verified-token cache
        answer = httpx.post(
            f"{gateway}/v2/models/tiny/infer", content=infer_body([[1, 2, 3, 4]]), headers=bearer(token)
        )
        assert answer.status_code == 200, answer.text
        np.testing.assert_allclose(
            answer.json()["outputs"][0]["data"], (np.array([[1, 2, 3, 4]]) @ W).ravel(), rtol=1e-6
        )
    routes = httpx.put(f"{gateway}/admin/routes/tiny", json={"backends": []}, headers=bearer(token))
    assert routes.status_code == 403
    assert routes.json() == {"error": "this request needs the admin role; your token has inference"}


def test_the_gateway_refuses_a_token_for_another_audience_or_a_forged_one(
    gateway: str, provider: RunningProvider
) -> None:
    foreign = provider.client_credentials_token("crm-app", "crm-secret")  # same issuer, meant for another API
    answer = httpx.post(f"{gateway}/v2/models/tiny/infer", content=infer_body([[1, 2, 3, 4]]), headers=bearer(foreign))
    assert answer.status_code == 401 and answer.headers["www-authenticate"] == "Bearer"
    assert answer.json()["error"].startswith("invalid OIDC token: wrong audience")
    assert foreign not in answer.text
    header, payload, _ = provider.client_credentials_token("shop-app", "shop-secret").split(".")
    unsigned = f"{header}.{payload}.{'A' * 342}"
    answer = httpx.post(f"{gateway}/v2/models/tiny/infer", content=infer_body([[1, 2, 3, 4]]), headers=bearer(unsigned))
    assert answer.status_code == 401 and answer.json()["error"].startswith("invalid OIDC token: bad signature")


def test_the_gateway_calls_model_servers_as_its_own_oidc_client_and_renews_a_refused_token(
    tmp_path: Path, provider: RunningProvider
) -> None:
    oidc = {"oidc_issuer": provider.issuer, "oidc_audience": provider.audience}
    # the model server knows no static token: only OIDC tokens, the gateway's group meaning `inference`
    server_settings = model_server_settings(tmp_path, oidc_group_roles="gallery-gateways=inference", **oidc)
    gateway_settings = GatewaySettings(
        home=tmp_path,
        api_tokens="atok:admin,app-token:inference",  # type: ignore[arg-type]
        oidc_client_id="gateway",
        oidc_client_secret="gateway-secret",  # type: ignore[arg-type]
        oidc_group_roles="ml-apps=inference",  # type: ignore[arg-type]
        sample_rate=0.0,
        grpc_port=free_port(),
        **oidc,
    )
    gateway_app = create_app_for(gateway_settings, with_bus=False)
    with routed(server_settings, gateway_app) as (base, backend):
        body = infer_body([[1, 2, 3, 4]])
        assert httpx.post(f"{backend}/v2/models/tiny/infer", content=body).status_code == 401  # it does check
        answer = httpx.post(f"{base}/v2/models/tiny/infer", content=body, headers=bearer("app-token"))
        assert answer.status_code == 200, answer.text
        # the token the gateway holds goes bad (revoked at the issuer, say): the model server refuses it,
        # the gateway fetches another and sends the request once more
        gateway = gateway_app.state.resources.core
        gateway.identity.header = "Bearer revoked"
        gateway.client.set_default("authorization", "Bearer revoked")
        answer = httpx.post(f"{base}/v2/models/tiny/infer", content=body, headers=bearer("app-token"))
        assert answer.status_code == 200, answer.text
        assert gateway.identity.header not in (None, "Bearer revoked")
        np.testing.assert_allclose(
            answer.json()["outputs"][0]["data"], (np.array([[1, 2, 3, 4]]) @ W).ravel(), rtol=1e-6
        )
        # the same over the gateway's gRPC front, tritonclient.grpc carrying an application's OIDC token
        client = triton_grpc.InferenceServerClient(f"127.0.0.1:{gateway_settings.grpc_port}")
        tensor = triton_grpc.InferInput("features", [1, 4], "FP32")
        tensor.set_data_from_numpy(np.array([[1, 2, 3, 4]], np.float32))
        token = provider.client_credentials_token("shop-app", "shop-secret")
        result = client.infer("tiny", [tensor], headers={"authorization": f"Bearer {token}"})  # gRPC: lower case
        np.testing.assert_allclose(result.as_numpy("logits"), np.array([[1, 2, 3, 4]]) @ W, rtol=1e-6)
        foreign = provider.client_credentials_token("crm-app", "crm-secret")  # meant for another API
        with pytest.raises(InferenceServerException, match="wrong audience") as refused:
            client.infer("tiny", [tensor], headers={"authorization": f"Bearer {foreign}"})
        assert refused.value.status() == "StatusCode.UNAUTHENTICATED"


def test_a_model_server_refusing_the_gateways_own_token_is_a_502_naming_it_not_the_clients_401(
    tmp_path: Path,
) -> None:
    server_settings = model_server_settings(tmp_path, api_tokens="gateway-identity:inference")
    gateway_settings = GatewaySettings(
        home=tmp_path,
        api_tokens="atok:admin,app-token:inference",  # type: ignore[arg-type]
        model_server_token="an-old-identity",  # type: ignore[arg-type]  # not the one the model server knows
        sample_rate=0.0,
    )
    with routed(server_settings, create_app_for(gateway_settings, with_bus=False)) as (base, _):
        answer = httpx.post(
            f"{base}/v2/models/tiny/infer", content=infer_body([[1, 2, 3, 4]]), headers=bearer("app-token")
        )
        assert answer.status_code == 502, answer.text
        assert (
            answer.json()["error"]
            == "no backend of model 'tiny' could answer: a: refused the gateway's own credentials (401)"
        )
