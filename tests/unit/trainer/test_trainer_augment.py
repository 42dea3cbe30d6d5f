"""Augmentation: shapes kept, the transforms do what they say, statistics as configured."""

import numpy as np
import torch

from gallery_trainer.augment import Augmenter, color_jitter, gaussian_noise, mixup, random_flip, random_resized_crop
from gallery_trainer.spec import AugmentationSpec


def gen(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def images(n: int = 16, c: int = 3, h: int = 8, w: int = 10) -> torch.Tensor:
    return torch.rand(n, c, h, w, generator=gen(42))


def test_full_crop_with_square_aspect_is_the_identity() -> None:
    batch = images()
    out = random_resized_crop(batch, (1.0, 1.0), (1.0, 1.0), gen())
    assert out.shape == batch.shape
    torch.testing.assert_close(out, batch, atol=1e-5, rtol=0)


def test_small_crops_zoom_in() -> None:
    # a horizontal ramp: zooming into a region narrows the range of values seen across the image
    ramp = torch.linspace(0, 1, 16).repeat(4, 1, 16, 1)
    out = random_resized_crop(ramp, (0.25, 0.25), (1.0, 1.0), gen())
    assert out.shape == ramp.shape
    spans = out.amax(dim=(1, 2, 3)) - out.amin(dim=(1, 2, 3))
    assert torch.all(spans < 0.6) and torch.all(spans > 0.4)


def test_flip_mirrors_with_the_given_probability() -> None:
    batch = images(n=400)
    torch.testing.assert_close(random_flip(batch, 1.0, gen()), batch.flip(-1))
    torch.testing.assert_close(random_flip(batch, 0.0, gen()), batch)
    half = random_flip(batch, 0.5, gen())
    flipped = (half != batch).flatten(1).any(dim=1).float().mean().item()
    assert 0.4 < flipped < 0.6


def test_brightness_scales_each_image_within_its_range() -> None:
    batch = images(n=200)
    out = color_jitter(batch, 0.3, 0.0, 0.0, gen())
    ratio = out / batch
    per_image = ratio.flatten(1)
    torch.testing.assert_close(per_image.min(dim=1).values, per_image.max(dim=1).values, rtol=1e-4, atol=1e-4)
    assert per_image.min() >= 0.7 - 1e-5 and per_image.max() <= 1.3 + 1e-5
    assert per_image[:, 0].std() > 0.1  # factors differ between images


def test_contrast_keeps_the_mean_grey_and_saturation_keeps_grey_images() -> None:
    batch = images(n=50)
    out = color_jitter(batch, 0.0, 0.5, 0.0, gen())
    luma = torch.tensor([0.299, 0.587, 0.114]).view(1, 3, 1, 1)

    def mean_grey(t: torch.Tensor) -> torch.Tensor:
        return (t * luma).sum(dim=1).mean(dim=(1, 2))

    torch.testing.assert_close(mean_grey(out), mean_grey(batch), atol=1e-5, rtol=0)
    assert not torch.allclose(out, batch)
    grey = images(n=5)[:, :1].repeat(1, 3, 1, 1)
    torch.testing.assert_close(color_jitter(grey, 0.0, 0.0, 0.9, gen()), grey, atol=1e-5, rtol=0)


def test_gaussian_noise_has_the_requested_spread_per_feature() -> None:
    x = torch.zeros(20_000, 3)
    out = gaussian_noise(x, torch.tensor([0.1, 1.0, 3.0]), gen())
    np.testing.assert_allclose(out.std(dim=0).numpy(), [0.1, 1.0, 3.0], rtol=0.05)
    np.testing.assert_allclose(out.mean(dim=0).numpy(), 0.0, atol=0.05)


def test_mixup_blends_inputs_and_targets_with_the_same_weight() -> None:
    x = torch.tensor([[0.0, 0.0], [10.0, 10.0], [20.0, 20.0], [30.0, 30.0]])
    y = torch.eye(4)
    lam = torch.tensor([0.9, 0.6, 0.7, 1.0])
    mixed_x, mixed_y = mixup(x, y, lam, gen())
    torch.testing.assert_close(mixed_y.sum(dim=1), torch.ones(4))
    # each mixed target says which examples were blended, and with which weight
    for i in range(4):
        expected = (mixed_y[i][:, None] * x).sum(dim=0)
        torch.testing.assert_close(mixed_x[i], expected)
        assert mixed_y[i, i] >= lam[i] - 1e-6
    torch.testing.assert_close(mixed_x[3], x[3])  # lam 1 keeps the example


def test_augmenter_turns_labels_into_probabilities_with_mixup() -> None:
    spec = AugmentationSpec(tabular={"noise": 0.1, "mixup": 0.4})
    augmenter = Augmenter(spec, image_shape=None, feature_std=np.ones(5), n_classes=3, seed=0)
    x, y = torch.randn(32, 5), torch.randint(0, 3, (32,))
    out_x, out_y = augmenter(x, y)
    assert out_x.shape == (32, 5) and out_y.shape == (32, 3) and out_y.dtype == torch.float32
    torch.testing.assert_close(out_y.sum(dim=1), torch.ones(32))
    assert augmenter.soft_targets and augmenter.active


def test_augmenter_reshapes_flat_images_and_is_reproducible() -> None:
    spec = AugmentationSpec(image={"crop_scale": [0.5, 1.0], "flip": 0.5, "brightness": 0.2, "saturation": 0.2})
    x, y = torch.rand(8, 3 * 6 * 6), torch.arange(8)
    first = Augmenter(spec, image_shape=(3, 6, 6), feature_std=np.ones(108), n_classes=8, seed=5)(x, y)
    second = Augmenter(spec, image_shape=(3, 6, 6), feature_std=np.ones(108), n_classes=8, seed=5)(x, y)
    assert first[0].shape == x.shape
    torch.testing.assert_close(first[0], second[0])
    torch.testing.assert_close(first[1], y)  # labels untouched without mixup
    assert not torch.allclose(first[0], x)


def test_no_augmentation_is_inactive() -> None:
    augmenter = Augmenter(AugmentationSpec(), image_shape=None, feature_std=np.ones(2), n_classes=2, seed=0)
    assert not augmenter.active
