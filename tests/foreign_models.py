"""ONNX classifiers as other tools write them, for the import tests: a logistic regression fitted with
scikit-learn, converted by skl2onnx itself (`X`, an int64 label and a ZipMap of probabilities), and the
same weights written by hand in the layouts of `torch.onnx.export` with defaults (`input` with a fixed
batch of 1, `output` logits) and of an FP64 pipeline.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper
from sklearn.datasets import load_digits
from sklearn.ensemble import RandomForestClassifier
from sklearn.linear_model import LinearRegression, LogisticRegression
from sklearn.model_selection import train_test_split

from gallery_common.contracts.splits import write_split

if TYPE_CHECKING:
    from gallery_optimizer.pipeline import OptimizeInputs


@dataclass
class Fitted:
    """A fitted linear classifier and the data it was fitted and held out on."""

    classifier: LogisticRegression
    weights: np.ndarray  # [F, C]
    bias: np.ndarray  # [C]
    x_train: np.ndarray
    y_train: np.ndarray
    x_test: np.ndarray
    y_test: np.ndarray

    def logits(self, x: np.ndarray) -> np.ndarray:
        return x @ self.weights + self.bias

    def probabilities(self, x: np.ndarray) -> np.ndarray:
        return self.classifier.predict_proba(x)  # type: ignore[no-any-return]

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
        classifier=classifier,
        weights=classifier.coef_.T.astype(np.float32),
        bias=classifier.intercept_.astype(np.float32),
        x_train=x_train,
        y_train=y_train,
        x_test=x_test,
        y_test=y_test,
    )


def _model(graph: onnx.GraphProto) -> bytes:
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)], producer_name="foreign-test")
    model.ir_version = 8
    onnx.checker.check_model(model)
    return model.SerializeToString()


def skl2onnx_style(fitted: Fitted) -> bytes:
    """skl2onnx's own conversion: `X` FP32 [None, F] -> `output_label` int64 and `output_probability`, a
    ZipMap (one {class: probability} map per row)."""
    from skl2onnx import to_onnx

    return to_onnx(fitted.classifier, fitted.x_train[:1]).SerializeToString()  # type: ignore[no-any-return]


def skl2onnx_forest(fitted: Fitted) -> tuple[bytes, RandomForestClassifier]:
    """A random forest on the same rows through skl2onnx: tree ensembles give many probabilities of 0."""
    from skl2onnx import to_onnx

    forest = RandomForestClassifier(n_estimators=10, max_depth=6, random_state=0).fit(fitted.x_train, fitted.y_train)
    return to_onnx(forest, fitted.x_train[:1]).SerializeToString(), forest


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


def cnn_style(seed: int = 0) -> bytes:
    """A small CNN on 8x8 grey pictures as `torch.onnx.export` writes it: `input.1` FP32 [1, 1, 8, 8] ->
    Conv, Relu, Flatten, Gemm -> `8` FP32 [1, 10] (random weights: for the layout, not the accuracy)."""
    rng = np.random.default_rng(seed)
    conv = rng.normal(size=(4, 1, 3, 3)).astype(np.float32)
    dense = rng.normal(size=(10, 4 * 8 * 8)).astype(np.float32) / 16
    graph = helper.make_graph(
        [
            helper.make_node("Conv", ["input.1", "conv.weight"], ["conv"], pads=[1, 1, 1, 1]),
            helper.make_node("Relu", ["conv"], ["relu"]),
            helper.make_node("Flatten", ["relu"], ["flat"]),
            helper.make_node("Gemm", ["flat", "fc.weight", "fc.bias"], ["8"], transB=1),
        ],
        "main_graph",
        [helper.make_tensor_value_info("input.1", TensorProto.FLOAT, [1, 1, 8, 8])],
        [helper.make_tensor_value_info("8", TensorProto.FLOAT, [1, 10])],
        initializer=[
            numpy_helper.from_array(conv, "conv.weight"),
            numpy_helper.from_array(dense, "fc.weight"),
            numpy_helper.from_array(np.zeros(10, dtype=np.float32), "fc.bias"),
        ],
    )
    return _model(graph)


@dataclass
class FittedRegressor:
    """A linear regression on a synthetic table (8 features, y = x·w + noise; r2 about 0.99)."""

    regressor: LinearRegression
    x_train: np.ndarray
    y_train: np.ndarray
    x_test: np.ndarray
    y_test: np.ndarray

    def write_splits(self, folder: Path) -> tuple[Path, Path]:
        """train.npz and test.npz (`x` FP32, `y` FP32 targets) in `folder`."""
        train, test = folder / "train.npz", folder / "test.npz"
        write_split(train, self.x_train, self.y_train)
        write_split(test, self.x_test, self.y_test)
        return train, test


def fit_regressor(seed: int = 0) -> FittedRegressor:
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(600, 8)).astype(np.float32)
    y = (x @ rng.normal(size=8) + 0.1 * rng.normal(size=600)).astype(np.float32)
    regressor = LinearRegression().fit(x[:400], y[:400])
    return FittedRegressor(regressor, x[:400], y[:400], x[400:], y[400:])


def skl2onnx_regressor(fitted: FittedRegressor) -> bytes:
    """skl2onnx's LinearRegression: `X` FP32 [None, 8] -> `variable` FP32 [None, 1]."""
    from skl2onnx import to_onnx

    return to_onnx(fitted.regressor, fitted.x_train[:1]).SerializeToString()  # type: ignore[no-any-return]


