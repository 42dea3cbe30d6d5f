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
