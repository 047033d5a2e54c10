"""Generated contract tests: every registered method meets `harness.contract` on `synthetic`.

Each method runs its tiny `test_params` budget: metadata, train/embed/evaluate, exact resume
after a stop at the first checkpoint, and no host sync in its training steps. `harness test`
runs the same checks from the command line; here it is shown to catch a broken plugin.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import REPO
from harness.cli import main
from harness.contract import CHECKS
from harness.registry import list_methods
from harness.store import cell_state, read_run_file

METHODS = list_methods()


@pytest.mark.parametrize("check", CHECKS)
@pytest.mark.parametrize("name", METHODS)
def test_method_meets_the_contract(name: str, check: str, tmp_path: Path) -> None:
    CHECKS[check](name, tmp_path)  # raises AssertionError with what is wrong


LEAKY = """
from harness.registry import method_class, register_method

SimCLR = method_class("simclr")


@register_method("leaky")
class Leaky(SimCLR):
    description = "SimCLR that reads its loss on the host at every step"

    def training_step(self, batch):
        loss = super().training_step(batch)
        float(loss)
        return loss
"""


def test_harness_test_reports_a_broken_plugin(tmp_path: Path) -> None:
    for kind, stem in (("methods", "simclr"), ("datasets", "synthetic")):
        (tmp_path / kind).mkdir(exist_ok=True)
        shutil.copy(REPO / kind / f"{stem}.py", tmp_path / kind)
    (tmp_path / "methods" / "leaky.py").write_text(LEAKY)
    out = subprocess.run([sys.executable, "-m", "harness.cli", "test", "--method", "leaky"],
                         capture_output=True, text=True, cwd=tmp_path, timeout=300,
                         env={**os.environ, "HARNESS_PLUGIN_ROOT": str(tmp_path)})
    assert out.returncode == 1, out.stderr
    lines = {line.split()[2]: line for line in out.stdout.splitlines() if line.startswith(("PASS", "FAIL"))}
    assert lines["no_host_sync"].startswith("FAIL leaky") and "_local_scalar_dense" in lines["no_host_sync"]
    assert all(lines[c].startswith("PASS") for c in ("metadata", "train_embed_evaluate", "exact_resume"))
    assert out.stdout.splitlines()[-1] == "3 passed, 1 failed"


def test_every_method_runs_through_the_pipeline(tmp_path: Path, runs_dir: Path) -> None:
    grid = tmp_path / "contract.yaml"
    grid.write_text(f"""
name: contract
budget: test
fixed: {{eval_seeds: first2, protocol: {{n_init: 2, max_iter: 30}}}}
grid: {{method: [{', '.join(METHODS)}], dataset: [synthetic], ir: [10], seed: [0]}}
""")
    rc = main(["run", "--grid", str(grid), "--executor", "debug", "--runs-dir", str(runs_dir),
               "--device", "cpu"])
    dirs = sorted(p.parent for p in (runs_dir / "contract").glob("*/*/*/config.yaml"))
    failed = {d.parts[-3]: read_run_file(d / "status.json").get("error") for d in dirs
              if cell_state(d) != "completed"}
    assert rc == 0 and not failed, failed
    assert {d.parts[-3] for d in dirs} == set(METHODS)
    for d in dirs:
        metrics = read_run_file(d / "metrics.json")
        primary = metrics["variants"][metrics["primary"]]
        assert primary["protocol"]["split"] == "lt_train"
        assert 0.0 <= primary["metrics"]["acc"] <= 1.0 and len(primary["per_class_acc"]) == 10
