"""Auth, roles and the body-size limit, checked before a request body is read (gallery_common.access).

The refusals that matter here are the ones that must come *before* the body: a client that declares a
4 GB body, or streams one without a length, gets its answer while it has sent only a first chunk, and
the app behind the middleware has read none (or at most the limit) of it.
"""

from __future__ import annotations

import socket
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from fastapi import APIRouter, Request
from fastapi.testclient import TestClient
from pydantic import BaseModel
from raw_http import chunked, read_answer, request_head, send_first_chunk
from starlette.middleware import Middleware
from starlette.types import ASGIApp, Message, Receive, Scope, Send
from uvicorn_thread import served

from gallery_common.access import AccessPolicy
from gallery_common.app import create_app
from gallery_common.auth import requires
from gallery_common.deps import CallerDep
from gallery_common.settings import GallerySettings, Role, load_settings

TOKENS = "inf-tok:inference,read-tok:reader,write-tok:writer,admin-tok:admin"
LIMIT = 100_000
FOUR_GB = 4 * 1024**3


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


@dataclass
class Meter:
    """What the app behind AccessMiddleware saw: body bytes it read and handler calls."""

    body_bytes: int = 0
    calls: list[str] = field(default_factory=list)


class BodyMeter:
    """Inner middleware: counts the body bytes the app pulls through `receive`."""

    def __init__(self, app: ASGIApp, meter: Meter) -> None:
        self.app = app
        self.meter = meter

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        async def counting() -> Message:
            message = await receive()
            self.meter.body_bytes += len(message.get("body", b""))
            return message

        await self.app(scope, counting, send)


class Note(BaseModel):
    text: str


def router(meter: Meter) -> APIRouter:
    api = APIRouter(prefix="/api/v1")

    @api.post("/notes")
    def add_note(note: Note, caller: CallerDep) -> dict[str, str]:
        meter.calls.append("notes")
        return {"by": caller.role.value, "size": str(len(note.text))}

    @api.post("/raw")
    async def raw(request: Request) -> dict[str, int]:
        body = await request.body()
        meter.calls.append("raw")
        return {"size": len(body)}

    @api.put("/settings", dependencies=[requires(Role.admin)])
    def put_settings(note: Note) -> dict[str, str]:
        meter.calls.append("settings")
        return {"saved": note.text}

    @api.post("/predict", dependencies=[requires(Role.inference)])
    def predict(note: Note) -> dict[str, str]:
        meter.calls.append("predict")
        return {"echo": note.text}

    @api.get("/notes")
    def list_notes() -> list[str]:
        return []

    return api


def make_app(tmp_path: Path, meter: Meter, tokens: str | None = TOKENS, **overrides: Any) -> Any:
    settings = GallerySettings(
        home=tmp_path,
        service_name="notes",
        api_tokens=tokens or {},  # type: ignore[arg-type]
        max_body_bytes=LIMIT,
        **overrides,
    )
    return create_app(
        settings,
        title="notes",
        routers=[router(meter)],
        use_bus=False,
        inner_middleware=[Middleware(BodyMeter, meter=meter)],
    )


def test_a_4gb_body_without_a_token_is_refused_before_a_byte_is_read(tmp_path: Path) -> None:
    meter = Meter()
    with served(make_app(tmp_path, meter)) as port:
        answer = send_first_chunk(
            port, request_head("POST", "/api/v1/notes", length=FOUR_GB), b'{"text": "' + b"x" * 65_000
        )
    assert answer.status == 401
    assert answer.headers["www-authenticate"] == "Bearer"
    assert "missing bearer token" in answer.body["error"]
    # answered while 4 GB were still to come: nothing was read, parsed, or handled
    assert answer.seconds < 5
    assert meter.body_bytes == 0 and meter.calls == []


def test_a_declared_length_over_the_limit_is_413_at_once_even_for_a_writer(tmp_path: Path) -> None:
    meter = Meter()
    with served(make_app(tmp_path, meter)) as port:
        head = request_head("POST", "/api/v1/notes", token="write-tok", length=FOUR_GB)
        answer = send_first_chunk(port, head, b'{"text": "')
    assert answer.status == 413
    assert answer.body == {
        "error": f"the request body is over this service's limit of {LIMIT} bytes (GALLERY_MAX_BODY_BYTES)"
    }
    assert meter.body_bytes == 0 and meter.calls == []


def test_a_writer_on_an_admin_route_is_403_before_the_body(tmp_path: Path) -> None:
    meter = Meter()
    with served(make_app(tmp_path, meter)) as port:
        head = request_head("PUT", "/api/v1/settings", token="write-tok", length=LIMIT)
        answer = send_first_chunk(port, head, b'{"text": "')
    assert answer.status == 403
    assert answer.body == {"error": "this request needs the admin role; your token has writer"}
    assert meter.body_bytes == 0 and meter.calls == []


def test_a_chunked_body_is_cut_off_with_413_once_past_the_limit(tmp_path: Path) -> None:
    meter = Meter()
    chunk = b"y" * 65_536
    head = request_head("POST", "/api/v1/raw", token="write-tok")
    with served(make_app(tmp_path, meter)) as port, socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
        started = time.monotonic()
        # two chunks (128 KiB, past the 100 kB limit) and no final zero-length chunk: the body never ends
        sock.sendall(head.encode() + b"\r\n" + chunked(chunk, chunk))
        answer = read_answer(sock, started)
    assert answer.status == 413
    assert f"limit of {LIMIT} bytes" in answer.body["error"]
    assert meter.calls == [], "the handler never got the body"
    assert meter.body_bytes <= LIMIT, "the app never got a byte past the limit"


