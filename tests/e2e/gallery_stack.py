"""The embedded stack with the Gallery web app in front, and a model trained twice, for the browser tests
and `scripts/screenshots.py`.

Two runs of the digits spec that differ in their learning rate and epochs, so the Experiments page has
something to compare: v1 goes to production, v2 is judged against it. A federated version of another model
is registered through the registry's API, for the model page's federated panel.
"""

from __future__ import annotations

import asyncio
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import httpx
from federated_lineage import federation, site_metrics
from lifecycle_stack import LifecycleStack, ServiceProcess

from gallery_cli.stack import stack_authorization
from gallery_common.nats_server import EmbeddedNats

REPO = Path(__file__).resolve().parents[2]
GALLERY_CLI = Path(sys.executable).with_name("gallery")
MODEL = "digits-mlp"
FEDERATED_MODEL = "clinics-federated"
T = TypeVar("T")


@dataclass
class TrainedModel:
    name: str
    runs: list[str]  # run ids, oldest first
    versions: list[dict[str, Any]]  # as the registry answers them, oldest first


def wait_until(what: str, check: Callable[[], T | None], timeout: float, interval: float = 0.5) -> T:
    """Poll `check` until it returns something truthy; fail with `what` after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            found = check()
        except httpx.HTTPError:
            found = None
        if found:
            return found
        if time.monotonic() > deadline:
            raise TimeoutError(f"{what} did not happen within {timeout:.0f} s")
        time.sleep(interval)


@contextmanager
def gallery_stack(home: Path, *, cpu_target_only: bool = False) -> Iterator[LifecycleStack]:
    """nats-server and every service, each its own process on free ports; the Gallery last, as it reads
    the others' URLs. `cpu_target_only`: the optimizer measures the CPU provider alone, as on a host
    without OpenVINO (whose measurements have tests of their own and only cost a test stack time)."""
    authorization = stack_authorization(home, [])
    with EmbeddedNats(home / "nats", log_file=home / "nats.log", authorization=authorization) as nats_server:
        stack = LifecycleStack(home=home, nats_url=nats_server.url)
        try:
            stack.start("registry")
            stack.start("trainer")
            no_openvino = {"GALLERY_OPENVINO_PYTHON": str(home / "no-openvino" / "python")} if cpu_target_only else {}
            stack.start("optimizer", **no_openvino)
            stack.start("gateway", GALLERY_USAGE_REPORT_S="1")  # the usage page's figures within a second
            stack.start("deployer", GALLERY_CANARY_WINDOW_S="5", GALLERY_CANARY_MIN_REQUESTS="5", GALLERY_DRAIN_S="2")
            stack.start("monitor", GALLERY_SCRAPE_INTERVAL_S="1", GALLERY_EVALUATE_INTERVAL_S="1")
            stack.start("gallery")
            yield stack
        finally:
            stack.stop()


def start_second_gallery(stack: LifecycleStack, tokens: str) -> ServiceProcess:
    """Another Gallery process in front of the same services, this one with GALLERY_API_TOKENS set.

    It is kept in `stack.services` under "gallery-tokens", so `stack.stop()` stops it too."""
    first = stack.services.pop("gallery")
    try:
        second = stack.start("gallery", GALLERY_API_TOKENS=tokens)
    finally:
        stack.services["gallery-tokens"] = stack.services.pop("gallery", first)
        stack.services["gallery"] = first
    return second


def train(stack: LifecycleStack, spec: Path) -> None:
    result = subprocess.run(
        [str(GALLERY_CLI), "train", str(spec)], env=stack.env(), capture_output=True, text=True, timeout=300
    )
    if result.returncode != 0:
        raise RuntimeError(f"gallery train {spec} failed: {result.stdout[-2000:]}{result.stderr[-2000:]}")


def _version(stack: LifecycleStack, number: int) -> dict[str, Any] | None:
    answer = httpx.get(f"{stack.services['registry'].url}/api/v1/models/{MODEL}/versions/{number}", timeout=10)
    return answer.json() if answer.status_code == 200 else None  # type: ignore[no-any-return]


def _judged(stack: LifecycleStack, number: int) -> dict[str, Any] | None:
    version = _version(stack, number)
    return version if version and version["status"] in {"validated", "rejected"} else None


def _serving(stack: LifecycleStack, number: int) -> dict[str, Any] | None:
    rows = httpx.get(f"{stack.services['deployer'].url}/api/v1/deployments", timeout=10).json()
    return next(
        (r for r in rows if r["model"] == MODEL and r["version"] == number and r["state"] == "ready"),
        None,
    )


def train_digits_twice(stack: LifecycleStack, workdir: Path) -> TrainedModel:
    """v1 from examples/digits.yaml, deployed to production; v2 with another learning rate, judged."""
    train(stack, REPO / "examples" / "digits.yaml")
    wait_until("v1 judged by the gate", lambda: _judged(stack, 1), 120)
    second = workdir / "digits-faster.yaml"
    spec = (REPO / "examples" / "digits.yaml").read_text()
    second.write_text(spec.replace("learning_rate: 0.002", "learning_rate: 0.004").replace("epochs: 8", "epochs: 6"))
    train(stack, second)
    wait_until("v1 serving", lambda: _serving(stack, 1), 120)
    v2 = wait_until("v2 judged by the gate", lambda: _judged(stack, 2), 120)
    v1 = _version(stack, 1)
    assert v1 is not None
    runs = [v1["run_id"], v2["run_id"]]
    return TrainedModel(MODEL, runs, [v1, v2])


def wait_for_optimizer(stack: LifecycleStack, version: int, timeout: float = 300) -> None:
    """Until the optimizer's job for `version` has finished (its report feeds the model page)."""

    def finished() -> bool:
        optimizer = stack.services["optimizer"].url
        jobs = httpx.get(f"{optimizer}/api/v1/optimize", params={"model": MODEL}, timeout=10).json()
        return any(j["version"] == version and j["status"] in {"succeeded", "failed"} for j in jobs)

    wait_until(f"the optimizer's job for v{version}", finished, timeout)


