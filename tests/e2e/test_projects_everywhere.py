"""Projects across every interface, on the embedded stack with tokens: each service its own process.

An installation admin creates projects `alpha` and `beta`; a writer of alpha trains iris in alpha with
`gallery --project alpha train`; the gate validates it, the deployer serves it. Then a member of beta
looks for it everywhere (native REST, the MLflow-compatible API, the deployer, the gateway, the CLI)
and finds exactly what a model that does not exist gives; a reader of alpha reads it and calls it but
cannot move its aliases or deploy it; an admin grants beta's member a role in alpha through the API,
which takes effect on the next request and is in the audit trail; and every event of the model went
over alpha's subjects.
"""

from __future__ import annotations

import asyncio
import hashlib
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import orjson
import pytest
from lifecycle_stack import LifecycleStack
from waiting import wait_for

from gallery_cli.stack import stack_authorization
from gallery_common.nats_server import EmbeddedNats

REPO = Path(__file__).resolve().parents[2]
GALLERY = Path(sys.executable).with_name("gallery")
MODEL = "iris-mlp"
MISSING = "no-such-model"
ROOT, SERVICE, ALPHA_WRITER, ALPHA_READER, BETA_WRITER = "root-tok", "svc-tok", "a-tok", "ra-tok", "b-tok"
TOKENS = (
    f"{ROOT}:admin,{SERVICE}:admin,{ALPHA_WRITER}:alpha:writer,{ALPHA_READER}:alpha:reader,{BETA_WRITER}:beta:writer"
)
FEATURES = [[5.1, 3.5, 1.4, 0.2], [6.7, 3.0, 5.2, 2.3]]


def caller_name(token: str) -> str:
    """The name a project token is known by (what `gallery projects grant` takes)."""
    return f"token-{hashlib.sha256(token.encode()).hexdigest()[:8]}"


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LifecycleStack]:
    tmp_path = tmp_path_factory.mktemp("projects")
    home = tmp_path / "home"
    authorization = stack_authorization(home, [])
    with EmbeddedNats(home / "nats", log_file=tmp_path / "nats.log", authorization=authorization) as nats_server:
        running = LifecycleStack(home=home, nats_url=nats_server.url)
        tokens = {
            "GALLERY_API_TOKENS": TOKENS,
            "GALLERY_REGISTRY_TOKEN": SERVICE,
            "GALLERY_MODEL_SERVER_TOKEN": SERVICE,
            "GALLERY_DEPLOYER_TOKEN": SERVICE,
            "GALLERY_GATEWAY_TOKEN": SERVICE,
            "GALLERY_HOST": "127.0.0.1",
        }
        try:
            running.start_together(
                ("registry", "", tokens),
                ("trainer", "", tokens),
                ("gateway", "", tokens),
            )
            running.start("deployer", **tokens, GALLERY_DRAIN_S="1")
            yield running
        finally:
            running.stop()


def url(stack: LifecycleStack, service: str, path: str) -> str:
    return stack.services[service].url + path


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


def gallery(stack: LifecycleStack, token: str, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(GALLERY), *args], env=stack.env(GALLERY_TOKEN=token), capture_output=True, text=True, timeout=300
    )


def infer(stack: LifecycleStack, token: str, model: str = MODEL) -> httpx.Response:
    rows = [x for row in FEATURES for x in row]
    body = {"inputs": [{"name": "features", "datatype": "FP32", "shape": [2, 4], "data": rows}]}
    return httpx.post(url(stack, "gateway", f"/v2/models/{model}/infer"), json=body, headers=bearer(token), timeout=30)


def serving(stack: LifecycleStack) -> bool:
    return infer(stack, ROOT).status_code == 200


@pytest.fixture(scope="module")
def trained_in_alpha(stack: LifecycleStack) -> LifecycleStack:
    for name in ("alpha", "beta"):
        made = gallery(stack, ROOT, "projects", "create", name, "--description", f"team {name}")
        assert made.returncode == 0, made.stdout + made.stderr
    trained = gallery(stack, ALPHA_WRITER, "--project", "alpha", "train", str(REPO / "examples" / "iris.yaml"))
    assert trained.returncode == 0, trained.stdout + trained.stderr
    wait_for(f"{MODEL} served through the gateway", lambda: serving(stack), timeout=240, interval=1.0)
    return stack


def same_answer(hidden: httpx.Response, missing: httpx.Response) -> None:
    """A model of another project answers exactly like one that does not exist."""
    assert hidden.status_code == missing.status_code == 404, (hidden.text, missing.text)
    assert hidden.text.replace(MODEL, "X") == missing.text.replace(MISSING, "X")


