"""What `make demo` runs: the embedded stack and the lifecycle as far as it is built.

Each step prints the `gallery` command it runs, so the demo doubles as a tour of the CLI.
The stack is stopped at the end; `make up` keeps one running.
"""

from __future__ import annotations

import asyncio
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import httpx

from gallery_common.bus import EventBus
from gallery_common.service import service_names
from gallery_common.settings import GallerySettings, load_settings

GALLERY = str(Path(sys.executable).with_name("gallery"))
REPO = Path(__file__).resolve().parents[1]
MODEL = "digits-mlp"
REGISTRY = os.environ.get("GALLERY_REGISTRY_URL", "http://127.0.0.1:8001")
DEPLOYER = os.environ.get("GALLERY_DEPLOYER_URL", "http://127.0.0.1:8004")
GATEWAY = os.environ.get("GALLERY_GATEWAY_URL", "http://127.0.0.1:8080")
MONITOR = os.environ.get("GALLERY_MONITOR_URL", "http://127.0.0.1:8005")


def banner(text: str) -> None:
    print(f"\n\033[1m== {text}\033[0m", flush=True)


def gallery(*args: str, check: bool = True, live: bool = False) -> subprocess.CompletedProcess[str]:
    """Run a `gallery` command, showing it; `live` lets its progress bar draw on the terminal."""
    print(f"$ gallery {' '.join(args)}", flush=True)
    if live:
        result = subprocess.run([GALLERY, *args], text=True)
    else:
        result = subprocess.run([GALLERY, *args], text=True, capture_output=True)
        print(result.stdout, end="", flush=True)
        if result.returncode != 0:
            print(result.stderr, end="", file=sys.stderr, flush=True)
    if check and result.returncode != 0:
        raise SystemExit(f"`gallery {' '.join(args)}` failed with exit code {result.returncode}")
    return result


def newest_version() -> dict | None:
    response = httpx.get(f"{REGISTRY}/api/v1/models/{MODEL}/versions", params={"limit": 1, "order": "desc"})
    versions = response.json().get("versions") if response.status_code == 200 else None
    return dict(versions[0]) if versions else None


def wait_for_judgement(after: int, timeout: float = 120) -> dict:
    """The first version newer than `after` once the gate has judged it."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        newest = newest_version()
        if newest and newest["version"] > after and newest["status"] in {"validated", "rejected"}:
            return newest
        time.sleep(0.5)
    raise SystemExit(f"the registry did not judge a new version of {MODEL} within {timeout:.0f} s")


def wait_for_deployment(version: int, timeout: float = 180) -> dict:
    """The deployment of `version` once it serves production traffic with the optimizer's variant rolled in."""
    deadline = time.monotonic() + timeout
    row: dict = {}
    while time.monotonic() < deadline:
        rows = httpx.get(f"{DEPLOYER}/api/v1/deployments").json()
        row = next((r for r in rows if r["model"] == MODEL and r["version"] == version), {})
        if row.get("stage") == "production" and row.get("state") == "ready" and row.get("variant") != "fp32":
            return row
        time.sleep(0.5)
    if row.get("stage") == "production":
        return row  # serving, still the FP32 model: the optimizer recommended nothing else in time
    raise SystemExit(f"the deployer did not put {MODEL}:{version} in production within {timeout:.0f} s")


def keep_answers_for_feedback(timeout: float = 30) -> None:
    """The model's deployment policy keeps its answers for feedback; wait until the gateway's route says so."""
    gallery("policy", MODEL, "--record-outcomes")
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        route = httpx.get(f"{GATEWAY}/admin/routes/{MODEL}", timeout=10)
        if route.status_code == 200 and route.json()["policy"]["record_outcomes"]:
            return
        time.sleep(0.2)
    raise SystemExit(f"the gateway's route of {MODEL} did not start keeping answers within {timeout:.0f} s")


