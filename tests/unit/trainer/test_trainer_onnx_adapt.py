"""Bringing other tools' ONNX classifiers to the features/logits contract (`gallery_trainer.onnx_adapt`):
what each layout becomes, that the answers stay the same, and what is refused with which reason."""

from __future__ import annotations

import io

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from foreign_models import (
    Fitted,
    cnn_style,
    contract_style,
    fit_digits,
    fit_regressor,
    fp64_style,
    skl2onnx_forest,
    skl2onnx_regressor,
    skl2onnx_style,
    skl2onnx_text_pipeline,
    torch_style,
    vector_regressor,
)
from onnx import TensorProto, helper

from gallery_common.onnx_safety import UnsafeOnnxModel
from gallery_trainer.onnx_adapt import ModelRefused, adapt_model, declare_output_width


@pytest.fixture(scope="module")
def fitted() -> Fitted:
    return fit_digits()


def logits_of(model: bytes, x: np.ndarray) -> np.ndarray:
    session = ort.InferenceSession(model, providers=["CPUExecutionProvider"])
    assert [i.name for i in session.get_inputs()] == ["features"]
    assert [o.name for o in session.get_outputs()] == ["logits"]
    return session.run(["logits"], {"features": x.astype(np.float32)})[0]  # type: ignore[no-any-return]


def softmax(z: np.ndarray) -> np.ndarray:
    e = np.exp(z - z.max(axis=1, keepdims=True))
    return e / e.sum(axis=1, keepdims=True)  # type: ignore[no-any-return]


def test_skl2onnx_probabilities_become_logits_whose_softmax_gives_them_back(fitted: Fitted) -> None:
    adapted = adapt_model(skl2onnx_style(fitted))
    assert adapted.features == 64 and adapted.scores == "probabilities"
    logits = logits_of(adapted.model, fitted.x_test)
    np.testing.assert_allclose(softmax(logits), fitted.probabilities(fitted.x_test), atol=1e-5)
    assert np.isfinite(logits).all()
    assert "input 'X' is now 'features'" in adapted.changes
    # the ZipMap is gone, not computed for nothing
    ops = [node.op_type for node in onnx.load(io.BytesIO(adapted.model)).graph.node]
    assert "ZipMap" not in ops


def test_a_forests_zero_probabilities_become_finite_logits(fitted: Fitted) -> None:
    """log(0) would be -inf, which JSON cannot carry: a probability of 0 becomes log(1e-12)."""
    model, forest = skl2onnx_forest(fitted)
    adapted = adapt_model(model)
    logits = logits_of(adapted.model, fitted.x_test)
    expected = forest.predict_proba(fitted.x_test)
    assert (expected == 0).any() and np.isfinite(logits).all()
    np.testing.assert_allclose(softmax(logits), expected, atol=1e-5)
    assert (logits.argmax(axis=1) == expected.argmax(axis=1)).all()


def test_the_output_declares_its_width_once_it_is_known(fitted: Fitted) -> None:
    """The adapted output is [batch, ?] until the model has run; the file then says [batch, 10], which
    readers of the file alone (the edge bundle's signature) take the class count from."""
    adapted = adapt_model(skl2onnx_style(fitted))
    declared = declare_output_width(adapted, 10)
    dims = onnx.load_from_string(declared.model).graph.output[0].type.tensor_type.shape.dim
    assert [d.dim_param or d.dim_value for d in dims] == ["batch", 10]
    assert declared.changes[-1] == "output 'logits' declares its width: [N, 10]"
    np.testing.assert_array_equal(logits_of(declared.model, fitted.x_test), logits_of(adapted.model, fitted.x_test))
    assert declare_output_width(declared, 10) is declared, "a declared width is left as it is"


def test_a_torch_export_with_a_fixed_batch_answers_any_number_of_rows(fitted: Fitted) -> None:
    adapted = adapt_model(torch_style(fitted))
    assert adapted.scores == "logits"
    assert "the input's first dimension (the batch) is now variable" in adapted.changes
    np.testing.assert_allclose(logits_of(adapted.model, fitted.x_test), fitted.logits(fitted.x_test), atol=1e-4)


