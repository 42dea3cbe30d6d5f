"""`gallery models import` against the real trainer (uvicorn, a real nats-server, a file:// store): a
classifier from another tool is adapted, checked, stored and announced as `model.trained` once; what
cannot be imported is refused with the reason, and nothing is stored or sent."""

from __future__ import annotations

import io
import json
import subprocess
import sys
from pathlib import Path

import httpx
import numpy as np
import onnx
import onnxruntime as ort
import pytest
from foreign_models import (
    Fitted,
    fit_digits,
    fit_regressor,
    skl2onnx_regressor,
    skl2onnx_style,
    skl2onnx_text_pipeline,
    torch_style,
)
from onnx import TensorProto, helper
from sklearn.datasets import load_wine
from test_trainer_service import audit_records
from trainer_harness import serve_trainer, stored_events, trainer_settings
from typer.testing import CliRunner

from gallery_cli.main import app as cli
from gallery_common.contracts.splits import write_split
from gallery_common.nats_server import EmbeddedNats


@pytest.fixture(scope="module")
def fitted() -> Fitted:
    return fit_digits()


def stored_bytes(uri: str) -> bytes:
    return Path(uri.removeprefix("file://")).read_bytes()


def test_an_skl2onnx_classifier_is_adapted_stored_and_announced_once(
    tmp_path: Path, nats_server: EmbeddedNats, fitted: Fitted, monkeypatch: pytest.MonkeyPatch
) -> None:
    model_file = tmp_path / "logreg.onnx"
    model_file.write_bytes(skl2onnx_style(fitted))
    train, test = fitted.write_splits(tmp_path)
    names = ",".join(f"digit-{i}" for i in range(10))
    command = ["models", "import", str(model_file), "--name", "digits-logreg", "--train", str(train)]
    command += ["--test", str(test), "--class-names", names, "--no-wait"]
    with serve_trainer(trainer_settings(tmp_path, nats_server.url)) as client:
        monkeypatch.setenv("GALLERY_TRAINER_URL", str(client.base_url))
        result = CliRunner().invoke(cli, command)
        assert result.exit_code == 0, result.output
        assert "64 features, 10 classes" in result.output
        assert f"accuracy {fitted.accuracy():.4f}" in result.output
        assert "adapted: input 'X' is now 'features'" in result.output
        assert "'output_probability' (a ZipMap" in result.output and "'output_label'" in result.output

        [event] = stored_events(nats_server.url, "model.trained", 1)
        trained = event.data
        assert trained.model == "digits-logreg" and trained.class_names == names.split(",")
        assert set(trained.artifacts) == {"onnx", "train_split", "validation_split", "test_split"}
        assert trained.signature.inputs[0].name == "features" and trained.signature.inputs[0].shape == [-1, 64]
        assert trained.signature.outputs[0].name == "logits" and trained.signature.outputs[0].shape == [-1, 10]
        # the stored model answers as the fitted one: its logits are the log of the same probabilities
        stored = onnx.load_from_string(stored_bytes(trained.artifacts["onnx"].uri))
        assert stored.graph.output[0].type.tensor_type.shape.dim[1].dim_value == 10
        session = ort.InferenceSession(stored.SerializeToString())
        (logits,) = session.run(["logits"], {"features": fitted.x_test})
        softmax = np.exp(logits) / np.exp(logits).sum(axis=1, keepdims=True)
        np.testing.assert_allclose(softmax, fitted.probabilities(fitted.x_test), atol=1e-5)
        # without a validation split the test rows serve as validation too
        assert trained.artifacts["validation_split"].sha256 == trained.artifacts["test_split"].sha256
        run = client.get(f"/api/v1/runs/{trained.run_id}").json()
        assert run["status"] == "succeeded" and run["event_id"] == event.id
        assert run["params"]["source"] == "import" and run["params"]["file"] == "logreg.onnx"
        assert stored_bytes(run["artifacts"]["source_onnx"]["uri"]) == model_file.read_bytes()
        shown = CliRunner().invoke(cli, ["runs", "show", trained.run_id])
        assert shown.exit_code == 0 and "import" in shown.output and "test_accuracy" in shown.output, shown.output

        # sent again (a retry after a time-out): the same run, and still one model.trained
        again = CliRunner().invoke(cli, command)
        assert again.exit_code == 0, again.output
        assert "imported before: nothing new stored" in again.output and trained.run_id in again.output
        assert len(stored_events(nats_server.url, "model.trained", 2, timeout=2)) == 1
    # who imported what, and what was changed in it, is in the project's audit trail, once
    [record] = [r for r in audit_records(nats_server.url) if r.action == "model.imported"]
    assert (record.target, record.model) == (f"run/{trained.run_id}", "digits-logreg")
    assert record.after["file"] == "logreg.onnx" and record.after["changes"][0] == "input 'X' is now 'features'"


