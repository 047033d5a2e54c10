"""`harness clean` removes logs, unused code copies and failed cells, never a result."""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

from harness.clean import parse_age
from harness.cli import main
from harness.store import cell_state, read_status


def test_clean_keeps_results_and_what_queued_cells_need(tmp_path: Path, runs_dir: Path) -> None:
    grid = tmp_path / "c.yaml"
    grid.write_text("""
name: c
budget: test
fixed: {eval_seeds: first2, protocol: {n_init: 2, max_iter: 30}}
grid: {method: [kmeans], dataset: [synthetic], ir: [10, 5, 2], seed: [0]}
""")
    assert main(["run", "--grid", str(grid), "--executor", "debug",
                 "--runs-dir", str(runs_dir)]) == 0
    done, failed, queued = sorted(p.parent for p in runs_dir.glob("c/*/*/*/config.yaml"))
    (failed / "status.json").write_text(json.dumps({**read_status(failed), "state": "failed"}))
    (queued / "status.json").write_text(json.dumps({**read_status(queued), "state": "pending",
                                                    "job_ids": ["7_0"], "executor": "slurm",
                                                    "code_dir": str(runs_dir / "_code" / "keep")}))
    for name in ("keep", "old"):
        copy = runs_dir / "_code" / name
        copy.mkdir(parents=True)
        (copy / "x.py").write_text("")
        (copy / "x.py").chmod(0o444)
        copy.chmod(0o555)
    (runs_dir / "_submitit" / "c" / "7_0").mkdir(parents=True)
    base = ["clean", "--runs-dir", str(runs_dir)]
    assert main(base) == 2  # nothing asked for
    assert main([*base, "--failed", "--code", "--submitit-logs", "--dry-run"]) == 0
    assert failed.exists() and (runs_dir / "_code" / "old").exists()
    assert main([*base, "--failed", "--code", "--submitit-logs"]) == 0
    assert not failed.exists() and not (runs_dir / "_code" / "old").exists()
    assert (runs_dir / "_code" / "keep").exists()  # a queued cell runs from it
    assert (runs_dir / "_submitit" / "c").exists()  # the grid still has a queued cell
    assert cell_state(done) == "completed" and (done / "metrics.json").exists()
    (queued / "status.json").write_text(json.dumps({**read_status(queued), "state": "failed"}))
    assert main([*base, "--submitit-logs", "--grid", str(grid)]) == 0
    assert not (runs_dir / "_submitit" / "c").exists()


def test_older_than_keeps_what_changed_recently(runs_dir: Path) -> None:
    old, recent = runs_dir / "_code" / "old", runs_dir / "_code" / "recent"
    for copy in (old, recent):
        (copy / "pkg").mkdir(parents=True)
        (copy / "pkg" / "x.py").write_text("")
    week_ago = time.time() - 8 * 86400
    for path in (old, old / "pkg", old / "pkg" / "x.py", recent):
        os.utime(path, (week_ago, week_ago))  # `recent` keeps one new file inside
    base = ["clean", "--runs-dir", str(runs_dir), "--code"]
    assert main([*base, "--older-than", "7d"]) == 0
    assert not old.exists() and recent.exists()
    assert main([*base, "--older-than", "a week"]) == 2
    assert parse_age("12h") == 43200 and parse_age("1.5d") == 129600
