"""Real small models for tests: scikit-learn weights written into ONNX graphs built with onnx.helper.

The graphs follow the trainer's artifact contract: input `features` FP32 [-1, F] of raw features,
standardisation baked in as Sub / Div, then MatMul + Add (+ Relu + MatMul + Add), output `logits`
FP32 [-1, C].
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper
from sklearn.datasets import load_digits
from sklearn.linear_model import LogisticRegression
from sklearn.model_selection import train_test_split
from sklearn.neural_network import MLPClassifier
from sklearn.preprocessing import StandardScaler

from gallery_common.artifacts import ArtifactStore
from gallery_common.events import ArtifactRef, Signature, TensorSpec

OPSET = 17


@dataclass(frozen=True)
class Digits:
    """sklearn's digits (8x8 images, 64 features, 10 classes), split and standardised once."""

    x_train: np.ndarray
    y_train: np.ndarray
    x_test: np.ndarray
    y_test: np.ndarray
    scaler: StandardScaler

    @classmethod
    def load(cls) -> Digits:
        x, y = load_digits(return_X_y=True)
        x_train, x_test, y_train, y_test = train_test_split(
            x.astype(np.float32), y, test_size=0.3, random_state=0, stratify=y
        )
        return cls(x_train, y_train, x_test, y_test, StandardScaler().fit(x_train))

    @property
    def n_features(self) -> int:
        return int(self.x_train.shape[1])

    @property
    def class_names(self) -> list[str]:
        return [str(i) for i in range(10)]


@dataclass(frozen=True)
class TrainedModel:
    """An ONNX file and the accuracy scikit-learn measured for the same weights on the test split."""

    onnx: bytes
    sklearn_accuracy: float


def layers_onnx(
    mean: np.ndarray,
    scale: np.ndarray,
    layers: Sequence[tuple[np.ndarray, np.ndarray]],
    *,
    input_name: str = "features",
    output_name: str = "logits",
) -> onnx.ModelProto:
    """(x - mean) / scale, then one MatMul + Add per (W, b), with Relu between layers."""
    initializers = [
        numpy_helper.from_array(np.asarray(mean, np.float32), "mean"),
        numpy_helper.from_array(np.asarray(scale, np.float32), "scale"),
    ]
    nodes = [
        helper.make_node("Sub", [input_name, "mean"], ["centred"]),
        helper.make_node("Div", ["centred", "scale"], ["h0"]),
    ]
    current = "h0"
    for i, (weights, bias) in enumerate(layers):
        initializers += [
            numpy_helper.from_array(np.asarray(weights, np.float32), f"W{i}"),
            numpy_helper.from_array(np.asarray(bias, np.float32), f"b{i}"),
        ]
        last = i == len(layers) - 1
        out = output_name if last else f"a{i}"
        nodes += [
            helper.make_node("MatMul", [current, f"W{i}"], [f"z{i}"]),
            helper.make_node("Add", [f"z{i}", f"b{i}"], [out if last else f"pre{i}"]),
        ]
        if not last:
            nodes.append(helper.make_node("Relu", [f"pre{i}"], [out]))
        current = out
    n_in, n_out = layers[0][0].shape[0], layers[-1][0].shape[1]
    graph = helper.make_graph(
        nodes,
        "classifier",
        [helper.make_tensor_value_info(input_name, TensorProto.FLOAT, ["batch", n_in])],
        [helper.make_tensor_value_info(output_name, TensorProto.FLOAT, ["batch", n_out])],
        initializer=initializers,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)], ir_version=8)
    onnx.checker.check_model(model)
    return model


def _scaler_params(scaler: StandardScaler) -> tuple[np.ndarray, np.ndarray]:
    return scaler.mean_, scaler.scale_  # type: ignore[return-value]


def mlp_classifier(data: Digits, hidden: int = 32, seed: int = 0) -> TrainedModel:
    """A one-hidden-layer MLP (Relu), about 0.97 accurate on digits."""
    mlp = MLPClassifier((hidden,), max_iter=300, random_state=seed).fit(
        data.scaler.transform(data.x_train), data.y_train
    )
    layers = list(zip(mlp.coefs_, mlp.intercepts_, strict=True))
    model = layers_onnx(*_scaler_params(data.scaler), layers)
    return TrainedModel(model.SerializeToString(), float(mlp.score(data.scaler.transform(data.x_test), data.y_test)))


def logistic_regression(data: Digits, rows_per_class: int | None = None) -> TrainedModel:
    """Multinomial logistic regression (~0.97); trained on a few `rows_per_class` it is weaker (1: ~0.45, 4: ~0.84)."""
    if rows_per_class is None:
        rows = np.arange(len(data.y_train))
    else:
        rows = np.concatenate([np.flatnonzero(data.y_train == c)[:rows_per_class] for c in range(10)])
    lr = LogisticRegression(max_iter=500).fit(data.scaler.transform(data.x_train[rows]), data.y_train[rows])
    model = layers_onnx(*_scaler_params(data.scaler), [(lr.coef_.T, lr.intercept_)])
    return TrainedModel(model.SerializeToString(), float(lr.score(data.scaler.transform(data.x_test), data.y_test)))


def with_external_initializer(model_bytes: bytes, name: str = "W0", location: str = "../../weights.bin") -> bytes:
    """The same model with one initializer moved to an external file reference, as a hostile producer might."""
    model = onnx.load_model_from_string(model_bytes)
    for tensor in model.graph.initializer:
        if tensor.name == name:
            tensor.ClearField("raw_data")
            tensor.ClearField("float_data")
            tensor.data_location = TensorProto.EXTERNAL
            for key, value in (("location", location), ("offset", "0"), ("length", str(4 * int(np.prod(tensor.dims))))):
                entry = tensor.external_data.add()
                entry.key, entry.value = key, value
            return model.SerializeToString()
    raise KeyError(name)


def classifier_signature(n_features: int, n_classes: int, *, input_name: str = "features") -> Signature:
    return Signature(
        inputs=[TensorSpec(name=input_name, datatype="FP32", shape=[-1, n_features])],
        outputs=[TensorSpec(name="logits", datatype="FP32", shape=[-1, n_classes])],
    )


def npz_bytes(path: Path, x: np.ndarray, y: np.ndarray) -> bytes:
    np.savez(path, x=np.asarray(x, np.float32), y=y)
    return path.read_bytes()


def store_model_artifacts(
    store: ArtifactStore, prefix: str, onnx_bytes: bytes, data: Digits, workdir: Path
) -> dict[str, ArtifactRef]:
    """Put the ONNX file, the test split and a small spec under `prefix`; the roles a trainer would send."""
    test_split = npz_bytes(workdir / f"{prefix.replace('/', '_')}-test.npz", data.x_test, data.y_test)
    return {
        "onnx": store.put(f"{prefix}/model.onnx", onnx_bytes),
        "test_split": store.put(f"{prefix}/test.npz", test_split),
        "spec": store.put(f"{prefix}/spec.json", b'{"architecture": "test"}'),
    }
