"""ONNX classifiers as other tools write them, for the import tests: a logistic regression fitted with
scikit-learn, written by hand in the graph layouts of skl2onnx (FP32 `float_input`, an int64 label and
a ZipMap of probabilities), of `torch.onnx.export` with defaults (`input` with a fixed batch of 1,
`output` logits) and of an FP64 pipeline. Built with `onnx.helper`, so no converter is needed.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper
from sklearn.datasets import load_digits
from sklearn.linear_model import LogisticRegression
from sklearn.model_selection import train_test_split

from gallery_common.contracts.splits import write_split


@dataclass
class Fitted:
    """A fitted linear classifier and the data it was fitted and held out on."""

    weights: np.ndarray  # [F, C]
    bias: np.ndarray  # [C]
    x_train: np.ndarray
    y_train: np.ndarray
    x_test: np.ndarray
    y_test: np.ndarray

    def logits(self, x: np.ndarray) -> np.ndarray:
        return x @ self.weights + self.bias

    def probabilities(self, x: np.ndarray) -> np.ndarray:
        z = self.logits(x)
        e = np.exp(z - z.max(axis=1, keepdims=True))
        return e / e.sum(axis=1, keepdims=True)

    def accuracy(self) -> float:
        return float((self.logits(self.x_test).argmax(axis=1) == self.y_test).mean())

    def write_splits(self, folder: Path) -> tuple[Path, Path]:
        """train.npz and test.npz (`x` FP32, `y` int64) in `folder`."""
        train, test = folder / "train.npz", folder / "test.npz"
        write_split(train, self.x_train.astype(np.float32), self.y_train.astype(np.int64))
        write_split(test, self.x_test.astype(np.float32), self.y_test.astype(np.int64))
        return train, test


def fit_digits(seed: int = 0) -> Fitted:
    """Logistic regression on scikit-learn's digits, pixels scaled to [0, 1] (about 96 % held out)."""
    x, y = load_digits(return_X_y=True)
    x = (x / 16.0).astype(np.float32)
    x_train, x_test, y_train, y_test = train_test_split(x, y, test_size=0.3, random_state=seed, stratify=y)
    classifier = LogisticRegression(max_iter=500).fit(x_train, y_train)
    return Fitted(
        weights=classifier.coef_.T.astype(np.float32),
        bias=classifier.intercept_.astype(np.float32),
        x_train=x_train,
        y_train=y_train,
        x_test=x_test,
        y_test=y_test,
    )


def _model(graph: onnx.GraphProto, ml: bool = False) -> bytes:
    opsets = [helper.make_opsetid("", 13)] + ([helper.make_opsetid("ai.onnx.ml", 1)] if ml else [])
    model = helper.make_model(graph, opset_imports=opsets, producer_name="foreign-test")
    model.ir_version = 8
    onnx.checker.check_model(model)
    return model.SerializeToString()


def skl2onnx_style(fitted: Fitted) -> bytes:
    """`float_input` FP32 [None, F] -> `output_label` int64 [None] and `output_probability`, a ZipMap."""
    features, classes = fitted.weights.shape
    nodes = [
        helper.make_node("MatMul", ["float_input", "coef"], ["linear"]),
        helper.make_node("Add", ["linear", "intercept"], ["raw_scores"]),
        helper.make_node("Softmax", ["raw_scores"], ["probabilities"], axis=1),
        helper.make_node("ArgMax", ["probabilities"], ["output_label"], axis=1, keepdims=0),
        helper.make_node(
            "ZipMap",
            ["probabilities"],
            ["output_probability"],
            domain="ai.onnx.ml",
            classlabels_int64s=list(range(classes)),
        ),
    ]
    probability = helper.make_tensor_type_proto(TensorProto.FLOAT, [])
    zipmap_type = helper.make_sequence_type_proto(helper.make_map_type_proto(TensorProto.INT64, probability))
    graph = helper.make_graph(
        nodes,
        "LogisticRegression",
        [helper.make_tensor_value_info("float_input", TensorProto.FLOAT, [None, features])],
        [
            helper.make_tensor_value_info("output_label", TensorProto.INT64, [None]),
            helper.make_value_info("output_probability", zipmap_type),
        ],
        initializer=[
            numpy_helper.from_array(fitted.weights, "coef"),
            numpy_helper.from_array(fitted.bias, "intercept"),
        ],
    )
    return _model(graph, ml=True)


def torch_style(fitted: Fitted) -> bytes:
    """`input` FP32 [1, F] -> `output` FP32 [1, C] logits: torch.onnx.export without dynamic axes."""
    features, classes = fitted.weights.shape
    graph = helper.make_graph(
        [helper.make_node("Gemm", ["input", "fc.weight", "fc.bias"], ["output"], transB=1)],
        "main_graph",
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, [1, features])],
        [helper.make_tensor_value_info("output", TensorProto.FLOAT, [1, classes])],
        initializer=[
            numpy_helper.from_array(np.ascontiguousarray(fitted.weights.T), "fc.weight"),
            numpy_helper.from_array(fitted.bias, "fc.bias"),
        ],
    )
    return _model(graph)


def fp64_style(fitted: Fitted) -> bytes:
    """`X` FP64 [None, F] -> `scores` FP64 [None, C] logits."""
    features, _ = fitted.weights.shape
    graph = helper.make_graph(
        [
            helper.make_node("MatMul", ["X", "w"], ["xw"]),
            helper.make_node("Add", ["xw", "b"], ["scores"]),
        ],
        "fp64",
        [helper.make_tensor_value_info("X", TensorProto.DOUBLE, [None, features])],
        [helper.make_tensor_value_info("scores", TensorProto.DOUBLE, [None, None])],
        initializer=[
            numpy_helper.from_array(fitted.weights.astype(np.float64), "w"),
            numpy_helper.from_array(fitted.bias.astype(np.float64), "b"),
        ],
    )
    return _model(graph)


def contract_style(fitted: Fitted) -> bytes:
    """Already the contract: `features` FP32 [batch, F] -> `logits` FP32 [batch, C]."""
    features, classes = fitted.weights.shape
    graph = helper.make_graph(
        [helper.make_node("Gemm", ["features", "w", "b"], ["logits"])],
        "contract",
        [helper.make_tensor_value_info("features", TensorProto.FLOAT, ["batch", features])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["batch", classes])],
        initializer=[numpy_helper.from_array(fitted.weights, "w"), numpy_helper.from_array(fitted.bias, "b")],
    )
    return _model(graph)
