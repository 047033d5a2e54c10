"""`harness describe-method`: a method's fully resolved training recipe beside upstream's.

`Method.recipe()` says what training does on a dataset (optimiser, effective LR, batch, devices
and BatchNorm grouping, epochs, augmentation, method settings); a method's `upstream` table gives
the same keys per dataset as its upstream code ran them, with the source file. The table marks
every row where the two differ, so a reviewer sees each deviation in one place. No data files,
networks or devices are needed: the method is configured with its resolved paper parameters and
the dataset's image size and normalisation only.
"""

from __future__ import annotations

from typing import Any

import torch
from tabulate import tabulate

from harness.data.augment import AugmentRecipe
from harness.data.base import LTData
from harness.method import Method, params_from_dict
from harness.registry import dataset_class, method_class

LABELS = {
    "backbone": "backbone", "epochs": "epochs", "effective_batch": "batch (all devices)",
    "world_size": "devices", "batch_per_device": "batch per device (BatchNorm statistics over)",
    "drop_last": "drop last batch", "optimizer": "optimiser",
    "effective_lr": "effective LR (peak)", "lr_schedule": "LR schedule",
    "predictor_lr_scale": "predictor LR x", "amp": "bf16 autocast on CUDA",
    "crop": "augmentation: random resized crop", "flip": "augmentation: horizontal flip",
    "colour_jitter": "augmentation: colour jitter (b, c, s, h)",
    "grayscale": "augmentation: grayscale", "blur": "augmentation: Gaussian blur",
    "solarize": "augmentation: solarize", "normalisation": "normalisation",
    "ema": "EMA momentum", "shuffling_bn": "target batch shuffled across devices",
    "v2": "v2 path (one batch of both views, EMA first)", "v2_split": "v2 PSL halves",
    "kmeans_restarts": "k-means restarts (all devices)", "reassign": "k-means every (epochs)",
    "data_resample": "pseudo-label-balanced resampling", "latent_std": "latent noise sigma",
    "cluster_loss_weight": "PSL weight lambda", "temperature": "PSL temperature",
    "hsd": "HSD", "symmetric": "symmetric loss",
}


def shape_only_data(dataset: str) -> LTData:
    """An empty LT subset with the dataset's image size, classes and normalisation."""
    plugin = dataset_class(dataset)
    size = plugin.image_size
    return LTData(dataset, torch.zeros((0, 3, size, size), dtype=torch.uint8),
                  torch.zeros(0, dtype=torch.long), {"sha256": None, "counts": []},
                  plugin.num_classes, plugin.class_names, plugin.mean, plugin.std)


def configured_method(method: str, dataset: str) -> Method:
    """The method with its resolved paper parameters on `dataset` as `p` and an empty LT subset
    as `data`: enough for `recipe()` (no networks, no device)."""
    cls = method_class(method)
    m = cls()
    m.p = params_from_dict(cls.Params, cls.resolve_params(dataset), f"method '{method}'")
    m.data = shape_only_data(dataset)
    return m


def resolved_recipe(method: str, dataset: str) -> dict[str, Any]:
    """`recipe()` of the method on `dataset` with its paper parameters."""
    return configured_method(method, dataset).recipe()


def augmentation_rows(r: AugmentRecipe) -> dict[str, str]:
    """An augmentation recipe as one row per operation, in the order they apply."""
    return {
        "crop": f"{r.size} px, scale {format_value(r.scale)}, ratio ({r.ratio[0]:.4g}, "
                f"{r.ratio[1]:.4g}), {r.interpolation}",
        "flip": f"p {r.flip_p:g}",
        "colour_jitter": f"{format_value(r.jitter)} p {r.jitter_p:g}",
        "grayscale": f"p {r.grayscale_p:g}",
        "blur": (f"p {r.blur_p:g}, kernel {r.blur_kernel}, sigma {format_value(r.blur_sigma)}"
                 if r.blur_p else "none"),
        "solarize": (f"p {r.solarize_p:g} at {r.solarize_threshold:g}" if r.solarize_p
                     else "none"),
        "normalisation": (f"mean {format_value(r.mean)}, std {format_value(r.std)}"
                          if r.normalize else "none (inside the network)"),
    }


def format_value(value: Any) -> str:
    """Display form of a recipe value (the same for ours and upstream's)."""
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, float):
        return f"{value:g}"
    if isinstance(value, dict):  # a `name` entry leads, unlabelled
        return ", ".join(format_value(v) if k == "name" else f"{k.replace('_', ' ')} "
                         f"{format_value(v)}" for k, v in value.items())
    if isinstance(value, tuple):
        return "(" + ", ".join(format_value(v) for v in value) + ")"
    return str(value)


def _expand(recipe: dict[str, Any]) -> dict[str, Any]:
    """The recipe with its augmentation recipe replaced by one row per operation."""
    out: dict[str, Any] = {}
    for key, value in recipe.items():
        if isinstance(value, AugmentRecipe):
            out.update(augmentation_rows(value))
        else:
            out[key] = value
    return out


def describe_rows(method: str, dataset: str) -> tuple[list[list[str]], str]:
    """(rows of [setting, ours, upstream, differs], upstream source or '') of one method."""
    cls = method_class(method)
    ours = _expand(resolved_recipe(method, dataset))
    upstream = dict(cls.upstream.get(dataset, {}))
    source = str(upstream.pop("source", ""))
    theirs = _expand({k: v for k, v in upstream.items() if k != "gather"})
    rows = []
    for key in [*ours, *(k for k in theirs if k not in ours)]:
        mine = format_value(ours[key]) if key in ours else "-"
        up = format_value(theirs[key]) if key in theirs else ""
        differs = "DIFFERS" if key in theirs and up != mine else ""
        rows.append([LABELS.get(key, key.replace("_", " ")), mine, up, differs])
    return rows, source


def describe_method(method: str, dataset: str) -> str:
    """The `harness describe-method` text: a header and the recipe table."""
    rows, source = describe_rows(method, dataset)
    cls = method_class(method)
    head = [f"{method} on {dataset}: {cls.description}",
            f"upstream: {source}" if source else
            "upstream: the spec gives no upstream recipe for this dataset (harness settings)"]
    devices = resolved_recipe(method, dataset).get("world_size", 1)
    if devices > 1:
        head.append(f"{devices} devices emulated on one GPU (params.bn_group_size: BatchNorm "
                    "statistics per device group)")
    n_diff = sum(1 for r in rows if r[3])
    if source:
        head.append(f"{n_diff} setting(s) differ from upstream" if n_diff else
                    "every setting upstream fixes matches")
    table = tabulate(rows, headers=["setting", "harness", "upstream", ""], tablefmt="github")
    return "\n".join(head) + "\n\n" + table

