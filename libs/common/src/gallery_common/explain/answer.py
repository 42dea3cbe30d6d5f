"""The answer of `POST /v2/models/{name}[/versions/{v}]/explain`, defined once: the model server writes
it, the gateway passes it through as bytes, the CLI and the Gallery read it.

One `RowAttributions` per input row, in the order of the request's rows. `attributions` is nested in the
row's own shape (the request's input shape without its first dimension), so a picture's attributions
draw as a heat map as they are; each feature holds its share of its group's attribution (a patch of a
picture spreads its value evenly over its pixels), and `group_attributions` are the values per group, in
the order of `groups`. For SHAP the attributions of a row add up to `output - base_value`.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, Field

from .attributions import Method

ExplainerName = Literal[
    "shap.KernelExplainer",
    "lime.lime_tabular.LimeTabularExplainer",
    "lime.lime_base.LimeBase (patches)",
]
OutputKind = Literal["probability", "value"]


def explainer_name(method: Method, picture: bool) -> ExplainerName:
    """The library class that computes `method`'s attributions: LIME explains a picture over patches with
    `LimeBase` (as `lime_image` does over superpixels), a table with its tabular explainer."""
    if method == "shap":
        return "shap.KernelExplainer"
    return "lime.lime_base.LimeBase (patches)" if picture else "lime.lime_tabular.LimeTabularExplainer"


class ExplainParameters(BaseModel):
    """The settings the explanation ran with, defaults filled in."""

    nsamples: int = Field(description="coalitions (SHAP) or perturbed samples (LIME) evaluated per row")
    seed: int = Field(description="the same seed, rows and settings give the same answer")
    target: int | None = Field(description="the class asked for; null: each row's predicted class")
    patch: int | None = Field(description="side of the square patches a picture is explained in; null for a table")
    background_rows: int = Field(description="k-means centres of the training split the features are replaced from")


class RowAttributions(BaseModel):
    """One input row explained for one target."""

    target: int = Field(description="the output explained (a class index; 0 for a regressor's one output)")
    target_name: str = Field(description="the class's name when the version records one, else its index")
    predicted: int | None = Field(description="the class the model picks for the row; null for a regressor")
    output: float = Field(description="the model's output for the target (a probability for a classifier)")
    base_value: float = Field(description="SHAP: the expected output over the background; LIME: the local intercept")
    attributions: list[Any] = Field(description="one value per feature, nested in the row's shape")
    group_attributions: list[float] = Field(description="one value per feature group, in the order of `groups`")
    details: dict[str, Any] = Field(default_factory=dict, description="method specific (LIME: the local fit's score)")


class ExplainAnswer(BaseModel):
    """A model server's explanation of one request."""

    model_name: str
    model_version: str
    id: str | None = Field(description="the request's id, echoed")
    method: Method
    explainer: ExplainerName
    parameters: ExplainParameters
    output: OutputKind = Field(description="probability: a classifier's softmax; value: the raw output")
    shape: list[int] = Field(description="one row's shape, as the request's input without its first dimension")
    image_shape: list[int] | None = Field(description="[channels, height, width] when a row is a picture")
    feature_names: list[str] | None = Field(description="one per flat feature, when the training data named them")
    groups: list[str] = Field(description="the feature groups attributed to: each feature of a table, or patches")
    explanations: list[RowAttributions]
