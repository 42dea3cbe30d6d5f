"""What a model's optimization builds and how it chooses: the per-model policy, with defaults."""

from __future__ import annotations

from typing import Annotated, Literal, get_args

from pydantic import BaseModel, ConfigDict, Field, field_validator

VariantName = Literal["int8_dynamic", "int8_static", "fp16", "pruned_magnitude", "pruned_structured", "distilled"]
ALL_VARIANTS: tuple[VariantName, ...] = get_args(VariantName)
BASELINE = "fp32"


class OptimizationPolicy(BaseModel):
    """Which variants to build, the accuracy a variant may lose, and the knobs of pruning and distillation."""

    model_config = ConfigDict(extra="forbid")

    variants: list[VariantName] = Field(
        default_factory=lambda: list(ALL_VARIANTS), description="variants to build besides FP32"
    )
    accuracy_budget: float = Field(
        default=0.01,
        ge=0.0,
        le=1.0,
        description="largest test-accuracy drop a recommended variant may have (0.01 = 1 point)",
    )
    target_sparsity: float = Field(
        default=0.5, gt=0.0, lt=1.0, description="fraction of weights (magnitude) or hidden units (structured) pruned"
    )
    finetune_epochs: int = Field(default=3, ge=0, le=200, description="epochs of fine-tuning after pruning")
    student_hidden: list[Annotated[int, Field(ge=1, le=8192)]] = Field(
        default_factory=lambda: [32], min_length=1, max_length=8, description="hidden layer sizes of the distilled MLP"
    )
    distill_epochs: int = Field(default=30, ge=1, le=1000, description="epochs of training the student")
    temperature: float = Field(default=4.0, gt=0.0, le=100.0, description="softmax temperature of the soft targets")
    seed: int = Field(default=0, ge=0, description="seed of fine-tuning, distillation and calibration sampling")
    int8_target: Literal["auto", "portable", "int8_dot"] = Field(
        default="auto",
        description=(
            "CPUs the INT8 variants are built for: 'portable' (7-bit weights, accurate on any CPU), 'int8_dot' "
            "(full 8-bit weights for CPUs with VNNI, AMX or Arm dotprod), 'auto' (whichever the optimizer's own "
            "CPU is, so a variant keeps the accuracy it is measured with)"
        ),
    )

    @field_validator("variants")
    @classmethod
    def _unique(cls, value: list[VariantName]) -> list[VariantName]:
        return list(dict.fromkeys(value))
