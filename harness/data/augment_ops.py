"""Batched image ops with one parameter per sample, on float32 (B, 3, H, W) images in [0, 1].

Each op follows the definition of its `torchvision.transforms.v2.functional` counterpart but takes
a tensor of per-sample parameters, so a whole batch is transformed in one call on its own device:
no Python loop over samples and no host synchronisation (in particular no constant tensor copied
from the host, which blocks on CUDA). The code is our own batched formulation; the tests check it
against torchvision on the same parameters.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Literal

import torch
import torch.nn.functional as F

Interpolation = Literal["bilinear", "bicubic"]

LUMA_WEIGHTS = (0.2989, 0.587, 0.114)  # ITU-R 601-2 luma, as torchvision's rgb_to_grayscale


def _per_sample(values: torch.Tensor) -> torch.Tensor:
    """(B,) -> (B, 1, 1, 1), to broadcast one value per sample over an image batch."""
    return values.reshape(-1, 1, 1, 1)


def where_samples(mask: torch.Tensor, changed: torch.Tensor, images: torch.Tensor) -> torch.Tensor:
    """Per sample: `changed` where `mask` (B,) is true, else `images`."""
    return torch.where(_per_sample(mask), changed, images)


# -- geometry --------------------------------------------------------------------------------------
def _filter(distance: torch.Tensor, interpolation: Interpolation, cubic_a: float) -> torch.Tensor:
    """Interpolation kernel: triangle (bilinear) or Keys cubic with parameter `cubic_a`."""
    d = distance.abs()
    if interpolation == "bilinear":
        return (1 - d).clamp(min=0)
    a = cubic_a
    near = ((a + 2) * d - (a + 3)) * d * d + 1
    far = a * (((d - 5) * d + 8) * d - 4)
    return torch.where(d < 1, near, torch.where(d < 2, far, torch.zeros_like(d)))


def resample_weights(start: torch.Tensor, length: torch.Tensor, in_size: int, out_size: int,
                     interpolation: Interpolation, antialias: bool = True) -> torch.Tensor:
    """(B, out_size, in_size) matrices that resample the 1-D window [start, start+length) to out_size.

    antialias=True follows torch's antialiased interpolate (= torchvision's default and PIL): the
    kernel is stretched by the scale when downsampling, cut at the crop edges and renormalised;
    bicubic then uses a = -0.5. antialias=False follows torch.nn.functional.interpolate with
    align_corners=False: fixed 2/4-tap kernel, taps clamped to the crop edge, bicubic a = -0.75,
    and no low-pass filter when downsampling (aliasing), exactly as torchvision with antialias=False.
    """
    start = start.to(torch.float32)
    length = length.to(torch.float32)
    scale = (length / out_size)[:, None]  # (B, 1): input pixels per output pixel
    dst = torch.arange(out_size, device=start.device, dtype=torch.float32)[None] + 0.5
    positions = torch.arange(in_size, device=start.device, dtype=torch.float32)
    if antialias:
        stretch = scale.clamp(min=1.0)[:, :, None]
        relative = positions[None] - start[:, None]  # (B, in): pixel index inside the crop
        distance = (relative[:, None, :] + 0.5 - (scale * dst)[:, :, None]) / stretch
        weights = _filter(distance, interpolation, cubic_a=-0.5)
        inside = (relative >= 0) & (relative < length[:, None])
        weights = weights * inside[:, None, :]
        return weights / weights.sum(dim=-1, keepdim=True)
    source = scale * dst - 0.5
    if interpolation == "bilinear":
        source = source.clamp(min=0)
        offsets = torch.arange(0.0, 2.0, device=start.device)
    else:
        offsets = torch.arange(-1.0, 3.0, device=start.device)
    taps = source.floor()[:, :, None] + offsets  # (B, out, taps), inside-crop coordinates
    weights = _filter(source[:, :, None] - taps, interpolation, cubic_a=-0.75)
    last = (length - 1)[:, None, None]
    index = torch.minimum(taps.clamp(min=0), last) + start[:, None, None]
    matrix = torch.zeros(start.shape[0], out_size, in_size, device=start.device)
    return matrix.scatter_add_(2, index.long(), weights)


def resized_crop(images: torch.Tensor, boxes: torch.Tensor, size: int,
                 interpolation: Interpolation = "bilinear", antialias: bool = True) -> torch.Tensor:
    """Crop each image to its box (top, left, height, width) and resize it to size x size.

    Equals torchvision's `resized_crop` on the same box and settings (to float rounding): the
    resampling is separable, so each sample is two small matrix products (rows, then columns).
    We deliberately don't use grid_sample: it cannot clamp taps to the crop edge (it would read
    pixels outside the box) nor antialias, so it would not reproduce torchvision's output.
    Note: if the caller enables TF32 matmuls on CUDA, results carry ~1e-3 error (below 8-bit steps).
    """
    _, _, height, width = images.shape
    rows = resample_weights(boxes[:, 0], boxes[:, 2], height, size, interpolation, antialias)
    cols = resample_weights(boxes[:, 1], boxes[:, 3], width, size, interpolation, antialias)
    return rows[:, None] @ images @ cols[:, None].transpose(-1, -2)


def hflip(images: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Mirror left-right the samples where `mask` (B,) is true."""
    return where_samples(mask, images.flip(-1), images)


