"""How the report's runs were trained against the paper: deterministic methods and every resolved
setting that differs from a method's paper setting (report footer, invariance guard D10).

A method's paper setting on a dataset is `method_class(m).resolve_params(dataset)` (budget
`paper`) and the dataset's own image size; a run's setting is its `config.yaml` (`params`,
`data`), the grid's budget and its run card (world size, batches, gather, AMP).
"""

from __future__ import annotations

from collections.abc import Sequence
from functools import cache
from typing import Any

import pandas as pd

from harness.config import CARD_FIELDS, canonical_json
from harness.errors import HarnessError
from harness.report.format import column_title, dataset_name, method_name

# Logging and checkpoint cadence change no result: never named.
BOOKKEEPING = ("log_every", "ckpt_every")
NETWORK = ("arch", "layers", "width")
FIRST = ("epochs", "batch_size")  # named first, then the network, image size, the rest, augment
LABELS = {"batch_size": "batch"}
_CARD_BATCH = ("batch_per_device", "effective_batch")


@cache
def is_deterministic(method: str) -> bool:
    """True for a registered method without training randomness (`Method.deterministic`)."""
    from harness.registry import method_class

    try:
        return bool(method_class(method).deterministic)
    except HarnessError:  # not registered: reported as missing elsewhere
        return False


@cache
def paper_setting(method: str, dataset: str) -> tuple[dict[str, Any], int | None] | None:
    """The method's paper params on `dataset` and the dataset's image size (None: either is not
    registered). Cached: treat the result as read-only."""
    from harness.registry import dataset_class, method_class

    try:
        params = method_class(method).resolve_params(dataset)
        size = getattr(dataset_class(dataset), "image_size", None)
    except HarnessError:
        return None
    return params, size


@cache
def budget_matters(method: str, dataset: str, budget: str) -> bool:
    """True where `budget` changes any of the method's params on `dataset` (k-means has none
    to change, so its runs are not said to use a `cpu` budget)."""
    from harness.registry import method_class

    try:
        cls = method_class(method)
        return canonical_json(cls.resolve_params(dataset, None, budget)) != canonical_json(
            cls.resolve_params(dataset))
    except HarnessError:
        return True


def _text(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:g}"
    if isinstance(value, (list, tuple)):
        return "[" + ", ".join(_text(v) for v in value) + "]"
    if isinstance(value, dict):
        return ", ".join(f"{k} {_text(v)}" for k, v in sorted(value.items()))
    return str(value)


def network(params: dict[str, Any]) -> str | None:
    """'resnet18, width 64' or, for another depth, 'basic-block ResNet 1-1-1-1, width 16';
    None for params without a ResNet `arch`."""
    from harness.nn.resnet import ARCHS

    arch = params.get("arch")
    if arch not in ARCHS:
        return None
    block, standard = ARCHS[arch]
    layers = tuple(params.get("layers") or standard)
    name = arch if layers == tuple(standard) else \
        f"{block}-block ResNet {'-'.join(map(str, layers))}"
    return f"{name}, width {params.get('width', 64)}"


def _same(a: Any, b: Any) -> bool:
    return canonical_json(a) == canonical_json(b)


def param_differences(run: dict[str, Any], paper: dict[str, Any],
                      image_size: tuple[Any, Any] = (None, None)) -> list[str]:
    """'epochs 30 (paper 1000)', batch, the network, the image size (run, paper), then other
    differing params; keys the run lacks are not compared, bookkeeping keys never, and
    `augment` (a recipe override) is named whenever it is set."""
    diff = [k for k in run if k in paper and k not in BOOKKEEPING and k != "augment"
            and not _same(run[k], paper[k])]
    out = [f"{LABELS.get(k, k)} {_text(run[k])} (paper {_text(paper[k])})"
           for k in FIRST if k in diff]
    if any(k in diff for k in NETWORK):
        mine, theirs = network({**paper, **run}), network(paper)
        out.append(f"network {mine} (paper {theirs})" if mine and theirs else ", ".join(
            f"{k} {_text(run[k])} (paper {_text(paper[k])})" for k in NETWORK if k in diff))
    if image_size[0] and image_size[1] and image_size[0] != image_size[1]:
        out.append(f"image size {image_size[0]} (paper {image_size[1]})")
    out += [f"{k} {_text(run[k])} (paper {_text(paper[k])})" for k in sorted(diff)
            if k not in FIRST and k not in NETWORK]
    if run.get("augment"):
        out.append(f"augmentation override {_text(run['augment'])} (build choice)")
    return out


