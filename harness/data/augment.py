"""Fast data path: batched on-device augmentations that follow each method's recipe.

The LT subset lives on the training device as one uint8 tensor; `augment` turns a batch of it into
one augmented view, every sample drawing its own parameters from the given generator (call it
twice for two independent views). Everything is batched and free of host synchronisation, so it
can run inside a CUDA training step. `augment` = `draw_augment` (every random number, the only
generator calls) + `apply_augment` (a pure tensor function, which `torch.compile` fuses into a few
kernels). `harness.data.reference` is the torchvision CPU twin.
"""

from __future__ import annotations

import dataclasses
import functools
import math
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Literal

import torch
import torchvision.transforms.v2.functional as TF

from harness.data.augment_ops import (
    color_jitter,
    gaussian_blur,
    hflip,
    resized_crop,
    rgb_to_grayscale,
    solarize,
    where_samples,
)
from harness.errors import HarnessError

CROP_TRIES = 10  # torchvision RandomResizedCrop.get_params


@dataclass(frozen=True)
class AugmentRecipe:
    """One method's augmentation recipe (torchvision RandomResizedCrop/ColorJitter/... semantics)."""

    size: int
    scale: tuple[float, float] = (0.08, 1.0)
    ratio: tuple[float, float] = (3 / 4, 4 / 3)
    interpolation: Literal["bilinear", "bicubic"] = "bilinear"
    flip_p: float = 0.5
    jitter: tuple[float, float, float, float] = (0.4, 0.4, 0.4, 0.1)  # brightness, contrast, saturation, hue
    jitter_p: float = 0.8
    grayscale_p: float = 0.2
    blur_p: float = 0.0
    blur_kernel: int = 23  # odd kernel size in pixels
    blur_sigma: tuple[float, float] = (0.1, 2.0)
    solarize_p: float = 0.0
    solarize_threshold: float = 0.5  # on [0,1] images (128/255 style)
    mean: tuple[float, float, float] = (0.485, 0.456, 0.406)
    std: tuple[float, float, float] = (0.229, 0.224, 0.225)
    normalize: bool = True  # False -> output stays in [0,1] (ConMix normalises inside the model)

    def __post_init__(self) -> None:
        problems = []
        if self.size < 1:
            problems.append(f"size must be positive, got {self.size}")
        if not 0 < self.scale[0] <= self.scale[1]:
            problems.append(f"scale must satisfy 0 < min <= max, got {self.scale}")
        if not 0 < self.ratio[0] <= self.ratio[1]:
            problems.append(f"ratio must satisfy 0 < min <= max, got {self.ratio}")
        if self.interpolation not in ("bilinear", "bicubic"):
            problems.append(f"interpolation must be 'bilinear' or 'bicubic', got {self.interpolation!r}")
        for name in ("flip_p", "jitter_p", "grayscale_p", "blur_p", "solarize_p"):
            if not 0.0 <= getattr(self, name) <= 1.0:
                problems.append(f"{name} must lie in [0, 1], got {getattr(self, name)}")
        if min(self.jitter) < 0 or self.jitter[3] > 0.5:
            problems.append(f"jitter strengths must be >= 0 and hue <= 0.5, got {self.jitter}")
        if self.blur_kernel < 1 or self.blur_kernel % 2 == 0:
            problems.append(f"blur_kernel must be a positive odd number, got {self.blur_kernel}")
        if self.blur_p > 0 and self.blur_kernel // 2 >= self.size:
            problems.append(f"blur_kernel {self.blur_kernel} is too large for size {self.size} "
                            "(reflect padding needs kernel // 2 < size)")
        if not 0 < self.blur_sigma[0] <= self.blur_sigma[1]:
            problems.append(f"blur_sigma must satisfy 0 < min <= max, got {self.blur_sigma}")
        if min(self.std) <= 0:
            problems.append(f"std must be positive, got {self.std}")
        if problems:
            raise HarnessError("invalid augmentation recipe: " + "; ".join(problems)
                               + ". Fix the method's augmentation settings.")


# Set by the data (size) and the method (normalisation); `params.augment` cannot override them.
RECIPE_FIXED = ("size", "mean", "std", "normalize")


