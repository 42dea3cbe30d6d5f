"""`gallery explain`: why a served model answered what it did — the top features of a SHAP or LIME
explanation, asked of the gateway as any client would (`POST /v2/models/{model}/explain`)."""

from __future__ import annotations

import json
import re
from typing import Annotated, Any
from urllib.parse import quote

import numpy as np
import typer
from rich.table import Table

from gallery_common.contracts.splits import NpzRefused, read_split
from gallery_common.explain.answer import ExplainAnswer

from .console import console, fail, say
from .service_client import GalleryClient, GatewayClient, RegistryServiceClient

_REF = re.compile(r"^(?P<name>[^:]+)(?::(?P<version>\d+))?$")
SHADES = " .:-=+*#%@"  # a text heat map: more ink, more attribution


def explain(
    ref: Annotated[str, typer.Argument(help="NAME (as the gateway routes it) or NAME:VERSION")],
    row: Annotated[str | None, typer.Option("--row", help="one input row as a JSON list of numbers")] = None,
    from_test: Annotated[
        int | None, typer.Option("--from-test", help="row N of the version's held-out test split", min=0)
    ] = None,
    method: Annotated[str, typer.Option(help="shap or lime")] = "shap",
    target: Annotated[int | None, typer.Option(help="class index to explain (default: the predicted class)")] = None,
    nsamples: Annotated[int | None, typer.Option(help="model evaluations per row (default: the server's)")] = None,
    seed: Annotated[int, typer.Option(help="the same seed gives the same explanation")] = 0,
    top: Annotated[int, typer.Option(help="features to list", min=1)] = 10,
    as_json: Annotated[bool, typer.Option("--json", help="print the server's whole answer as JSON")] = False,
) -> None:
    """Explain one prediction: the features that pushed the model toward its answer, most first."""
    match = _REF.match(ref)
    if match is None:
        fail(f"cannot read {ref!r}: use NAME or NAME:VERSION", 2)
    name, number = match["name"], int(match["version"]) if match["version"] else None
    if (row is None) == (from_test is None):
        fail("give the input with exactly one of --row '[...]' or --from-test N", 2)
    values, label = _parse_row(row) if row is not None else _test_row(name, number, from_test or 0)
    parameters: dict[str, Any] = {"method": method, "seed": seed}
    if target is not None:
        parameters["target"] = target
    if nsamples is not None:
        parameters["nsamples"] = nsamples
    body = {
        "inputs": [{"name": "features", "datatype": "FP32", "shape": [1, len(values)], "data": values}],
        "parameters": parameters,
    }
    path = f"/v2/models/{quote(name, safe='')}" + (f"/versions/{number}" if number else "") + "/explain"
    with GatewayClient(timeout=120) as client:
        if as_json:
            typer.echo(json.dumps(client.json("POST", path, json=body), indent=2))
            return
        answer = client.parsed(ExplainAnswer, "POST", path, json=body)
    _print(answer, top, label)


def _parse_row(text: str) -> tuple[list[float], Any]:
    try:
        values = json.loads(text)
        flat = np.asarray(values, dtype=np.float32).reshape(-1)
    except (ValueError, TypeError) as exc:
        fail(f"--row must be a JSON list of numbers: {exc}", 2)
    if not flat.size:
        fail("--row is empty", 2)
    return [float(v) for v in flat], None


def _test_row(name: str, number: int | None, index: int) -> tuple[list[float], Any]:
    """Row `index` of the test split of version `number` (else production, else the latest version)."""
    with RegistryServiceClient() as registry:
        if number is None:
            model = registry.get_model(name)
            number = model.aliases.get("production") or model.latest_version
            if number is None:
                fail(f"model {name!r} has no versions")
    with GalleryClient(timeout=120) as gallery:
        data = gallery.request(
            "GET", f"/api/gallery/models/{quote(name, safe='')}/versions/{number}/artifacts/test_split"
        ).content
    try:
        split = read_split(data, name=f"test_split of {name}:{number}")
    except NpzRefused as exc:
        fail(str(exc))
    if index >= len(split):
        fail(f"the test split of {name}:{number} has {len(split)} rows; --from-test {index} is past its end", 2)
    label = split.y[index].item() if split.y.ndim == 1 else None
    say(f"row {index} of the test split of {name}:{number} (label {label})")
    return [float(v) for v in split.x[index]], label


def _print(answer: ExplainAnswer, top: int, label: Any) -> None:
    for explained in answer.explanations:
        kind = "probability" if answer.output == "probability" else "output"
        guess = "" if explained.predicted is None else f"predicts class {explained.predicted}; "
        say(
            f"{answer.model_name} v{answer.model_version} {guess}{answer.method.upper()} "
            f"({answer.explainer}, {answer.parameters.nsamples} samples) explains the {kind} of class "
            f"{explained.target_name}: base {explained.base_value:.4f} -> {explained.output:.4f}"
            + ("" if label is None else f" (the row's label: {label})")
        )
        values = np.asarray(explained.group_attributions, dtype=float)
        order = np.argsort(-np.abs(values), kind="stable")[:top]
        table = Table(show_header=True)
        for column, justify in (("rank", "right"), ("feature", "left"), ("attribution", "right"), ("", "left")):
            table.add_column(column, justify=justify)  # type: ignore[arg-type]
        widest = float(np.abs(values).max()) or 1.0
        for rank, i in enumerate(order, 1):
            bar = "█" * max(1, round(12 * abs(values[i]) / widest)) if values[i] else ""
            colour = "green" if values[i] > 0 else "red"
            table.add_row(str(rank), answer.groups[i], f"{values[i]:+.4f}", f"[{colour}]{bar}")
        console.print(table)
        if answer.image_shape:
            _heat_map(np.asarray(explained.attributions, dtype=float).reshape(answer.image_shape))


def _heat_map(values: np.ndarray) -> None:
    """The attributions over the picture (summed over channels) as text: + pushes toward the class."""
    grid = values.sum(axis=0)
    widest = float(np.abs(grid).max()) or 1.0
    say("attribution over the picture (# toward the class, ~ against it):")
    for line in grid:
        say(" ".join(("#" if v > 0 else "~") if abs(v) >= widest / 3 else "." if abs(v) > 0 else " " for v in line))
