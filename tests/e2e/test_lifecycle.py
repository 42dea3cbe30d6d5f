"""The whole lifecycle on the embedded stack, each service its own process as `gallery up` runs it.

train digits → model.trained → the gate → model.validated → the deployer puts v1 in production →
model.optimized → the recommended variant rolls in; train again → v2 validated → canary beside v1 →
its analysis passes → promoted (the `production` alias moves) → the test split through the gateway
gives the gate's accuracy → drifted inputs → the monitor publishes one model.degraded → the deployer
rolls back to v1 and the registry marks v2 for revalidation. One trace runs through each version's
events. Beside it, on the same stack: a model named with a dot, and a model trained by three federated
sites, and a classifier fitted in scikit-learn and imported as an ONNX file, go through the same lifecycle.
"""

from __future__ import annotations

import asyncio
import io
import json
import re
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import replace
from functools import partial
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import orjson
import pytest
import yaml
from foreign_models import (
    fit_digits,
    fit_regressor,
    skl2onnx_regressor,
    skl2onnx_style,
    skl2onnx_text_pipeline,
    torch_style,
)
from lifecycle_stack import LifecycleStack
from prometheus_client.parser import text_string_to_metric_families
from promtool_check import Promtool
from sklearn.datasets import load_digits
from sklearn.metrics import r2_score
from waiting import wait_for as _wait_for

from gallery_cli.stack import stack_authorization
from gallery_common.events import CloudEvent
from gallery_common.nats_server import EmbeddedNats
from gallery_common.netutil import free_port
from gallery_common.telemetry import trace_id_of
from gallery_trainer.federated.partition import write_site_folders
from gallery_trainer.spec import parse_spec

# each check reads the whole event stream: look once a second
wait_for = partial(_wait_for, interval=1.0)
REPO = Path(__file__).resolve().parents[2]
GALLERY = Path(sys.executable).with_name("gallery")
MODEL = "digits-mlp"


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LifecycleStack]:
    """One stack for the module: each test takes its own model through it."""
    tmp_path = tmp_path_factory.mktemp("lifecycle")
    home = tmp_path / "home"
    # a NATS user per service, as `gallery up` runs it: every service logs in as itself
    authorization = stack_authorization(home, [])
    with EmbeddedNats(home / "nats", log_file=tmp_path / "nats.log", authorization=authorization) as nats_server:
        running = LifecycleStack(home=home, nats_url=nats_server.url)
        try:
            running.start("registry")
            running.start("trainer")
            # the CPU target only, as on a host without OpenVINO: its measurements are tested in
            # tests/integration/optimizer/test_optimizer_openvino.py and here only cost the stack time
            # (the text model's lifecycle took 136 s with them, 29 s without)
            running.start("optimizer", GALLERY_OPENVINO_PYTHON=str(tmp_path / "no-openvino" / "python"))
            running.start("gateway", GALLERY_SAMPLE_RATE="1")
            running.start("deployer", GALLERY_CANARY_WINDOW_S="5", GALLERY_CANARY_MIN_REQUESTS="5", GALLERY_DRAIN_S="2")
            running.start(
                "monitor",
                GALLERY_SCRAPE_INTERVAL_S="1",
                GALLERY_EVALUATE_INTERVAL_S="1",
                GALLERY_SLO_WINDOW_S="20",
                GALLERY_SLO_DRIFT_MIN_SAMPLES="100",
            )
            yield running
        finally:
            running.stop()


async def stored_events(stack: LifecycleStack) -> list[CloudEvent]:
    async with stack.bus() as bus:
        return await bus.stored_events()


def events_of(stack: LifecycleStack, kind: str, **match: object) -> list[CloudEvent]:
    found = [e for e in asyncio.run(stored_events(stack)) if e.event == kind]
    return [e for e in found if all(getattr(e.data, k, None) == v for k, v in match.items())]