def recipe_overrides(overrides: Any, where: str) -> dict[str, Any]:
    """Checked `params.augment` overrides: AugmentRecipe field -> value (lists become tuples)."""
    if overrides is None:
        return {}
    allowed = sorted({f.name for f in dataclasses.fields(AugmentRecipe)} - set(RECIPE_FIXED))
    if not isinstance(overrides, dict):
        raise HarnessError(f"{where}: params.augment must map recipe fields to values, e.g. "
                           f"{{flip_p: 0.0}}; got {overrides!r}")
    unknown = sorted(set(overrides) - set(allowed))
    if unknown:
        raise HarnessError(f"{where}: params.augment has unknown key(s) {', '.join(unknown)}; "
                           f"use any of {', '.join(allowed)}")
    return {k: tuple(v) if isinstance(v, list) else v for k, v in overrides.items()}


def override_recipe(recipe: AugmentRecipe, overrides: dict[str, Any] | None,
                    where: str) -> AugmentRecipe:
    """`recipe` with `params.augment` overrides applied (validated like any recipe)."""
    values = recipe_overrides(overrides, where)
    return dataclasses.replace(recipe, **values) if values else recipe


def _scaled(uniform: torch.Tensor, low: float, high: float) -> torch.Tensor:
    """Map U[0, 1) draws onto U[low, high)."""
    return low + (high - low) * uniform


def crop_boxes(area_draws: torch.Tensor, aspect_draws: torch.Tensor, top_draws: torch.Tensor,
               left_draws: torch.Tensor, height: int, width: int, scale: tuple[float, float],
               ratio: tuple[float, float]) -> torch.Tensor:
    """(n, 4) int64 crop boxes (top, left, h, w) from U[0, 1) draws, like RandomResizedCrop.get_params.

    area/aspect draws are (n, 10), one per try; top/left draws (n,). Per sample: up to 10 tries of
    area ~ U(scale) * H * W and log-uniform aspect ratio, keeping the first that fits; if none fits,
    the central crop with the aspect ratio clamped to `ratio`. The first valid try is picked by
    argmax, so there is no host sync and the function compiles to one graph.
    """
    area = height * width * _scaled(area_draws, scale[0], scale[1])
    aspect = torch.exp(_scaled(aspect_draws, math.log(ratio[0]), math.log(ratio[1])))
    w = torch.round(torch.sqrt(area * aspect))  # round half to even, like Python's round
    h = torch.round(torch.sqrt(area / aspect))
    fits = (w > 0) & (w <= width) & (h > 0) & (h <= height)
    first = fits.int().argmax(dim=1, keepdim=True)  # index of the first fitting try (0 if none)
    found = fits.any(dim=1)
    in_ratio = width / height
    if in_ratio < ratio[0]:
        fallback_w, fallback_h = width, int(round(width / ratio[0]))
    elif in_ratio > ratio[1]:
        fallback_w, fallback_h = int(round(height * ratio[1])), height
    else:
        fallback_w, fallback_h = width, height
    w = torch.where(found, w.gather(1, first).squeeze(1), float(fallback_w))
    h = torch.where(found, h.gather(1, first).squeeze(1), float(fallback_h))
    top = torch.minimum(torch.floor(top_draws * (height - h + 1)), height - h)  # randint(0, H - h + 1)
    left = torch.minimum(torch.floor(left_draws * (width - w + 1)), width - w)
    top = torch.where(found, top, torch.div(height - h, 2, rounding_mode="floor"))
    left = torch.where(found, left, torch.div(width - w, 2, rounding_mode="floor"))
    return torch.stack((top, left, h, w), dim=1).long()


def _rand(generator: torch.Generator, *shape: int) -> torch.Tensor:
    return torch.rand(shape, generator=generator, device=generator.device)


def _crop_draws(n: int, generator: torch.Generator) -> dict[str, torch.Tensor]:
    """The draws `crop_boxes` takes, in its argument order."""
    return {"crop_area": _rand(generator, n, CROP_TRIES), "crop_aspect": _rand(generator, n, CROP_TRIES),
            "crop_top": _rand(generator, n), "crop_left": _rand(generator, n)}