def test_the_readmes_scikit_learn_example_imports_as_written(
    tmp_path: Path, nats_server: EmbeddedNats, monkeypatch: pytest.MonkeyPatch
) -> None:
    """examples/sklearn_to_onnx.py writes a forest through skl2onnx; its files import as the README says."""
    out = tmp_path / "wine-import"
    example = Path(__file__).resolve().parents[3] / "examples" / "sklearn_to_onnx.py"
    written = subprocess.run([sys.executable, str(example), str(out)], capture_output=True, text=True, timeout=120)
    assert written.returncode == 0, written.stderr
    accuracy = written.stdout.split("accuracy on the test rows: ")[1].split(";")[0]
    command = ["models", "import", str(out / "wine-forest.onnx"), "--name", "wine-forest"]
    command += ["--train", str(out / "train.npz"), "--test", str(out / "test.npz")]
    names = load_wine().feature_names
    command += ["--class-names", "class_0,class_1,class_2", "--feature-names", ",".join(names), "--no-wait"]
    with serve_trainer(trainer_settings(tmp_path, nats_server.url)) as client:
        monkeypatch.setenv("GALLERY_TRAINER_URL", str(client.base_url))
        result = CliRunner().invoke(cli, command)
        assert result.exit_code == 0, result.output
        assert f"13 features, 3 classes, accuracy {accuracy} on the test rows" in result.output
    [event] = stored_events(nats_server.url, "model.trained", 1)
    assert event.data.model == "wine-forest" and event.data.class_names == ["class_0", "class_1", "class_2"]
    # the feature names travel as the version's spec, where explanations and the Gallery read them
    spec = json.loads(stored_bytes(event.data.artifacts["spec"].uri))
    assert spec == {"source": "import", "task": "classification", "feature_names": names}