def test_an_fp64_model_takes_fp32_features_and_answers_fp32_logits(fitted: Fitted) -> None:
    adapted = adapt_model(fp64_style(fitted))
    logits = logits_of(adapted.model, fitted.x_test)
    assert logits.dtype == np.float32
    np.testing.assert_allclose(logits, fitted.logits(fitted.x_test), atol=1e-4)


def test_a_model_that_already_fits_is_kept_byte_for_byte(fitted: Fitted) -> None:
    original = contract_style(fitted)
    adapted = adapt_model(original)
    assert adapted.model == original and adapted.changes == []


def test_the_scores_option_overrides_what_the_name_suggests(fitted: Fitted) -> None:
    """An output named `probabilities` is taken for probabilities, unless the user says they are logits."""
    model = onnx.load(io.BytesIO(contract_style(fitted)))
    model.graph.node[0].output[0] = model.graph.output[0].name = "probabilities"
    data = model.SerializeToString()
    assert adapt_model(data).scores == "probabilities"
    as_logits = adapt_model(data, scores="logits")
    np.testing.assert_allclose(logits_of(as_logits.model, fitted.x_test), fitted.logits(fitted.x_test), atol=1e-4)


def test_a_picture_model_takes_each_picture_flattened(fitted: Fitted) -> None:
    """A CNN exported with its input [1, 1, 8, 8]: `features` holds each picture's 64 values in row order,
    reshaped to the model's own layout inside, and it answers a whole batch as it answered one picture."""
    original = cnn_style()
    adapted = adapt_model(original)
    assert adapted.features == 64
    assert adapted.changes[0] == (
        "input 'input.1' [N, 1, 8, 8] now takes each row flattened: 'features' [N, 64], reshaped inside"
    )
    pictures = fitted.x_test[:20]
    one_by_one = ort.InferenceSession(original, providers=["CPUExecutionProvider"])
    expected = np.concatenate([one_by_one.run(None, {"input.1": row.reshape(1, 1, 8, 8)})[0] for row in pictures])
    np.testing.assert_allclose(logits_of(adapted.model, pictures), expected, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("layout", ["skl2onnx [N, 1]", "one value per row [N]"])
def test_a_regressor_answers_its_predictions_as_one_column(layout: str) -> None:
    fitted = fit_regressor()
    model = skl2onnx_regressor(fitted) if layout.startswith("skl2onnx") else vector_regressor(fitted)
    adapted = adapt_model(model, task="regression")
    assert adapted.features == 8 and adapted.scores == "values"
    predicted = logits_of(adapted.model, fitted.x_test)
    assert predicted.shape == (len(fitted.x_test), 1)
    np.testing.assert_allclose(predicted[:, 0], fitted.regressor.predict(fitted.x_test), rtol=1e-4, atol=1e-4)
    if layout.endswith("[N]"):
        assert "output 'y' [N] is now one column [N, 1]" in adapted.changes


def test_a_classifier_is_not_taken_for_a_regressor(fitted: Fitted) -> None:
    """skl2onnx's classifier has a label and a ZipMap, no float output a regressor could answer with."""
    with pytest.raises(ModelRefused, match="no output holds predictions as floats"):
        adapt_model(skl2onnx_style(fitted), task="regression")


def graph_model(inputs: list[onnx.ValueInfoProto], outputs: list[onnx.ValueInfoProto], nodes: list) -> bytes:  # type: ignore[type-arg]
    graph = helper.make_graph(nodes, "g", inputs, outputs)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)]).SerializeToString()


FLOAT_IN = helper.make_tensor_value_info("x", TensorProto.FLOAT, [None, 4])


