"""Cell identity: canonical JSON, uid stability, location fields excluded."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from harness.config import CellConfig

BASE = dict(method="simclr", dataset="digits", ir=10, seed=0, params={"epochs": 5, "lr": 0.5},
            data={}, protocol={"split": "lt_train"}, eval_seeds="conmix10", method_version=1)


def test_json_roundtrip() -> None:
    cfg = CellConfig(**BASE, grid="g", run_dir="/x")
    again = CellConfig.from_dict(json.loads(json.dumps(cfg.to_dict())))
    assert again == cfg and again.uid == cfg.uid


def test_uid_stable_across_processes_and_hash_seeds() -> None:
    code = ("from harness.config import CellConfig; import json,sys; "
            "print(CellConfig(**json.loads(sys.argv[1])).uid)")
    uids = set()
    for hash_seed in ("0", "1", "12345"):
        env = {**os.environ, "PYTHONHASHSEED": hash_seed}
        out = subprocess.run([sys.executable, "-c", code, json.dumps(BASE)], env=env,
                             capture_output=True, text=True, check=True)
        uids.add(out.stdout.strip())
    assert uids == {CellConfig(**BASE).uid}


@pytest.mark.parametrize("change", [
    {"seed": 1}, {"ir": 5}, {"method_version": 2}, {"params": {"epochs": 6, "lr": 0.5}},
    {"params": {"epochs": 5, "lr": 0.25}}, {"protocol": {"split": "test"}}, {"eval_seeds": "first3"},
    {"dataset": "synthetic"}, {"data": {"image_size": 16}},
])
def test_any_change_gives_a_new_uid(change: dict) -> None:
    assert CellConfig(**{**BASE, **change}).uid != CellConfig(**BASE).uid


def test_location_fields_do_not_change_uid() -> None:
    a = CellConfig(**BASE, grid="demo", run_dir="/a", plugin_root="/p", data_root="/d", device="cpu")
    b = CellConfig(**BASE, grid="other", run_dir="/b", plugin_root="/q", data_root="/e", device="cuda")
    assert a.uid == b.uid and len(a.uid) == 8


def test_key_order_does_not_matter() -> None:
    a = CellConfig(**{**BASE, "params": {"epochs": 5, "lr": 0.5}})
    b = CellConfig(**{**BASE, "params": {"lr": 0.5, "epochs": 5}})
    assert a.uid == b.uid
