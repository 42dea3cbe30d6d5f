"""The model server explains predictions: real ONNX models, real explainer artifacts, real worker processes.

What a client of `POST /v2/models/{name}[/versions/{v}]/explain` sees: SHAP attributions that add up to
the output minus the base value, in the shape of the row it sent (a picture's as a picture); the same
answer for the same seed; and, for what cannot be explained, the status and a message saying why.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import httpx
import numpy as np
import pytest
from explain_models import (
    CLASS_NAMES,
    FEATURE_NAMES,
    INK,
    KEY,
    PICTURES,
    TABLE,
    explain_body,
    model_server,
    picture_classifier,
    picture_explainer,
    scraped,
    softmax,
    table_classifier,
    table_explainer,
    table_weights,
)

from gallery_common.explain.answer import ExplainAnswer

TOKENS = "itok:inference"
TOKEN = {"Authorization": "Bearer itok"}


@pytest.fixture(scope="module")
def table(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    home = tmp_path_factory.mktemp("table")
    with model_server(home, "table", "1", table_classifier(), table_explainer(), api_tokens=TOKENS) as url:
        yield url


@pytest.fixture(scope="module")
def picture(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    home = tmp_path_factory.mktemp("picture")
    with model_server(home, "picture", "1", picture_classifier(), picture_explainer(), api_tokens=TOKENS) as url:
        yield url


def explain(url: str, model: str, body: bytes, path: str = "/explain") -> httpx.Response:
    return httpx.post(f"{url}/v2/models/{model}{path}", content=body, headers=TOKEN, timeout=120)


def explained(url: str, model: str, body: bytes, path: str = "/explain") -> ExplainAnswer:
    response = explain(url, model, body, path)
    assert response.status_code == 200, response.text
    return ExplainAnswer.model_validate_json(response.content)


def test_shap_attributions_come_back_in_the_rows_shape_and_add_up_to_the_output(table: str) -> None:
    rows = TABLE[:2].copy()
    rows[:, KEY] = [2.0, -2.0]  # one row clearly class 1 ("high"), the other class 0 ("low")
    answer = explained(table, "table", explain_body("features", rows, request_id="why-7"), "/versions/1/explain")

    assert (answer.model_name, answer.model_version, answer.id) == ("table", "1", "why-7")
    assert (answer.method, answer.explainer, answer.output) == ("shap", "shap.KernelExplainer", "probability")
    assert answer.parameters.model_dump() == {
        "nsamples": 200,
        "seed": 0,
        "target": None,
        "patch": None,
        "background_rows": 10,
    }
    assert (answer.shape, answer.image_shape, answer.feature_names) == ([6], None, FEATURE_NAMES)
    assert answer.groups == FEATURE_NAMES
    probabilities = softmax(rows @ table_weights())
    for row, expected_class, probability in zip(answer.explanations, (1, 0), probabilities, strict=True):
        attributions = np.array(row.attributions)
        assert attributions.shape == (6,)
        assert (row.target, row.predicted, row.target_name) == (expected_class, expected_class, CLASS_NAMES[row.target])
        assert row.output == pytest.approx(probability[expected_class], abs=1e-6)
        assert attributions.sum() == pytest.approx(row.output - row.base_value, abs=1e-4)
        assert np.argmax(np.abs(attributions)) == KEY
        assert row.group_attributions == pytest.approx(row.attributions)


def test_the_same_seed_gives_the_same_answer_and_lime_explains_a_table_too(table: str) -> None:
    rows = TABLE[5:7]
    # fewer samples than the 62 coalitions of 6 features, so SHAP really samples
    for method, nsamples in (("shap", 30), ("lime", 300)):
        first = explain(table, "table", explain_body("features", rows, method=method, nsamples=nsamples, seed=5))
        again = explain(table, "table", explain_body("features", rows, method=method, nsamples=nsamples, seed=5))
        other = explain(table, "table", explain_body("features", rows, method=method, nsamples=nsamples, seed=6))
        assert first.status_code == again.status_code == other.status_code == 200, first.text
        assert first.content == again.content, method
        assert first.json()["explanations"] != other.json()["explanations"], method

    lime = ExplainAnswer.model_validate_json(first.content)
    assert (lime.explainer, lime.parameters.nsamples, lime.parameters.seed) == (
        "lime.lime_tabular.LimeTabularExplainer",
        300,
        5,
    )
    assert all("score" in row.details for row in lime.explanations)


def test_a_picture_is_explained_in_patches_returned_as_a_picture(picture: str) -> None:
    rows = PICTURES[:2].reshape(2, 1, 8, 8)
    answer = explained(picture, "picture", explain_body("pixels", rows, target=1))

    assert (answer.shape, answer.image_shape, answer.feature_names) == ([1, 8, 8], [1, 8, 8], None)
    assert (len(answer.groups), answer.parameters.patch, answer.parameters.target) == (16, 2, 1)
    for row in answer.explanations:
        heat = np.array(row.attributions)
        assert heat.shape == (1, 8, 8)
        assert heat.sum() == pytest.approx(row.output - row.base_value, abs=1e-4)
        strongest = np.unravel_index(np.argmax(np.abs(heat)), heat.shape)
        assert (int(strongest[1]), int(strongest[2])) in INK

    coarse = explained(picture, "picture", explain_body("pixels", rows[:1], target=1, patch=4, method="lime"))
    assert (coarse.explainer, coarse.parameters.patch, len(coarse.groups)) == (
        "lime.lime_base.LimeBase (patches)",
        4,
        4,
    )
    assert np.array(coarse.explanations[0].attributions).shape == (1, 8, 8)


@pytest.mark.parametrize(
    ("body", "status", "message"),
    [
        (explain_body("features", TABLE[:1], nsamples=5001), 400, "over this server's cap of 5000"),
        (explain_body("features", TABLE[:1], method="anchors"), 400, "parameters.method 'anchors'"),
        (explain_body("features", TABLE[:1], target=7), 400, "target 7 is not one of this model's 3 outputs"),
        (explain_body("features", TABLE[:1], seed="five"), 400, "parameters.seed must be a whole number"),
        (explain_body("features", TABLE[:1], patch=2), 400, "parameters.patch applies to pictures"),
        (explain_body("features", TABLE[:1, :5]), 400, "has shape [1, 5]; the model expects [-1, 6]"),
        (explain_body("features", TABLE[:17]), 400, "17 rows to explain; this server explains 1 to 16 rows"),
        (b'{"inputs": [', 400, "not valid JSON"),
    ],
)
def test_what_cannot_be_explained_is_refused_with_the_reason(
    table: str, body: bytes, status: int, message: str
) -> None:
    response = explain(table, "table", body)
    assert response.status_code == status
    assert message in response.json()["error"]


def test_explaining_needs_the_inference_role_and_is_counted_apart_from_inference(table: str) -> None:
    body = explain_body("features", TABLE[:1])
    refused = httpx.post(f"{table}/v2/models/table/explain", content=body)
    assert refused.status_code == 401
    inferred = scraped(table, "modelgallery_inference_requests_total")
    ok = scraped(table, "modelgallery_explain_requests_total", method="shap", outcome="ok")

    assert explain(table, "table", body).status_code == 200

    assert scraped(table, "modelgallery_explain_requests_total", method="shap", outcome="ok") == ok + 1
    assert scraped(table, "modelgallery_inference_requests_total") == inferred  # the canary analysis reads these
    assert explain(table, "other", body).status_code == 404


def test_a_version_without_explainer_data_answers_404_saying_why(tmp_path: Path) -> None:
    with model_server(tmp_path, "table", "1", table_classifier(), None, api_tokens=TOKENS) as url:
        response = explain(url, "table", explain_body("features", TABLE[:1]))
        assert response.status_code == 404
        assert response.json() == {
            "error": "model 'table' version '1' has no explainer data (it was validated before explanations "
            "existed; validate it again)"
        }
        infer = httpx.post(f"{url}/v2/models/table/infer", content=explain_body("features", TABLE[:1]), headers=TOKEN)
        assert infer.status_code == 200  # it still serves


def test_an_explainer_artifact_that_cannot_be_used_answers_500_saying_why(tmp_path: Path) -> None:
    with model_server(tmp_path, "table", "1", table_classifier(), b"not an npz", api_tokens=TOKENS) as url:
        response = explain(url, "table", explain_body("features", TABLE[:1]))
    assert response.status_code == 500
    assert response.json()["error"].startswith("the explainer artifact of table:1: not a readable NPZ file")
