"""The registry client: bearer token, the registry's errors as domain errors, retries of outages only."""

from __future__ import annotations

import re

import httpx
import pytest

from gallery_common.errors import Conflict, InvalidRequest, NotFound, Unavailable
from gallery_common.events import ArtifactRef
from gallery_common.registry_client import RegistryClient

REF = ArtifactRef(uri="file:///a/int8.onnx", sha256="b" * 64, size=10, format="onnx")
ATTACHED = {**REF.model_dump(), "role": "int8", "created_at": "2024-01-01T00:00:00Z"}
VERSION = {
    "name": "iris",
    "version": 3,
    "semver": "3.0.0",
    "status": "validated",
    "description": None,
    "signature": None,
    "metrics": {"accuracy": 0.9},
    "tags": {},
    "lineage": {},
    "run_id": "run-1",
    "source_event_id": None,
    "source": None,
    "task": "classification",
    "class_names": ["a", "b"],
    "evaluation_report": None,
    "rejection_reasons": None,
    "artifacts": {"int8": ATTACHED},
    "aliases": ["production"],
    "created_at": "2024-01-01T00:00:00Z",
    "updated_at": "2024-01-01T00:00:00Z",
}


def client_for(handler: httpx.MockTransport, token: str | None = "tok") -> RegistryClient:
    return RegistryClient("http://registry", token, retry_delays=(0.0, 0.0), transport=handler)


def test_attach_sends_the_ref_with_the_token() -> None:
    seen: list[httpx.Request] = []

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        return httpx.Response(200, json=ATTACHED)

    attached = client_for(httpx.MockTransport(handler)).attach_artifact("iris", 3, "int8", REF)
    assert attached.ref == REF and attached.role == "int8"
    (request,) = seen
    assert request.method == "PUT" and request.url.path == "/api/v1/models/iris/versions/3/artifacts/int8"
    assert request.headers["Authorization"] == "Bearer tok"
    assert request.read() == b'{"uri":"file:///a/int8.onnx","sha256":"' + b"b" * 64 + b'","size":10,"format":"onnx"}'


@pytest.mark.parametrize(
    ("status", "error", "message"),
    [
        (404, NotFound, "registry: iris:3 not found (version 3 of iris not found)"),
        (409, Conflict, "registry refused iris:3: another sha256"),
        (422, InvalidRequest, "registry refused iris:3: another sha256"),
        (403, Unavailable, "set GALLERY_REGISTRY_TOKEN"),
    ],
)
def test_refusals_become_domain_errors_without_retries(status: int, error: type[Exception], message: str) -> None:
    calls = []

    def handler(request: httpx.Request) -> httpx.Response:
        calls.append(request)
        body = "version 3 of iris not found" if status == 404 else "another sha256"
        return httpx.Response(status, json={"error": body})

    with pytest.raises(error, match=re.escape(message)):
        client_for(httpx.MockTransport(handler)).get_version("iris", 3)
    assert len(calls) == 1


def test_an_outage_is_retried_until_the_registry_answers() -> None:
    calls: list[httpx.Request] = []

    def handler(request: httpx.Request) -> httpx.Response:
        calls.append(request)
        if len(calls) == 1:
            raise httpx.ConnectError("refused")
        if len(calls) == 2:
            return httpx.Response(503, json={"error": "starting"})
        return httpx.Response(200, json=VERSION)

    version = client_for(httpx.MockTransport(handler)).get_version("iris", 3)
    assert (version.version, version.class_names, version.artifact("int8")) == (3, ["a", "b"], REF)
    assert len(calls) == 3


def test_an_answer_that_is_not_a_version_is_unavailable_and_not_retried() -> None:
    calls: list[httpx.Request] = []

    def handler(request: httpx.Request) -> httpx.Response:
        calls.append(request)
        return httpx.Response(200, json={"version": 3})

    with pytest.raises(Unavailable, match=r"registry answered iris:3 with something that is not a VersionPublic"):
        client_for(httpx.MockTransport(handler)).get_version("iris", 3)
    assert len(calls) == 1


def test_a_registry_that_stays_down_is_unavailable_with_the_reason() -> None:
    def handler(request: httpx.Request) -> httpx.Response:
        raise httpx.ConnectError("connection refused")

    with pytest.raises(Unavailable, match=r"registry at http://registry unreachable .*connection refused"):
        client_for(httpx.MockTransport(handler)).get_version("iris", 3)
