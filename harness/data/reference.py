"""Reference data path: the same recipes as torchvision v2 CPU transforms in a DataLoader.

Slow but close to upstream behaviour (upstream runs torchvision transforms on uint8 PIL images; here
the ops run on uint8 CHW tensors, which round to 8 bits after each op the way PIL does), so results
of the fast path (`harness.data.augment`) can be compared with it.
"""

from __future__ import annotations

import os
from collections.abc import Iterator

import torch
import torchvision.transforms.v2 as T
from torch.utils.data import DataLoader, Dataset

from harness.data.augment import AugmentRecipe
from harness.distributed import Ranks
from harness.errors import HarnessError

AugmentKey = int | tuple[int, int]  # an index, or (index, augmentation seed)


def reference_transform(recipe: AugmentRecipe) -> T.Compose:
    """`recipe` as torchvision v2 transforms: uint8 (3, H, W) tensor -> float32 (3, size, size)."""
    interpolation = T.InterpolationMode(recipe.interpolation)
    steps: list[T.Transform] = [
        T.RandomResizedCrop(recipe.size, scale=recipe.scale, ratio=recipe.ratio,
                            interpolation=interpolation, antialias=True),
        T.RandomHorizontalFlip(recipe.flip_p),
        T.RandomApply([T.ColorJitter(*recipe.jitter)], p=recipe.jitter_p),
        T.RandomGrayscale(recipe.grayscale_p),
    ]
    if recipe.blur_p > 0:
        steps.append(T.RandomApply([T.GaussianBlur(recipe.blur_kernel, recipe.blur_sigma)], p=recipe.blur_p))
    if recipe.solarize_p > 0:  # the threshold is given on [0, 1]; the images here are uint8
        steps.append(T.RandomSolarize(recipe.solarize_threshold * 255, p=recipe.solarize_p))
    steps.append(T.ToDtype(torch.float32, scale=True))
    if recipe.normalize:
        steps.append(T.Normalize(recipe.mean, recipe.std))
    return T.Compose(steps)


class TwoViewDataset(Dataset):
    """Two independent views of each image of a uint8 (N, 3, H, W) CPU tensor.

    Items are (view1, view2, label, index). A key may be a plain index (views drawn from torch's
    global RNG) or (index, seed): then the views are drawn from a CPU RNG seeded with `seed` and
    the global RNG state is left untouched, so the views depend on the seed only.
    """

    def __init__(self, images: torch.Tensor, labels: torch.Tensor, transform: T.Transform) -> None:
        if images.dtype != torch.uint8 or images.ndim != 4 or images.shape[1] != 3 or images.is_cuda:
            raise HarnessError(f"the reference data path needs a uint8 (N, 3, H, W) CPU tensor, got "
                               f"{images.dtype} {tuple(images.shape)} on {images.device}")
        if labels.shape != (images.shape[0],):
            raise HarnessError(f"labels must have shape ({images.shape[0]},) to match the images, "
                               f"got {tuple(labels.shape)}")
        self.images = images
        self.labels = labels
        self.transform = transform

    def __len__(self) -> int:
        return self.images.shape[0]

    def __getitem__(self, key: AugmentKey) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, int]:
        index, seed = key if isinstance(key, tuple) else (key, None)
        image = self.images[index]
        if seed is None:
            views = self.transform(image), self.transform(image)
        else:
            with torch.random.fork_rng(devices=[]):  # restores the CPU RNG afterwards
                torch.default_generator.manual_seed(seed)
                views = self.transform(image), self.transform(image)
        return views[0], views[1], self.labels[index], index


def reference_batches(images: torch.Tensor, order: torch.Tensor, recipe: AugmentRecipe,
                      batch_size: int, num_workers: int, seed: int, device: torch.device,
                      ranks: Ranks = Ranks()) -> Iterator[tuple[torch.Tensor, torch.Tensor, torch.Tensor]]:
    """(view1, view2, index) batches of `images` (uint8, CPU) in the given order, on `device`;
    on several ranks this rank's share (`ranks.bounds`) of each global batch.

    torchvision CPU transforms in a DataLoader. Each item carries its own augmentation seed
    (drawn from `seed` for the whole order), so the views do not depend on the number of
    workers, on which worker loads which item, or on which rank trains it.
    """
    seeds = torch.randint(0, 2**62, (len(order),),
                          generator=torch.Generator().manual_seed(seed)).tolist()
    keys = list(zip(order.tolist(), seeds))
    shares = []
    for i in range(0, len(keys), batch_size):
        start, stop = ranks.bounds(len(keys[i:i + batch_size]))
        shares.append(keys[i + start:i + stop])
    dataset = TwoViewDataset(images, torch.zeros(len(images), dtype=torch.long),
                             reference_transform(recipe))
    loader = DataLoader(dataset, batch_sampler=shares,
                        num_workers=min(num_workers, os.cpu_count() or 1),
                        pin_memory=device.type == "cuda")
    for view1, view2, _, index in loader:
        yield (view1.to(device, non_blocking=True), view2.to(device, non_blocking=True),
               index.to(device, non_blocking=True))
