"""Training-time augmentation written with torch ops, applied to raw feature batches.

Images (flat features reshaped to [C, H, W]): random resized crop, horizontal flip, colour jitter.
Tabular features: Gaussian noise scaled per feature, and mixup (which turns class labels into
probabilities). Validation and test data are never augmented.
"""

from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn.functional as F

from gallery_trainer.spec import AugmentationSpec, ImageAugmentation

Tensor = torch.Tensor
# ITU-R 601 luma weights, the usual grey conversion for saturation and contrast
LUMA = (0.299, 0.587, 0.114)


def _uniform(n: int, low: float, high: float, generator: torch.Generator) -> Tensor:
    return torch.rand(n, generator=generator) * (high - low) + low


def random_resized_crop(
    images: Tensor, scale: tuple[float, float], ratio: tuple[float, float], generator: torch.Generator
) -> Tensor:
    """Crop a random region of each image (area fraction in `scale`, aspect in `ratio`) and resize it
    back to the full size with bilinear sampling; the output has the input's shape."""
    n = images.shape[0]
    area = _uniform(n, scale[0], scale[1], generator)
    log_ratio = _uniform(n, math.log(ratio[0]), math.log(ratio[1]), generator)
    aspect = torch.exp(log_ratio)
    width = torch.sqrt(area * aspect).clamp(max=1.0)
    height = torch.sqrt(area / aspect).clamp(max=1.0)
    # centre offsets in [-1, 1] grid units that keep the crop inside the image
    cx = (torch.rand(n, generator=generator) * 2 - 1) * (1 - width)
    cy = (torch.rand(n, generator=generator) * 2 - 1) * (1 - height)
    theta = torch.zeros(n, 2, 3)
    theta[:, 0, 0], theta[:, 0, 2] = width, cx
    theta[:, 1, 1], theta[:, 1, 2] = height, cy
    grid = F.affine_grid(theta.to(images.dtype), list(images.shape), align_corners=False)
    return F.grid_sample(images, grid, mode="bilinear", padding_mode="border", align_corners=False)


def random_flip(images: Tensor, probability: float, generator: torch.Generator) -> Tensor:
    """Mirror each image left-right with the given probability."""
    flip = torch.rand(images.shape[0], generator=generator) < probability
    return torch.where(flip[:, None, None, None], images.flip(-1), images)


def color_jitter(
    images: Tensor, brightness: float, contrast: float, saturation: float, generator: torch.Generator
) -> Tensor:
    """Scale brightness, contrast (around the image's mean grey) and saturation (RGB only) by random
    factors drawn from [1 - s, 1 + s] per image."""
    n = images.shape[0]
    out = images
    if brightness:
        out = out * _uniform(n, 1 - brightness, 1 + brightness, generator)[:, None, None, None]
    if contrast:
        grey_mean = _grey(out).mean(dim=(1, 2, 3), keepdim=True)
        factor = _uniform(n, 1 - contrast, 1 + contrast, generator)[:, None, None, None]
        out = (out - grey_mean) * factor + grey_mean
    if saturation and images.shape[1] == 3:
        grey = _grey(out)
        factor = _uniform(n, 1 - saturation, 1 + saturation, generator)[:, None, None, None]
        out = (out - grey) * factor + grey
    return out


def _grey(images: Tensor) -> Tensor:
    if images.shape[1] != 3:
        return images.mean(dim=1, keepdim=True)
    weights = torch.tensor(LUMA, dtype=images.dtype).view(1, 3, 1, 1)
    return (images * weights).sum(dim=1, keepdim=True)


def gaussian_noise(x: Tensor, std: Tensor, generator: torch.Generator) -> Tensor:
    """Add zero-mean Gaussian noise with per-feature standard deviation `std`."""
    return x + torch.randn(x.shape, generator=generator, dtype=x.dtype) * std


def mixup(x: Tensor, y: Tensor, lam: Tensor, generator: torch.Generator) -> tuple[Tensor, Tensor]:
    """Blend each example (and its target: probabilities or regression values) with a random partner:
    `lam * a + (1 - lam) * b`, `lam` one weight per example."""
    partner = torch.randperm(x.shape[0], generator=generator)
    weight = lam.to(x.dtype).view(-1, *([1] * (x.dim() - 1)))
    mixed_x = weight * x + (1 - weight) * x[partner]
    y_weight = lam.to(y.dtype).view(-1, *([1] * (y.dim() - 1)))
    mixed_y = y_weight * y + (1 - y_weight) * y[partner]
    return mixed_x, mixed_y


class Augmenter:
    """The augmentation a spec asks for, as one callable over (features, targets) batches."""

    def __init__(
        self,
        spec: AugmentationSpec,
        *,
        image_shape: tuple[int, int, int] | None,
        feature_std: np.ndarray,
        n_classes: int,
        seed: int,
    ) -> None:
        self.image: ImageAugmentation | None = spec.image
        self.noise = spec.tabular.noise if spec.tabular else 0.0
        self.mixup_alpha = spec.tabular.mixup if spec.tabular else 0.0
        self.image_shape = image_shape
        self.noise_std = torch.as_tensor(feature_std, dtype=torch.float32) * self.noise
        self.n_classes = n_classes
        self.generator = torch.Generator().manual_seed(seed)
        self.rng = np.random.default_rng(seed)

    @property
    def soft_targets(self) -> bool:
        """Whether class targets come out as probabilities (mixup on a classification task)."""
        return bool(self.mixup_alpha) and self.n_classes > 0

    @property
    def active(self) -> bool:
        return self.image is not None or bool(self.noise) or bool(self.mixup_alpha)

    def __call__(self, x: Tensor, y: Tensor) -> tuple[Tensor, Tensor]:
        if self.image is not None and self.image_shape is not None:
            x = self._images(x.view(-1, *self.image_shape)).reshape(x.shape[0], -1)
        if self.noise:
            x = gaussian_noise(x, self.noise_std, self.generator)
        if self.soft_targets:
            y = F.one_hot(y, self.n_classes).to(torch.float32)
        if self.mixup_alpha:
            lam = torch.from_numpy(self.rng.beta(self.mixup_alpha, self.mixup_alpha, size=x.shape[0]))
            x, y = mixup(x, y, lam.to(torch.float32), self.generator)
        return x, y

    def _images(self, images: Tensor) -> Tensor:
        spec = self.image
        assert spec is not None
        if spec.crop_scale is not None:
            images = random_resized_crop(images, spec.crop_scale, spec.crop_ratio, self.generator)
        if spec.flip:
            images = random_flip(images, spec.flip, self.generator)
        if spec.brightness or spec.contrast or spec.saturation:
            images = color_jitter(images, spec.brightness, spec.contrast, spec.saturation, self.generator)
        return images
