"""SHAP and LIME attributions (gallery_common.explain) on models whose answer we know."""

from __future__ import annotations

import io

import numpy as np
import pytest

from gallery_common.explain.attributions import (
    DEFAULT_NSAMPLES,
    Explainer,
    ExplainRefused,
    ExplainSettings,
    global_importance,
)
from gallery_common.explain.layout import InputLayout
from gallery_common.explain.profile import ProfileRefused, build_profile, decode_profile, encode_profile

FEATURES = 6
KEY = 3  # the one feature the synthetic models look at
RNG = np.random.default_rng(0)
X = RNG.normal(size=(400, FEATURES)).astype(np.float32)
DIGITS_SPEC = {"data": {"source": "builtin", "name": "digits"}}


def classifier(x: np.ndarray) -> np.ndarray:
    """Logits of two classes that depend on feature KEY alone."""
    return np.stack([-2 * x[:, KEY], 2 * x[:, KEY]], axis=1)


def regressor(x: np.ndarray) -> np.ndarray:
    return (3 * x[:, KEY] + 1)[:, None]


def explainer(task: str, predict=None, layout: InputLayout | None = None, x: np.ndarray = X) -> Explainer:
    layout = layout or InputLayout.of(x.shape[1], None, {"feature_names": [f"f{i}" for i in range(x.shape[1])]})
    profile = build_profile(x, layout, task=task, class_names=None, source_sha256="ab" * 32)
    profile = decode_profile(encode_profile(profile))  # as the model server loads it
    return Explainer(predict or (classifier if task == "classification" else regressor), profile)


@pytest.mark.parametrize("method", ["shap", "lime"])
@pytest.mark.parametrize("task", ["classification", "regression"])
def test_the_only_feature_that_matters_ranks_first(task: str, method: str) -> None:
    explained = explainer(task).explain(X[:5], ExplainSettings(method, None, DEFAULT_NSAMPLES[method], 1))
    for row in explained:
        ranked = np.argsort(-np.abs(row.attributions))
        assert ranked[0] == KEY, row.attributions
        # SHAP gives the others nothing; LIME's local fit leaves them some noise
        assert abs(row.attributions[KEY]) > 2 * np.abs(np.delete(row.attributions, KEY)).max()


@pytest.mark.parametrize("task", ["classification", "regression"])
def test_shap_attributions_add_up_to_the_output_minus_the_base_value(task: str) -> None:
    explained = explainer(task).explain(X[10:20], ExplainSettings("shap", None, 200, 0))
    for row in explained:
        assert row.attributions.sum() == pytest.approx(row.output - row.base_value, abs=1e-6)
    if task == "regression":
        assert explained[0].output == pytest.approx(float(regressor(X[10:11])[0, 0]), rel=1e-6)


def test_a_classifier_is_explained_in_probability_for_its_predicted_class() -> None:
    row = X[:1].copy()
    row[0, KEY] = 1.5  # class 1 with p = softmax([-3, 3])[1]
    explained = explainer("classification").explain(row, ExplainSettings("shap", None, 100, 0))[0]
    assert (explained.target, explained.predicted) == (1, 1)
    assert explained.output == pytest.approx(1 / (1 + np.exp(-6)), rel=1e-6)
    other = explainer("classification").explain(row, ExplainSettings("shap", 0, 100, 0))[0]
    assert other.target == 0 and other.attributions[KEY] < 0 < explained.attributions[KEY]


@pytest.mark.parametrize("method", ["shap", "lime"])
def test_the_same_seed_gives_the_same_answer(method: str) -> None:
    rows = X[:3]
    # fewer samples than coalitions of 6 features, so both methods really sample
    first = explainer("classification").explain(rows, ExplainSettings(method, None, 20, 5))
    again = explainer("classification").explain(rows, ExplainSettings(method, None, 20, 5))
    other = explainer("classification").explain(rows, ExplainSettings(method, None, 20, 6))
    assert all(np.array_equal(a.attributions, b.attributions) for a, b in zip(first, again, strict=True))
    assert any(not np.array_equal(a.attributions, b.attributions) for a, b in zip(first, other, strict=True))