def register_federated_version(stack: LifecycleStack) -> dict[str, Any]:
    """Version 1 of FEDERATED_MODEL, registered through the registry's API with the lineage.federation and the
    per-site figures a federated run's model.trained carries (no artifacts: the gate never judges it)."""
    registry = f"{stack.services['registry'].url}/api/v1"
    httpx.post(f"{registry}/models", json={"name": FEDERATED_MODEL}, timeout=10).raise_for_status()
    answer = httpx.post(
        f"{registry}/models/{FEDERATED_MODEL}/versions",
        json={
            "task": "classification",
            "metrics": site_metrics(),
            "lineage": {
                "training_job_id": "federated-job",
                "federation": federation(secure=True).model_dump(mode="json"),
            },
        },
        timeout=10,
    )
    answer.raise_for_status()
    return answer.json()  # type: ignore[no-any-return]


def dead_letter_for_a_missing_project(stack: LifecycleStack, project: str, model: str) -> dict[str, Any]:
    """The digits run's model.trained sent again (as the trainer) for `model` in `project`, which does not
    exist: the gate dead-letters it. Returns the letter as the registry lists it."""
    event_id = f"{project}-{model}"

    async def publish() -> None:
        async with stack.bus("cli") as reader:
            first = next(e for e in await reader.stored_events() if e.event == "trained" and e.data.model == MODEL)
        async with stack.bus("trainer") as trainer:
            await trainer.publish(first.data.model_copy(update={"model": model, "project": project}), event_id=event_id)

    asyncio.run(publish())
    letters = f"{stack.services['registry'].url}/admin/dead-letters"
    found: list[dict[str, Any]] = wait_until(
        "the gate's dead letter",
        lambda: [d for d in httpx.get(letters, timeout=30).json() if d["event_id"] == event_id] or None,
        60,
    )
    return found[0]


def labelled_traffic(stack: LifecycleStack, version: dict[str, Any], timeout: float = 30) -> int:
    """MODEL keeps its answers for feedback (its deployment policy); the version's test split goes through the
    gateway, 16 rows a request, and each answer gets its true classes. Returns the rows labelled."""
    import io

    import numpy as np

    gateway = stack.services["gateway"].url
    policy = {"record_outcomes": True}
    httpx.put(f"{stack.services['deployer'].url}/api/v1/policies/{MODEL}", json=policy, timeout=30).raise_for_status()
    wait_until(
        "the route to keep answers",
        lambda: httpx.get(f"{gateway}/admin/routes/{MODEL}", timeout=10).json()["policy"]["record_outcomes"],
        timeout,
    )
    split = version["artifacts"]["test_split"]["uri"]
    with np.load(io.BytesIO(Path(split.removeprefix("file://")).read_bytes())) as data:
        x, y = data["x"], data["y"]
    outcomes = []
    for start in range(0, len(x), 16):
        body = {"inputs": [{"name": "features", "datatype": "FP32", "shape": [len(x[start : start + 16]), x.shape[1]],
                            "data": x[start : start + 16].ravel().tolist()}]}  # fmt: skip
        answer = httpx.post(f"{gateway}/v2/models/{MODEL}/infer", json=body, timeout=30)
        answer.raise_for_status()
        outcomes.append({"request_id": answer.headers["x-gallery-request-id"], "label": y[start : start + 16].tolist()})
    given = httpx.post(f"{gateway}/v2/models/{MODEL}/feedback", json={"outcomes": outcomes}, timeout=30)
    given.raise_for_status()
    return len(y)
