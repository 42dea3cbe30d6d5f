"""The gallery's proxy `/api/<service>/...` against real apps on loopback ports: what it forwards, the
statuses and bodies it keeps, and what it refuses before anything reaches a service."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from gallery_fakes import INFERENCE, READER, WRITER, Scene, Stack, gallery_stack


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


@pytest.fixture
def scene() -> Scene:
    return Scene()


@pytest.fixture
def stack(scene: Scene, tmp_path: Path) -> Iterator[Stack]:
    with gallery_stack(scene, tmp_path, down=("trainer",), proxy_max_response_bytes=4096) as running:
        yield running


@pytest.fixture
def http(stack: Stack) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=stack.gallery, timeout=30) as client:
        yield client


def test_a_read_reaches_the_service_with_its_path_query_and_token(http: httpx.Client, scene: Scene) -> None:
    answer = http.get(
        "/api/registry/echo/models/digits%20mlp/versions",
        params=[("tag", "team=vision"), ("tag", "stage"), ("q", "a&b")],
        headers={**bearer(READER), "Accept": "application/json", "Cookie": "session=1"},
    )
    assert answer.status_code == 200
    echoed = answer.json()
    assert echoed["method"] == "GET"
    assert echoed["path"] == "/echo/models/digits mlp/versions"
    assert echoed["query"] == "tag=team%3Dvision&tag=stage&q=a%26b", "the query travels as the browser sent it"
    assert echoed["authorization"] == f"Bearer {READER}"
    assert echoed["accept"] == "application/json"
    assert echoed["cookie"] is None, "nothing but the listed headers travels"
    assert answer.headers["etag"] == '"v1"'
    assert "x-internal" not in answer.headers


def test_a_write_keeps_its_body_content_type_and_the_services_status(http: httpx.Client, scene: Scene) -> None:
    body = json.dumps({"version": 3, "reason": "better"})
    answer = http.put(
        "/api/registry/echo/models/m/aliases/production?status=201",
        content=body,
        headers={**bearer(WRITER), "Content-Type": "application/json"},
    )
    assert answer.status_code == 201
    assert answer.json()["method"] == "PUT" and answer.json()["body"] == body
    assert answer.json()["content_type"] == "application/json"

    refused = http.post("/api/registry/echo/models", json={"name": "m"}, headers=bearer(READER))
    assert refused.status_code == 403, "the service judges a write by the caller's own token"
    assert "needs the writer role" in refused.json()["error"]

    conflict = http.put("/api/registry/conflict", headers=bearer(WRITER))
    assert conflict.status_code == 409
    assert conflict.json() == {"error": "that version already has an onnx artifact with another sha256"}
    missing = http.get("/api/deployer/api/v1/deployments/nothing", headers=bearer(READER))
    assert missing.status_code == 404 and "never been deployed" in missing.json()["error"]
    for status in (200, 204, 302, 418, 500):
        kept = http.delete(f"/api/monitor/echo/x?status={status}", headers=bearer(WRITER))
        assert kept.status_code == status


def test_plain_text_and_heads_pass_as_they_are(http: httpx.Client) -> None:
    text = http.get("/api/registry/text", headers=bearer(READER))
    assert text.status_code == 200 and text.text == "plain words"
    assert text.headers["content-type"] == "text/plain; charset=utf-8"
    head = http.head("/api/registry/echo/anything", headers=bearer(READER))
    assert head.status_code == 200 and head.content == b""


def test_without_a_valid_reader_token_nothing_is_proxied(http: httpx.Client, scene: Scene) -> None:
    missing = http.get("/api/registry/echo/models")
    assert missing.status_code == 401 and missing.headers["www-authenticate"] == "Bearer"
    assert "missing bearer token" in missing.json()["error"]
    assert http.post("/api/registry/echo/models", headers=bearer("guess"), json={}).status_code == 401
    below = http.get("/api/gateway/v2/models/digits-mlp", headers=bearer(INFERENCE))
    assert below.status_code == 403 and "needs the reader role" in below.json()["error"]
    for route in (
        "/api/gallery/catalogue",
        "/api/gallery/models/m/lineage",
        "/api/gallery/models/m/versions/1/examples",
    ):
        assert http.get(route).status_code == 401, route
    assert scene.seen == [], "no service saw any of these"


def test_a_service_that_does_not_answer_is_a_502_naming_it(http: httpx.Client, stack: Stack) -> None:
    down = http.get("/api/trainer/api/v1/runs", headers=bearer(READER))
    assert down.status_code == 502
    assert down.json() == {"error": f"the trainer at {stack.services['trainer']} does not answer"}


def test_an_unknown_service_is_a_404(http: httpx.Client) -> None:
    unknown = http.get("/api/postgres/anything", headers=bearer(READER))
    assert unknown.status_code == 404
    assert "reaches no service 'postgres'" in unknown.json()["error"]


def test_an_answer_over_the_limit_does_not_come_through(http: httpx.Client) -> None:
    fits = http.get("/api/registry/bytes/4096", headers=bearer(READER))
    assert fits.status_code == 200 and len(fits.content) == 4096
    over = http.get("/api/registry/bytes/4097", headers=bearer(READER))
    assert over.status_code == 502 and "GALLERY_PROXY_MAX_RESPONSE_BYTES" in over.json()["error"]


def test_without_tokens_configured_the_gallery_opens_and_forwards_no_token(scene: Scene, tmp_path: Path) -> None:
    with gallery_stack(scene, tmp_path, tokens="") as running, httpx.Client(base_url=running.gallery) as http:
        echoed = http.get("/api/monitor/echo/api/v1/models").json()
        assert echoed["authorization"] is None and echoed["path"] == "/echo/api/v1/models"
