"""Deterministic seed derivation (benchopt `get_seed` style)."""

from __future__ import annotations

import hashlib
import json
import random


def derive_seed(base_seed: int, *keys: object) -> int:
    """Return a 31-bit seed derived from `base_seed` and `keys` only.

    The same base seed gives the same stream across methods and datasets, which makes paired
    comparisons over seeds possible.
    """
    payload = json.dumps([int(base_seed), *[str(k) for k in keys]]).encode()
    return int.from_bytes(hashlib.sha256(payload).digest()[:4], "little") & 0x7FFFFFFF


def eval_seed_list(spec: str | list[int]) -> list[int]:
    """Resolve an eval-seed spec: `conmix10` (ConMix's `random.seed(10)` + 10 randint draws) or a list."""
    if isinstance(spec, list):
        return [int(s) for s in spec]
    if spec == "conmix10":
        rng = random.Random(10)
        return [rng.randint(0, 10000) for _ in range(10)]
    if spec.startswith("first"):
        return list(range(int(spec[len("first"):])))
    raise ValueError(f"unknown eval_seeds spec {spec!r}: use 'conmix10', 'firstN' or a list of ints")