def vector_regressor(fitted: FittedRegressor) -> bytes:
    """The same regression answering one value per row: `x` FP32 [None, 8] -> `y` FP32 [None]."""
    weights = fitted.regressor.coef_.astype(np.float32)
    graph = helper.make_graph(
        [
            helper.make_node("MatMul", ["x", "w"], ["xw"]),
            helper.make_node("Add", ["xw", "b"], ["y"]),
        ],
        "vector",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [None, len(weights)])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [None])],
        initializer=[
            numpy_helper.from_array(weights, "w"),
            numpy_helper.from_array(np.float32(fitted.regressor.intercept_).reshape(()), "b"),
        ],
    )
    return _model(graph)


def optimizer_inputs(
    folder: Path,
    model: Path,
    train: tuple[np.ndarray, np.ndarray],
    held_out: tuple[np.ndarray, np.ndarray],
    *,
    spec: dict[str, Any] | None = None,
    task: str = "classification",
) -> OptimizeInputs:
    """What the optimizer gets for an imported `model`: no weights, the `train` rows, and the `held_out` rows
    halved into the validation and test splits (NPZ files written into `folder`)."""
    from gallery_optimizer.pipeline import OptimizeInputs

    x_held, y_held = held_out
    half = len(x_held) // 2
    splits = {"train": train, "validation": (x_held[:half], y_held[:half]), "test": (x_held[half:], y_held[half:])}
    for name, (x, y) in splits.items():
        write_split(folder / f"{name}.npz", x, y)
    return OptimizeInputs(
        onnx=model,
        weights=None,
        spec=spec,
        train_split=folder / "train.npz",
        validation_split=folder / "validation.npz",
        test_split=folder / "test.npz",
        task=task,
    )


@dataclass
class FittedText:
    """A scikit-learn text pipeline (TF-IDF, then logistic regression) fitted on the synthetic topics corpus
    of `text_models`, its skl2onnx file, and the texts it was fitted and held out on."""

    pipeline: Any
    onnx: bytes
    x_train: np.ndarray  # unicode [N]
    y_train: np.ndarray
    x_test: np.ndarray
    y_test: np.ndarray

    def probabilities(self, texts: np.ndarray) -> np.ndarray:
        return self.pipeline.predict_proba(list(texts))  # type: ignore[no-any-return]

    def accuracy(self) -> float:
        return float((self.pipeline.predict(list(self.x_test)) == self.y_test).mean())

    def write_splits(self, folder: Path) -> tuple[Path, Path]:
        """train.npz and test.npz (`x` one text per row, `y` int64) in `folder`."""
        train, test = folder / "train.npz", folder / "test.npz"
        write_split(train, self.x_train, self.y_train.astype(np.int64))
        write_split(test, self.x_test, self.y_test.astype(np.int64))
        return train, test


def skl2onnx_text_pipeline(seed: int = 0) -> FittedText:
    """skl2onnx's conversion of a TF-IDF + logistic regression pipeline, as a user exports one: `input` string
    [None, 1] -> `output_label` and `output_probability` (a ZipMap); its StringNormalizer names no locale
    (ONNX Runtime's default, en_US.UTF-8, which this machine lacks)."""
    from skl2onnx import convert_sklearn
    from skl2onnx.common.data_types import StringTensorType
    from sklearn.feature_extraction.text import TfidfVectorizer
    from sklearn.pipeline import make_pipeline
    from text_models import corpus

    x_train, y_train = corpus(300, seed)
    x_test, y_test = corpus(120, seed + 1)
    pipeline = make_pipeline(TfidfVectorizer(), LogisticRegression(max_iter=500)).fit(list(x_train), y_train)
    converted = convert_sklearn(pipeline, initial_types=[("input", StringTensorType([None, 1]))], target_opset=17)
    return FittedText(pipeline, converted.SerializeToString(), x_train, y_train, x_test, y_test)