def picture_model(x: np.ndarray) -> np.ndarray:
    """Three classes of 8x8 pictures; class 1's score is the ink in rows 4-5, columns 2-3."""
    ink = x.reshape(-1, 8, 8)[:, 4:6, 2:4].sum(axis=(1, 2)) / 32 - 1
    return np.stack([-ink, ink, np.zeros_like(ink)], axis=1)


@pytest.mark.parametrize("method", ["shap", "lime"])
def test_a_picture_is_explained_in_patches_returned_in_its_shape(method: str) -> None:
    pictures = RNG.uniform(0, 16, size=(300, 64)).astype(np.float32)
    layout = InputLayout.of(64, [-1, 64], DIGITS_SPEC)
    assert layout.image_shape == (1, 8, 8) and layout.groups().count == 16  # 2x2 patches
    explained = explainer("classification", picture_model, layout, pictures).explain(
        pictures[:3], ExplainSettings(method, 1, 200, 0)
    )
    for row in explained:
        heat = row.attributions.reshape(8, 8)
        assert np.unravel_index(np.argmax(np.abs(heat)), heat.shape)[0] in (4, 5)
        assert np.abs(heat[4:6, 2:4]).min() > 10 * np.abs(np.delete(heat.reshape(-1), [34, 35, 42, 43])).max()
        assert row.attributions.sum() == pytest.approx(row.groups.sum(), abs=1e-9)  # each pixel holds its share
        assert np.allclose(heat[4:6, 2:4], heat[4, 2])


def test_global_importance_ranks_the_feature_that_matters_first() -> None:
    found = global_importance(explainer("classification"), X[:20], nsamples=100)
    assert found["groups"][0] == {"name": "f3", "index": KEY, "importance": pytest.approx(found["values"][KEY])}
    assert found["rows"] == 20 and found["method"] == "kernel-shap" and len(found["values"]) == FEATURES


def test_requests_it_cannot_explain_are_refused_with_the_reason() -> None:
    model = explainer("classification")
    with pytest.raises(ExplainRefused, match="target 2 is not one of this model's 2 outputs"):
        model.explain(X[:1], ExplainSettings("shap", 2, 50, 0))
    with pytest.raises(ExplainRefused, match="a row has 4 values; this model's explainer expects 6"):
        model.explain(X[:1, :4], ExplainSettings("shap", None, 50, 0))


def test_an_explainer_artifact_that_does_not_hold_together_is_refused() -> None:
    profile = build_profile(
        X, InputLayout.of(FEATURES), task="classification", class_names=["a", "b"], source_sha256="x"
    )
    assert decode_profile(encode_profile(profile)).class_names == ("a", "b")
    broken = io.BytesIO()
    np.savez(
        broken,
        background=profile.background,
        weights=np.ones(3),  # not one per background row
        sample=profile.sample,
        image_shape=np.array([], dtype=np.int64),
        feature_names=np.array([], dtype=str),
        class_names=np.array([], dtype=str),
        task=np.array("classification"),
        source_sha256=np.array("x"),
    )
    with pytest.raises(ProfileRefused, match="weights"):
        decode_profile(broken.getvalue())
    with pytest.raises(ProfileRefused, match="not a readable NPZ"):
        decode_profile(b"not a zip")


@pytest.mark.parametrize(
    "spec",
    [
        {"architecture": "test"},
        {"data": ["digits"]},
        {"job": {"data": "digits"}},
        {"architecture": {"image_shape": "1x8x8"}},
        {"architecture": {"image_shape": [1, 8, "8"]}},
        {"architecture": {"image_shape": [1, -8, -8]}},
        {"feature_names": "a,b"},
        ["not", "a", "mapping"],
    ],
)
def test_a_spec_of_any_shape_gives_a_layout_not_an_exception(spec: object) -> None:
    layout = InputLayout.of(64, [-1, 64], spec)  # type: ignore[arg-type]
    assert layout.image_shape is None and layout.feature_names is None and layout.shape == (64,)
