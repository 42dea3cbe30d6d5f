"""`gallery feedback` against a stand-in gateway on loopback that answers with the gateway's own contract
(`model.outcome` payloads): the body it sends for one label, a label per row, a regressor's true values or a
reward, the line a user reads back, and feedback with none or two refused before anything is sent."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime
from typing import Any

import pytest
from fastapi import FastAPI
from typer.testing import CliRunner
from uvicorn_thread import running

from gallery_cli.main import app as cli
from gallery_common.events import ModelOutcome


def outcome(model: str, body: dict[str, Any]) -> ModelOutcome:
    """What the gateway records for `body` on a two-row answer of version 2 whose top classes are 1 and 2."""
    common: dict[str, Any] = {"model": model, "version": "2", "request_id": body["request_id"], "caller": "local"}
    common |= {"given_by": "local", "answered_at": datetime.now(UTC), "rows": 2}
    if "reward" in body:
        return ModelOutcome(**common, kind="reward", reward=body["reward"])
    if "value" in body:  # a regressor's answer that predicted 10.0 and 20.0
        values = body["value"] if isinstance(body["value"], list) else [body["value"], body["value"]]
        squared = [(v - p) ** 2 for v, p in zip(values, (10.0, 20.0), strict=True)]
        return ModelOutcome(**common, kind="value", value=[[v] for v in values], squared_error=squared)
    labels = body["label"] if isinstance(body["label"], list) else [body["label"], body["label"]]
    correct = [label == top for label, top in zip(labels, (1, 2), strict=True)]
    return ModelOutcome(**common, kind="label", label=labels, correct=correct, correct_rows=sum(correct))


@pytest.fixture(scope="module")
def gateway() -> Iterator[tuple[str, list[dict[str, Any]]]]:
    received: list[dict[str, Any]] = []
    app = FastAPI()

    @app.post("/v2/models/{model}/feedback")
    def feedback(model: str, body: dict[str, Any]) -> dict[str, Any]:
        received.append(body)
        return {"recorded": [outcome(model, body).model_dump(mode="json")]}

    with running(app) as server:
        yield f"http://127.0.0.1:{server.config.port}", received


def gallery(url: str, *args: str) -> tuple[int, str]:
    """`gallery feedback ARGS`: its exit code and what it printed (stdout, or the error on stderr)."""
    result = CliRunner().invoke(cli, ["feedback", *args], env={"GALLERY_GATEWAY_URL": url})
    return result.exit_code, result.stdout if result.exit_code == 0 else result.stderr


def test_a_label_per_row_is_sent_as_a_list_and_the_result_read_back(
    gateway: tuple[str, list[dict[str, Any]]],
) -> None:
    url, received = gateway
    code, output = gallery(url, "tiny", "--request-id", "r1", "--label", "1", "--label", "0")
    assert code == 0, output
    assert received[-1] == {"request_id": "r1", "label": [1, 0]}
    assert output.strip() == "recorded for tiny version 2 (request r1): 1 of 2 row(s) correct"


def test_one_label_is_sent_alone_and_a_reward_as_a_number(gateway: tuple[str, list[dict[str, Any]]]) -> None:
    url, received = gateway
    code, output = gallery(url, "tiny", "--request-id", "r2", "--label", "3")
    assert code == 0, output
    assert received[-1] == {"request_id": "r2", "label": 3}
    code, output = gallery(url, "tiny", "--request-id", "r3", "--reward", "0.25")
    assert code == 0, output
    assert received[-1] == {"request_id": "r3", "reward": 0.25}
    assert output.strip().endswith("(request r3): reward 0.25")


def test_a_regressors_true_values_are_sent_and_its_error_read_back(gateway: tuple[str, list[dict[str, Any]]]) -> None:
    url, received = gateway
    code, output = gallery(url, "prices", "--request-id", "r5", "--value", "13", "--value", "16")
    assert code == 0, output
    assert received[-1] == {"request_id": "r5", "value": [13.0, 16.0]}
    # squared errors 9 and 16 over the two rows: rmse sqrt(12.5)
    assert output.strip().endswith("(request r5): root mean squared error 3.536 over 2 row(s)")


def test_neither_or_both_is_refused_before_anything_is_sent(gateway: tuple[str, list[dict[str, Any]]]) -> None:
    url, received = gateway
    sent = len(received)
    for extra in ([], ["--label", "1", "--reward", "1"], ["--value", "1", "--label", "1"]):
        code, output = gallery(url, "tiny", "--request-id", "r4", *extra)
        assert code == 2 and "give exactly one of --label N (once per row), --value X (once per row)" in output
    assert len(received) == sent