def train(stack: LifecycleStack, spec: Path = REPO / "examples" / "digits.yaml") -> None:
    result = subprocess.run(
        [str(GALLERY), "train", str(spec)],
        env=stack.env(),
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stdout + result.stderr


def version_of(stack: LifecycleStack, version: int, model: str = MODEL) -> dict[str, Any]:
    return httpx.get(f"{stack.services['registry'].url}/api/v1/models/{model}/versions/{version}").json()  # type: ignore[no-any-return]


def production_alias(stack: LifecycleStack) -> int:
    registry = stack.services["registry"].url
    return int(httpx.get(f"{registry}/api/v1/models/{MODEL}/aliases/production").json()["version"])


def held_out_split(stack: LifecycleStack, version: int, model: str = MODEL) -> tuple[np.ndarray, np.ndarray]:
    uri = version_of(stack, version, model)["artifacts"]["test_split"]["uri"]
    with np.load(io.BytesIO(Path(uri.removeprefix("file://")).read_bytes())) as data:
        return data["x"], data["y"]


def infer_body(rows: np.ndarray) -> bytes:
    return orjson.dumps(
        {"inputs": [{"name": "features", "datatype": "FP32", "shape": list(rows.shape), "data": rows.ravel().tolist()}]}
    )


def infer(stack: LifecycleStack, rows: np.ndarray, model: str = MODEL) -> dict[str, Any]:
    answer = httpx.post(
        f"{stack.services['gateway'].url}/v2/models/{model}/infer", content=infer_body(rows), timeout=30
    )
    assert answer.status_code == 200, answer.text
    return answer.json()  # type: ignore[no-any-return]


def accuracy_through_gateway(
    stack: LifecycleStack, x: np.ndarray, y: np.ndarray, model: str = MODEL
) -> tuple[float, set[str]]:
    correct, versions = 0, set()
    for start in range(0, len(x), 30):
        answer = infer(stack, x[start : start + 30], model)
        versions.add(answer["model_version"])
        output = answer["outputs"][0]
        logits = np.asarray(output["data"]).reshape(output["shape"])
        correct += int((logits.argmax(axis=1) == y[start : start + 30]).sum())
    return correct / len(x), versions


def deployed(stack: LifecycleStack, version: int, stage: str, model: str = MODEL) -> list[CloudEvent]:
    return events_of(stack, "deployed", model=model, version=version, stage=stage)


@pytest.mark.slow
def test_the_whole_lifecycle_from_training_to_a_rollback_on_drift(stack: LifecycleStack, promtool: Promtool) -> None:
    # v1: trained, validated by the gate's own evaluation, deployed to production, optimized variant rolled in
    train(stack)
    wait_for("v1 judged", lambda: version_of(stack, 1).get("status") in {"validated", "rejected"}, 120)
    v1 = version_of(stack, 1)
    assert v1["status"] == "validated", v1.get("rejection_reasons")
    assert v1["evaluation_report"]["accuracy"] >= 0.9
    wait_for("v1 in production", lambda: deployed(stack, 1, "production"), 120)
    optimized = wait_for("v1 optimized", lambda: events_of(stack, "optimized", model=MODEL, version=1), 300)[0]
    wait_for(
        "v1's recommended variant rolled in",
        lambda: [e for e in deployed(stack, 1, "production") if e.data.variant == optimized.data.recommended],
        120,
    )
    assert production_alias(stack) == 1

    # v2: validated, a canary beside v1, its analysis passes, promoted
    train(stack)
    wait_for("v2 judged", lambda: version_of(stack, 2).get("status") in {"validated", "rejected"}, 120)
    assert version_of(stack, 2)["status"] == "validated"
    canary = wait_for("v2 canary", lambda: deployed(stack, 2, "canary"), 120)[0]
    assert canary.data.traffic_percent == 10.0
    wait_for("v2 promoted", lambda: deployed(stack, 2, "production"), 300)
    assert production_alias(stack) == 2

    # clients through the gateway get the gate's accuracy from v2
    x, y = held_out_split(stack, 2)
    accuracy, served = accuracy_through_gateway(stack, x, y)
    assert served == {"2"}
    assert accuracy == pytest.approx(version_of(stack, 2)["evaluation_report"]["accuracy"], abs=0.01)

    # drifted inputs: one model.degraded, a rollback to v1, v2 marked for revalidation
    drifted = (x * 0.0 + 4.0 + np.random.default_rng(3).normal(size=x.shape)).astype(np.float32)
    deadline = time.monotonic() + 120
    while not events_of(stack, "degraded", model=MODEL, version=2) and time.monotonic() < deadline:
        for start in range(0, len(drifted), 30):
            infer(stack, drifted[start : start + 30])
        time.sleep(1.0)
    (degraded,) = wait_for("v2 degraded", lambda: events_of(stack, "degraded", model=MODEL, version=2), 30)
    assert degraded.data.kind == "drift"
    rolled = wait_for("the rollback", lambda: events_of(stack, "rolled_back", model=MODEL, version=2), 120)[0]
    assert rolled.data.to_version == 1
    assert production_alias(stack) == 1
    assert wait_for("v2 marked", lambda: version_of(stack, 2)["tags"].get("needs_revalidation") == "true", 30)
    assert infer(stack, x[:5])["model_version"] == "1"
    # the monitor judges the same drift twice more: the episode stays open, no second alert
    rounds = evaluation_rounds(stack)
    wait_for("two more evaluation rounds", lambda: evaluation_rounds(stack) >= rounds + 2, 60)
    assert len(events_of(stack, "degraded", model=MODEL, version=2)) == 1

    # one trace per version from the trainer through the gate and the optimizer to its first deployment
    events = asyncio.run(stored_events(stack))
    for version, first_stage in ((1, "production"), (2, "canary")):
        steps = [
            e for e in events if (getattr(e.data, "model", None), getattr(e.data, "version", None)) == (MODEL, version)
        ]
        first_deploy = next(e for e in steps if e.event == "deployed" and e.data.stage == first_stage)
        traced = [e for e in steps if e.event in {"validated", "optimized"}] + [first_deploy]
        traces = {trace_id_of(e.traceparent) for e in traced}
        assert len(traces) == 1 and None not in traces, (version, traces)

    # every process's /metrics, after all that traffic, is clean under promtool
    assert_metrics_pass_promtool(stack, promtool)


def evaluation_rounds(stack: LifecycleStack) -> float:
    """How many evaluation rounds the monitor has finished, from its /metrics."""
    page = httpx.get(f"{stack.services['monitor'].url}/metrics", timeout=10).text
    return sum(
        sample.value
        for family in text_string_to_metric_families(page)
        if family.name == "modelgallery_monitor_evaluations"
        for sample in family.samples
        if sample.name.endswith("_total") and sample.labels.get("outcome") == "ok"
    )


def assert_metrics_pass_promtool(stack: LifecycleStack, promtool: Promtool) -> None:
    deployments = httpx.get(f"{stack.services['deployer'].url}/api/v1/deployments", timeout=10).json()
    model_servers = {
        f"model server {d['model']}:{d['version']} ({url})": url for d in deployments for url in d["endpoints"]
    }
    pages = {name: service.url for name, service in stack.services.items()} | model_servers
    assert model_servers, "no model server to check"
    problems = {name: promtool.problems(httpx.get(f"{url}/metrics", timeout=10).content) for name, url in pages.items()}
    assert not {name: found for name, found in problems.items() if found}


@pytest.mark.slow
def test_a_model_whose_name_has_a_dot_goes_through_the_whole_lifecycle(stack: LifecycleStack, tmp_path: Path) -> None:
    """`iris.v2` is a valid name everywhere: the gateway routes it, NATS carries it (`infer.iris~v2`),
    the monitor receives its samples."""
    spec = tmp_path / "iris.v2.yaml"
    spec.write_text((REPO / "examples" / "iris.yaml").read_text().replace("name: iris-mlp", "name: iris.v2", 1))
    train(stack, spec)
    wait_for("v1 judged", lambda: version_of(stack, 1, "iris.v2").get("status") in {"validated", "rejected"}, 120)
    assert version_of(stack, 1, "iris.v2")["status"] == "validated"
    wait_for("v1 in production", lambda: deployed(stack, 1, "production", "iris.v2"), 120)
    optimized = wait_for("v1 optimized", lambda: events_of(stack, "optimized", model="iris.v2", version=1), 300)[0]
    wait_for(
        "the recommended variant rolled in",
        lambda: [
            e for e in deployed(stack, 1, "production", "iris.v2") if e.data.variant == optimized.data.recommended
        ],
        120,
    )

    rows = np.random.default_rng(0).normal(size=(4, 4)).astype(np.float32)
    through_gateway = infer(stack, rows, "iris.v2")
    assert (through_gateway["model_name"], through_gateway["model_version"]) == ("iris.v2", "1")

    async def over_nats() -> dict[str, Any]:
        async with stack.bus("cli") as bus:
            reply = await bus.nc.request("infer.iris~v2", infer_body(rows), timeout=10)
            return orjson.loads(reply.data)  # type: ignore[no-any-return]

    assert asyncio.run(over_nats())["outputs"][0]["data"] == through_gateway["outputs"][0]["data"]

    monitor = stack.services["monitor"].url
    wait_for(
        "the monitor to show iris.v2 v1 in production",
        lambda: [
            m
            for m in httpx.get(f"{monitor}/api/v1/models", timeout=10).json()
            if m["model"] == "iris.v2" and m["aliases"].get("production") == 1
        ],
        30,
    )

    def sampled() -> bool:
        infer(stack, rows, "iris.v2")  # the gateway samples every request in this stack
        drift = httpx.get(f"{monitor}/api/v1/models/iris.v2/drift", timeout=10)
        return drift.status_code == 200 and drift.json().get("samples", 0) > 0

    wait_for("the monitor to receive iris.v2's samples", sampled, 30)


@pytest.mark.slow
def test_a_federated_model_passes_the_gate_and_serves_like_any_other(stack: LifecycleStack, tmp_path: Path) -> None:
    """Three site processes (`gallery site run`, each holding only its non-IID share of digits) train one
    model through the trainer service; the gate judges it on the coordinator's held-out split, the
    deployer puts it in production, and clients through the gateway get the gate's accuracy. The
    registry keeps its federation: the sites by name and fingerprint, the rounds, the worst site."""
    model, rounds = "digits-federated", 6
    port = free_port()
    doc = yaml.safe_load((REPO / "examples" / "federated-digits.yaml").read_text())
    doc["engine"] |= {"address": f"127.0.0.1:{port}", "rounds": rounds, "min_sites": 3, "round_timeout_s": 60}
    spec = tmp_path / "federated.yaml"
    spec.write_text(yaml.safe_dump(doc))
    folders = write_site_folders(parse_spec(doc), tmp_path / "sites", n_sites=3, alpha=0.5, seed=0)
    sites = []
    for name, folder in folders.items():
        with open(tmp_path / f"{name}.log", "wb") as log:
            command = ["site", "run", "--federation", f"127.0.0.1:{port}", "--site", name, "--data", str(folder)]
            sites.append(subprocess.Popen([str(GALLERY), *command, "--max-wait", "120"], stdout=log, stderr=log))
    try:
        train(stack, spec)
        assert [site.wait(60) for site in sites] == [0, 0, 0]
    finally:
        for site in sites:
            if site.poll() is None:
                site.kill()
                site.wait()

    wait_for("v1 judged", lambda: version_of(stack, 1, model).get("status") in {"validated", "rejected"}, 120)
    v1 = version_of(stack, 1, model)
    assert v1["status"] == "validated", v1.get("rejection_reasons")
    federation = v1["lineage"]["federation"]
    assert federation["rounds"] == rounds and federation["strategy"] == "fedavg"
    assert sorted(site["name"] for site in federation["sites"]) == sorted(folders)
    assert all(len(site["data_fingerprint"]) == 64 for site in federation["sites"])
    worst = min(v1["metrics"][f"site.{name}.val_accuracy"] for name in folders)
    assert v1["metrics"]["worst_site_val_accuracy"] == pytest.approx(worst)
    card = httpx.get(f"{stack.services['registry'].url}/api/v1/models/{model}/versions/1/card", timeout=10)
    assert card.status_code == 200 and "Federated training" in card.text

    wait_for("v1 in production", lambda: deployed(stack, 1, "production", model), 120)
    x, y = held_out_split(stack, 1, model)
    accuracy, served = accuracy_through_gateway(stack, x, y, model)
    assert served == {"1"}
    assert accuracy == pytest.approx(v1["evaluation_report"]["accuracy"], abs=0.01)


def text_accuracy_through_gateway(stack: LifecycleStack, texts: np.ndarray, y: np.ndarray, model: str) -> float:
    """The share of `texts` the gateway's answers (BYTES [N] in, logits out) classify as `y`, 30 at a time."""
    correct = 0
    for start in range(0, len(texts), 30):
        rows = [str(t) for t in texts[start : start + 30]]
        body = orjson.dumps({"inputs": [{"name": "text", "datatype": "BYTES", "shape": [len(rows)], "data": rows}]})
        answer = httpx.post(f"{stack.services['gateway'].url}/v2/models/{model}/infer", content=body, timeout=30)
        assert answer.status_code == 200, answer.text
        output = answer.json()["outputs"][0]
        logits = np.asarray(output["data"]).reshape(output["shape"])
        correct += int((logits.argmax(axis=1) == y[start : start + 30]).sum())
    return correct / len(texts)


@pytest.mark.slow
def test_a_text_model_goes_through_the_whole_lifecycle(stack: LifecycleStack) -> None:
    """WordNet definitions by topic (examples/text-topics.yaml): the trainer fits the vectorizer into the ONNX
    graph, the gate judges the model on raw texts, the optimizer measures its variants on texts, the deployer
    serves it, clients send strings through the gateway and get the gate's accuracy, and the monitor's drift
    view of the sampled texts has the text rows."""
    model = "wordnet-topics"
    train(stack, REPO / "examples" / "text-topics.yaml")
    wait_for("v1 judged", lambda: version_of(stack, 1, model).get("status") in {"validated", "rejected"}, 120)
    v1 = version_of(stack, 1, model)
    assert v1["status"] == "validated", v1.get("rejection_reasons")
    assert v1["evaluation_report"]["accuracy"] >= 0.75
    wait_for("v1 in production", lambda: deployed(stack, 1, "production", model), 120)
    optimized = wait_for("v1 optimized", lambda: events_of(stack, "optimized", model=model, version=1), 300)[0]
    assert optimized.data.recommended

    texts, y = held_out_split(stack, 1, model)
    assert texts.dtype.kind == "U" and texts.ndim == 1
    accuracy = text_accuracy_through_gateway(stack, texts, y, model)
    assert accuracy == pytest.approx(v1["evaluation_report"]["accuracy"], abs=0.01)

    def text_rows() -> list[str]:
        view = httpx.get(f"{stack.services['monitor'].url}/api/v1/models/{model}/drift", timeout=10)
        if view.status_code != 200:
            return []
        return [row.get("name") or "" for row in view.json().get("features") or []]

    rows = wait_for("the monitor's text drift rows", lambda: "tokens" in text_rows() and text_rows(), 60)
    assert {"tokens", "text length (tokens)", "text length (characters)"} <= set(rows)


def import_model(
    stack: LifecycleStack, model: Path, name: str, train: Path, test: Path, *options: str
) -> subprocess.CompletedProcess[str]:
    """`gallery models import`, waiting for the gate's verdict."""
    command = [str(GALLERY), "models", "import", str(model), "--name", name, "--train", str(train), "--test", str(test)]
    return subprocess.run(
        [*command, *options, "--timeout", "180"], env=stack.env(), capture_output=True, text=True, timeout=300
    )


@pytest.mark.slow
def test_a_classifier_fitted_elsewhere_is_imported_validated_optimized_and_served(
    stack: LifecycleStack, tmp_path: Path
) -> None:
    """`gallery models import` with a scikit-learn logistic regression in skl2onnx's layout: the gate
    validates it, the deployer serves it, the optimizer distills a student from its answers and says why
    it built nothing else, and the gateway answers as the fitted model does."""
    fitted = fit_digits()
    model_file = tmp_path / "logreg.onnx"
    model_file.write_bytes(skl2onnx_style(fitted))
    train, test = fitted.write_splits(tmp_path)
    pixels = ",".join(load_digits().feature_names)
    result = import_model(stack, model_file, "digits-logreg", train, test, "--feature-names", pixels)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "digits-logreg:1 validated" in result.stdout, result.stdout
    version = version_of(stack, 1, "digits-logreg")
    assert version["run_id"].startswith("import-")
    assert version["evaluation_report"]["accuracy"] == pytest.approx(fitted.accuracy(), abs=1e-6)

    wait_for("v1 in production", lambda: deployed(stack, 1, "production", "digits-logreg"), 120)
    # its answers are explained in the names the import gave its features
    explained = subprocess.run(
        [str(GALLERY), "explain", "digits-logreg", "--row", json.dumps(fitted.x_test[0].tolist()), "--top", "3"],
        env=stack.env(),
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert explained.returncode == 0, explained.stdout + explained.stderr
    assert explained.stdout.count("pixel_") >= 3, explained.stdout
    optimized = wait_for("v1 optimized", lambda: events_of(stack, "optimized", model="digits-logreg", version=1), 300)
    variants = {v.name: v for v in optimized[0].data.variants}
    # skl2onnx's LinearClassifier is one ONNX-ML operator: nothing for INT8 or FP16, and the report says so
    assert variants["int8_dynamic"].artifact is None and "quantized nothing" in (variants["int8_dynamic"].error or "")
    assert "ONNX-ML operators (LinearClassifier, Normalizer)" in (variants["fp16"].error or "")
    for needs_weights in ("pruned_magnitude", "pruned_structured"):
        assert variants[needs_weights].artifact is None and "PyTorch weights" in (variants[needs_weights].error or "")
    # the student learns from the imported model's answers: no weights of the teacher needed
    assert variants["distilled"].artifact is not None, variants["distilled"].error
    recommended = optimized[0].data.recommended
    wait_for(
        "the recommended variant rolled in",
        lambda: [e for e in deployed(stack, 1, "production", "digits-logreg") if e.data.variant == recommended],
        120,
    )
    accuracy, versions = accuracy_through_gateway(stack, fitted.x_test, fitted.y_test, "digits-logreg")
    assert versions == {"1"}
    # the recommended variant may lose up to the optimizer's accuracy budget (1 point) against FP32
    assert accuracy >= fitted.accuracy() - 0.01

    # a second import whose classes are shuffled: the gate rejects it, the CLI says why and exits 1
    shuffled = replace(fitted, weights=np.roll(fitted.weights, 1, axis=1), bias=np.roll(fitted.bias, 1))
    bad_file = tmp_path / "shuffled.onnx"
    bad_file.write_bytes(torch_style(shuffled))
    result = import_model(stack, bad_file, "digits-logreg", train, test)
    assert result.returncode == 1, result.stdout + result.stderr
    assert "digits-logreg:2 rejected by the validation gate: accuracy" in result.stderr, result.stderr
    assert version_of(stack, 2, "digits-logreg")["status"] == "rejected"
    assert not deployed(stack, 2, "production", "digits-logreg") + deployed(stack, 2, "canary", "digits-logreg")


@pytest.mark.slow
def test_a_text_pipeline_fitted_elsewhere_is_imported_validated_optimized_and_served(
    stack: LifecycleStack, tmp_path: Path
) -> None:
    """A scikit-learn TF-IDF + logistic regression pipeline through skl2onnx, imported with splits of raw
    texts: the gate judges it on the texts, the optimizer measures its variants on them, the deployer serves
    it, and clients send strings through the gateway and get the accuracy it had where it was fitted."""
    model = "topics-tfidf"
    fitted = skl2onnx_text_pipeline()
    model_file = tmp_path / "topics.onnx"
    model_file.write_bytes(fitted.onnx)
    train, test = fitted.write_splits(tmp_path)
    result = import_model(stack, model_file, model, train, test, "--class-names", "sports,weather,money")
    assert result.returncode == 0, result.stdout + result.stderr
    assert f"{model}:1 validated" in result.stdout and "texts, 3 classes" in result.stdout, result.stdout
    version = version_of(stack, 1, model)
    assert version["evaluation_report"]["accuracy"] == pytest.approx(fitted.accuracy(), abs=1e-6)
    wait_for("v1 in production", lambda: deployed(stack, 1, "production", model), 120)
    optimized = wait_for("v1 optimized", lambda: events_of(stack, "optimized", model=model, version=1), 300)[0]
    variants = {v.name: v for v in optimized.data.variants}
    assert variants["fp32"].metrics["accuracy"] == pytest.approx(fitted.accuracy(), abs=1e-6)
    recommended = optimized.data.recommended
    wait_for(
        "the recommended variant rolled in",
        lambda: [e for e in deployed(stack, 1, "production", model) if e.data.variant == recommended],
        120,
    )
    # the recommended variant may lose up to the optimizer's accuracy budget (1 point) against FP32
    assert text_accuracy_through_gateway(stack, fitted.x_test, fitted.y_test, model) >= fitted.accuracy() - 0.01


@pytest.mark.slow
def test_a_regressor_fitted_elsewhere_is_imported_judged_on_r2_and_served(
    stack: LifecycleStack, tmp_path: Path
) -> None:
    """A scikit-learn LinearRegression through skl2onnx, imported with --task regression: without a policy of
    its own the gate holds it to r2 (a regressor has no accuracy), the gateway answers its predictions, and
    the optimizer holds its variants to its r2: a distilled student is built, and whichever variant is
    recommended serves within the budget of r2."""
    fitted = fit_regressor()
    model_file = tmp_path / "linear.onnx"
    model_file.write_bytes(skl2onnx_regressor(fitted))
    train, test = fitted.write_splits(tmp_path)
    result = import_model(stack, model_file, "synthetic-linear", train, test, "--task", "regression")
    assert result.returncode == 0, result.stdout + result.stderr
    expected_r2 = r2_score(fitted.y_test, fitted.regressor.predict(fitted.x_test))
    assert f"synthetic-linear:1 validated (the gate measured r2 {expected_r2:.4f})" in result.stdout, result.stdout
    report = version_of(stack, 1, "synthetic-linear")["evaluation_report"]
    assert report["r2"] == pytest.approx(expected_r2, abs=1e-4) and "accuracy" not in report

    wait_for("v1 in production", lambda: deployed(stack, 1, "production", "synthetic-linear"), 120)
    answer = infer(stack, fitted.x_test[:30], "synthetic-linear")
    output = answer["outputs"][0]
    assert output["shape"] == [30, 1]
    np.testing.assert_allclose(output["data"], fitted.regressor.predict(fitted.x_test[:30]), rtol=1e-4, atol=1e-4)

    optimized = wait_for(
        "v1 optimized", lambda: events_of(stack, "optimized", model="synthetic-linear", version=1), 300
    )
    variants = {v.name: v for v in optimized[0].data.variants}
    # skl2onnx's LinearRegressor is one ONNX-ML operator: nothing to quantize, and the student learns from it
    assert "quantized nothing" in (variants["int8_dynamic"].error or "")
    student = variants["distilled"]
    assert student.artifact is not None, student.error
    assert {"r2", "rmse", "r2_delta"} <= set(student.metrics) and "accuracy" not in student.metrics
    recommended = optimized[0].data.recommended
    assert recommended in {"fp32", "distilled"}
    wait_for(
        "the recommended variant serves",
        lambda: [e for e in deployed(stack, 1, "production", "synthetic-linear") if e.data.variant == recommended],
        120,
    )
    rows = [fitted.x_test[i : i + 30] for i in range(0, len(fitted.x_test), 30)]
    served = [infer(stack, part, "synthetic-linear")["outputs"][0]["data"] for part in rows]
    served_r2 = r2_score(fitted.y_test, np.concatenate(served))
    # the recommended variant may lose up to the optimizer's budget (1 point of r2) against FP32
    assert served_r2 >= expected_r2 - 0.01, (recommended, served_r2, expected_r2)


def gateway_routes(stack: LifecycleStack, model: str, variant: str) -> None:
    """Wait until the gateway's route of `model` names `variant` for its backends (it follows the deployer's
    routes bucket), so the answers it gives from then on are that variant's."""
    url = f"{stack.services['gateway'].url}/admin/routes/{model}"
    wait_for(
        f"the gateway routing to {variant}",
        lambda: {b["variant"] for b in httpx.get(url, timeout=10).json()["backends"]} == {variant},
        30,
    )


def table_cells(line: str) -> list[str]:
    """The cells of one row of a table the CLI printed, its borders dropped (empty cells kept)."""
    parts = re.split(r"[│┃]", line)
    return [cell.strip() for cell in parts[1:-1]] if len(parts) > 2 else []


def answer_with_ids(stack: LifecycleStack, x: np.ndarray, model: str) -> list[tuple[str, np.ndarray]]:
    """The rows through the gateway, 30 per request: each answer's request id and its top classes."""
    answers = []
    for start in range(0, len(x), 30):
        answer = infer(stack, x[start : start + 30], model)
        output = answer["outputs"][0]
        answers.append((answer["id"], np.asarray(output["data"]).reshape(output["shape"]).argmax(axis=1)))
    return answers


def give_labels(stack: LifecycleStack, model: str, answers: list[tuple[str, np.ndarray]], y: np.ndarray) -> None:
    outcomes, start = [], 0
    for request_id, classes in answers:
        outcomes.append({"request_id": request_id, "label": y[start : start + len(classes)].tolist()})
        start += len(classes)
    given = httpx.post(
        f"{stack.services['gateway'].url}/v2/models/{model}/feedback", json={"outcomes": outcomes}, timeout=30
    )
    assert given.status_code == 202, given.text


@pytest.mark.slow
def test_feedback_on_production_answers_is_its_online_quality_and_a_fall_below_the_gate_is_degraded(
    stack: LifecycleStack, tmp_path: Path
) -> None:
    """A model's deployment policy keeps its answers for feedback; labels joined by the gateway become the
    monitor's online accuracy of the version, beside the gate's; labels that say an optimized variant answers
    far worse than the optimizer measured make the deployer serve FP32 instead; labels that say FP32 answers far
    worse than the gate measured break its quality SLO: one model.degraded (quality) and the registry marks it."""
    model = "digits-feedback"
    fitted = fit_digits(seed=1)
    model_file = tmp_path / "logreg.onnx"
    model_file.write_bytes(skl2onnx_style(fitted))
    train, test = fitted.write_splits(tmp_path)
    assert import_model(stack, model_file, model, train, test).returncode == 0
    (optimized,) = wait_for("v1 optimized", lambda: events_of(stack, "optimized", model=model, version=1), 300)
    recommended = optimized.data.recommended
    wait_for(
        f"v1's {recommended} in production",
        lambda: [e for e in deployed(stack, 1, "production", model) if e.data.variant == recommended],
        120,
    )
    gate = version_of(stack, 1, model)["evaluation_report"]["accuracy"]
    measured = {v.name: v.metrics.get("accuracy") for v in optimized.data.variants if v.artifact and not v.error}

    deployer, monitor = stack.services["deployer"].url, stack.services["monitor"].url
    refused = httpx.post(f"{stack.services['gateway'].url}/v2/models/{model}/feedback", json={
        "request_id": answer_with_ids(stack, fitted.x_test[:1], model)[0][0], "label": 0})  # fmt: skip
    assert refused.status_code == 404, "answers are not kept unless the policy says so"
    keep = [str(GALLERY), "policy", model, "--record-outcomes"]
    policy = subprocess.run(keep, env=stack.env(), capture_output=True, text=True, timeout=60)
    assert policy.returncode == 0, policy.stdout + policy.stderr
    assert f"deployment policy of {model} (changed)" in policy.stdout
    assert httpx.get(f"{deployer}/api/v1/policies/{model}", timeout=30).json()["record_outcomes"] is True
    slo = {"max_accuracy_drop": 0.1, "quality_min_rows": 100, "quality_window_s": 900}
    assert httpx.put(f"{monitor}/api/v1/slos/{model}", json=slo, timeout=30).status_code == 200

    # the true labels: online accuracy is what the answers earned, the gate's figure beside it
    def kept_answers() -> list[tuple[str, np.ndarray]] | None:
        """The test split answered once the route keeps answers: the first takes a reward, so it was kept."""
        answers = answer_with_ids(stack, fitted.x_test, model)
        first = {"request_id": answers[0][0], "reward": 0.0}
        kept = httpx.post(f"{stack.services['gateway'].url}/v2/models/{model}/feedback", json=first, timeout=30)
        return answers if kept.status_code == 202 else None

    answers = wait_for("the route to keep answers", kept_answers, 30)
    give_labels(stack, model, answers[1:], fitted.y_test[30:])
    earned = float(np.mean(np.concatenate([classes for _, classes in answers[1:]]) == fitted.y_test[30:]))

    def quality() -> dict[str, Any]:
        return httpx.get(f"{monitor}/api/v1/models/{model}/quality", timeout=10).json()  # type: ignore[no-any-return]

    labelled = len(fitted.y_test) - 30
    wait_for(
        "the monitor's online accuracy", lambda: (v := quality()["versions"]) and v[0]["labelled_rows"] == labelled, 60
    )
    [online] = quality()["versions"]
    assert online["accuracy"] == pytest.approx(earned, abs=1e-6) and online["gate_accuracy"] == pytest.approx(gate)
    assert online["rewarded"] == 1
    # the answers were the recommended variant's: its row beside what the optimizer measured of it
    [variant] = online["variants"]
    assert (variant["variant"], variant["labelled_rows"], variant["accuracy"]) == (
        recommended,
        labelled,
        online["accuracy"],
    )
    assert variant["test_accuracy"] == pytest.approx(measured[recommended])
    assert not events_of(stack, "degraded", model=model, version=1)

    # a person serves another variant by hand (FP32 unless that is the one served): answers given from then on
    # are that variant's, and the quality view keeps both beside what the optimizer measured of each
    listed = subprocess.run(
        [str(GALLERY), "variants", f"{model}:1"], env=stack.env(), capture_output=True, text=True, timeout=60
    )
    assert listed.returncode == 0, listed.stdout + listed.stderr
    rows = {cells[0]: cells for line in listed.stdout.splitlines() if len(cells := table_cells(line)) >= 3}
    assert rows[recommended][1] == "serving, recommended", listed.stdout
    assert rows["fp32"][2] == f"{measured['fp32'] * 100:.2f}%", "the optimizer's accuracy of each variant"
    other = "fp32" if recommended != "fp32" else next(name for name in measured if name != "fp32")
    serve = [str(GALLERY), "variants", f"{model}:1", "--serve", other, "--reason", "compare online"]
    switched = subprocess.run(serve, env=stack.env(), capture_output=True, text=True, timeout=300)
    assert switched.returncode == 0, switched.stdout + switched.stderr
    assert f"{model}:1 serves {other} (production" in switched.stdout
    wait_for(
        f"{other} in production",
        lambda: [e for e in deployed(stack, 1, "production", model) if e.data.variant == other],
        60,
    )
    give_labels(stack, model, answer_with_ids(stack, fitted.x_test[:60], model), fitted.y_test[:60])
    by_variant = wait_for(
        f"{other}'s labels",
        lambda: (v := {x["variant"]: x for x in quality()["versions"][0]["variants"]}).get(other) and v,
        60,
    )
    assert by_variant[other]["labelled_rows"] == 60 and by_variant[recommended]["labelled_rows"] == labelled
    assert by_variant[other]["test_accuracy"] == pytest.approx(measured[other])

    # an optimized variant serves again (by hand, when FP32 serves now) and labels one class off on its new
    # answers say it answers far worse than the optimizer measured: the monitor names it, the deployer serves
    # FP32 instead of rolling v1 back, and the registry leaves v1 unmarked
    wrong = (fitted.y_test + 1) % 10
    optimized_variant = recommended if recommended != "fp32" else other
    policy = subprocess.run(
        [str(GALLERY), "policy", model, "--on-variant-breach", "serve_fp32"],
        env=stack.env(), capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert policy.returncode == 0, policy.stdout + policy.stderr
    shown = {cells[0]: cells[1] for line in policy.stdout.splitlines() if len(cells := table_cells(line)) >= 2}
    assert shown["on_variant_breach"] == "serve_fp32", policy.stdout
    if other == "fp32":
        serve = [str(GALLERY), "variants", f"{model}:1", "--serve", optimized_variant, "--reason", "try it again"]
        again = subprocess.run(serve, env=stack.env(), capture_output=True, text=True, timeout=300)
        assert again.returncode == 0, again.stdout + again.stderr
    gateway_routes(stack, model, optimized_variant)  # its answers, not FP32's, get the wrong labels

    def fp32_announced() -> list[CloudEvent]:
        return [e for e in deployed(stack, 1, "production", model) if e.data.variant == "fp32"]

    fp32_before = len(fp32_announced())
    give_labels(stack, model, answer_with_ids(stack, fitted.x_test, model), wrong)
    (of_variant,) = wait_for(
        f"{optimized_variant} degraded",
        lambda: events_of(stack, "degraded", model=model, version=1, variant=optimized_variant),
        60,
    )
    assert of_variant.data.kind == "quality" and "below the optimizer's" in of_variant.data.reason
    wait_for("FP32 served instead", lambda: len(fp32_announced()) > fp32_before, 120)
    serving = httpx.get(f"{deployer}/api/v1/deployments/{model}", timeout=30).json()
    assert [(d["version"], d["stage"], d["variant"]) for d in serving] == [(1, "production", "fp32")]
    assert serving[0]["reason"].startswith(f"FP32 instead of {optimized_variant}, whose answers broke the quality SLO")
    assert not events_of(stack, "rolled_back", model=model, version=1)
    assert "needs_revalidation" not in version_of(stack, 1, model)["tags"]
    listed = subprocess.run(
        [str(GALLERY), "variants", f"{model}:1"], env=stack.env(), capture_output=True, text=True, timeout=60
    )
    rows = {cells[0]: cells for line in listed.stdout.splitlines() if len(cells := table_cells(line)) >= 3}
    assert rows["fp32"][1].startswith("serving") and "withdrawn" in rows[optimized_variant][1], listed.stdout
    assert f"{optimized_variant} withdrawn, not rolled in again unless served by hand: quality:" in listed.stdout
    gateway_routes(stack, model, "fp32")

    # FP32's own answers labelled one class off: the version's own model falls far below the gate's
    give_labels(stack, model, answer_with_ids(stack, fitted.x_test, model), wrong)
    (degraded,) = wait_for("v1 degraded", lambda: events_of(stack, "degraded", model=model, version=1, variant=""), 60)
    assert degraded.data.kind == "quality" and "below the gate's" in degraded.data.reason
    tags = wait_for("v1 marked", lambda: (t := version_of(stack, 1, model)["tags"]).get("needs_revalidation") and t, 30)
    assert tags["degraded_kind"] == "quality"

    # every field of the deployment policy from the terminal; a bad value is the deployer's 422 naming the field
    tune = ["--max-batch-size", "16", "--cpu", "500m", "--execution-providers", "openvino,cpu", "--no-tensorrt-fp16"]
    tuned = subprocess.run(
        [str(GALLERY), "policy", model, *tune], env=stack.env(), capture_output=True, text=True, timeout=60
    )
    assert tuned.returncode == 0, tuned.stdout + tuned.stderr
    shown = {cells[0]: cells[1] for line in tuned.stdout.splitlines() if len(cells := table_cells(line)) >= 2}
    assert (shown["max_batch_size"], shown["cpu"], shown["tensorrt_fp16"]) == ("16", "500m", "false"), tuned.stdout
    assert shown["execution_providers"] == "openvino, cpu" and shown["record_outcomes"] == "true"
    stored = httpx.get(f"{deployer}/api/v1/policies/{model}", timeout=30).json()
    assert (stored["max_batch_size"], stored["execution_providers"]) == (16, ["openvino", "cpu"])
    bad = subprocess.run(
        [str(GALLERY), "policy", model, "--execution-providers", "tpu"],
        env=stack.env(), capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert bad.returncode != 0 and "execution_providers" in bad.stdout + bad.stderr, bad.stdout + bad.stderr
    assert httpx.get(f"{deployer}/api/v1/policies/{model}", timeout=30).json()["execution_providers"] == [
        "openvino",
        "cpu",
    ]