@pytest.mark.parametrize(
    ("model", "reason"),
    [
        (
            graph_model(
                [helper.make_tensor_value_info("ids", TensorProto.INT64, [None, 4])],
                [helper.make_tensor_value_info("y", TensorProto.FLOAT, [None, 4])],
                [helper.make_node("Cast", ["ids"], ["y"], to=TensorProto.FLOAT)],
            ),
            "input 'ids' holds int64",
        ),
        (
            graph_model(
                [helper.make_tensor_value_info("v", TensorProto.FLOAT, [None])],
                [helper.make_tensor_value_info("y", TensorProto.FLOAT, [None])],
                [helper.make_node("Identity", ["v"], ["y"])],
            ),
            "has rank 1",
        ),
        (
            graph_model(
                [helper.make_tensor_value_info("x", TensorProto.FLOAT, [None, "f"])],
                [helper.make_tensor_value_info("y", TensorProto.FLOAT, [None, None])],
                [helper.make_node("Identity", ["x"], ["y"])],
            ),
            "does not fix the shape of a row",
        ),
        (
            graph_model(
                [FLOAT_IN],
                [helper.make_tensor_value_info("y", TensorProto.FLOAT, [None])],
                [helper.make_node("ReduceSum", ["x"], ["y"], keepdims=0)],
            ),
            "only classifiers are imported",
        ),
        (
            graph_model(
                [FLOAT_IN],
                [helper.make_tensor_value_info(n, TensorProto.FLOAT, [None, 4]) for n in ("a", "b")],
                [helper.make_node("Identity", ["x"], ["a"]), helper.make_node("Neg", ["x"], ["b"])],
            ),
            "several outputs could hold the class scores ('a', 'b')",
        ),
        (
            graph_model(
                [FLOAT_IN],
                [helper.make_tensor_value_info("y", TensorProto.FLOAT, [None, 4])],
                [helper.make_node("Neg", ["x"], ["logits"]), helper.make_node("Neg", ["logits"], ["y"])],
            ),
            "an inner tensor named 'logits'",
        ),
    ],
    ids=["int64 input", "a vector", "any width", "one score per row", "two score outputs", "logits taken"],
)
def test_what_cannot_be_adapted_is_refused_with_the_reason(model: bytes, reason: str) -> None:
    with pytest.raises(ModelRefused) as refused:
        adapt_model(model)
    assert reason in str(refused.value)
    assert refused.value.status_code == 422


def test_bytes_that_are_not_onnx_are_refused_before_anything_else() -> None:
    with pytest.raises(UnsafeOnnxModel, match="not an ONNX model"):
        adapt_model(b"\x00\x01 definitely not protobuf")


def test_a_scikit_learn_text_pipeline_takes_one_text_per_row_and_loads_on_any_machine() -> None:
    """skl2onnx writes a TF-IDF pipeline's input as strings [N, 1] and lower-cases in ONNX Runtime's default
    locale, which many machines lack (where the file does not load): adapted, it takes `text` [N], lower-cases
    in C.UTF-8 and answers the same scores."""
    fitted = skl2onnx_text_pipeline()
    adapted = adapt_model(fitted.onnx)
    assert adapted.text and adapted.features == 0 and adapted.scores == "probabilities"
    assert adapted.changes[:2] == [
        "input 'input' [N, 1] is now 'text' [N], one text per row (made a column inside)",
        "StringNormalizer 'StringNormalizer' lower-cases in C.UTF-8 instead of the default (en_US.UTF-8), which "
        "many machines lack",
    ]
    model = onnx.load_from_string(adapted.model)
    [text] = model.graph.input
    assert text.name == "text" and text.type.tensor_type.elem_type == TensorProto.STRING
    assert len(text.type.tensor_type.shape.dim) == 1
    [normalizer] = [n for n in model.graph.node if n.op_type == "StringNormalizer"]
    assert helper.get_node_attr_value(normalizer, "locale") == b"C.UTF-8"
    (logits,) = ort.InferenceSession(adapted.model, providers=["CPUExecutionProvider"]).run(
        ["logits"], {"text": fitted.x_test}
    )
    np.testing.assert_allclose(softmax(logits), fitted.probabilities(fitted.x_test), atol=1e-5)
    with pytest.raises(ModelRefused, match="a text model is imported as a classifier"):
        adapt_model(fitted.onnx, task="regression")


def test_a_text_input_that_is_not_one_text_per_row_is_refused() -> None:
    pairs = helper.make_tensor_value_info("pairs", TensorProto.STRING, [None, 2])
    out = helper.make_tensor_value_info("logits", TensorProto.FLOAT, [None, 2])
    model = graph_model([pairs], [out], [helper.make_node("Constant", [], ["logits"], value_floats=[0.0, 0.0])])
    with pytest.raises(ModelRefused, match=r"input 'pairs' takes strings \[\?, 2\]; a text model takes one text"):
        adapt_model(model)