# -- colour --------------------------------------------------------------------------------------
def luma(images: torch.Tensor) -> torch.Tensor:
    """(B, 1, H, W) grayscale by ITU-R 601-2 luma."""
    red, green, blue = images.unbind(dim=1)
    wr, wg, wb = LUMA_WEIGHTS
    return (red * wr + green * wg + blue * wb).unsqueeze(1)


def rgb_to_grayscale(images: torch.Tensor) -> torch.Tensor:
    """Grayscale replicated to 3 channels (torchvision rgb_to_grayscale, num_output_channels=3)."""
    return luma(images).expand_as(images)


def _blend(images: torch.Tensor, other: torch.Tensor, factors: torch.Tensor) -> torch.Tensor:
    ratio = _per_sample(factors)
    return (images * ratio + other * (1 - ratio)).clamp(0, 1)


def adjust_brightness(images: torch.Tensor, factors: torch.Tensor) -> torch.Tensor:
    """Blend with black: x * f, clamped."""
    return (images * _per_sample(factors)).clamp(0, 1)


def adjust_contrast(images: torch.Tensor, factors: torch.Tensor) -> torch.Tensor:
    """Blend with the mean of the sample's grayscale image."""
    return _blend(images, luma(images).mean(dim=(-3, -2, -1), keepdim=True), factors)


def adjust_saturation(images: torch.Tensor, factors: torch.Tensor) -> torch.Tensor:
    """Blend with the sample's grayscale image."""
    return _blend(images, luma(images), factors)


def rgb_to_hsv(images: torch.Tensor) -> torch.Tensor:
    """(B, 3, H, W) RGB in [0, 1] -> HSV with hue in [0, 1); gray pixels get hue 0, saturation 0."""
    red, green, blue = images.unbind(dim=1)
    value, _ = images.max(dim=1)
    chroma = value - images.min(dim=1).values
    colourful = chroma > 0
    safe_chroma = torch.where(colourful, chroma, torch.ones_like(chroma))
    saturation = chroma / torch.where(value > 0, value, torch.ones_like(value))
    sector = torch.where(value == red, (green - blue) / safe_chroma,
                         torch.where(value == green, (blue - red) / safe_chroma + 2,
                                     (red - green) / safe_chroma + 4))
    hue = torch.where(colourful, torch.remainder(sector / 6, 1.0), torch.zeros_like(sector))
    return torch.stack((hue, saturation, value), dim=1)


def hsv_to_rgb(hsv: torch.Tensor) -> torch.Tensor:
    """Inverse of `rgb_to_hsv` (closed form: channel n = v - v*s*clamp(min(k, 4-k), 0, 1))."""
    hue, saturation, value = hsv.unbind(dim=1)
    channels = []
    for n in (5.0, 3.0, 1.0):  # red, green, blue
        k = torch.remainder(n + hue * 6, 6.0)
        ramp = torch.minimum(k, 4 - k).clamp(0, 1)
        channels.append(value - value * saturation * ramp)
    return torch.stack(channels, dim=1)


