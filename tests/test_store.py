"""The run store's files: one reader that names damage, standard JSON, modes from the umask."""

from __future__ import annotations

import io
import json
import os
import stat
from pathlib import Path

import numpy as np
import pytest

from harness.cell_lock import acquire
from harness.cli import main
from harness.store import (CorruptRunFile, atomic_write_json, dumps_json, inspect_cell,
                           needs_run, read_run_file, update_status)
from fakeruns import write_fake_run


def _strict(text: str) -> object:
    def refuse(name: str) -> None:
        raise ValueError(f"non-standard JSON constant {name}")

    return json.loads(text, parse_constant=refuse)


def test_json_is_standard_nan_and_numpy_become_plain_values(tmp_path: Path) -> None:
    atomic_write_json(tmp_path / "m.json", {"loss": float("nan"), "top": float("inf"),
                                            "acc": np.float32(0.5), "n": np.int64(3),
                                            "per_class": np.array([0.25, np.nan])})
    assert _strict((tmp_path / "m.json").read_text()) == {
        "loss": None, "top": None, "acc": 0.5, "n": 3, "per_class": [0.25, None]}
    assert dumps_json({"b": 1, "a": 2}, indent=None) == '{"a": 2, "b": 1}'


@pytest.mark.parametrize("umask,mode", [(0o022, 0o644), (0o002, 0o664), (0o077, 0o600)])
def test_atomic_writes_follow_the_umask(tmp_path: Path, umask: int, mode: int) -> None:
    old = os.umask(umask)
    try:
        atomic_write_json(tmp_path / "status.json", {"state": "pending"})
    finally:
        os.umask(old)
    assert stat.S_IMODE((tmp_path / "status.json").stat().st_mode) == mode


@pytest.mark.parametrize("name,content,reason", [
    ("status.json", b"[]", "holds a JSON list"),
    ("status.json", b'{"state": "runing"}', "state 'runing' is not one of"),
    ("status.json", b'{"state": "pending", "attempts": "two"}', "attempts must be a number"),
    ("metrics.json", b'{"primary": "p", "vari', "not valid JSON"),
    ("metrics.json", b"{}", "lacks its variants"),
    ("metrics.json", b'{"primary": "p", "variants": {"p": {"metrics": {"acc": "high"}}}}',
     "no metrics of numbers"),
    ("env.json", b"\xff\xfe", "not valid JSON"),
    ("config.yaml", b"method: [unclosed", "not valid YAML"),
    ("config.yaml", b"- a list", "not a YAML mapping"),
    ("config.yaml", b"colour: red", "not a cell config"),
    ("predictions.npz", b"PK\x03\x04 truncated", "not a readable .npz"),
    ("last.pt", b"garbage", "not a readable checkpoint"),
    ("cell.lock", b'{"host": "h"}', "lacks its owner"),
])
def test_damaged_files_are_named_with_what_is_wrong(tmp_path: Path, name: str, content: bytes,
                                                    reason: str) -> None:
    (tmp_path / name).write_bytes(content)
    with pytest.raises(CorruptRunFile, match=reason) as info:
        read_run_file(tmp_path / name)
    assert info.value.path == tmp_path / name and str(tmp_path / name) in str(info.value)


def test_absent_files_read_as_none_and_logs_skip_a_cut_line(tmp_path: Path) -> None:
    assert read_run_file(tmp_path / "metrics.json") is None
    assert read_run_file(tmp_path / "not-a-folder" / "status.json") is None
    (tmp_path / "train_log.jsonl").write_text('{"epoch": 1}\n{"epoch": 2}\n{"epo')
    assert read_run_file(tmp_path / "train_log.jsonl") == [{"epoch": 1}, {"epoch": 2}]


def test_predictions_must_match_the_recorded_sha256(tmp_path: Path) -> None:
    buf = io.BytesIO()
    np.savez(buf, a=np.arange(3))
    (tmp_path / "predictions.npz").write_bytes(buf.getvalue())
    assert list(read_run_file(tmp_path / "predictions.npz")["a"]) == [0, 1, 2]
    with pytest.raises(CorruptRunFile, match="does not match the sha256"):
        read_run_file(tmp_path / "predictions.npz", sha256="0" * 64)


def test_cell_states_from_damage_and_owners(runs_dir: Path) -> None:
    done = write_fake_run(runs_dir, "g", "simclr", "cifar10", 10, 0)
    assert inspect_cell(done).state == "completed"
    (done / "predictions.npz").unlink()
    view = inspect_cell(done)
    assert view.state == "corrupt" and "predictions.npz: is missing" in view.problem
    (done / "status.json").write_text("[]")
    assert inspect_cell(done).state == "corrupt"
    update_status(done, state="pending")  # a damaged status starts afresh
    assert inspect_cell(done).state == "stale"  # staged, and nobody owns it
    lock = acquire(done, "run")
    assert inspect_cell(done).state == "pending" and inspect_cell(done).owner == lock.owner
    lock.release()
    update_status(done, executor="slurm", job_ids=["12_0"])
    assert inspect_cell(done).state == "pending"  # queued on SLURM: the scheduler decides
    update_status(done, state="running")
    assert inspect_cell(done).state == "stale"  # a running worker holds the lock
    (done / "config.yaml").unlink()
    assert inspect_cell(done).state == "corrupt"
    assert inspect_cell(runs_dir / "nowhere").state == "missing"


@pytest.mark.parametrize("state,cached,retry", [
    ("missing", True, True), ("stale", True, True), ("pending", False, False),
    ("running", False, False), ("completed", False, False), ("failed", False, True),
    ("killed", False, True), ("interrupted", False, True), ("corrupt", False, True)])
def test_modes_decide_from_the_state(state: str, cached: bool, retry: bool) -> None:
    assert needs_run(state, "cached") is cached and needs_run(state, "retry") is retry
    assert needs_run(state, "force") and not needs_run(state, "read-only")


def test_every_file_of_a_run_and_its_report_follows_the_umask(
        tmp_path: Path, runs_dir: Path, capsys: pytest.CaptureFixture) -> None:
    grid = tmp_path / "u.yaml"
    grid.write_text("name: u\nbudget: test\nfixed: {eval_seeds: first2, protocol: {n_init: 2}}\n"
                    "grid: {method: [simclr], dataset: [synthetic], ir: [10], seed: [0]}\n")
    old = os.umask(0o002)
    try:
        assert main(["run", "--grid", str(grid), "--executor", "debug",
                     "--runs-dir", str(runs_dir)]) == 0
        assert main(["report", "--grid", str(grid), "--runs-dir", str(runs_dir),
                     "--out", str(tmp_path / "rep"), "--no-figures"]) == 0
    finally:
        os.umask(old)
    capsys.readouterr()
    (run_dir,) = [p.parent for p in runs_dir.glob("u/*/*/*/config.yaml")]
    files = [run_dir / n for n in ("config.yaml", "status.json", "env.json", "metrics.json",
                                   "predictions.npz", "log.txt", "train_log.jsonl")]
    files += [run_dir / "ckpt" / "last.pt", *(tmp_path / "rep").iterdir()]
    assert {f.name: oct(stat.S_IMODE(f.stat().st_mode)) for f in files} == {
        f.name: "0o664" for f in files}
    assert stat.S_IMODE(run_dir.stat().st_mode) == 0o775
    _strict((run_dir / "metrics.json").read_text())