def sample_crop_params(n: int, height: int, width: int, scale: tuple[float, float],
                       ratio: tuple[float, float], generator: torch.Generator) -> torch.Tensor:
    """(n, 4) int64 crop boxes (top, left, h, w) drawn like RandomResizedCrop.get_params.

    The boxes are on the generator's device; see `crop_boxes` for the rule.
    """
    return crop_boxes(*_crop_draws(n, generator).values(), height, width, scale, ratio)


def _same_device(a: torch.device, b: torch.device) -> bool:
    return a.type == b.type and (a.index is None or b.index is None or a.index == b.index)


def _check_batch(images: torch.Tensor, generator: torch.Generator | None = None) -> None:
    if images.dtype != torch.uint8 or images.ndim != 4 or images.shape[1] != 3:
        raise HarnessError(f"augmentation expects uint8 images of shape (B, 3, H, W), got "
                           f"{images.dtype} {tuple(images.shape)}; pass the LT subset tensor as stored")
    if generator is not None and not _same_device(generator.device, images.device):
        raise HarnessError(f"the augmentation generator is on {generator.device} but the images are on "
                           f"{images.device}; create it with torch.Generator(device=images.device)")


def _normalize(images: torch.Tensor, recipe: AugmentRecipe) -> torch.Tensor:
    if not recipe.normalize:
        return images
    # per channel with Python scalars: a constant tensor built on the device would cost a blocking copy
    channels = [(images[:, c] - mean) / std for c, (mean, std) in enumerate(zip(recipe.mean, recipe.std))]
    return torch.stack(channels, dim=1)


def _jitter_factors(uniform: torch.Tensor, strengths: tuple[float, ...]) -> torch.Tensor:
    """(n, 4) factors from (n, 4) draws: brightness/contrast/saturation ~ U[max(0, 1-s), 1+s], hue ~ U[-h, h]."""
    b, c, s, h = strengths
    ranges = [(max(0.0, 1 - b), 1 + b), (max(0.0, 1 - c), 1 + c), (max(0.0, 1 - s), 1 + s), (-h, h)]
    return torch.stack([_scaled(uniform[:, k], lo, hi) for k, (lo, hi) in enumerate(ranges)], dim=1)


def _jitter_enabled(recipe: AugmentRecipe) -> tuple[bool, ...]:
    return tuple(strength > 0 for strength in recipe.jitter)


def draw_augment(batch: int, recipe: AugmentRecipe, generator: torch.Generator) -> dict[str, torch.Tensor]:
    """Every random number one view of `batch` images needs: U[0, 1) draws, on the generator's device.

    These are the only calls on the generator (in a fixed order), so `apply_augment` is a pure
    tensor function: it compiles to one graph, and the same draws give the same view. Ops with
    probability 0 draw nothing.
    """
    draws = _crop_draws(batch, generator)
    if recipe.flip_p > 0:
        draws["flip"] = _rand(generator, batch)
    if recipe.jitter_p > 0 and any(_jitter_enabled(recipe)):
        draws["jitter"] = _rand(generator, batch)
        draws["jitter_factors"] = _rand(generator, batch, 4)
        draws["jitter_order"] = _rand(generator, batch, 4)
    if recipe.grayscale_p > 0:
        draws["grayscale"] = _rand(generator, batch)
    if recipe.blur_p > 0:
        draws["blur"] = _rand(generator, batch)
        draws["blur_sigma"] = _rand(generator, batch)
    if recipe.solarize_p > 0:
        draws["solarize"] = _rand(generator, batch)
    return draws


