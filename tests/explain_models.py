"""Small ONNX models and their explainer artifacts, for the explanation tests of the model server, the
gateway and the deployer: a table classifier whose class 1 rises with one feature, a picture classifier
that looks at one 2x2 patch, and a slow table classifier (wide hidden layers) whose explanations take
seconds."""

from __future__ import annotations

import hashlib
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import orjson
from onnx import TensorProto, helper, numpy_helper
from prometheus_client import CollectorRegistry
from prometheus_client.parser import text_string_to_metric_families
from uvicorn_thread import served

from gallery_common.explain.layout import InputLayout
from gallery_common.explain.profile import build_profile, encode_profile
from gallery_deployer.modelserver.app import create_app
from gallery_deployer.modelserver.model import load_model
from gallery_deployer.modelserver.settings import ModelServerSettings

FEATURES = 6
KEY = 3  # the feature the table classifier's class 1 rises with
CLASS_NAMES = ["low", "high", "other"]
FEATURE_NAMES = [f"f{i}" for i in range(FEATURES)]
RNG = np.random.default_rng(7)
TABLE = RNG.normal(size=(300, FEATURES)).astype(np.float32)
PICTURES = RNG.uniform(0, 16, size=(300, 64)).astype(np.float32)
INK = [(4, 2), (4, 3), (5, 2), (5, 3)]  # the picture classifier's patch (row, column)


def _model(nodes: list[Any], inputs: list[Any], outputs: list[Any], initializers: list[Any]) -> bytes:
    graph = helper.make_graph(nodes, "explained", inputs, outputs, initializer=initializers)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8).SerializeToString()


def table_weights() -> np.ndarray:
    weights = np.zeros((FEATURES, 3), np.float32)
    weights[KEY] = [-2.0, 2.0, 0.0]
    weights[0] = [0.3, -0.1, 0.2]  # a little from another feature, so not every attribution but KEY's is 0
    return weights


def table_classifier(weights: np.ndarray | None = None) -> bytes:
    """features FP32 [-1, 6] → logits = features @ W, probabilities = softmax(logits)."""
    return _model(
        [
            helper.make_node("MatMul", ["features", "W"], ["logits"]),
            helper.make_node("Softmax", ["logits"], ["probabilities"], axis=1),
        ],
        [helper.make_tensor_value_info("features", TensorProto.FLOAT, ["batch", FEATURES])],
        [
            helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["batch", 3]),
            helper.make_tensor_value_info("probabilities", TensorProto.FLOAT, ["batch", 3]),
        ],
        [numpy_helper.from_array(table_weights() if weights is None else weights, "W")],
    )


def picture_classifier() -> bytes:
    """pixels FP32 [-1, 1, 8, 8] → logits of three classes; class 1's is the ink in rows 4-5, columns 2-3."""
    mask = np.zeros((8, 8), np.float32)
    for row, column in INK:
        mask[row, column] = 1 / 32
    weights = np.stack([-mask.ravel(), mask.ravel(), np.zeros(64, np.float32)], axis=1)
    return _model(
        [
            helper.make_node("Reshape", ["pixels", "flat_shape"], ["flat"]),
            helper.make_node("MatMul", ["flat", "W"], ["z"]),
            helper.make_node("Add", ["z", "B"], ["logits"]),
        ],
        [helper.make_tensor_value_info("pixels", TensorProto.FLOAT, ["batch", 1, 8, 8])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["batch", 3])],
        [
            numpy_helper.from_array(np.array([-1, 64], np.int64), "flat_shape"),
            numpy_helper.from_array(weights, "W"),
            numpy_helper.from_array(np.array([1.0, -1.0, 0.0], np.float32), "B"),
        ],
    )


