"""`gallery feedback`: the true label of an answer (a regressor's: its true value), or a reward for it, sent to
the gateway as any client would (`POST /v2/models/{model}/feedback`), joined there to the version that
answered."""

from __future__ import annotations

import json
from typing import Annotated, Any
from urllib.parse import quote

import typer

from .console import fail, say
from .service_client import GatewayClient


def feedback(
    model: Annotated[str, typer.Argument(help="the model, as the gateway routes it")],
    request_id: Annotated[str, typer.Option("--request-id", help="the answer's x-gallery-request-id")],
    label: Annotated[
        list[int] | None, typer.Option("--label", help="the true class (repeat it for each row of the answer)", min=0)
    ] = None,
    value: Annotated[
        list[float] | None,
        typer.Option("--value", help="a regressor's true value (repeat it for each row of a one-output answer)"),
    ] = None,
    reward: Annotated[float | None, typer.Option("--reward", help="a reward for the answer")] = None,
    as_json: Annotated[bool, typer.Option("--json", help="print the recorded outcome as JSON")] = False,
) -> None:
    """Record the outcome of one answer: its label (was the model right?), a regressor's true value (how far
    off was it?) or a reward."""
    if sum(given for given in (bool(label), bool(value), reward is not None)) != 1:
        fail("give exactly one of --label N (once per row), --value X (once per row) or --reward X", 2)
    body: dict[str, Any] = {"request_id": request_id}
    if label:
        body["label"] = label[0] if len(label) == 1 else label
    elif value:
        body["value"] = value[0] if len(value) == 1 else value
    else:
        body["reward"] = reward
    with GatewayClient() as client:
        answer = client.json("POST", f"/v2/models/{quote(model, safe='')}/feedback", json=body)
    if as_json:
        typer.echo(json.dumps(answer, indent=2))
        return
    for outcome in answer["recorded"]:
        if outcome["kind"] == "label":
            result = f"{outcome['correct_rows']} of {outcome['rows']} row(s) correct"
        elif outcome["kind"] == "value":
            errors = outcome["squared_error"]
            result = f"root mean squared error {(sum(errors) / len(errors)) ** 0.5:.4g} over {len(errors)} row(s)"
        else:
            result = f"reward {outcome['reward']:g}"
        say(f"recorded for {outcome['model']} version {outcome['version']} (request {outcome['request_id']}): {result}")