def infer_through_gateway(version: dict) -> list[tuple[str, list[int]]]:
    """Send the version's held-out test split through the gateway, as clients would, and score the answers;
    returns each answer's request id with the true classes of its rows."""
    import io

    import numpy as np

    split = version["artifacts"]["test_split"]["uri"]
    with np.load(io.BytesIO(Path(split.removeprefix("file://")).read_bytes())) as data:
        x, y = data["x"], data["y"]
    correct, latencies, truths = 0, [], []
    with httpx.Client(base_url=GATEWAY, timeout=30) as client:
        for start in range(0, len(x), 16):
            rows = x[start : start + 16]
            body = {"inputs": [{"name": "features", "datatype": "FP32", "shape": list(rows.shape),
                                "data": rows.ravel().tolist()}]}  # fmt: skip
            began = time.perf_counter()
            answer = client.post(f"/v2/models/{MODEL}/infer", json=body)
            latencies.append((time.perf_counter() - began) * 1000)
            answer.raise_for_status()
            output = answer.json()["outputs"][0]
            logits = np.asarray(output["data"]).reshape(output["shape"])
            correct += int((logits.argmax(axis=1) == y[start : start + 16]).sum())
            truths.append((answer.headers["x-gallery-request-id"], y[start : start + 16].tolist()))
    print(
        f"{len(latencies)} requests ({len(x)} test rows) through {GATEWAY}/v2/models/{MODEL}/infer: "
        f"accuracy {correct / len(x):.3f}, latency p50 {np.percentile(latencies, 50):.1f} ms, "
        f"p99 {np.percentile(latencies, 99):.1f} ms"
    )
    return truths


def give_feedback(truths: list[tuple[str, list[int]]]) -> None:
    """The true classes of those answers: the first with the CLI, the rest in one batch."""
    (first_id, first_labels), rest = truths[0], truths[1:]
    gallery("feedback", MODEL, "--request-id", first_id, *[f"--label={label}" for label in first_labels])
    batch = {"outcomes": [{"request_id": request_id, "label": labels} for request_id, labels in rest]}
    httpx.post(f"{GATEWAY}/v2/models/{MODEL}/feedback", json=batch, timeout=30).raise_for_status()
    rows = sum(len(labels) for _, labels in truths)
    print(f"... and {len(rest)} more answers in one POST /v2/models/{MODEL}/feedback: {rows} rows labelled")


def show_what_the_monitor_saw(version: dict, timeout: float = 30) -> None:
    """Keep real traffic flowing until the monitor's scrapes have seen it (a rate needs two), then print its view."""
    import io

    import numpy as np

    split = version["artifacts"]["test_split"]["uri"]
    with np.load(io.BytesIO(Path(split.removeprefix("file://")).read_bytes())) as data:
        x = data["x"]
    deadline = time.monotonic() + timeout
    with httpx.Client(base_url=GATEWAY, timeout=30) as client:
        while time.monotonic() < deadline:
            for start in range(0, len(x), 16):
                rows = x[start : start + 16]
                body = {"inputs": [{"name": "features", "datatype": "FP32", "shape": list(rows.shape),
                                    "data": rows.ravel().tolist()}]}  # fmt: skip
                client.post(f"/v2/models/{MODEL}/infer", json=body)
                time.sleep(0.05)
            figures = httpx.get(f"{MONITOR}/api/v1/models/{MODEL}/figures", params={"window_s": 60})
            if figures.status_code == 200 and any((v.get("rps") or 0) > 0 for v in figures.json()["versions"]):
                break
    gallery("monitor", MODEL, "--once", check=False)


async def show_dead_letter_handling(settings: GallerySettings) -> None:
    """A malformed event is refused by the gate with a reason, and the gate goes on."""
    # only the trainer may publish model.trained, so the malformed event goes out with its credentials
    trainer = EventBus.from_settings(settings, user="trainer", source="/modelgallery/demo")
    async with trainer as producer, EventBus.from_settings(settings, user="cli") as reader:
        await producer.publish_raw(
            "model.trained.default",
            b'{"specversion": "1.0", "id": "demo-malformed", "source": "/demo", '
            b'"type": "io.modelgallery.model.trained.v1", "subject": "digits/x", "data": {"model": "digits"}}',
        )
        deadline = time.monotonic() + 15
        while time.monotonic() < deadline and not any(
            d.event_id == "demo-malformed" for d in await reader.dead_letters()
        ):
            await asyncio.sleep(0.2)


