"""Models described as data: an MLP or small CNN as a flat list of layers.

The first layer is always the fitted feature preprocessing (buffers only), so the network takes raw
features, trains and exports as one module, and a pipeline engine can cut the list into stages.
The trainer builds these networks to train them; the optimizer rebuilds them from a stored spec.
"""

from __future__ import annotations

from typing import Any, Literal, Protocol

import numpy as np
import torch
from torch import nn


class LayerSpec(Protocol):
    """What an architecture needs to know (the trainer's `ModelSpec` satisfies it)."""

    @property
    def architecture(self) -> Literal["mlp", "cnn"]: ...
    @property
    def hidden(self) -> list[int]: ...
    @property
    def activation(self) -> str: ...
    @property
    def dropout(self) -> float: ...
    @property
    def channels(self) -> list[int]: ...
    @property
    def kernel_size(self) -> int: ...


class FittedTransform(Protocol):
    """Fitted preprocessing parameters (the trainer's `FeatureTransform` satisfies it)."""

    mean: np.ndarray
    scale: np.ndarray
    selected: np.ndarray | None
    pca_mean: np.ndarray | None
    pca_components: np.ndarray | None

    @property
    def n_outputs(self) -> int: ...


class TargetScaling(Protocol):
    """Regression outputs are learned standardised and mapped back with `y * scale + mean`."""

    @property
    def mean(self) -> float: ...
    @property
    def scale(self) -> float: ...


ACTIVATIONS: dict[str, type[nn.Module]] = {
    "relu": nn.ReLU,
    "gelu": nn.GELU,
    "tanh": nn.Tanh,
    "silu": nn.SiLU,
    "leaky_relu": nn.LeakyReLU,
}


class FeaturePreprocessor(nn.Module):
    """Standardisation, column selection and PCA projection, with the fitted parameters as buffers."""

    mean: torch.Tensor
    scale: torch.Tensor
    selected: torch.Tensor
    pca_mean: torch.Tensor
    pca_components: torch.Tensor

    def __init__(self, transform: FittedTransform) -> None:
        super().__init__()
        self.register_buffer("mean", torch.as_tensor(transform.mean, dtype=torch.float32))
        self.register_buffer("scale", torch.as_tensor(transform.scale, dtype=torch.float32))
        self.selects = transform.selected is not None
        self.projects = transform.pca_components is not None
        if transform.selected is not None:
            self.register_buffer("selected", torch.as_tensor(transform.selected, dtype=torch.int64))
        if transform.pca_components is not None:
            self.register_buffer("pca_mean", torch.as_tensor(transform.pca_mean, dtype=torch.float32))
            self.register_buffer("pca_components", torch.as_tensor(transform.pca_components, dtype=torch.float32))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = (x - self.mean) / self.scale
        if self.selects:
            x = x.index_select(1, self.selected)
        if self.projects:
            x = (x - self.pca_mean) @ self.pca_components.T
        return x


class Reshape(nn.Module):
    """Flat features to [batch, *shape] (images for a CNN)."""

    def __init__(self, shape: tuple[int, ...]) -> None:
        super().__init__()
        self.shape = tuple(shape)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.reshape(x.shape[0], *self.shape)

    def extra_repr(self) -> str:
        return f"shape={self.shape}"


class TargetScale(nn.Module):
    """Maps standardised regression outputs back to target units (identity for classification)."""

    mean: torch.Tensor
    scale: torch.Tensor

    def __init__(self, target: TargetScaling) -> None:
        super().__init__()
        self.register_buffer("mean", torch.tensor(target.mean, dtype=torch.float32))
        self.register_buffer("scale", torch.tensor(target.scale, dtype=torch.float32))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * self.scale + self.mean


class ExportedModel(nn.Module):
    """Raw features in, logits (or regression values in target units) out: what ONNX and the weights hold."""

    def __init__(self, network: nn.Sequential, target: TargetScaling) -> None:
        super().__init__()
        self.network = network
        self.target = TargetScale(target)

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        return self.target(self.network(features))


def build_layers(
    spec: LayerSpec, n_inputs: int, n_outputs: int, image_shape: tuple[int, int, int] | None
) -> list[nn.Module]:
    """The network after the preprocessing, as a flat list: `n_inputs` model inputs to `n_outputs` outputs."""
    activation = ACTIVATIONS[spec.activation]
    layers: list[nn.Module] = []
    width = n_inputs
    if spec.architecture == "cnn":
        if image_shape is None or int(np.prod(image_shape)) != n_inputs:
            raise ValueError(
                f"model.architecture: a cnn needs {n_inputs} features in an image shape, got {image_shape}"
            )
        channels, height, wide = image_shape
        layers.append(Reshape(image_shape))
        for out_channels in spec.channels:
            layers += [nn.Conv2d(channels, out_channels, spec.kernel_size, padding=spec.kernel_size // 2), activation()]
            if height >= 2 and wide >= 2:
                layers.append(nn.MaxPool2d(2))
                height, wide = height // 2, wide // 2
            channels = out_channels
        layers.append(nn.Flatten())
        width = channels * height * wide
    for size in spec.hidden:
        layers += [nn.Linear(width, size), activation()]
        if spec.dropout:
            layers.append(nn.Dropout(spec.dropout))
        width = size
    layers.append(nn.Linear(width, n_outputs))
    return layers


def build_network(
    spec: LayerSpec,
    transform: FittedTransform,
    n_outputs: int,
    image_shape: tuple[int, int, int] | None,
) -> nn.Sequential:
    """Preprocessing followed by the spec's layers; seed torch first for reproducible initial weights."""
    return nn.Sequential(
        FeaturePreprocessor(transform), *build_layers(spec, transform.n_outputs, n_outputs, image_shape)
    )


def describe(network: nn.Sequential) -> list[dict[str, Any]]:
    """The architecture as data, one entry per layer, for the stored spec."""
    described: list[dict[str, Any]] = []
    for index, layer in enumerate(network):
        entry: dict[str, Any] = {"index": index, "type": type(layer).__name__}
        if isinstance(layer, nn.Linear):
            entry |= {"in_features": layer.in_features, "out_features": layer.out_features}
        elif isinstance(layer, nn.Conv2d):
            entry |= {
                "in_channels": layer.in_channels,
                "out_channels": layer.out_channels,
                "kernel_size": list(layer.kernel_size),
                "padding": list(layer.padding) if isinstance(layer.padding, tuple) else layer.padding,
            }
        elif isinstance(layer, nn.Dropout):
            entry["p"] = layer.p
        elif isinstance(layer, Reshape):
            entry["shape"] = list(layer.shape)
        elif isinstance(layer, FeaturePreprocessor):
            entry |= {"standardize": True, "select": layer.selects, "pca": layer.projects}
        described.append(entry)
    return described
