"""Optimiser, learning-rate schedule and loss, built from the training spec the same way for every engine."""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable

import torch
import torch.nn.functional as F

from gallery_trainer.spec import TrainingSpec

LossFn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


def make_optimizer(params: Iterable[torch.nn.Parameter], spec: TrainingSpec) -> torch.optim.Optimizer:
    """Adam, AdamW or SGD with momentum at the spec's learning rate and weight decay."""
    params = list(params)
    if spec.optimizer == "sgd":
        return torch.optim.SGD(params, lr=spec.learning_rate, momentum=spec.momentum, weight_decay=spec.weight_decay)
    if spec.optimizer == "adamw":
        return torch.optim.AdamW(params, lr=spec.learning_rate, weight_decay=spec.weight_decay)
    return torch.optim.Adam(params, lr=spec.learning_rate, weight_decay=spec.weight_decay)


def lr_factor(spec: TrainingSpec, steps_per_epoch: int) -> Callable[[int], float]:
    """The multiplier of the learning rate after `step` optimizer steps: linear warm-up, then the schedule."""
    schedule = spec.schedule
    total = max(1, spec.epochs * steps_per_epoch)

    def factor(step: int) -> float:
        warm = min(1.0, (step + 1) / schedule.warmup_steps) if schedule.warmup_steps else 1.0
        if schedule.kind == "step":
            return warm * schedule.gamma ** (step // (schedule.step_epochs * steps_per_epoch))
        if schedule.kind == "cosine":
            progress = min(1.0, max(0.0, (step - schedule.warmup_steps) / max(1, total - schedule.warmup_steps)))
            floor = schedule.min_lr_ratio
            return warm * (floor + (1 - floor) * 0.5 * (1 + math.cos(math.pi * progress)))
        return warm

    return factor


def make_scheduler(
    optimizer: torch.optim.Optimizer, spec: TrainingSpec, steps_per_epoch: int
) -> torch.optim.lr_scheduler.LambdaLR:
    return torch.optim.lr_scheduler.LambdaLR(optimizer, lr_factor(spec, steps_per_epoch))


def make_loss(task: str) -> LossFn:
    """Mean cross-entropy (class indices or probabilities) or mean squared error on standardised targets."""
    if task == "classification":

        def classification_loss(outputs: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
            return F.cross_entropy(outputs.float(), targets)

        return classification_loss

    def regression_loss(outputs: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        return F.mse_loss(outputs.float().squeeze(-1), targets.float())

    return regression_loss
