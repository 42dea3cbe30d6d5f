"""Single sign-on at the registry: tokens of a real OIDC provider (tests/oidc_provider.py, a process)
through the REST API, a service's own client-credentials identity, and the CLI.
"""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest
from oidc_provider import RunningProvider, running_provider
from registry_uvicorn import serve_registry
from typer.testing import CliRunner

from gallery_cli.main import app as cli
from gallery_common.netutil import free_port
from gallery_common.registry_client import RegistryClient, RegistryUnavailable
from gallery_common.service_identity import service_auth
from gallery_deployer.deployer.settings import DeployerSettings
from gallery_registry.settings import RegistrySettings

SEEDER = "static-admin"
CLI_REDIRECT = "http://127.0.0.1/callback"  # a loopback redirect: any port (RFC 8252)
GALLERY_CLI = Path(sys.executable).with_name("gallery")
SHA = "d" * 64
USERS = [
    {"username": "rita", "password": "rita-pw", "groups": ["gallery-readers"]},
    {"username": "ada", "password": "ada-pw", "groups": ["gallery-admins", "team-a"]},
]
CLIENTS = [
    {"client_id": "gallery-cli", "redirect_uris": [CLI_REDIRECT]},
    {
        "client_id": "deployer",
        "client_secret": "deployer-secret",
        "grant_types": ["client_credentials"],
        "groups": ["gallery-services"],
    },
    {"client_id": "stranger", "client_secret": "stranger-secret", "grant_types": ["client_credentials"]},
]


@dataclass
class Stack:
    provider: RunningProvider
    registry: str

    def person(self, username: str) -> str:
        password = next(u["password"] for u in USERS if u["username"] == username)
        return str(self.provider.sign_in(username, str(password), "gallery-cli", CLI_REDIRECT)["access_token"])


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


@pytest.fixture
def stack(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Stack]:
    with running_provider(tmp_path, USERS, CLIENTS) as provider:
        settings = RegistrySettings(
            home=tmp_path,
            port=free_port(),
            api_tokens=f"{SEEDER}:admin",  # type: ignore[arg-type]
            oidc_issuer=provider.issuer,
            oidc_audience=provider.audience,
            oidc_name_claim="preferred_username",
            oidc_group_roles="gallery-readers=reader,gallery-admins=admin,gallery-services=admin,team-a=team-a:writer",  # type: ignore[arg-type]
        )
        with serve_registry(settings) as url:
            monkeypatch.setenv("GALLERY_REGISTRY_URL", url)
            with httpx.Client(base_url=url, headers=bearer(SEEDER)) as http:
                http.post("/api/v1/models", json={"name": "digits", "owner": "ann"}).raise_for_status()
                version = {
                    "metrics": {"accuracy": 0.93},
                    "artifacts": {"onnx": {"uri": "file:///m.onnx", "sha256": SHA}},
                }
                http.post("/api/v1/models/digits/versions", json=version).raise_for_status()
            yield Stack(provider, url)


def test_a_signed_in_reader_reads_the_catalogue_but_cannot_write(stack: Stack) -> None:
    token = stack.person("rita")
    listed = httpx.get(f"{stack.registry}/api/v1/models", headers=bearer(token))
    assert listed.status_code == 200 and [m["name"] for m in listed.json()["models"]] == ["digits"]
    refused = httpx.post(f"{stack.registry}/api/v1/models", json={"name": "mine"}, headers=bearer(token))
    assert refused.status_code == 403
    assert refused.json() == {"error": "this request needs the writer role; your token has reader"}


def test_an_admin_by_group_moves_a_protected_alias_and_the_history_names_them(stack: Stack) -> None:
    token = stack.person("ada")
    moved = httpx.put(
        f"{stack.registry}/api/v1/models/digits/aliases/production",
        json={"version": 1, "reason": "signed off"},
        headers=bearer(token),
    )
    assert moved.status_code == 200, moved.text
    history = httpx.get(f"{stack.registry}/api/v1/models/digits/aliases/production/history", headers=bearer(token))
    assert [(h["actor"], h["reason"]) for h in history.json()] == [("oidc:ada", "signed off")]


def test_a_forged_or_foreign_token_is_refused_with_the_reason_and_never_echoed(stack: Stack) -> None:
    token = stack.person("rita")
    header, payload, signature = token.split(".")
    forged = f"{header}.{payload[:-4]}AAAA.{signature}"  # the payload changed, the signature did not
    answer = httpx.get(f"{stack.registry}/api/v1/models", headers=bearer(forged))
    assert answer.status_code == 401 and answer.headers["www-authenticate"] == "Bearer"
    assert "invalid OIDC token" in answer.json()["error"] and forged not in answer.text
    assert httpx.get(f"{stack.registry}/api/v1/models").status_code == 401