def adjust_hue(images: torch.Tensor, factors: torch.Tensor) -> torch.Tensor:
    """Rotate the hue by `factors` (in turns, [-0.5, 0.5]) in HSV space."""
    hsv = rgb_to_hsv(images)
    hue = torch.remainder(hsv[:, 0] + factors.reshape(-1, 1, 1), 1.0)
    return hsv_to_rgb(torch.stack((hue, hsv[:, 1], hsv[:, 2]), dim=1))


def _blend_pass(images: torch.Tensor, order: torch.Tensor, ratios: torch.Tensor,
                positions: range) -> torch.Tensor:
    """Blend each sample, position by position, with the target of its op there (brightness:
    black, contrast: mean gray, saturation: gray) by `ratios[:, position]`; ratio 1 (hue, a
    disabled op, or a position outside this pass) is an exact identity."""
    for position in positions:
        op = order[:, position]
        gray = luma(images)
        target = torch.where(_per_sample(op == 1), gray.mean(dim=(-3, -2, -1), keepdim=True),
                             torch.where(_per_sample(op == 2), gray, torch.zeros_like(gray)))
        images = _blend(images, target, ratios[:, position])
    return images


def color_jitter(images: torch.Tensor, factors: torch.Tensor, order: torch.Tensor,
                 enabled: Sequence[bool] = (True, True, True, True)) -> torch.Tensor:
    """Apply brightness, contrast, saturation, hue (`factors` (B, 4)) in each sample's `order`.

    `order` (B, 4) is a permutation of 0..3 per sample (0 = brightness ... 3 = hue), the
    per-sample analogue of the one permutation torchvision's ColorJitter draws per call; disabled
    ops are skipped, as torchvision skips a jitter component of strength 0. Every sample shifts
    its hue exactly once, so the work is: the blends before each sample's hue position, one hue
    shift of the whole batch, then the blends after it -- one HSV round trip, not one per position.
    """
    positions = torch.arange(4, device=order.device)
    if enabled[3]:
        hue_at = (order == 3).int().argmax(dim=1, keepdim=True)  # (B, 1)
    else:
        hue_at = torch.full_like(order[:, :1], 4)  # no hue shift: every position comes before it
    blend_ops = [op for op in range(3) if enabled[op]]
    if blend_ops:
        is_blend = torch.zeros_like(order, dtype=torch.bool)
        for op in blend_ops:
            is_blend |= order == op
        chosen = factors.gather(1, order)  # (B, 4): each position's factor
        ones = torch.ones_like(chosen)
        before = torch.where(is_blend & (positions < hue_at), chosen, ones)
        # with a hue shift no sample blends at position 3 before it, nor at position 0 after it
        images = _blend_pass(images, order, before, range(3 if enabled[3] else 4))
    if enabled[3]:
        images = adjust_hue(images, factors[:, 3])
        if blend_ops:
            after = torch.where(is_blend & (positions > hue_at), chosen, ones)
            images = _blend_pass(images, order, after, range(1, 4))
    return images


def solarize(images: torch.Tensor, threshold: float) -> torch.Tensor:
    """Invert pixels at or above `threshold`: x >= t -> 1 - x."""
    return torch.where(images >= threshold, 1 - images, images)


def gaussian_blur(images: torch.Tensor, kernel_size: int, sigmas: torch.Tensor) -> torch.Tensor:
    """Separable Gaussian blur, one sigma per sample, reflect padding (torchvision semantics)."""
    batch, channels, height, width = images.shape
    half = kernel_size // 2
    offsets = torch.arange(-half, half + 1, device=images.device, dtype=images.dtype)
    kernels = torch.softmax(-0.5 * (offsets[None] / sigmas[:, None]) ** 2, dim=1)
    kernels = kernels.repeat_interleave(channels, dim=0)  # one depthwise kernel per (sample, channel)
    planes = F.pad(images.reshape(1, batch * channels, height, width), (half,) * 4, mode="reflect")
    planes = F.conv2d(planes, kernels[:, None, :, None], groups=batch * channels)
    planes = F.conv2d(planes, kernels[:, None, None, :], groups=batch * channels)
    return planes.reshape(batch, channels, height, width)