def test_a_scikit_learn_text_pipeline_is_imported_as_a_text_model(
    tmp_path: Path, nats_server: EmbeddedNats, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A TF-IDF pipeline through skl2onnx with splits of raw texts: it takes `text` BYTES [-1] like the
    trainer's own text models, so the gate, optimizer and gateway take it as one; numbers for its splits, or
    feature names, are refused."""
    fitted = skl2onnx_text_pipeline()
    model_file = tmp_path / "topics.onnx"
    model_file.write_bytes(fitted.onnx)
    train, test = fitted.write_splits(tmp_path)
    command = ["models", "import", str(model_file), "--name", "topics", "--train", str(train), "--test", str(test)]
    command += ["--class-names", "sports,weather,money", "--no-wait"]
    with serve_trainer(trainer_settings(tmp_path, nats_server.url)) as client:
        monkeypatch.setenv("GALLERY_TRAINER_URL", str(client.base_url))
        numbers = npz(np.zeros((4, 3), np.float32), np.array([0, 1, 2, 0]))
        files = {"onnx": ("m.onnx", fitted.onnx), "train": ("t.npz", numbers), "test": ("t.npz", test.read_bytes())}
        refused = client.post("/api/v1/imports", data={"model": "topics"}, files=files)
        assert refused.status_code == 422
        assert refused.json()["error"] == "the train split holds numbers; the model takes texts (unicode x [N])"
        files["train"] = ("t.npz", train.read_bytes())
        named = client.post("/api/v1/imports", data={"model": "topics", "feature_names": ["a"]}, files=files)
        assert named.status_code == 422 and "a text model takes one text per row" in named.json()["error"]

        result = CliRunner().invoke(cli, command)
        assert result.exit_code == 0, result.output
        assert f"texts, 3 classes, accuracy {fitted.accuracy():.4f} on the test rows" in result.output
        assert "adapted: input 'input' [N, 1] is now 'text' [N]" in result.output
        assert "lower-cases in C.UTF-8" in result.output
    [event] = stored_events(nats_server.url, "model.trained", 1)
    trained = event.data
    assert (trained.signature.inputs[0].name, trained.signature.inputs[0].datatype) == ("text", "BYTES")
    assert trained.signature.inputs[0].shape == [-1] and trained.signature.outputs[0].shape == [-1, 3]
    stored = ort.InferenceSession(stored_bytes(trained.artifacts["onnx"].uri), providers=["CPUExecutionProvider"])
    (logits,) = stored.run(["logits"], {"text": fitted.x_test})
    assert float((logits.argmax(axis=1) == fitted.y_test).mean()) == pytest.approx(fitted.accuracy())
    with np.load(io.BytesIO(stored_bytes(trained.artifacts["test_split"].uri))) as split:
        assert split["x"].dtype.kind == "U" and list(split["x"]) == list(fitted.x_test)


def two_inputs() -> bytes:
    graph = helper.make_graph(
        [helper.make_node("Add", ["a", "b"], ["out"])],
        "two",
        [helper.make_tensor_value_info(n, TensorProto.FLOAT, [None, 64]) for n in ("a", "b")],
        [helper.make_tensor_value_info("out", TensorProto.FLOAT, [None, 64])],
    )
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)]).SerializeToString()


def fixed_batch_reshape(fitted: Fitted) -> bytes:
    """torch-style with a Reshape to [1, 64] inside: it can only answer one row at a time."""
    model = onnx.load(io.BytesIO(torch_style(fitted)))
    shape = helper.make_tensor("one_row", TensorProto.INT64, [2], [1, 64])
    model.graph.initializer.append(shape)
    model.graph.node[0].input[0] = "flat"
    model.graph.node.insert(0, helper.make_node("Reshape", ["input", "one_row"], ["flat"]))
    return model.SerializeToString()


def npz(x: np.ndarray, y: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    write_split(buffer, x, y)
    return buffer.getvalue()


def test_what_cannot_be_imported_is_refused_with_the_reason_and_nothing_is_kept(
    tmp_path: Path, nats_server: EmbeddedNats, fitted: Fitted
) -> None:
    good_model = torch_style(fitted)
    train = npz(fitted.x_train, fitted.y_train)
    test = npz(fitted.x_test, fitted.y_test)
    cases = {
        "not onnx": (b"not a model", train, test, "not an ONNX model"),
        "two inputs": (two_inputs(), train, test, "takes 2 inputs ('a', 'b')"),
        "one row at a time": (fixed_batch_reshape(fitted), train, test, "could not answer the test rows"),
        "too few features": (good_model, train, npz(fitted.x_test[:, :10], fitted.y_test), "has 10 features per row"),
        "unknown label": (good_model, npz(fitted.x_train, fitted.y_train + 5), test, "answers classes 0-9"),
        "texts": (good_model, train, npz(np.array(["a b", "c"]), np.array([0, 1])), "holds texts"),
    }
    with serve_trainer(trainer_settings(tmp_path, nats_server.url)) as client:
        for case, (model, train_npz, test_npz, reason) in cases.items():
            files = {"onnx": ("m.onnx", model), "train": ("train.npz", train_npz), "test": ("test.npz", test_npz)}
            answer = client.post("/api/v1/imports", data={"model": "refused"}, files=files)
            assert answer.status_code == 422, (case, answer.text)
            assert reason in answer.json()["error"], (case, answer.json())
        wrong_features = client.post(
            "/api/v1/imports",
            data={"model": "refused", "feature_names": ["a", "b", "c"]},
            files={"onnx": ("m.onnx", good_model), "train": ("t.npz", train), "test": ("t.npz", test)},
        )
        assert wrong_features.status_code == 422
        assert "3 feature names given for the 64 features the model takes" in wrong_features.json()["error"]
        wrong_names = client.post(
            "/api/v1/imports",
            data={"model": "refused", "class_names": ["a", "b"]},
            files={"onnx": ("m.onnx", good_model), "train": ("t.npz", train), "test": ("t.npz", test)},
        )
        assert wrong_names.status_code == 422 and "2 class names given" in wrong_names.json()["error"]
        missing = client.post("/api/v1/imports", data={"model": "refused"}, files={"onnx": ("m.onnx", good_model)})
        assert missing.status_code == 422 and "train" in missing.text
        assert client.get("/api/v1/runs").json() == []
    assert stored_events(nats_server.url, "model.trained", 1, timeout=2) == []
    assert not [p for p in tmp_path.rglob("*.onnx")], "a refused import left files behind"


def test_an_import_needs_the_writer_role(tmp_path: Path, nats_server: EmbeddedNats, fitted: Fitted) -> None:
    plain = trainer_settings(tmp_path, nats_server.url)
    settings = type(plain)(home=plain.home, nats_url=plain.nats_url, port=plain.port, api_tokens="reader-token:reader")
    with serve_trainer(settings) as client:
        files = {"onnx": ("m.onnx", torch_style(fitted)), "train": ("t.npz", b"x"), "test": ("t.npz", b"x")}
        anonymous = client.post("/api/v1/imports", data={"model": "x"}, files=files)
        assert anonymous.status_code == 401
        reader = httpx.post(
            f"{client.base_url}/api/v1/imports",
            data={"model": "x"},
            files=files,
            headers={"Authorization": "Bearer reader-token"},
        )
        assert reader.status_code == 403


def test_an_import_is_held_to_its_own_body_limit_not_the_services(
    tmp_path: Path, nats_server: EmbeddedNats, fitted: Fitted
) -> None:
    """A model and its splits are larger than any JSON request: GALLERY_MAX_IMPORT_BYTES, not
    GALLERY_MAX_BODY_BYTES, limits the import's form, and is checked before the form is read."""
    plain = trainer_settings(tmp_path, nats_server.url)
    settings = type(plain)(
        home=plain.home, nats_url=plain.nats_url, port=plain.port, max_body_bytes=4096, max_import_bytes=60_000
    )
    small = {
        "onnx": ("m.onnx", torch_style(fitted)),
        "train": ("train.npz", npz(fitted.x_train[:60], fitted.y_train[:60])),
        "test": ("test.npz", npz(fitted.x_test[:60], fitted.y_test[:60])),
    }
    with serve_trainer(settings) as client:
        imported = client.post("/api/v1/imports", data={"model": "small"}, files=small)
        assert imported.status_code == 201, imported.text
        assert imported.json()["outputs"] == 10
        large = {**small, "train": ("train.npz", npz(fitted.x_train, fitted.y_train))}
        refused = client.post("/api/v1/imports", data={"model": "large"}, files=large)
        assert refused.status_code == 413
        assert "limit of 60000 bytes (GALLERY_MAX_IMPORT_BYTES)" in refused.json()["error"]
        # the service's own limit still holds everywhere else
        spec = client.post("/api/v1/jobs", json={"name": "x", "padding": "x" * 5000})
        assert spec.status_code == 413 and "GALLERY_MAX_BODY_BYTES" in spec.json()["error"]


def test_a_regressor_is_imported_with_its_targets_and_rmse(
    tmp_path: Path, nats_server: EmbeddedNats, monkeypatch: pytest.MonkeyPatch
) -> None:
    fitted = fit_regressor()
    model_file = tmp_path / "linear.onnx"
    model_file.write_bytes(skl2onnx_regressor(fitted))
    train, test = fitted.write_splits(tmp_path)
    rmse = float(np.sqrt(((fitted.regressor.predict(fitted.x_test) - fitted.y_test) ** 2).mean()))
    command = ["models", "import", str(model_file), "--name", "linear", "--train", str(train), "--test", str(test)]
    with serve_trainer(trainer_settings(tmp_path, nats_server.url)) as client:
        monkeypatch.setenv("GALLERY_TRAINER_URL", str(client.base_url))
        result = CliRunner().invoke(cli, [*command, "--task", "regression", "--no-wait"])
        assert result.exit_code == 0, result.output
        assert f"8 features, 1 target, rmse {rmse:.4g} on the test rows" in result.output
        [event] = stored_events(nats_server.url, "model.trained", 1)
        assert event.data.task == "regression" and event.data.class_names is None
        assert event.data.signature.outputs[0].shape == [-1, 1]
        assert event.data.metrics["test_rmse"] == pytest.approx(rmse, rel=1e-4)

        files = {"onnx": ("m.onnx", model_file.read_bytes()), "train": ("t.npz", train.read_bytes())}
        refusals = {
            "class names": ({"class_names": ["a"]}, test.read_bytes(), "class names are for classifiers"),
            "two targets": ({}, npz(fitted.x_test, np.stack([fitted.y_test] * 2, axis=1)), "has 2 targets per row"),
            "NaN target": ({}, npz(fitted.x_test, np.full(len(fitted.y_test), np.nan)), "NaN or infinite targets"),
        }
        for case, (extra, test_npz, reason) in refusals.items():
            answer = client.post(
                "/api/v1/imports",
                data={"model": "linear", "task": "regression", **extra},
                files={**files, "test": ("s.npz", test_npz)},
            )
            assert answer.status_code == 422 and reason in answer.json()["error"], (case, answer.text)
        # imported as a classifier by mistake, it is refused with the way out
        as_classifier = {**files, "test": ("s.npz", test.read_bytes())}
        mistaken = client.post("/api/v1/imports", data={"model": "linear"}, files=as_classifier)
        assert mistaken.status_code == 422 and "import it with task regression" in mistaken.json()["error"]
