"""`gallery models list | show | alias` against a registry served on loopback."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from registry_uvicorn import serve_registry
from typer.testing import CliRunner

from gallery_cli.main import app as cli
from gallery_common.netutil import free_port
from gallery_registry.settings import RegistrySettings

WRITER, ADMIN = "cli-writer", "cli-admin"
SHA = "c" * 64


@pytest.fixture
def registry(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[str]:
    settings = RegistrySettings(
        home=tmp_path,
        port=free_port(),
        api_tokens=f"{WRITER}:writer,{ADMIN}:admin",  # type: ignore[arg-type]
    )
    with serve_registry(settings) as url:
        monkeypatch.setenv("GALLERY_REGISTRY_URL", url)
        monkeypatch.setenv("GALLERY_TOKEN", WRITER)
        with httpx.Client(base_url=url, headers={"Authorization": f"Bearer {WRITER}"}) as http:
            http.post("/api/v1/models", json={"name": "digits", "owner": "ann"}).raise_for_status()
            for accuracy in (0.91, 0.95):
                version = {
                    "metrics": {"accuracy": accuracy},
                    "run_id": f"run-{accuracy}",
                    "artifacts": {"onnx": {"uri": "file:///a/m.onnx", "sha256": SHA}},
                }
                http.post("/api/v1/models/digits/versions", json=version).raise_for_status()
        yield url


def run(*args: str) -> tuple[int, str]:
    result = CliRunner().invoke(cli, ["models", *args])
    return result.exit_code, result.output


def last_line(output: str) -> str:
    # the server runs in this process, so its log lines (httpx's too) can precede the command's
    return output.strip().splitlines()[-1]


def test_list_and_show(registry: str) -> None:
    code, out = run("list")
    assert code == 0 and "digits" in out and "ann" in out
    code, out = run("show", "digits")
    assert code == 0 and "1.1.0" in out and "0.95" in out and "latest version 2" in out
    code, out = run("show", "digits:1")
    assert code == 0 and "digits version 1 (1.0.0)" in out and "run-0.91" in out and "file:///a/m.onnx" in out
    code, out = run("show", "digits@staging")
    assert code == 1 and "(404)" in out and "no alias 'staging'" in out
    code, out = run("show", "digits:x:y")
    assert code == 2 and "NAME@ALIAS or NAME:VERSION" in out


def test_alias_moves_and_protected_alias_needs_admin(registry: str, monkeypatch: pytest.MonkeyPatch) -> None:
    code, out = run("alias", "digits", "staging", "1", "--reason", "try it")
    assert (code, last_line(out)) == (0, "digits@staging: 1")
    code, out = run("alias", "digits", "staging", "2")
    assert (code, last_line(out)) == (0, "digits@staging: 1 → 2")
    code, out = run("show", "digits@staging")
    assert code == 0 and "digits version 2 (1.1.0)" in out
    code, out = run("alias", "digits", "production", "2")
    assert code == 1 and "(403)" in out and "protected" in out
    monkeypatch.setenv("GALLERY_TOKEN", ADMIN)
    code, out = run("alias", "digits", "production", "2")
    assert (code, last_line(out)) == (0, "digits@production: 2")


def test_unreachable_registry_says_where_it_looked(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("GALLERY_REGISTRY_URL", f"http://127.0.0.1:{free_port()}")
    code, out = run("list")
    assert code == 1 and "cannot reach the registry at http://127.0.0.1:" in out and "GALLERY_REGISTRY_URL" in out
