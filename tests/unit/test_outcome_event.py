"""The `model.outcome` event: what a joined feedback says, checked where it is built."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import pytest
from pydantic import ValidationError

from gallery_common.events import ModelOutcome, make_event, parse_event

BASE: dict[str, Any] = {
    "model": "iris",
    "version": "2",
    "request_id": "3f2a9c",
    "caller": "inference-1a2b3c4d",
    "given_by": "inference-1a2b3c4d",
    "answered_at": datetime(2026, 12, 6, tzinfo=UTC),
    "rows": 2,
}


def test_a_label_outcome_round_trips_with_its_subject_and_id() -> None:
    outcome = ModelOutcome(**BASE, kind="label", label=[1, 0], correct=[True, False], correct_rows=1)
    event = make_event(outcome, "/modelgallery/gateway", event_id="outcome.3f2a9c")
    assert event.nats_subject == "model.outcome.default" and event.subject == "iris/2"
    again = parse_event(event.to_json())
    assert again.data == outcome and again.id == "outcome.3f2a9c"


@pytest.mark.parametrize(
    ("fields", "reason"),
    [
        ({"kind": "label", "label": [1], "correct": [True], "correct_rows": 1}, "one entry per row"),
        ({"kind": "label", "label": [1, 0], "correct": [True, False], "correct_rows": 2}, "count of true"),
        (
            {"kind": "label", "label": [1, 0], "correct": [True, True], "correct_rows": 2, "reward": 1.0},
            "a label outcome has correct, correct_rows, label and nothing else",
        ),
        ({"kind": "reward"}, "a reward outcome has reward and nothing else"),
        ({"kind": "value", "value": [[1.0]], "squared_error": [0.5]}, "one entry per row"),
        ({"kind": "value", "value": [[1.0], [2.0]], "squared_error": [0.5, 0.0], "reward": 1.0}, "nothing else"),
        ({"kind": "reward", "reward": float("nan")}, "finite"),
        ({"kind": "reward", "reward": 1.0, "request_id": "has space"}, "pattern"),
    ],
)
def test_an_inconsistent_outcome_is_refused(fields: dict[str, Any], reason: str) -> None:
    with pytest.raises(ValidationError, match=reason):
        ModelOutcome(**{**BASE, **fields})