def test_a_rotated_issuer_key_is_fetched_on_its_first_token(stack: Stack) -> None:
    before = stack.person("rita")
    assert httpx.get(f"{stack.registry}/api/v1/models", headers=bearer(before)).status_code == 200
    stack.provider.rotate_key()
    after = stack.person("rita")
    answer = httpx.get(f"{stack.registry}/api/v1/models", headers=bearer(after))
    assert answer.status_code == 200, answer.text


def test_the_deployer_calls_the_registry_as_itself_with_client_credentials(stack: Stack) -> None:
    deployer = DeployerSettings(
        registry_url=stack.registry,
        oidc_issuer=stack.provider.issuer,
        oidc_audience=stack.provider.audience,
        oidc_client_id="deployer",
        oidc_client_secret="deployer-secret",  # type: ignore[arg-type]
    )
    registry = RegistryClient(deployer.registry_url, auth=service_auth(deployer, deployer.registry_token))
    try:
        assert registry.set_alias("digits", "production", 1, reason="canary promoted").version == 1
    finally:
        registry.close()
    history = httpx.get(f"{stack.registry}/api/v1/models/digits/aliases/production/history", headers=bearer(SEEDER))
    assert [(h["actor"], h["reason"]) for h in history.json()] == [("oidc:deployer", "canary promoted")]


def test_a_client_whose_groups_grant_no_role_is_forbidden_saying_so(stack: Stack) -> None:
    stranger = DeployerSettings(
        registry_url=stack.registry,
        oidc_issuer=stack.provider.issuer,
        oidc_audience=stack.provider.audience,
        oidc_client_id="stranger",
        oidc_client_secret="stranger-secret",  # type: ignore[arg-type]
    )
    registry = RegistryClient(stranger.registry_url, auth=service_auth(stranger, None), retry_delays=())
    try:
        with pytest.raises(RegistryUnavailable, match="oidc:stranger has no Gallery role"):
            registry.get_model("digits")
    finally:
        registry.close()


def test_the_cli_uses_an_oidc_token_from_gallery_token(stack: Stack, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("GALLERY_TOKEN", stack.person("rita"))
    listed = CliRunner().invoke(cli, ["models", "list"])
    assert listed.exit_code == 0 and "digits" in listed.output
    moved = CliRunner().invoke(cli, ["models", "alias", "digits", "staging", "1"])
    assert moved.exit_code == 1 and "writer role" in moved.output


def test_gallery_login_signs_in_through_a_loopback_redirect_and_the_cli_uses_the_token(
    stack: Stack, tmp_path: Path
) -> None:
    env = {
        **os.environ,
        "XDG_CONFIG_HOME": str(tmp_path / "config"),
        "GALLERY_OIDC_ISSUER": stack.provider.issuer,
        "GALLERY_OIDC_CLIENT_ID": "gallery-cli",
        "GALLERY_REGISTRY_URL": stack.registry,
    }
    env.pop("GALLERY_TOKEN", None)
    login = subprocess.Popen(
        [str(GALLERY_CLI), "login", "--no-browser", "--timeout", "60"],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        assert login.stderr is not None
        prompt = login.stderr.readline()
        assert prompt.startswith("Sign in at: "), prompt
        # the person's browser: the provider's login, then the redirect to the CLI's loopback listener
        at_provider = httpx.post(
            prompt.removeprefix("Sign in at: ").strip(), data={"username": "ada", "password": "ada-pw"}
        )
        assert at_provider.status_code == 302
        assert at_provider.headers["location"].startswith("http://127.0.0.1:")
        assert "Signed in" in httpx.get(at_provider.headers["location"]).text
        out, err = login.communicate(timeout=30)
    finally:
        login.kill()
    assert login.returncode == 0, err
    kept = tmp_path / "config" / "model-gallery" / "token"
    assert f"kept in {kept}" in out
    assert oct(kept.stat().st_mode & 0o777) == "0o600"

    moved = subprocess.run(
        [str(GALLERY_CLI), "models", "alias", "digits", "production", "1", "--reason", "from the CLI"],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert moved.returncode == 0, moved.stdout + moved.stderr
    history = httpx.get(f"{stack.registry}/api/v1/models/digits/aliases/production/history", headers=bearer(SEEDER))
    assert [(h["actor"], h["reason"]) for h in history.json()] == [("oidc:ada", "from the CLI")]

    assert subprocess.run([str(GALLERY_CLI), "logout"], env=env, capture_output=True, timeout=60).returncode == 0
    refused = subprocess.run([str(GALLERY_CLI), "models", "list"], env=env, capture_output=True, text=True, timeout=60)
    assert refused.returncode == 1 and "401" in refused.stdout + refused.stderr
