"""`gallery audit list|export|verify` against a real registry and nats-server, as a user runs them."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
from pathlib import Path

import httpx
from uvicorn_thread import served

from gallery_common.audit import AuditAction, AuditChange
from gallery_common.audit_log import AUDIT_STREAM, AuditLog
from gallery_common.bus import EventBus
from gallery_common.nats_server import EmbeddedNats
from gallery_common.netutil import free_port
from gallery_registry.app import create_app_for
from gallery_registry.settings import RegistrySettings

GALLERY = Path(sys.executable).parent / "gallery"
ADMIN = "admin-token"


def gallery(home: Path, nats_url: str, registry_url: str, *args: str) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("GALLERY_")}
    env.update(
        GALLERY_HOME=str(home), GALLERY_NATS_URL=nats_url, GALLERY_REGISTRY_URL=registry_url,
        GALLERY_TOKEN=ADMIN, COLUMNS="250",
    )  # fmt: skip
    return subprocess.run([str(GALLERY), *args], env=env, capture_output=True, text=True, timeout=60, check=False)


def test_list_export_and_verify_what_the_registry_recorded(nats_server: EmbeddedNats, tmp_path: Path) -> None:
    settings = RegistrySettings(
        home=tmp_path / "registry", nats_url=nats_server.url, port=free_port(),
        api_tokens=f"{ADMIN}:admin",  # type: ignore[arg-type]
    )  # fmt: skip
    with served(create_app_for(settings), settings.port, ready_path="/readyz") as port:
        url = f"http://127.0.0.1:{port}"
        auth = {"Authorization": f"Bearer {ADMIN}"}
        with httpx.Client(base_url=url, headers=auth) as api:
            api.post("/api/v1/models", json={"name": "iris"}).raise_for_status()
            for _ in range(2):
                api.post("/api/v1/models/iris/versions", json={}).raise_for_status()
            api.put(
                "/api/v1/models/iris/aliases/production", json={"version": 2, "reason": "v2 wins"}
            ).raise_for_status()

        listed = gallery(tmp_path, nats_server.url, url, "audit", "list", "--model", "iris")
        assert listed.returncode == 0, listed.stderr
        lines = listed.stdout.splitlines()
        moved = next(line for line in lines if "alias_move" in line)
        assert "iris@production" in moved and "None → 2" in moved and "v2 wins" in moved and "admin-" in moved

        as_json = gallery(tmp_path, nats_server.url, url, "audit", "list", "--action", "registration", "--json")
        assert [r["target"] for r in json.loads(as_json.stdout)] == ["iris/2", "iris/1"]

        out = tmp_path / "audit.jsonl"
        exported = gallery(tmp_path, nats_server.url, url, "audit", "export", "-o", str(out))
        assert exported.returncode == 0, exported.stderr
        records = [json.loads(line) for line in out.read_text().splitlines()]
        assert [r["action"] for r in records] == ["registration", "registration", "alias_move"]

    # the check reads the stream itself: it needs no registry
    verified = gallery(tmp_path, nats_server.url, "http://127.0.0.1:9", "audit", "verify")
    assert verified.returncode == 0, verified.stderr
    assert verified.stdout.startswith("default: OK, records 1-3")


def test_verify_names_the_deleted_record(nats_server: EmbeddedNats, tmp_path: Path) -> None:
    async def tamper() -> None:
        async with EventBus(nats_server.url, "tamper") as bus:
            audit = AuditLog(bus, protect=False)  # a stream an attacker could delete from
            for i in range(4):
                change = AuditChange(actor="admin-1", action=AuditAction.alias_move, target=f"iris@p{i}")
                await audit.append(change)
            await bus.js.delete_msg(AUDIT_STREAM, 2)

    asyncio.run(tamper())
    verified = gallery(tmp_path, nats_server.url, "http://127.0.0.1:9", "audit", "verify", "--project", "default")
    assert verified.returncode == 1
    assert "default: BROKEN (deleted) at stream message 3: record 2 missing" in verified.stdout
    assert "tampered" in verified.stderr