def main() -> None:
    settings = load_settings(GallerySettings, service_name="demo")
    home = settings.home.resolve()
    installed = service_names()
    banner(f"Start the embedded stack (GALLERY_HOME={home})")
    gallery("up", "--detach")
    tail = subprocess.Popen([GALLERY, "events", "tail"], text=True, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL)
    try:
        if {"registry", "trainer"} <= set(installed):
            before = (newest_version() or {"version": 0})["version"]
            banner("Train a digits classifier (scikit-learn's 8x8 digits, an MLP, one DeepSpeed rank)")
            gallery("train", str(REPO / "examples" / "digits.yaml"), live=True)

            banner("The registry's validation gate evaluates it itself, on the held-out test split")
            judged = wait_for_judgement(after=before)
            gallery("models", "show", f"{MODEL}:{judged['version']}")
            if judged["status"] != "validated":
                print(f"rejected: {judged.get('rejection_reasons')}")
            elif "optimizer" in installed:
                banner("model.validated started the optimizer: INT8, FP16, pruned and distilled variants, measured")
                gallery("optimize", f"{MODEL}:{judged['version']}", live=True)
            if judged["status"] == "validated" and "deployer" in installed:
                banner("model.validated deployed it and model.optimized rolled the recommended variant in")
                wait_for_deployment(judged["version"])
                gallery("deployments")
                banner("Real requests through the gateway (the Open Inference Protocol, as any v2 client sends)")
                version = httpx.get(f"{REGISTRY}/api/v1/models/{MODEL}/versions/{judged['version']}").json()
                keep_answers_for_feedback()
                truths = infer_through_gateway(version)
                banner("Feedback: the true class of each answer, joined by the gateway to the version that gave it")
                give_feedback(truths)
                banner("Why that answer: SHAP attributions per 2x2 patch of the digit, from the model server")
                gallery("explain", MODEL, "--from-test", "3", "--top", "5")
                if "monitor" in installed:
                    banner(
                        "What the monitor saw: figures per version, online accuracy from the feedback beside the "
                        "gate's, drift against the training data, alerts"
                    )
                    show_what_the_monitor_saw(version)

        banner("A malformed event is dead-lettered with its reason; nothing crash-loops")
        asyncio.run(show_dead_letter_handling(settings))
        gallery("events", "dlq", "--limit", "3")

        banner("Every lifecycle event the bus carried (`gallery events tail`)")
        time.sleep(1.0)
        tail.terminate()
        out, _ = tail.communicate(timeout=10)
        print(out, end="")

        banner("Health of everything that runs")
        gallery("status", check=False)
    finally:
        if tail.poll() is None:
            tail.kill()
        banner("Stop what the demo started")
        gallery("down", check=False)
    banner("Where to look")
    print(f"logs:            {home / 'logs'}")
    print(f"artifacts:       {home / 'artifacts'}  (runs/<run id>/curves.png: the training curves)")
    print(f"event store:     {home / 'nats'}  (JetStream, sync_interval: always)")
    print("keep it running: make up   then  gallery events tail | gallery models list | gallery runs list")
    print(
        "                 http://127.0.0.1:8001/docs (registry API)  http://127.0.0.1:8002/docs (trainer API)"
        "  http://127.0.0.1:8003/docs (optimizer API)"
    )
    print(
        "                 http://127.0.0.1:8004/docs (deployer API)  http://127.0.0.1:8080/v2/models/digits-mlp"
        " (the gateway)"
    )
    print(f"edge bundle:     {home / 'artifacts' / 'optimized' / MODEL}/<version>/  (tarball with a standalone runner)")
    print(f"                 or, with make up: gallery models download {MODEL} --role edge_bundle")
    print(
        "your own model:  .venv/bin/python examples/sklearn_to_onnx.py wine-import   then, with make up:"
        " gallery models import wine-import/wine-forest.onnx --name wine-forest"
        " --train wine-import/train.npz --test wine-import/test.npz"
    )
    print("gallery: http://127.0.0.1:8000/ (catalogue, model cards, experiments, try it, monitoring)")


if __name__ == "__main__":
    os.environ.setdefault("GALLERY_HOME", str(Path(".gallery").resolve()))
    # the gateway samples every request for the monitor in the demo (1 % by default), so drift has data
    os.environ.setdefault("GALLERY_SAMPLE_RATE", "1.0")
    # the commands' tables are captured, so tell them the width of the terminal the demo runs in
    os.environ.setdefault("COLUMNS", str(max(120, shutil.get_terminal_size().columns)))
    main()
