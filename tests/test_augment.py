"""Fast (batched, on-device) and reference (torchvision) augmentation paths."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torchvision.transforms as T1
import torchvision.transforms.v2.functional as TF
from scipy.stats import ks_2samp

import harness.data.augment as augment_module
from harness.data.augment import (
    AugmentRecipe,
    augment,
    augment_throughput,
    eval_images,
    sample_crop_params,
)
from harness.data.augment_ops import (
    adjust_brightness,
    adjust_contrast,
    adjust_hue,
    adjust_saturation,
    color_jitter,
    gaussian_blur,
    hflip,
    resized_crop,
    rgb_to_grayscale,
    solarize,
)
from harness.data.reference import reference_batches, reference_transform
from harness.errors import HarnessError

TOL = 1e-4
CONMIX = AugmentRecipe(size=16, scale=(0.1, 1.0), interpolation="bicubic", normalize=False)


def _images(batch: int = 6, height: int = 20, width: int = 24, seed: int = 0) -> torch.Tensor:
    """Float images in [0, 1] on the 8-bit grid, with some gray and some saturated pixels."""
    g = torch.Generator().manual_seed(seed)
    x = torch.randint(0, 256, (batch, 3, height, width), generator=g).float() / 255
    x[:, :, :3] = x[:, :1, :3]  # gray rows (hue undefined, chroma 0)
    x[:, 0, -2:] = 1.0  # saturated red band
    return x


def _uint8(batch: int, size: int, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randint(0, 256, (batch, 3, size, size), generator=g, dtype=torch.uint8)


def _max_error(ours: torch.Tensor, per_sample_reference) -> float:
    return max((ours[i] - per_sample_reference(i)).abs().max().item() for i in range(ours.shape[0]))


@pytest.mark.parametrize("ours, theirs, low, high", [
    (adjust_brightness, TF.adjust_brightness, 0.0, 1.6),
    (adjust_contrast, TF.adjust_contrast, 0.0, 1.6),
    (adjust_saturation, TF.adjust_saturation, 0.0, 1.6),
    (adjust_hue, TF.adjust_hue, -0.5, 0.5),
])
def test_jitter_ops_match_torchvision(ours, theirs, low, high) -> None:
    x = _images()
    factors = low + (high - low) * torch.rand(x.shape[0], generator=torch.Generator().manual_seed(1))
    out = ours(x, factors)
    assert _max_error(out, lambda i: theirs(x[i], float(factors[i]))) < TOL
    assert not torch.allclose(out, x)


def test_grayscale_solarize_blur_match_torchvision() -> None:
    x = _images()
    assert _max_error(rgb_to_grayscale(x), lambda i: TF.rgb_to_grayscale(x[i], num_output_channels=3)) < TOL
    assert _max_error(solarize(x, 0.5), lambda i: TF.solarize(x[i], 0.5)) < TOL
    sigmas = torch.tensor([0.1, 0.5, 1.0, 1.5, 2.0, 3.0])
    for kernel in (3, 9):
        out = gaussian_blur(x, kernel, sigmas)
        assert _max_error(out, lambda i: TF.gaussian_blur(x[i], [kernel, kernel], [float(sigmas[i])] * 2)) < TOL


def test_color_jitter_applies_each_samples_permutation() -> None:
    x = _images(batch=8)
    g = torch.Generator().manual_seed(2)
    factors = torch.rand(8, 4, generator=g) * torch.tensor([1.6, 1.6, 1.6, 1.0]) - torch.tensor([0, 0, 0, 0.5])
    order = torch.rand(8, 4, generator=g).argsort(dim=1)
    functions = (TF.adjust_brightness, TF.adjust_contrast, TF.adjust_saturation, TF.adjust_hue)
    for enabled in ((True, True, True, True), (True, False, True, False), (False, True, False, True),
                    (False, False, False, True)):
        def reference(i: int) -> torch.Tensor:
            image = x[i]
            for op in order[i].tolist():
                if enabled[op]:
                    image = functions[op](image, float(factors[i, op]))
            return image
        assert _max_error(color_jitter(x, factors, order, enabled), reference) < TOL


BOXES = torch.tensor([[0, 0, 20, 24], [2, 3, 10, 12], [5, 1, 7, 9], [0, 0, 5, 5], [3, 4, 17, 20], [10, 10, 10, 14]])


@pytest.mark.parametrize("interpolation", ["bilinear", "bicubic"])
@pytest.mark.parametrize("antialias", [False, True])
@pytest.mark.parametrize("size", [32, 12])
def test_resized_crop_matches_torchvision(interpolation: str, antialias: bool, size: int) -> None:
    # size 32: every box is upsampled; size 12: most are downsampled. torchvision (and the fast path,
    # which uses antialias=True) low-pass filters when downsampling; with antialias=False neither does.
    x = _images()
    out = resized_crop(x, BOXES, size, interpolation, antialias)
    mode = TF.InterpolationMode(interpolation)

    def reference(i: int) -> torch.Tensor:
        top, left, height, width = BOXES[i].tolist()
        return TF.resized_crop(x[i], top, left, height, width, [size, size], interpolation=mode,
                               antialias=antialias)
    assert out.shape == (6, 3, size, size)
    assert _max_error(out, reference) < TOL


def test_hflip_is_exact_and_per_sample() -> None:
    x = _images()
    mask = torch.tensor([True, False, True, False, False, True])
    out = hflip(x, mask)
    for i in range(6):
        assert torch.equal(out[i], TF.horizontal_flip(x[i]) if mask[i] else x[i])


def _torchvision_crops(n: int, height: int, width: int, scale, ratio) -> np.ndarray:
    torch.manual_seed(3)
    image = torch.zeros(3, height, width)
    return np.array([T1.RandomResizedCrop.get_params(image, list(scale), list(ratio)) for _ in range(n)])


@pytest.mark.parametrize("height, width, scale", [(32, 32, (0.08, 1.0)), (32, 32, (0.1, 1.0)), (24, 40, (0.08, 1.0))])
def test_crop_params_follow_torchvision_distribution(height: int, width: int, scale) -> None:
    n, ratio = 20_000, (3 / 4, 4 / 3)
    ours = sample_crop_params(n, height, width, scale, ratio, torch.Generator().manual_seed(4)).numpy()
    theirs = _torchvision_crops(n, height, width, scale, ratio)
    top, left, h, w = ours.T
    assert ours.dtype == np.int64 and (top >= 0).all() and (left >= 0).all()
    assert (top + h <= height).all() and (left + w <= width).all() and (h > 0).all() and (w > 0).all()
    for name, stat in [("area", lambda b: b[:, 2] * b[:, 3] / (height * width)),
                       ("log ratio", lambda b: np.log(b[:, 3] / b[:, 2])),
                       ("top", lambda b: b[:, 0]), ("left", lambda b: b[:, 1])]:
        a, b = stat(ours), stat(theirs)
        assert ks_2samp(a, b).pvalue > 1e-3, name
        assert abs(a.mean() - b.mean()) < 0.03 * (abs(b.mean()) + b.std()), name


@pytest.mark.parametrize("height, width, ratio", [(32, 32, (3.0, 4.0)), (32, 32, (0.2, 0.25)), (24, 40, (1.0, 1.0))])
def test_crop_params_fallback_is_torchvision_central_crop(height: int, width: int, ratio) -> None:
    scale = (1.0, 1.0)  # with these ratios no try fits, so every draw falls back
    ours = sample_crop_params(5, height, width, scale, ratio, torch.Generator().manual_seed(0))
    expected = T1.RandomResizedCrop.get_params(torch.zeros(3, height, width), list(scale), list(ratio))
    assert ours.tolist() == [list(expected)] * 5


def test_augment_shape_dtype_determinism_and_independent_views() -> None:
    images = _uint8(8, 20)
    recipe = AugmentRecipe(size=16, blur_p=0.5, blur_kernel=5, solarize_p=0.2)
    g = torch.Generator().manual_seed(5)
    view1, view2 = augment(images, recipe, g), augment(images, recipe, g)
    assert view1.shape == (8, 3, 16, 16) and view1.dtype == torch.float32 and view1.device == images.device
    assert torch.isfinite(view1).all()
    assert all(not torch.allclose(view1[i], view2[i]) for i in range(8))
    again = augment(images, recipe, torch.Generator().manual_seed(5))
    assert torch.equal(view1, again)
    unnormalised = augment(images, CONMIX, g)
    assert unnormalised.min() >= 0 and unnormalised.max() <= 1


def test_augment_without_randomness_is_eval_images() -> None:
    images = _uint8(4, 16)
    still = dict(scale=(1.0, 1.0), ratio=(1.0, 1.0), jitter_p=0.0, grayscale_p=0.0)
    recipe = AugmentRecipe(size=16, flip_p=0.0, **still)
    g = torch.Generator().manual_seed(0)
    assert torch.allclose(augment(images, recipe, g), eval_images(images, recipe), atol=1e-6)
    flipped = augment(images, AugmentRecipe(size=16, flip_p=1.0, **still), g)
    assert torch.allclose(flipped, eval_images(images, recipe).flip(-1), atol=1e-6)


def test_no_blur_op_when_blur_p_is_zero(monkeypatch: pytest.MonkeyPatch) -> None:
    def forbidden(*args, **kwargs):
        raise AssertionError("gaussian_blur called")
    monkeypatch.setattr(augment_module, "gaussian_blur", forbidden)
    images, g = _uint8(4, 16), torch.Generator().manual_seed(0)
    augment(images, CONMIX, g)  # ConMix: no blur at all
    with pytest.raises(AssertionError, match="gaussian_blur called"):
        augment(images, AugmentRecipe(size=16, blur_p=1.0, blur_kernel=3), g)


def test_augment_application_rates() -> None:
    # Full-image crops, so each output is the eval image, its mirror, or a recoloured version.
    n, p_flip, p_jitter, p_gray = 4000, 0.5, 0.8, 0.2
    images = _uint8(n, 4, seed=6)
    recipe = AugmentRecipe(size=4, scale=(1.0, 1.0), ratio=(1.0, 1.0), flip_p=p_flip, jitter_p=p_jitter,
                           grayscale_p=p_gray, normalize=False)
    out = augment(images, recipe, torch.Generator().manual_seed(7))
    plain = eval_images(images, recipe)
    close = lambda a, b: ((a - b).abs().amax(dim=(1, 2, 3)) < 1e-6).float()  # noqa: E731
    untouched = close(out, plain) + close(out, plain.flip(-1))  # neither jitter nor grayscale
    gray = ((out - out[:, :1]).abs().amax(dim=(1, 2, 3)) == 0).float()
    flipped = close(out, plain.flip(-1))[untouched > 0].mean()
    for rate, expected, count in [(untouched.mean(), (1 - p_jitter) * (1 - p_gray), n),
                                  (gray.mean(), p_gray, n), (flipped, p_flip, int(untouched.sum()))]:
        assert abs(float(rate) - expected) < 4 * math.sqrt(expected * (1 - expected) / count)


def test_eval_images_resize_and_normalise() -> None:
    images = _uint8(3, 16)
    recipe = AugmentRecipe(size=8, interpolation="bicubic")
    expected = TF.normalize(TF.resize(images.float() / 255, [8, 8], TF.InterpolationMode.BICUBIC).clamp(0, 1),
                            list(recipe.mean), list(recipe.std))
    assert torch.allclose(eval_images(images, recipe), expected, atol=TOL)
    same_size = AugmentRecipe(size=16, normalize=False)
    assert torch.equal(eval_images(images, same_size), images.float() / 255)


def test_bad_inputs_raise_harness_errors() -> None:
    with pytest.raises(HarnessError, match="blur_kernel"):
        AugmentRecipe(size=32, blur_p=0.5, blur_kernel=4)
    with pytest.raises(HarnessError, match="scale"):
        AugmentRecipe(size=32, scale=(0.5, 0.1))
    with pytest.raises(HarnessError, match="uint8"):
        augment(torch.rand(2, 3, 8, 8), AugmentRecipe(size=8), torch.Generator())


def test_reference_batches_follow_the_order_and_not_the_workers() -> None:
    images = _uint8(10, 12)
    order = torch.randperm(10, generator=torch.Generator().manual_seed(1))[:8]
    recipe = AugmentRecipe(size=8, blur_p=0.5, blur_kernel=3, solarize_p=0.5)

    def batches(workers: int) -> list:
        return list(reference_batches(images, order, recipe, batch_size=4, num_workers=workers,
                                      seed=8, device=torch.device("cpu")))
    first = batches(0)
    assert len(first) == 2
    for (view1, view2, index), expected in zip(first, order.split(4)):
        assert view1.shape == view2.shape == (4, 3, 8, 8) and view1.dtype == torch.float32
        assert torch.equal(index, expected) and not torch.allclose(view1, view2)
    for again in (batches(0), batches(2)):  # the views depend on the seed only
        assert all(torch.equal(a, b) for batch_a, batch_b in zip(first, again) for a, b in zip(batch_a, batch_b))


def test_reference_and_fast_paths_agree_in_distribution() -> None:
    # Coarse check of the whole recipe: per-channel mean and spread of many views of one image.
    # (Dropping the jitter moves these by ~0.07; seed-to-seed noise at n = 400 is ~0.02.)
    images = _uint8(1, 16, seed=9).expand(400, -1, -1, -1).contiguous()
    recipe = AugmentRecipe(size=12, interpolation="bicubic", blur_p=0.5, blur_kernel=3)
    torch.manual_seed(10)
    transform = reference_transform(recipe)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # per-image CPU transforms on tiny images: threads only add overhead
    try:
        reference = torch.stack([transform(image) for image in images])
    finally:
        torch.set_num_threads(threads)
    fast = augment(images, recipe, torch.Generator().manual_seed(10))
    for reduce in (lambda v: v.mean(dim=(0, 2, 3)), lambda v: v.std(dim=(0, 2, 3))):
        assert torch.allclose(reduce(fast), reduce(reference), atol=0.04)


def test_augment_throughput_is_positive() -> None:
    assert augment_throughput("cpu", batch=8, size=16, steps=2) > 0


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_augment_on_cuda_without_host_sync() -> None:
    images = _uint8(64, 32).cuda()
    recipe = AugmentRecipe(size=32, blur_p=0.5, blur_kernel=3, solarize_p=0.2)
    g = torch.Generator(device="cuda").manual_seed(0)
    torch.cuda.set_sync_debug_mode("error")
    try:
        out = augment(images, recipe, g)
    finally:
        torch.cuda.set_sync_debug_mode("default")
    assert out.device == images.device and out.shape == (64, 3, 32, 32) and torch.isfinite(out).all()


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_compiled_augmentation_on_cuda_matches_eager() -> None:
    images = _uint8(64, 32).cuda()
    recipe = AugmentRecipe(size=32, scale=(0.1, 1.0), interpolation="bicubic")
    eager = augment(images, recipe, torch.Generator(device="cuda").manual_seed(0))
    compiled = augment(images, recipe, torch.Generator(device="cuda").manual_seed(0), compiled=True)
    assert torch.allclose(compiled, eager, atol=1e-4)
