"""Short, seeded PyTorch training loops on raw-feature models (pruning's fine-tune, distillation)."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from gallery_common.contracts.scoring import regression_scores

BATCH = 64
Loss = Callable[[torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor]


Score = Callable[[nn.Module, np.ndarray, np.ndarray], float]


def _outputs(model: nn.Module, x: np.ndarray) -> torch.Tensor:
    model.eval()
    with torch.no_grad():
        return model(torch.from_numpy(np.ascontiguousarray(x, dtype=np.float32)))  # type: ignore[no-any-return]


def accuracy(model: nn.Module, x: np.ndarray, y: np.ndarray) -> float:
    """Share of rows whose arg-max output is the label."""
    return float((_outputs(model, x).argmax(dim=1).numpy() == y).mean())


def r2(model: nn.Module, x: np.ndarray, y: np.ndarray) -> float:
    """A regressor's r2 on targets `y` [N, K]."""
    return regression_scores(_outputs(model, x).numpy(), y)["r2"]


@dataclass(frozen=True)
class Objective:
    """What a short training run minimises and how its epochs are compared: a classifier's cross-entropy
    and accuracy on integer labels, or a regressor's squared error in units of its targets' spread and r2
    on float targets [N, K]."""

    loss: Loss
    score: Score


def cross_entropy(outputs: torch.Tensor, labels: torch.Tensor, _: torch.Tensor) -> torch.Tensor:
    return nn.functional.cross_entropy(outputs, labels)


CLASSIFICATION = Objective(cross_entropy, accuracy)


def target_spread(y: np.ndarray) -> float:
    """The targets' standard deviation (1 for constant targets): a regressor's losses are in its units, so
    the same settings train a model of house prices and one of probabilities."""
    spread = float(np.asarray(y, dtype=np.float64).std())
    return spread if spread > 0 else 1.0


def squared_error(spread: float) -> Loss:
    def loss(outputs: torch.Tensor, targets: torch.Tensor, _: torch.Tensor) -> torch.Tensor:
        return (((outputs - targets) / spread) ** 2).mean()

    return loss


def regression(y: np.ndarray) -> Objective:
    """A regressor's objective for the targets `y` (the train split's)."""
    return Objective(squared_error(target_spread(y)), r2)


def train(
    model: nn.Module,
    x: np.ndarray,
    y: np.ndarray,
    *,
    epochs: int,
    loss_fn: Loss,
    score: Score = accuracy,
    targets: np.ndarray | None = None,
    validation: tuple[np.ndarray, np.ndarray] | None = None,
    lr: float = 1e-3,
    seed: int = 0,
    after_step: Callable[[], None] | None = None,
    on_epoch: Callable[[int], None] | None = None,
) -> nn.Module:
    """Train `model` in place with Adam; `loss_fn(outputs, labels, targets_batch)`. Integer `y` are class
    labels, float `y` a regressor's targets.

    With `validation`, the weights of the epoch with the best validation `score` are kept (the starting
    weights count as epoch 0). `after_step` runs after every optimizer step (pruning re-applies masks).
    """
    generator = torch.Generator().manual_seed(seed)
    features = torch.from_numpy(np.ascontiguousarray(x, dtype=np.float32))
    y = np.asarray(y)
    labels = torch.from_numpy(y.astype(np.float32 if np.issubdtype(y.dtype, np.floating) else np.int64))
    soft = torch.from_numpy(np.ascontiguousarray(targets, dtype=np.float32)) if targets is not None else labels
    optimizer = torch.optim.Adam(model.parameters(), lr=lr)
    best_state, best_score = None, -np.inf
    if validation is not None:
        best_score = score(model, *validation)
        best_state = {k: v.clone() for k, v in model.state_dict().items()}
    for epoch in range(epochs):
        model.train()
        order = torch.randperm(len(features), generator=generator)
        for start in range(0, len(order), BATCH):
            index = order[start : start + BATCH]
            optimizer.zero_grad()
            loss = loss_fn(model(features[index]), labels[index], soft[index])
            loss.backward()
            optimizer.step()
            if after_step is not None:
                after_step()
        if validation is not None:
            scored = score(model, *validation)
            if scored > best_score:
                best_score, best_state = scored, {k: v.clone() for k, v in model.state_dict().items()}
        if on_epoch is not None:
            on_epoch(epoch + 1)
    if best_state is not None:
        model.load_state_dict(best_state)
    return model.eval()
