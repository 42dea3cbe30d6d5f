"""What the gateway keeps of an answer for feedback, and how a piece of feedback is read and checked
against it (the store and the bus are exercised in tests/integration/serving/test_serving_outcomes.py)."""

from __future__ import annotations

import numpy as np
import pytest

from gallery_common.contracts.oip import encode_infer_request
from gallery_common.contracts.request_ids import call_request_id, checked_request_id
from gallery_common.errors import BadRequest, InvalidRequest
from gallery_common.oip_grpc import grpc_predict_v2_pb2 as pb
from gallery_deployer.gateway.feedback import joined_outcome, parse_feedback
from gallery_deployer.gateway.grpc_front import _id_field
from gallery_deployer.gateway.outcomes import MAX_CLASS_ROWS, Answered, record_of


def answered(outputs: dict[str, np.ndarray]) -> Answered:
    # an answer body has the shape of a request body with `outputs`: build one and rename the key
    body, _ = encode_infer_request(outputs)
    return Answered("r1", "m", "3", "fp32", "local", 0.0, body.replace(b'"inputs"', b'"outputs"'), None)


def test_scores_keep_the_top_class_of_each_row_and_class_ids_are_kept_as_they_are() -> None:
    scores = record_of(answered({"logits": np.array([[0.1, 2.0, 0.3], [5.0, 0.0, 1.0]], np.float32)}))
    assert scores is not None and scores.rows == 2 and scores.classes == [1, 0] and scores.version == "3"
    ids = record_of(answered({"label": np.array([4, 2, 2], np.int64)}))
    assert ids is not None and ids.classes == [4, 2, 2]


@pytest.mark.parametrize(
    "output",
    [
        np.array([[0.7], [0.2]], np.float32),  # one score per row: a regression (or a lone probability)
        np.array([0.7, 0.2], np.float32),
        np.zeros((MAX_CLASS_ROWS + 1, 3), np.float32),
    ],
)
def test_an_answer_without_classes_takes_a_reward_and_refuses_a_label(output: np.ndarray) -> None:
    record = record_of(answered({"y": output}))
    assert record is not None and record.classes is None and record.rows == len(output)
    [reward] = parse_feedback(b'{"request_id": "r1", "reward": 2}')
    assert joined_outcome("m", reward, record, "someone").reward == 2.0
    [label] = parse_feedback(b'{"request_id": "r1", "label": ' + str([0] * len(output)).encode() + b"}")
    with pytest.raises(ValueError, match="send a reward"):
        joined_outcome("m", label, record, "someone")


def test_a_regressors_answer_of_several_outputs_holds_no_classes() -> None:
    """Two predictions per row look like two scores: the route's task says they are a regressor's, so a label
    is refused (its "top class" would be the larger prediction's index)."""
    predictions = np.array([[3.5, 120.0], [2.0, 80.0]], np.float32)
    body = answered({"y": predictions}).body
    as_classifier = record_of(Answered("r1", "m", "3", "fp32", "local", 0.0, body, None))
    assert as_classifier is not None and as_classifier.classes == [1, 1]
    record = record_of(Answered("r1", "m", "3", "fp32", "local", 0.0, body, None, regression=True))
    assert record is not None and record.classes is None and record.rows == 2
    [label] = parse_feedback(b'{"request_id": "r1", "label": [1, 1]}')
    with pytest.raises(ValueError, match="a regressor's predictions"):
        joined_outcome("m", label, record, "someone")


def test_a_regressors_true_values_give_each_rows_squared_error() -> None:
    predictions = np.array([[3.5, 120.0], [2.0, 80.0]], np.float32)
    body = answered({"y": predictions}).body
    record = record_of(Answered("r1", "m", "3", "fp32", "local", 0.0, body, None, regression=True))
    assert record is not None and record.predictions == [[3.5, 120.0], [2.0, 80.0]]
    [piece] = parse_feedback(b'{"request_id": "r1", "value": [[4.5, 118.0], [2.0, 80.0]]}')
    outcome = joined_outcome("m", piece, record, "someone")
    assert outcome.kind == "value" and outcome.squared_error == [(1.0 + 4.0) / 2, 0.0]
    assert outcome.value == [[4.5, 118.0], [2.0, 80.0]]
    # a one-output regressor takes a number per row; a one-row answer a number alone
    one = answered({"y": np.array([[7.0]], np.float32)}).body
    single = record_of(Answered("r2", "m", "3", "fp32", "local", 0.0, one, None, regression=True))
    assert single is not None
    [alone] = parse_feedback(b'{"request_id": "r2", "value": 5}')
    assert joined_outcome("m", alone, single, "someone").squared_error == [4.0]
    # values that do not fit the answer, and a value for a classifier's answer, are refused with the reason
    [short] = parse_feedback(b'{"request_id": "r1", "value": [4.5, 2.0]}')
    with pytest.raises(ValueError, match=r"2 value\(s\) for an answer of 2 row\(s\) of 2 prediction\(s\)"):
        joined_outcome("m", short, record, "someone")
    scores = record_of(answered({"logits": np.array([[0.1, 2.0]], np.float32)}))
    assert scores is not None and scores.predictions is None
    with pytest.raises(ValueError, match="a classifier's answer takes a label"):
        joined_outcome("m", alone, scores, "someone")


def test_a_label_is_compared_with_each_row() -> None:
    record = record_of(answered({"logits": np.array([[0.1, 2.0], [5.0, 0.0], [0.0, 1.0]], np.float32)}))
    assert record is not None
    [piece] = parse_feedback(b'{"request_id": "r1", "label": [1, 1, 1]}')
    outcome = joined_outcome("m", piece, record, "someone")
    assert outcome.correct == [True, False, True] and outcome.correct_rows == 2 and outcome.label == [1, 1, 1]


@pytest.mark.parametrize(
    ("body", "reason"),
    [
        (b"not json", "not JSON"),
        (b"[1, 2]", "send"),
        (b'{"request_id": "r1", "label": true}', "label"),
        (b'{"request_id": "r1", "label": -1}', "greater than or equal to 0"),
        (b'{"request_id": "r1", "label": []}', "empty list"),
        (b'{"request_id": "r1", "reward": 1, "why": "x"}', "why"),
        (b'{"outcomes": []}', "at least 1"),
    ],
)
def test_malformed_feedback_says_what_is_wrong(body: bytes, reason: str) -> None:
    with pytest.raises(InvalidRequest, match=reason):
        parse_feedback(body)


@pytest.mark.parametrize("request_id", ["a", "x" * 127 + "y"])
def test_an_id_appended_to_a_grpc_request_is_its_id(request_id: str) -> None:
    data = pb.ModelInferRequest(model_name="m").SerializeToString() + _id_field(request_id)
    assert pb.ModelInferRequest.FromString(data).id == request_id


def test_a_call_takes_its_metadata_id_then_its_message_id_then_a_new_one() -> None:
    assert call_request_id([("x-gallery-request-id", "given")], "own") == "given"
    assert call_request_id([], "own") == "own"
    assert len(call_request_id([], "not usable")) == 32
    with pytest.raises(BadRequest, match="x-gallery-request-id"):
        call_request_id([("x-gallery-request-id", "no good")], "")
    with pytest.raises(BadRequest, match="x-gallery-request-id"):
        checked_request_id("ends-with-newline\n")