@pytest.mark.slow
def test_a_member_of_beta_finds_alphas_model_nowhere(trained_in_alpha: LifecycleStack) -> None:
    stack, beta = trained_in_alpha, bearer(BETA_WRITER)

    listed = httpx.get(url(stack, "registry", "/api/v1/models"), headers=beta).json()
    assert MODEL not in orjson.dumps(listed).decode()
    assert (
        MODEL in orjson.dumps(httpx.get(url(stack, "registry", "/api/v1/models"), headers=bearer(ROOT)).json()).decode()
    )
    for path in ("/api/v1/models/{}", "/api/v1/models/{}/versions/1", "/api/v1/models/{}/aliases/production"):
        same_answer(
            httpx.get(url(stack, "registry", path.format(MODEL)), headers=beta),
            httpx.get(url(stack, "registry", path.format(MISSING)), headers=beta),
        )
    same_answer(
        httpx.get(
            url(stack, "registry", "/api/2.0/mlflow/registered-models/get"), params={"name": MODEL}, headers=beta
        ),
        httpx.get(
            url(stack, "registry", "/api/2.0/mlflow/registered-models/get"), params={"name": MISSING}, headers=beta
        ),
    )
    searched = httpx.get(url(stack, "registry", "/api/2.0/mlflow/registered-models/search"), headers=beta).json()
    assert MODEL not in orjson.dumps(searched).decode()

    # call it, or move it: the same answers as a model that does not exist
    same_answer(infer(stack, BETA_WRITER), infer(stack, BETA_WRITER, MISSING))
    same_answer(
        httpx.get(url(stack, "gateway", f"/v2/models/{MODEL}"), headers=beta),
        httpx.get(url(stack, "gateway", f"/v2/models/{MISSING}"), headers=beta),
    )
    deployments = httpx.get(url(stack, "deployer", "/api/v1/deployments"), headers=beta).json()
    assert MODEL not in orjson.dumps(deployments).decode()
    moved = httpx.put(
        url(stack, "registry", f"/api/v1/models/{MODEL}/aliases/staging"), json={"version": 1}, headers=beta
    )
    assert moved.status_code == 404, moved.text

    # the CLI and its projects: a hidden project reads as a missing one
    models = gallery(stack, BETA_WRITER, "models", "list")
    assert models.returncode == 0 and MODEL not in models.stdout, models.stdout + models.stderr
    hidden, missing = (
        gallery(stack, BETA_WRITER, "projects", "show", "alpha"),
        gallery(stack, BETA_WRITER, "projects", "show", "gamma"),
    )
    assert hidden.returncode == missing.returncode != 0
    assert "project 'alpha' not found" in hidden.stdout + hidden.stderr
    assert (hidden.stdout + hidden.stderr).replace("alpha", "X") == (missing.stdout + missing.stderr).replace(
        "gamma", "X"
    )
    listed_projects = gallery(stack, BETA_WRITER, "projects", "list")
    assert "beta" in listed_projects.stdout and "alpha" not in listed_projects.stdout, listed_projects.stdout


@pytest.mark.slow
def test_a_reader_of_alpha_reads_and_calls_but_cannot_move_or_deploy(trained_in_alpha: LifecycleStack) -> None:
    stack, reader = trained_in_alpha, bearer(ALPHA_READER)
    model = httpx.get(url(stack, "registry", f"/api/v1/models/{MODEL}"), headers=reader)
    assert model.status_code == 200 and model.json()["project"] == "alpha", model.text
    assert infer(stack, ALPHA_READER).status_code == 200
    moved = httpx.put(
        url(stack, "registry", f"/api/v1/models/{MODEL}/aliases/staging"), json={"version": 1}, headers=reader
    )
    assert moved.status_code == 403 and "alpha" in moved.text, moved.text
    writer_moves_production = httpx.put(
        url(stack, "registry", f"/api/v1/models/{MODEL}/aliases/production"),
        json={"version": 1},
        headers=bearer(ALPHA_WRITER),
    )
    assert writer_moves_production.status_code == 403, writer_moves_production.text  # a protected alias: admin
    deploy = httpx.post(
        url(stack, "deployer", "/api/v1/deployments"), json={"model": MODEL, "version": 1}, headers=reader
    )
    assert deploy.status_code == 403, deploy.text


@pytest.mark.slow
def test_a_granted_role_takes_effect_at_once_and_is_in_the_audit_trail(trained_in_alpha: LifecycleStack) -> None:
    stack, beta = trained_in_alpha, bearer(BETA_WRITER)
    assert httpx.get(url(stack, "registry", f"/api/v1/models/{MODEL}"), headers=beta).status_code == 404
    granted = gallery(stack, ROOT, "projects", "grant", "alpha", caller_name(BETA_WRITER), "reader")
    assert granted.returncode == 0, granted.stdout + granted.stderr
    assert httpx.get(url(stack, "registry", f"/api/v1/models/{MODEL}"), headers=beta).status_code == 200
    # the gateway follows the projects bucket: the grant reaches it within a watch's delivery
    wait_for("the gateway honours the grant", lambda: infer(stack, BETA_WRITER).status_code == 200, timeout=10)
    records = httpx.get(url(stack, "registry", "/api/v1/audit"), params={"project": "alpha"}, headers=bearer(ROOT))
    assert records.status_code == 200, records.text
    grants = [r for r in records.json() if r["action"] == "project.member_granted"]
    assert grants and caller_name(BETA_WRITER) in orjson.dumps(grants[-1]).decode()
    revoked = gallery(stack, ROOT, "projects", "revoke", "alpha", caller_name(BETA_WRITER))
    assert revoked.returncode == 0, revoked.stdout + revoked.stderr
    assert httpx.get(url(stack, "registry", f"/api/v1/models/{MODEL}"), headers=beta).status_code == 404


@pytest.mark.slow
def test_every_event_of_alphas_model_went_over_alphas_subjects(trained_in_alpha: LifecycleStack) -> None:
    async def subjects() -> list[tuple[str, str]]:
        async with trained_in_alpha.bus() as bus:
            sub = await bus.js.subscribe("model.>", ordered_consumer=True, deliver_policy="all")  # type: ignore[arg-type]
            found: list[tuple[str, str]] = []
            try:
                while True:
                    message = await sub.next_msg(timeout=2)
                    event: dict[str, Any] = orjson.loads(message.data)
                    found.append((message.subject, event["data"].get("project", "")))
            except Exception:
                return found
            finally:
                await sub.unsubscribe()

    found = asyncio.run(subjects())
    mine = [(subject, project) for subject, project in found if project == "alpha"]
    assert {subject.split(".")[1] for subject, _ in mine} >= {"trained", "validated", "deployed"}, found
    assert all(subject.endswith(".alpha") for subject, _ in mine), mine
