"""Pruned variants of the trained PyTorch model: magnitude (unstructured) and structured (whole units).

Magnitude pruning zeroes the smallest weights of every dense and convolution layer; the exported graph
stays dense, so it is smaller only once compressed and no faster on dense kernels. Structured pruning
removes whole hidden neurons / convolution channels (lowest L1 norm) and shrinks the next layer to match,
so the exported model really is smaller and faster.
"""

from __future__ import annotations

import copy
import itertools
from collections.abc import Callable

import numpy as np
import torch
from torch import nn

from gallery_common.nn import ExportedModel
from gallery_optimizer.training import CLASSIFICATION, Objective, train

WEIGHTED = (nn.Linear, nn.Conv2d)


def weight_sparsity(model: nn.Module) -> float:
    """Share of exactly-zero weights over all dense and convolution layers."""
    weights = [m.weight for m in model.modules() if isinstance(m, nn.Linear | nn.Conv2d)]
    total = sum(w.numel() for w in weights)
    return sum(int((w == 0).sum()) for w in weights) / total if total else 0.0


def magnitude_prune(
    model: ExportedModel,
    sparsity: float,
    train_split: tuple[np.ndarray, np.ndarray],
    validation_split: tuple[np.ndarray, np.ndarray],
    *,
    epochs: int,
    seed: int = 0,
    objective: Objective = CLASSIFICATION,
    on_epoch: Callable[[int], None] | None = None,
) -> ExportedModel:
    """A copy of `model` with the `sparsity` smallest-magnitude weights of each layer zeroed, fine-tuned for
    `epochs` with the zeros held (the best validation epoch is kept)."""
    pruned = copy.deepcopy(model)
    masks: list[tuple[torch.Tensor, torch.Tensor]] = []
    with torch.no_grad():
        for layer in pruned.modules():
            if not isinstance(layer, WEIGHTED):
                continue
            magnitude = layer.weight.abs().flatten()
            drop = round(sparsity * magnitude.numel())
            if drop == 0:
                continue
            threshold = magnitude.kthvalue(drop).values
            mask = (layer.weight.abs() > threshold).to(layer.weight.dtype)
            layer.weight.mul_(mask)
            masks.append((layer.weight, mask))

    def hold_zeros() -> None:
        with torch.no_grad():
            for weight, mask in masks:
                weight.mul_(mask)

    torch.manual_seed(seed)
    train(
        pruned,
        *train_split,
        epochs=epochs,
        loss_fn=objective.loss,
        score=objective.score,
        validation=validation_split,
        seed=seed,
        after_step=hold_zeros,
        on_epoch=on_epoch,
    )
    return pruned


def _keep(scores: torch.Tensor, sparsity: float) -> torch.Tensor:
    kept = max(1, round(len(scores) * (1.0 - sparsity)))
    return torch.sort(torch.topk(scores, kept).indices).values


def _shrink_outputs(layer: nn.Linear | nn.Conv2d, keep: torch.Tensor) -> nn.Linear | nn.Conv2d:
    """A copy of `layer` producing only the `keep` units."""
    new = copy.deepcopy(layer)
    new.weight = nn.Parameter(layer.weight.detach()[keep].clone())
    if layer.bias is not None:
        new.bias = nn.Parameter(layer.bias.detach()[keep].clone())
    if isinstance(new, nn.Linear):
        new.out_features = len(keep)
    else:
        new.out_channels = len(keep)
    return new


def _shrink_inputs(layer: nn.Linear | nn.Conv2d, keep: torch.Tensor, per_unit: int) -> nn.Linear | nn.Conv2d:
    """A copy of `layer` reading only the kept units of its input; `per_unit` inputs per unit (the spatial
    size when a flattened feature map feeds a dense layer)."""
    columns = (keep[:, None] * per_unit + torch.arange(per_unit)[None, :]).flatten()
    new = copy.deepcopy(layer)
    new.weight = nn.Parameter(layer.weight.detach()[:, columns].clone())
    if isinstance(new, nn.Linear):
        new.in_features = len(columns)
    else:
        new.in_channels = len(columns)
    return new


def _units(layer: nn.Linear | nn.Conv2d) -> int:
    return layer.out_features if isinstance(layer, nn.Linear) else layer.out_channels


def _fan_in(layer: nn.Linear | nn.Conv2d) -> int:
    return layer.in_features if isinstance(layer, nn.Linear) else layer.in_channels


def structured_prune(
    model: ExportedModel,
    sparsity: float,
    train_split: tuple[np.ndarray, np.ndarray],
    validation_split: tuple[np.ndarray, np.ndarray],
    *,
    epochs: int,
    seed: int = 0,
    objective: Objective = CLASSIFICATION,
    on_epoch: Callable[[int], None] | None = None,
) -> ExportedModel:
    """A copy of `model` with the `sparsity` share of every hidden layer's neurons / channels removed (lowest
    L1 norm of their weights), the next layer shrunk to match, fine-tuned for `epochs`.

    Raises ValueError when the model has no hidden weighted layer to prune.
    """
    pruned = copy.deepcopy(model)
    layers: list[nn.Module] = list(pruned.network)
    weighted = [i for i, layer in enumerate(layers) if isinstance(layer, WEIGHTED)]
    if len(weighted) < 2:
        raise ValueError("the model has no hidden layer: structured pruning needs at least two weighted layers")
    for producer, consumer in itertools.pairwise(weighted):
        source, target = layers[producer], layers[consumer]
        assert isinstance(source, WEIGHTED) and isinstance(target, WEIGHTED)
        units = _units(source)
        if _fan_in(target) % units:
            raise ValueError(f"layer {consumer} reads {_fan_in(target)} inputs, not a multiple of {units} units")
        scores = source.weight.detach().abs().reshape(units, -1).sum(dim=1)
        keep = _keep(scores, sparsity)
        layers[producer] = _shrink_outputs(source, keep)
        layers[consumer] = _shrink_inputs(target, keep, _fan_in(target) // units)
    pruned.network = nn.Sequential(*layers)
    torch.manual_seed(seed)
    train(
        pruned,
        *train_split,
        epochs=epochs,
        loss_fn=objective.loss,
        score=objective.score,
        validation=validation_split,
        seed=seed,
        on_epoch=on_epoch,
    )
    return pruned


def parameter_count(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())
