"""The model card's "Feature importance" section, from the `feature_importance` the validation gate put in
the evaluation report (gate/importance.py): the features (or, for a picture, the patches) that move the
model's answers most, with how that was measured.

A table gets its top features with their mean |SHAP| and a text bar; a picture its top patches and a
text heat map of every patch, one character each, so the card reads without a chart.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

from gallery_common.explain.layout import InputLayout

from .markdown import fmt, table

TOP = 10
BAR_WIDTH = 20
SHADES = " ░▒▓█"  # least to most important, relative to the most important patch


def importance_section(report: Mapping[str, Any] | None) -> list[str]:
    """The section's Markdown lines; it says why when the gate recorded no importance."""
    lines = ["## Feature importance", ""]
    found = (report or {}).get("feature_importance")
    if not isinstance(found, Mapping):
        return [*lines, "_Not computed by the validation gate._"]
    if found.get("error"):
        return [*lines, f"_Not computed: {found['error']}_"]
    groups = [g for g in found.get("groups") or [] if isinstance(g, Mapping) and _number(g.get("importance"))]
    if not groups:
        return [*lines, "_The validation gate recorded no feature groups._"]
    picture = _picture(found)
    words = found.get("method") == "word-occlusion"
    lines += [_how_words(found) if words else _how(found, picture), ""]
    top = max(float(g["importance"]) for g in groups) or 1.0
    shown = groups[:TOP]
    unit = "word" if words else "patch (rows, columns)" if picture else "feature"
    lines += table(
        [unit, "mean probability drop" if words else "mean |SHAP|", "relative"],
        [(_name(g, picture), fmt(float(g["importance"])), _bar(float(g["importance"]) / top)) for g in shown],
    )
    if len(groups) > len(shown):
        kind = "words" if words else "patches" if picture else "features"
        lines += ["", f"{len(groups) - len(shown)} more {kind}, each less important than these."]
    if picture is not None:
        heat = _heat_map(picture, groups, top)
        if heat:
            lines += ["", "Every patch, darker is more important:", "", "```", *heat, "```"]
    return lines


def _how(found: Mapping[str, Any], picture: InputLayout | None) -> str:
    target = found.get("target") or "predicted class"
    explained = "the probability of the predicted class" if target == "predicted class" else "the model's output"
    unit = "patch" if picture else "feature"
    where = ""
    if picture is not None and picture.image_shape is not None:
        channels, height, width = picture.image_shape
        side = picture.groups().patch
        where = f" The input is a {channels}x{height}x{width} picture, explained in {side}x{side}-pixel patches."
    return (
        f"Mean |SHAP| of each {unit} over {fmt(found.get('rows'))} rows of the test split, for {explained} "
        f"({fmt(found.get('method'))}, {fmt(found.get('nsamples'))} coalitions per row against a "
        f"{fmt(found.get('background_rows'))}-row k-means summary of the training split; seed "
        f"{fmt(found.get('seed'))}), computed by the validation gate.{where}"
    )


def _how_words(found: Mapping[str, Any]) -> str:
    return (
        f"Mean drop of the predicted class's probability when a word is removed from a text, over "
        f"{fmt(found.get('rows'))} texts of the test split (word occlusion; a text without the word counts as no "
        f"drop; seed {fmt(found.get('seed'))}), computed by the validation gate."
    )


def _picture(found: Mapping[str, Any]) -> InputLayout | None:
    shape = found.get("image_shape")
    if not (isinstance(shape, list) and len(shape) == 3 and all(isinstance(d, int) and d > 0 for d in shape)):
        return None
    channels, height, width = shape
    return InputLayout(channels * height * width, (channels, height, width), (channels, height, width))


def _name(group: Mapping[str, Any], picture: InputLayout | None) -> str:
    name = str(group.get("name", group.get("index")))
    return name.removeprefix("patch ") if picture is not None else name


def _bar(share: float) -> str:
    return "█" * max(1, round(share * BAR_WIDTH)) if share > 0 else ""


def _heat_map(picture: InputLayout, groups: list[Mapping[str, Any]], top: float) -> list[str]:
    """One line per row of patches; empty when the groups are not this picture's patches."""
    assert picture.image_shape is not None
    _, height, width = picture.image_shape
    side = picture.groups().patch or 1
    rows, cols = math.ceil(height / side), math.ceil(width / side)
    grid = [[0.0] * cols for _ in range(rows)]
    for group in groups:
        index = group.get("index")
        if not isinstance(index, int) or not 0 <= index < rows * cols:
            return []
        grid[index // cols][index % cols] = float(group["importance"])
    last = len(SHADES) - 1
    return ["".join(SHADES[round(value / top * last)] * 2 for value in row) for row in grid]


def _number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)
