"""A federation that lists its sites (GALLERY_FEDERATION_SITE_TOKENS): the listed sites, each with its own
token (`gallery site token`), train; a site without a token, an unlisted site and a site with another's
token are refused before they join, each told why, and the job goes on without them; a listed site whose
answers name another site ends the job."""

from __future__ import annotations

import subprocess
import threading
from pathlib import Path
from typing import Any

import pytest
from federation_harness import GALLERY, federated_spec, site_folders, sites_running, start_site

from gallery_common.netutil import free_port
from gallery_common.site_tokens import token_digest
from gallery_trainer.federated.site import Site, run_site
from gallery_trainer.pipeline import TrainingFailed, run_job


def make_token(site: str, folder: Path) -> tuple[Path, str]:
    """`gallery site token SITE --output FILE`: the token file and the trainer's entry it printed."""
    path = folder / f"{site}.token"
    made = subprocess.run([GALLERY, "site", "token", site, "--output", str(path)], capture_output=True, text=True)
    assert made.returncode == 0, made.stderr
    entry = made.stdout.strip().splitlines()[-1].strip()
    assert entry == f"{site}:{token_digest(path.read_text().strip())}"
    assert path.stat().st_mode & 0o777 == 0o600
    return path, entry


def test_only_the_listed_sites_join_each_under_its_own_name(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    tokens = tmp_path / "tokens"
    tokens.mkdir()
    (one, one_entry), (two, two_entry) = make_token("site-1", tokens), make_token("site-2", tokens)
    monkeypatch.setenv("GALLERY_FEDERATION_SITE_TOKENS", f"{one_entry},{two_entry}")
    port = free_port()
    spec = federated_spec(port, rounds=3, min_sites=2)
    folders = site_folders(spec, tmp_path / "sites")
    listed = {name: folder for name, folder in folders.items() if name != "site-3"}
    outsiders = tmp_path / "outsiders"
    outsiders.mkdir()
    with sites_running(
        port,
        listed,
        tmp_path,
        through_cli=("site-1",),
        extra={"site-1": ("--token-file", str(one)), "site-2": ("--token-file", str(two))},
    ) as sites:
        # an unlisted site with no token, the same with site-1's token, and one calling itself site-2 with site-1's
        sites["no-token"] = start_site(port, "site-3", folders["site-3"], outsiders, through_cli=True)
        (outsiders / "site-3.log").rename(outsiders / "no-token.log")
        sites["unlisted"] = start_site(
            port, "site-3", folders["site-3"], outsiders, through_cli=True, extra=("--token-file", str(one))
        )
        sites["impostor"] = start_site(port, "site-2", folders["site-3"], outsiders, extra=("--token-file", str(one)))
        outputs = run_job(spec, tmp_path / "job")
        refused = {name: sites[name].wait(60) for name in ("no-token", "unlisted", "impostor")}
    assert outputs.federation is not None
    assert {site.name for site in outputs.federation.sites} == {"site-1", "site-2"}
    assert outputs.metrics["rounds_run"] == 3
    assert refused == {"no-token": 2, "unlisted": 2, "impostor": 2}, "each refused site ends with an error"
    said = (outsiders / "no-token.log").read_text()
    assert f"error: site site-3: the coordinator at 127.0.0.1:{port} refused it: this federation admits only " in said
    logs = (outsiders / "site-3.log").read_text() + (outsiders / "site-2.log").read_text()
    assert "refused it: site site-3 is not one of this federation's sites" in logs
    assert "refused it: the token is not site site-2's" in logs
    assert one.read_text().strip() not in logs, "no token is ever echoed"


def test_a_site_that_answers_under_another_sites_name_ends_the_job(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A listed site whose answers name another site (a site altered to pass for another) is caught at its
    first answer: the job ends with that reason instead of crediting the other site with its updates."""
    tokens = tmp_path / "tokens"
    tokens.mkdir()
    (one, one_entry), (two, two_entry) = make_token("site-1", tokens), make_token("site-2", tokens)
    monkeypatch.setenv("GALLERY_FEDERATION_SITE_TOKENS", f"{one_entry},{two_entry}")
    port = free_port()
    spec = federated_spec(port, rounds=2, min_sites=2, round_timeout_s=20)
    folders = site_folders(spec, tmp_path / "sites", n_sites=2)
    handle = Site.handle

    def passing_for_site_2(self: Site, header: dict[str, Any], arrays: list[Any]) -> Any:
        reply, weights = handle(self, header, arrays)
        if "metrics" in reply:
            reply["metrics"]["site"] = "site-2"
        return reply, weights

    monkeypatch.setattr(Site, "handle", passing_for_site_2)
    altered = threading.Thread(
        target=run_site,
        args=(f"127.0.0.1:{port}", "site-1", folders["site-1"]),
        kwargs={"max_wait": 30, "token": one.read_text().strip()},
        daemon=True,
    )
    altered.start()
    honest = {"site-2": ("--token-file", str(two))}
    with (
        sites_running(port, {"site-2": folders["site-2"]}, tmp_path, extra=honest),
        pytest.raises(TrainingFailed) as failed,
    ):
        run_job(spec, tmp_path / "job")
    assert "the connection admitted as site site-1 answered as site site-2" in str(failed.value), failed.value
    altered.join(30)