def card_differences(run: Any, paper: Any, batch_named: bool) -> list[str]:
    """World size, batches and gather that differ between run card and paper card (AMP has its
    own line, `device_lines`); the batch fields are left out when the params' batch already says
    the same (`batch_named`)."""
    if not (isinstance(run, dict) and isinstance(paper, dict) and run and paper):
        return []
    skip = (*_CARD_BATCH, "amp") if batch_named else ("amp",)
    return [f"{f.replace('_', ' ')} {run[f]} (paper {paper[f]})" for f in CARD_FIELDS
            if f in run and f in paper and run[f] != paper[f] and f not in skip]


def run_differences(r: Any) -> list[str]:
    """Everything in which one resolved run differs from its method's paper setting."""
    found = paper_setting(r.method, r.dataset)
    params = r.params if isinstance(r.params, dict) else {}
    data = r.data if isinstance(r.data, dict) else {}
    out = [f"budget {r.budget}"] if isinstance(r.budget, str) and r.budget != "paper" and \
        budget_matters(r.method, r.dataset, r.budget) else []
    batch_named = False
    if found is not None:
        paper, size = found
        items = param_differences(params, paper, (data.get("image_size"), size))
        batch_named = any(i.startswith("batch ") for i in items) and isinstance(
            r.run_card, dict) and r.run_card.get("effective_batch") == params.get("batch_size")
        out += items
    return out + card_differences(r.run_card, r.reference_card, batch_named)


def setting_lines(done: pd.DataFrame) -> list[str]:
    """One footer line per method (and per distinct setting) naming what differs from the
    paper, with the columns it applies to when a method's columns differ."""
    lines = []
    for method, g in done.groupby("method", sort=False):
        texts: dict[str, list[str]] = {}
        for r in g.itertuples(index=False):
            text = ", ".join(run_differences(r))
            where = column_title(r.dataset, r.ir)
            if text and where not in texts.setdefault(text, []):
                texts[text].append(where)
        texts = {t: w for t, w in texts.items() if t}
        for text, where in texts.items():
            scope = "" if len(texts) == 1 else f" on {', '.join(where)}"
            lines.append(f"Setting differs from the paper for {method_name(method)}{scope}: "
                         f"{text}.")
    return lines


def device_lines(done: pd.DataFrame) -> list[str]:
    """bf16 autocast named wherever it was used (every upstream trained in fp32), and devices
    emulated on one GPU (per-device BatchNorm groups) named as such, with their datasets."""
    bf16: dict[str, list[str]] = {}
    emulated: dict[str, list[str]] = {}

    def add(to: dict[str, list[str]], key: str, value: str) -> None:
        if value not in to.setdefault(key, []):
            to[key].append(value)

    for r in done.itertuples(index=False):
        run, paper = getattr(r, "run_card", None), getattr(r, "reference_card", None)
        if not isinstance(run, dict) or not run:
            continue
        method, dataset = method_name(r.method), dataset_name(r.dataset)
        if run.get("amp") and (paper if isinstance(paper, dict) else {}).get("amp") is not True:
            add(bf16, method, dataset)
        if run.get("emulated_devices"):
            add(emulated, method, f"{dataset}: {run['world_size']} x {run['batch_per_device']}")
    lines = []
    if bf16:
        lines.append("bf16 autocast, a deviation from the paper setting (every upstream trained "
                     "in fp32): " + "; ".join(f"{m} ({', '.join(d)})" for m, d in bf16.items())
                     + ".")
    if emulated:
        lines.append("Devices emulated on one GPU (BatchNorm statistics per device group, "
                     "devices x batch per device): "
                     + "; ".join(f"{m} ({', '.join(d)})" for m, d in emulated.items()) + ".")
    return lines


def deterministic_line(methods: Sequence[str], seeds: Sequence[int]) -> str | None:
    """The footer's statement on the deterministic `methods`, or None without any."""
    names = [method_name(m) for m in methods]
    if not names:
        return None
    verb = "has" if len(names) == 1 else "have"
    n = len(seeds)
    serves = (f"all {n} training seeds ({', '.join(map(str, seeds))})" if n > 1
              else "every training seed")
    return (f"det.: {', '.join(names)} {verb} no training randomness: one run (seed 0) serves "
            f"{serves} of each cell, so no std is shown.")

