"""`gallery projects ...` and `--project` / GALLERY_PROJECT against the real registry on a real
nats-server (the projects bucket lives there), served by uvicorn.

A member of team-a sees only team-a (a project it cannot see answers as one that does not exist,
plainly); its admin grants and revokes members; `--project` narrows the lists and places what a
command creates; `gallery train --project` puts the project into a spec that names none.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from typer.testing import CliRunner
from uvicorn_thread import served

from gallery_cli import service_client
from gallery_cli.main import app as cli
from gallery_cli.service_client import RegistryServiceClient
from gallery_cli.train_cmd import spec_body
from gallery_common.nats_server import EmbeddedNats
from gallery_common.netutil import free_port
from gallery_registry.app import create_app_for
from gallery_registry.settings import RegistrySettings

ADMIN = "admin-token"  # installation-wide admin
A_ADMIN, B_READER = "a-admin-token", "b-reader-token"


def principal(token: str) -> str:
    return f"token-{hashlib.sha256(token.encode()).hexdigest()[:8]}"


@pytest.fixture
def registry(nats_server: EmbeddedNats, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[str]:
    settings = RegistrySettings(
        home=tmp_path,
        port=free_port(),
        nats_url=nats_server.url,
        api_tokens=f"{ADMIN}:admin,{A_ADMIN}:team-a:admin,{B_READER}:team-b:reader",  # type: ignore[arg-type]
    )
    with served(create_app_for(settings), settings.port) as port:
        url = f"http://127.0.0.1:{port}"
        monkeypatch.setenv("GALLERY_REGISTRY_URL", url)
        monkeypatch.setenv("GALLERY_TOKEN", ADMIN)
        monkeypatch.delenv("GALLERY_PROJECT", raising=False)
        for name in ("team-a", "team-b"):
            code, out = run("projects", "create", name, "--description", f"the {name} models")
            assert code == 0 and f"project {name} created" in out, out
        with httpx.Client(base_url=url, headers={"Authorization": f"Bearer {ADMIN}"}) as http:
            for model, project in (("a-model", "team-a"), ("b-model", "team-b")):
                created = http.post("/api/v1/models", json={"name": model, "project": project})
                assert created.status_code == 201 and created.json()["project"] == project, created.text
        yield url
    service_client.select_project(None)


def run(*args: str, token: str | None = None, env: dict[str, str] | None = None) -> tuple[int, str]:
    environment = {**(env or {}), **({"GALLERY_TOKEN": token} if token else {})}
    result = CliRunner().invoke(cli, list(args), env=environment or None)
    return result.exit_code, result.output


def test_a_member_sees_only_its_projects_and_another_answers_as_missing(registry: str) -> None:
    code, out = run("projects", "list", token=A_ADMIN)
    assert code == 0, out
    assert "team-a" in out and "admin" in out and "team-b" not in out

    for name in ("team-b", "no-such"):
        code, out = run("projects", "show", name, token=A_ADMIN)
        assert code == 1 and f"project '{name}' not found" in out, out
    code, out = run("projects", "grant", "team-b", "oidc:ada", "writer", token=A_ADMIN)
    assert code == 1 and "project 'team-b' not found" in out, out

    code, out = run("projects", "list")  # the installation-wide admin sees every project
    assert code == 0 and all(p in out for p in ("default", "team-a", "team-b")), out


def test_the_projects_admin_grants_and_revokes_members(registry: str) -> None:
    code, out = run("projects", "grant", "team-a", "oidc:ada", "writer", token=A_ADMIN)
    assert code == 0 and "oidc:ada is writer in team-a" in out, out
    code, out = run("projects", "show", "team-a", token=A_ADMIN)
    assert code == 0 and "your role admin" in out and "the team-a models" in out, out
    assert "oidc:ada" in out and "writer" in out

    code, out = run("projects", "revoke", "team-a", "oidc:ada", token=A_ADMIN)
    assert code == 0 and "oidc:ada is no longer a member of team-a" in out, out
    code, out = run("projects", "show", "team-a", token=A_ADMIN)
    assert code == 0 and "oidc:ada" not in out, out

    # a reader of team-b sees the project but not its members, and cannot change them
    code, out = run("projects", "show", "team-b", token=B_READER)
    assert code == 0 and "your role reader" in out and "admins only" in out, out
    code, out = run("projects", "grant", "team-b", principal(A_ADMIN), "reader", token=B_READER)
    assert code == 1 and "403" in out, out
    code, out = run("projects", "grant", "team-a", "oidc:ada", "owner", token=A_ADMIN)
    assert code == 1 and "role 'owner' must be one of" in out, out


def test_project_option_and_env_narrow_lists_and_place_creations(registry: str) -> None:
    code, out = run("models", "list")
    assert code == 0 and "a-model" in out and "b-model" in out, out
    code, out = run("--project", "team-a", "models", "list")
    assert code == 0 and "a-model" in out and "b-model" not in out and "team-a" in out, out
    code, out = run("models", "list", env={"GALLERY_PROJECT": "team-b"})
    assert code == 0 and "b-model" in out and "a-model" not in out, out
    code, out = run("models", "show", "a-model")
    assert code == 0 and "model a-model  project team-a" in out, out
    code, out = run("models", "show", "b-model", token=A_ADMIN)  # another project's model: as a missing one
    assert code == 1 and "model 'b-model' not found" in out, out
    code, out = run("--project", "team-b", "models", "list", token=A_ADMIN)
    assert code == 1 and "project 'team-b' not found" in out, out

    # every request carries the project: a create that names none lands in it
    service_client.select_project("team-b")
    with RegistryServiceClient() as client:
        created = client.json("POST", "/api/v1/models", json={"name": "placed"})
    assert created["project"] == "team-b"
    code, out = run("--project", "team-b", "models", "list")
    assert "placed" in out, out


def test_train_puts_the_chosen_project_into_a_spec_that_names_none(tmp_path: Path) -> None:
    bare = tmp_path / "job.yaml"
    bare.write_text("model: digits\nepochs: 2\n")
    named = tmp_path / "named.yaml"
    named.write_text("model: digits\nproject: team-b\n")

    service_client.select_project(None)
    assert spec_body(bare) == (bare.read_bytes(), "application/yaml")
    service_client.select_project("team-a")
    try:
        body, content_type = spec_body(bare)
        assert content_type == "application/json"
        assert json.loads(body) == {"model": "digits", "epochs": 2, "project": "team-a"}
        assert spec_body(named) == (named.read_bytes(), "application/yaml")  # its own project stays
    finally:
        service_client.select_project(None)
