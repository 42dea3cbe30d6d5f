"""Pruning on real torch models: structured pruning removes whole units and keeps the function when the
removed units were dead; magnitude pruning reaches its sparsity and holds it through fine-tuning."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from gallery_common.nn import ExportedModel, build_network
from gallery_common.nn.stored import StoredArchitecture, StoredTarget, StoredTransform
from gallery_optimizer.prune import magnitude_prune, parameter_count, structured_prune, weight_sparsity

RNG = np.random.default_rng(0)
X = RNG.normal(size=(64, 16)).astype(np.float32)
Y = RNG.integers(0, 3, size=64)


def network(architecture: StoredArchitecture) -> ExportedModel:
    torch.manual_seed(0)
    transform = StoredTransform(mean=np.zeros(16, np.float32), scale=np.ones(16, np.float32))
    shape = (1, 4, 4) if architecture.architecture == "cnn" else None
    return ExportedModel(build_network(architecture, transform, 3, shape), StoredTarget()).eval()


def kill_weakest_half(model: ExportedModel) -> None:
    """Zero the weights and bias of the lower-indexed half of every hidden layer's units: dead units."""
    weighted = [m for m in model.network if isinstance(m, nn.Linear | nn.Conv2d)]
    with torch.no_grad():
        for layer in weighted[:-1]:
            units = layer.weight.shape[0]
            layer.weight[: units // 2] = 0
            layer.bias[: units // 2] = 0
            layer.weight[units // 2 :] += 0.01  # keep every live unit's L1 norm above zero


def outputs(model: nn.Module) -> np.ndarray:
    with torch.no_grad():
        return model.eval()(torch.from_numpy(X)).numpy()


@pytest.mark.parametrize(
    "architecture",
    [
        StoredArchitecture(architecture="mlp", hidden=[32, 16]),
        StoredArchitecture(architecture="cnn", hidden=[8], channels=[4, 6]),
    ],
    ids=["mlp", "cnn"],
)
def test_structured_pruning_removes_dead_units_without_changing_outputs(architecture: StoredArchitecture) -> None:
    model = network(architecture)
    kill_weakest_half(model)
    pruned = structured_prune(model, 0.5, (X, Y), (X, Y), epochs=0)
    np.testing.assert_allclose(outputs(pruned), outputs(model), atol=1e-5)
    weighted = [m for m in pruned.network if isinstance(m, nn.Linear | nn.Conv2d)]
    original = [m for m in model.network if isinstance(m, nn.Linear | nn.Conv2d)]
    for small, big in zip(weighted[:-1], original[:-1], strict=True):
        assert small.weight.shape[0] == big.weight.shape[0] // 2
    assert weighted[-1].out_features == 3
    assert parameter_count(pruned) < 0.5 * parameter_count(model)


def test_structured_pruning_needs_a_hidden_layer() -> None:
    model = network(StoredArchitecture(architecture="mlp", hidden=[]))
    with pytest.raises(ValueError, match="no hidden layer"):
        structured_prune(model, 0.5, (X, Y), (X, Y), epochs=0)


def test_magnitude_pruning_reaches_the_sparsity_and_keeps_it_through_fine_tuning() -> None:
    model = network(StoredArchitecture(architecture="mlp", hidden=[32]))
    pruned = magnitude_prune(model, 0.7, (X, Y), None, epochs=2)  # type: ignore[arg-type]
    assert weight_sparsity(pruned) == pytest.approx(0.7, abs=0.01)
    assert weight_sparsity(model) == 0.0  # the original is untouched
    assert not np.allclose(outputs(pruned), outputs(model))
