"""What the monitor's serving-figure, canary and drift routes answer (the Gallery's Monitoring view reads these fields).

The figures (`series.Figures`), the drift of a feature (`drift.FeatureDrift`) and the canary comparison
(`contracts.serving_metrics.CanaryComparison`) are the dataclasses the core computes, shown field for field.
"""

from __future__ import annotations

from pydantic import BaseModel, Field

from gallery_common.contracts.serving_metrics import CanaryComparison

from .drift import FeatureDrift
from .series import Figures
from .text_drift import TextFindings


class SeriesPoint(BaseModel):
    """One scrape round of one version (its variants together); `t` is ISO 8601 UTC."""

    t: str
    version: str
    rps: float
    error_rate: float | None
    p99_ms: float | None


class FiguresView(BaseModel):
    model: str
    window_s: float
    versions: list[Figures] = Field(description="each version and variant with traffic in the window")
    cache_hit_rate: float | None = Field(description="the gateway's response cache; null without cacheable requests")
    series: list[SeriesPoint] = Field(description="per scrape round and version, oldest first")


class CanaryView(BaseModel):
    model: str
    window_s: float
    canary: Figures | None = Field(description="the newest canary's figures; null when none serves")
    baseline: Figures | None = Field(description="production's figures; null when no version holds the alias")
    comparison: CanaryComparison | None = Field(description="what the deployer's canary analysis judges")


class DriftView(BaseModel):
    model: str
    version: int | None = Field(description="the registry version the samples are of; null when not one")
    window_s: float
    samples: int
    features: list[FeatureDrift] = Field(description="every feature, the most concerning first (see ranked_by)")
    prediction_psi: float | None
    drifted: bool
    reasons: list[str] = Field(description="why the window drifted, or why it was not judged")
    ranked_by: str | None = Field(
        default=None,
        description="how features are ranked: importance · PSI (the gate's mean |SHAP| times the drift), or PSI "
        "alone with the reason; null when nothing was measured",
    )
    text: TextFindings | None = Field(
        default=None,
        description="a text model's figures beside its rows (text length, characters, tokens): the share of tokens "
        "unseen in training, the moved tokens, empty, non-UTF-8 and cut-short texts, warnings; null for numeric inputs",
    )


class OnlineFigures(BaseModel):
    """What feedback on a set of answers says: the figures a version and each of its variants both have."""

    outcomes: int = Field(description="answers with feedback")
    labelled_rows: int = Field(description="rows with a true class")
    accuracy: float | None = Field(description="share of labelled rows whose top class was right; null without labels")
    valued_rows: int = Field(description="a regressor's rows with a true value")
    rmse: float | None = Field(description="root mean squared error of the valued rows; null without values")
    rewarded: int = Field(description="answers with a reward")
    mean_reward: float | None


class VariantQuality(OnlineFigures):
    """One variant's share of a version's feedback: the answers its backend gave (a fallback's count for the
    fallback), beside what the optimizer measured of that variant on the version's test split."""

    variant: str = Field(description="as the route names the backend; empty for a route written without one")
    test_accuracy: float | None = Field(description="the optimizer's accuracy of the variant; null when not known")
    test_rmse: float | None = Field(description="the optimizer's rmse of the variant; null when not known")


class QualityFigures(OnlineFigures):
    """One version's online quality over the window, from the feedback on its answers, beside the gate's."""

    version: str
    gate_accuracy: float | None = Field(description="the gate's test accuracy of the version; null when not known")
    gate_rmse: float | None = Field(description="the gate's test rmse of the version; null when not known")
    variants: list[VariantQuality] = Field(
        default_factory=list, description="the version's figures per variant that answered, the most feedback first"
    )


class QualityPoint(BaseModel):
    """One version's outcomes of answers given in one bucket (`t`: its start, ISO 8601 UTC)."""

    t: str
    version: str
    labelled_rows: int
    accuracy: float | None
    valued_rows: int
    rmse: float | None
    rewarded: int
    mean_reward: float | None


class QualityView(BaseModel):
    model: str
    window_s: float
    bucket_s: float = Field(description="the width of a series point")
    versions: list[QualityFigures] = Field(description="each version with feedback on answers given in the window")
    series: list[QualityPoint] = Field(description="per bucket and version, oldest first")