def slow_classifier(features: int = 8, hidden: int = 2048) -> bytes:
    """features FP32 [-1, features] → two ReLU layers of `hidden` → 3 logits: ~4M multiply-adds a row, so
    an explanation of a few thousand samples keeps a core busy for many seconds."""
    rng = np.random.default_rng(3)
    layers = [(features, hidden), (hidden, hidden), (hidden, 3)]
    initializers = [
        numpy_helper.from_array((rng.normal(size=shape) / np.sqrt(shape[0])).astype(np.float32), f"W{i}")
        for i, shape in enumerate(layers)
    ]
    return _model(
        [
            helper.make_node("MatMul", ["features", "W0"], ["h0"]),
            helper.make_node("Relu", ["h0"], ["a0"]),
            helper.make_node("MatMul", ["a0", "W1"], ["h1"]),
            helper.make_node("Relu", ["h1"], ["a1"]),
            helper.make_node("MatMul", ["a1", "W2"], ["logits"]),
        ],
        [helper.make_tensor_value_info("features", TensorProto.FLOAT, ["batch", features])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["batch", 3])],
        initializers,
    )


def table_explainer(x: np.ndarray = TABLE, feature_names: list[str] | None = FEATURE_NAMES) -> bytes:
    """The explainer artifact the gate would attach to a version trained on `x`."""
    spec = {"feature_names": feature_names} if feature_names else None
    layout = InputLayout.of(x.shape[1], [-1, x.shape[1]], spec)
    return encode_profile(
        build_profile(x, layout, task="classification", class_names=CLASS_NAMES, source_sha256="0" * 64)
    )


def picture_explainer() -> bytes:
    layout = InputLayout.of(64, [-1, 1, 8, 8], None)
    return encode_profile(
        build_profile(PICTURES, layout, task="classification", class_names=None, source_sha256="1" * 64)
    )


@dataclass(frozen=True)
class Stored:
    """An artifact in a file:// store under `home`."""

    uri: str
    sha256: str

    def ref(self) -> dict[str, str]:
        return {"uri": self.uri, "sha256": self.sha256}


def store(home: Path, key: str, data: bytes) -> Stored:
    path = home / "artifacts" / key
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    return Stored(path.as_uri(), hashlib.sha256(data).hexdigest())


@contextmanager
def model_server(
    home: Path, name: str, version: str, model: bytes, explainer: bytes | None, **settings: Any
) -> Iterator[str]:
    """A model server for `model`, explaining with `explainer` (None: it has no explainer data), served by
    uvicorn in this process (its workers are processes of their own); yields its base URL."""
    onnx = store(home, f"{name}/{version}/model.onnx", model)
    profile = store(home, f"{name}/{version}/explainer.npz", explainer) if explainer is not None else None
    configured = ModelServerSettings(
        home=home,
        model_name=name,
        model_version=version,
        artifact_uri=onnx.uri,
        artifact_sha256=onnx.sha256,
        explainer_uri=profile.uri if profile else "",
        explainer_sha256=profile.sha256 if profile else "",
        serve_nats=False,
        intra_op_threads=1,
        **{"api_tokens": "", **settings},
    )
    with served(create_app(configured, load_model(configured), CollectorRegistry())) as port:
        yield f"http://127.0.0.1:{port}"


def explain_body(name: str, rows: np.ndarray, request_id: str | None = None, **parameters: Any) -> bytes:
    """An OIP infer request for `rows` of input `name`, with explain `parameters`."""
    tensor = {"name": name, "datatype": "FP32", "shape": list(rows.shape), "data": rows.ravel().tolist()}
    body: dict[str, Any] = {"inputs": [tensor], "parameters": parameters}
    if request_id is not None:
        body["id"] = request_id
    return orjson.dumps(body)


def softmax(logits: np.ndarray) -> np.ndarray:
    shifted = np.exp(logits - logits.max(axis=1, keepdims=True))
    return shifted / shifted.sum(axis=1, keepdims=True)


def scraped(url: str, name: str, **labels: str) -> float:
    """The sum of the samples named `name` with `labels` on the /metrics page at `url`."""
    page = httpx.get(f"{url}/metrics").text
    return sum(
        sample.value
        for family in text_string_to_metric_families(page)
        for sample in family.samples
        if sample.name == name and all(sample.labels.get(k) == v for k, v in labels.items())
    )
