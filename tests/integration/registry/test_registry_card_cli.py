"""`gallery models card`: print or save a version's model card, edit the model's card text."""

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

READER, WRITER, ADMIN = "card-reader", "card-writer", "card-admin"


@pytest.fixture
def registry(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[str]:
    settings = RegistrySettings(
        home=tmp_path,
        port=free_port(),
        api_tokens=f"{READER}:reader,{WRITER}:writer,{ADMIN}:admin",  # type: ignore[arg-type]
    )
    with serve_registry(settings) as url:
        monkeypatch.setenv("GALLERY_REGISTRY_URL", url)
        monkeypatch.setenv("GALLERY_TOKEN", WRITER)
        with httpx.Client(base_url=url, headers={"Authorization": f"Bearer {ADMIN}"}) as http:
            http.post(
                "/api/v1/models", json={"name": "digits", "description": "Hand-written digits."}
            ).raise_for_status()
            for accuracy in (0.91, 0.95):
                version = {"metrics": {"accuracy": accuracy}, "task": "classification"}
                http.post("/api/v1/models/digits/versions", json=version).raise_for_status()
            http.put("/api/v1/models/digits/aliases/production", json={"version": 1}).raise_for_status()
        yield url


def run(*args: str) -> tuple[int, str]:
    result = CliRunner().invoke(cli, ["models", *args])
    return result.exit_code, result.output


def test_card_prints_the_production_version_by_default_or_the_one_asked_for(registry: str, tmp_path: Path) -> None:
    code, out = run("card", "digits")
    assert code == 0, out
    assert '---\nmodel_name: "digits"' in out and "# digits — version 1 (1.0.0)" in out
    assert "Hand-written digits." in out

    code, out = run("card", "digits:2")
    assert code == 0 and "# digits — version 2 (1.1.0)" in out
    code, out = run("card", "digits@production")
    assert code == 0 and "version 1 (1.0.0)" in out

    target = tmp_path / "card.md"
    code, out = run("card", "digits:2", "-o", str(target))
    assert code == 0 and f"written to {target}" in out
    assert target.read_text().startswith("---\n") and "version 2 (1.1.0)" in target.read_text()

    code, out = run("card", "nope")
    assert code == 1 and "model 'nope' not found" in out
    code, out = run("card", "digits@gold")
    assert code == 1 and "has no alias 'gold'" in out


def test_card_edits_the_text_and_a_reader_may_not(
    registry: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    use, limits = tmp_path / "use.md", tmp_path / "limits.md"
    use.write_text("Reading postcodes.\n")
    limits.write_text("Only 8x8 images.\n")
    code, out = run("card", "digits", "--intended-use", str(use), "--limitations", str(limits))
    assert code == 0, out
    assert out.strip().splitlines()[-1] == "digits: card text revision 1 (intended_use, limitations updated)"
    code, out = run("card", "digits")
    assert "Reading postcodes." in out and "Only 8x8 images." in out

    code, out = run("card", "digits", "--description", str(use))
    assert code == 0 and "revision 2 (description updated)" in out
    with httpx.Client(base_url=registry, headers={"Authorization": f"Bearer {READER}"}) as http:
        assert http.get("/api/v1/models/digits").json()["description"] == "Reading postcodes.\n"

    code, out = run("card", "digits:1", "--limitations", str(limits))
    assert code == 2 and "give NAME alone" in out
    code, out = run("card", "digits", "--limitations", str(tmp_path / "missing.md"))
    assert code == 2 and "cannot read" in out
    monkeypatch.setenv("GALLERY_TOKEN", READER)
    code, out = run("card", "digits", "--limitations", str(limits))
    assert code == 1 and "403" in out and "needs the writer role" in out