def test_a_body_within_the_limit_reaches_the_route_chunked_or_not(tmp_path: Path) -> None:
    meter = Meter()
    with TestClient(make_app(tmp_path, meter)) as client:
        note = client.post("/api/v1/notes", json={"text": "a" * 1000}, headers=bearer("write-tok"))
        assert note.json() == {"by": "writer", "size": "1000"}
        streamed = client.post("/api/v1/raw", content=iter([b"z" * 40_000, b"z" * 40_000]), headers=bearer("write-tok"))
        assert streamed.json() == {"size": 80_000}
        too_long = client.post("/api/v1/raw", content=iter([b"z" * 60_000] * 2), headers=bearer("write-tok"))
        assert too_long.status_code == 413 and "limit of 100000 bytes" in too_long.json()["error"]
    assert meter.calls == ["notes", "raw"]


def test_the_limit_holds_without_tokens_too(tmp_path: Path) -> None:
    meter = Meter()
    with TestClient(make_app(tmp_path, meter, tokens=None)) as client:
        refused = client.post("/api/v1/notes", json={"text": "a" * (LIMIT + 1)})
        assert refused.status_code == 413
        assert client.post("/api/v1/notes", json={"text": "short"}).json()["by"] == "admin"
    assert meter.calls == ["notes"]


def test_the_role_ladder(tmp_path: Path) -> None:
    assert [role.value for role in sorted(Role, key=lambda r: r.rank)] == ["inference", "reader", "writer", "admin"]
    meter = Meter()
    with TestClient(make_app(tmp_path, meter)) as client:
        note = {"text": "hi"}
        # inference: its own routes, nothing else (not even reads)
        assert client.post("/api/v1/predict", json=note, headers=bearer("inf-tok")).json() == {"echo": "hi"}
        read = client.get("/api/v1/notes", headers=bearer("inf-tok"))
        assert read.status_code == 403
        assert read.json() == {"error": "this request needs the reader role; your token has inference"}
        assert client.post("/api/v1/notes", json=note, headers=bearer("inf-tok")).status_code == 403
        # reader: reads, and what inference may
        assert client.get("/api/v1/notes", headers=bearer("read-tok")).status_code == 200
        assert client.post("/api/v1/predict", json=note, headers=bearer("read-tok")).status_code == 200
        assert client.post("/api/v1/notes", json=note, headers=bearer("read-tok")).status_code == 403
        # writer: writes, not admin routes; admin: everything
        assert client.post("/api/v1/notes", json=note, headers=bearer("write-tok")).status_code == 200
        assert client.put("/api/v1/settings", json=note, headers=bearer("write-tok")).status_code == 403
        assert client.put("/api/v1/settings", json=note, headers=bearer("admin-tok")).json() == {"saved": "hi"}
        # an unknown path is no way around the check: 401 before 404
        assert client.post("/api/v1/nowhere", json=note).status_code == 401
        assert client.post("/api/v1/nowhere", json=note, headers=bearer("write-tok")).status_code == 404
    assert meter.calls == ["predict", "predict", "notes", "settings"]


def test_a_token_can_have_the_inference_role() -> None:
    settings = load_settings(GallerySettings, api_tokens="t1:inference,t2:admin")
    assert settings.token_grants() == {"t1": (Role.inference, {}), "t2": (Role.admin, {})}


@pytest.mark.parametrize("path", ["/openapi.json", "/docs", "/redoc"])
def test_the_api_description_needs_a_reader_token(tmp_path: Path, path: str) -> None:
    with TestClient(make_app(tmp_path, Meter())) as client:
        refused = client.get(path)
        assert refused.status_code == 401 and refused.headers["www-authenticate"] == "Bearer"
        assert client.get(path, headers=bearer("inf-tok")).status_code == 403
        assert client.get(path, headers=bearer("read-tok")).status_code == 200
        # probes and scrapers still need nothing
        assert client.get("/healthz").status_code == 200
        assert client.get("/metrics").status_code == 200


def test_refusals_are_counted_under_the_route_they_were_meant_for(tmp_path: Path) -> None:
    with TestClient(make_app(tmp_path, Meter())) as client:
        client.put("/api/v1/settings", json={"text": "x"}, headers=bearer("write-tok"))
        metrics = client.get("/metrics").text
    assert 'route="/api/v1/settings",service="notes",status="403"' in metrics


class BrokenStore:
    def exists(self, key: str) -> bool:
        raise ConnectionError("s3://backup-bucket at 10.0.0.7:9000 refused access key AKIASECRET")


def test_readyz_gives_a_short_reason_and_logs_the_detail(tmp_path: Path, capfd: pytest.CaptureFixture[str]) -> None:
    app = make_app(tmp_path, Meter())
    with TestClient(app) as client:
        app.state.resources.store = BrokenStore()
        ready = client.get("/readyz")
    assert ready.status_code == 503
    assert ready.json()["checks"] == {"artifacts": "unreachable"}
    assert "AKIASECRET" not in ready.text and "10.0.0.7" not in ready.text
    logged = [line for line in capfd.readouterr().err.splitlines() if "readiness check failed" in line]
    assert logged and "ConnectionError: s3://backup-bucket at 10.0.0.7:9000" in logged[0]


def test_the_policy_reads_roles_off_the_routes() -> None:
    policy = AccessPolicy([router(Meter())])
    settings_rule = policy.match("PUT", "/api/v1/settings")
    assert settings_rule is not None and settings_rule.needed("PUT") is Role.admin
    notes_rule = policy.match("POST", "/api/v1/notes")
    assert notes_rule is not None and notes_rule.needed("POST") is Role.writer
    assert policy.match("DELETE", "/api/v1/notes") is None