def apply_augment(images: torch.Tensor, draws: dict[str, torch.Tensor],
                  recipe: AugmentRecipe) -> torch.Tensor:
    """One augmented view of a uint8 (B, 3, H, W) batch from `draw_augment`'s draws -> float32.

    Order: crop -> flip -> jitter (p) -> grayscale -> blur -> solarize -> normalise, in float32 on
    [0, 1]; a sample takes an op with probability p when its draw is below p.
    """
    _, _, height, width = images.shape
    x = images.float() / 255
    boxes = crop_boxes(draws["crop_area"], draws["crop_aspect"], draws["crop_top"],
                       draws["crop_left"], height, width, recipe.scale, recipe.ratio)
    # build choice: antialiased resampling (torchvision v2's default, PIL's behaviour upstream); for
    # upsampling crops bicubic then uses PIL's kernel (a = -0.5, cut at the crop edge). The result
    # is clamped to [0, 1] (bicubic overshoots), as upstream's uint8 PIL images are.
    x = resized_crop(x, boxes, recipe.size, recipe.interpolation, antialias=True).clamp_(0, 1)
    if "flip" in draws:
        x = hflip(x, draws["flip"] < recipe.flip_p)
    if "jitter" in draws:
        factors = _jitter_factors(draws["jitter_factors"], recipe.jitter)
        order = draws["jitter_order"].argsort(dim=1)
        jittered = color_jitter(x, factors, order, _jitter_enabled(recipe))
        x = where_samples(draws["jitter"] < recipe.jitter_p, jittered, x)
    if "grayscale" in draws:
        x = where_samples(draws["grayscale"] < recipe.grayscale_p, rgb_to_grayscale(x), x)
    if "blur" in draws:
        sigmas = _scaled(draws["blur_sigma"], *recipe.blur_sigma)
        x = where_samples(draws["blur"] < recipe.blur_p, gaussian_blur(x, recipe.blur_kernel, sigmas), x)
    if "solarize" in draws:
        x = where_samples(draws["solarize"] < recipe.solarize_p, solarize(x, recipe.solarize_threshold), x)
    return _normalize(x, recipe)


@functools.cache
def compiled_apply_augment(backend: str = "inductor") -> Callable[..., torch.Tensor]:
    """`apply_augment` under torch.compile: the pixel pipeline fused into a few kernels.

    dynamic=False: the epoch's last, smaller batch gets its own static graph instead of turning
    every batch dynamic.
    """
    return torch.compile(apply_augment, backend=backend, dynamic=False)


def augment(images: torch.Tensor, recipe: AugmentRecipe, generator: torch.Generator,
            compiled: bool = False, share: tuple[int, int] | None = None) -> torch.Tensor:
    """One augmented view of a uint8 (B, 3, H, W) batch -> float32 (B, 3, size, size), same device.

    Every sample draws its own parameters from `generator` (call twice for two independent
    views); `compiled` runs the pixel work through `compiled_apply_augment` (same result).
    `share` = (first row, rows of the global batch): `images` are those rows of a larger batch
    (one rank's share), and take the draws the whole batch would give them.
    """
    _check_batch(images, generator)
    apply = compiled_apply_augment() if compiled else apply_augment
    start, rows = share or (0, images.shape[0])
    draws = draw_augment(rows, recipe, generator)
    if share is not None:
        draws = {k: v[start:start + images.shape[0]] for k, v in draws.items()}
    return apply(images, draws, recipe)


def eval_images(images: torch.Tensor, recipe: AugmentRecipe) -> torch.Tensor:
    """No augmentation: uint8 -> float [0, 1], resized to size x size if needed, normalised.

    The resize is torchvision's (antialiased, the recipe's interpolation), clamped to [0, 1] like
    the crops of `augment`.
    """
    _check_batch(images)
    x = images.float() / 255
    if x.shape[-2:] != (recipe.size, recipe.size):
        x = TF.resize(x, [recipe.size, recipe.size], interpolation=TF.InterpolationMode(recipe.interpolation),
                      antialias=True).clamp_(0, 1)
    return _normalize(x, recipe)


def augment_throughput(device: str | torch.device, batch: int, size: int, steps: int,
                       recipe: AugmentRecipe | None = None) -> float:
    """Images per second of `augment` on random uint8 images of side `size` (one warm-up call)."""
    device = torch.device(device)
    generator = torch.Generator(device=device).manual_seed(0)
    images = torch.randint(0, 256, (batch, 3, size, size), dtype=torch.uint8, device=device,
                           generator=generator)
    recipe = recipe or AugmentRecipe(size=size)

    def sync() -> None:
        if device.type == "cuda":
            torch.cuda.synchronize(device)

    augment(images, recipe, generator)
    sync()
    start = time.perf_counter()
    for _ in range(steps):
        augment(images, recipe, generator)
    sync()
    return batch * steps / (time.perf_counter() - start)
