"""Short, seeded PyTorch training loops on raw-feature models (pruning's fine-tune, distillation)."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import torch
from torch import nn

BATCH = 64
Loss = Callable[[torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor]


def accuracy(model: nn.Module, x: np.ndarray, y: np.ndarray) -> float:
    """Share of rows whose arg-max output is the label."""
    model.eval()
    with torch.no_grad():
        logits = model(torch.from_numpy(np.ascontiguousarray(x, dtype=np.float32)))
    return float((logits.argmax(dim=1).numpy() == y).mean())


def train(
    model: nn.Module,
    x: np.ndarray,
    y: np.ndarray,
    *,
    epochs: int,
    loss_fn: Loss,
    targets: np.ndarray | None = None,
    validation: tuple[np.ndarray, np.ndarray] | None = None,
    lr: float = 1e-3,
    seed: int = 0,
    after_step: Callable[[], None] | None = None,
    on_epoch: Callable[[int], None] | None = None,
) -> nn.Module:
    """Train `model` in place with Adam; `loss_fn(outputs, labels, targets_batch)`.

    With `validation`, the weights of the epoch with the best validation accuracy are kept (the starting
    weights count as epoch 0). `after_step` runs after every optimizer step (pruning re-applies masks).
    """
    generator = torch.Generator().manual_seed(seed)
    features = torch.from_numpy(np.ascontiguousarray(x, dtype=np.float32))
    labels = torch.from_numpy(np.asarray(y, dtype=np.int64))
    soft = torch.from_numpy(np.ascontiguousarray(targets, dtype=np.float32)) if targets is not None else labels
    optimizer = torch.optim.Adam(model.parameters(), lr=lr)
    best_state, best_score = None, -1.0
    if validation is not None:
        best_score = accuracy(model, *validation)
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
            score = accuracy(model, *validation)
            if score > best_score:
                best_score, best_state = score, {k: v.clone() for k, v in model.state_dict().items()}
        if on_epoch is not None:
            on_epoch(epoch + 1)
    if best_state is not None:
        model.load_state_dict(best_state)
    return model.eval()


def cross_entropy(outputs: torch.Tensor, labels: torch.Tensor, _: torch.Tensor) -> torch.Tensor:
    return nn.functional.cross_entropy(outputs, labels)
