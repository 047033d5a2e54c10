"""Bad inputs at every edge: one line on stderr that says what to do, exit code != 0, no
traceback, and no run folder changed. Then the damaged store is repaired by `--mode retry`."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import pytest

from harness.cli import main
from harness.store import cell_state, read_run_file

GRID = """
name: bad
budget: test
fixed: {eval_seeds: first2, protocol: {n_init: 2, max_iter: 30}}
grid: {method: [simclr, kmeans], dataset: [synthetic], ir: [10], seed: [0, 1]}
"""
AXES = "grid: {method: [simclr], dataset: [synthetic], ir: [10], seed: [0]}\n"


@pytest.fixture(scope="module")
def finished_store(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A run store with the cells of GRID completed (k-means is deterministic: one seed)."""
    root = tmp_path_factory.mktemp("store")
    (root / "bad.yaml").write_text(GRID)
    assert main(["run", "--grid", str(root / "bad.yaml"), "--executor", "debug",
                 "--runs-dir", str(root / "runs")]) == 0
    return root


def cell(runs: Path, method: str = "simclr", seed: int = 0) -> Path:
    (found,) = (runs / "bad" / method / "synthetic_ir10").glob(f"seed{seed}-*")
    return found


def snapshot(folder: Path) -> dict[str, str]:
    """Every path below `folder` with a digest of its content (folders: their mode)."""
    out = {}
    for path in sorted(folder.rglob("*")):
        key = str(path.relative_to(folder))
        out[key] = (f"dir {path.stat().st_mode}" if path.is_dir() and not path.is_symlink()
                    else hashlib.sha256(path.read_bytes()).hexdigest())
    return out


def truncate(path: Path) -> None:
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])


def grid_file(text: str) -> Callable[[Path, Path], None]:
    def write(runs: Path, tmp: Path) -> None:
        (tmp / "g.yaml").write_text(text)
    return write


def no_setup(runs: Path, tmp: Path) -> None:
    pass


RUN_G = ["run", "--grid", "{tmp}/g.yaml", "--runs-dir", "{runs}", "--executor", "debug"]
REPORT = ["report", "--grid", "{tmp}/bad.yaml", "--runs-dir", "{runs}", "--out", "{tmp}/rep",
          "--no-figures"]


@dataclass(frozen=True)
class Case:
    name: str
    argv: list[str]
    needle: str  # in the one stderr line: what went wrong or what to do
    setup: Callable[[Path, Path], None] = no_setup
    how: str = "inproc"  # inproc: main(); pipe: `| head -1`; readonly: on a read-only mount


CASES = [
    # damaged run-store files: the report refuses, naming the file and `--mode retry`
    Case("truncated metrics.json", REPORT, "--mode retry",
         lambda r, t: truncate(cell(r) / "metrics.json")),
    Case("metrics.json is {}", REPORT, "metrics.json: lacks its variants",
         lambda r, t: (cell(r) / "metrics.json").write_text("{}")),
    Case("metrics.json without its primary variant", REPORT, "--mode retry",
         lambda r, t: (cell(r, "kmeans") / "metrics.json").write_text(
             json.dumps({"primary": "x", "variants": {}}))),
    Case("status.json is []", REPORT, "status.json: holds a JSON list",
         lambda r, t: (cell(r, "simclr", 1) / "status.json").write_text("[]")),
    Case("status.json with an unknown state", REPORT, "state 'runing' is not one of",
         lambda r, t: (cell(r) / "status.json").write_text('{"state": "runing"}')),
    Case("garbage config.yaml", REPORT, "config.yaml: not valid YAML",
         lambda r, t: (cell(r, seed=1) / "config.yaml").write_text("method: [unclosed\n")),
    Case("predictions.npz deleted", REPORT, "predictions.npz: is missing",
         lambda r, t: (cell(r, "kmeans") / "predictions.npz").unlink()),
    Case("predictions.npz truncated", REPORT, "does not match the sha256",
         lambda r, t: truncate(cell(r) / "predictions.npz")),
    # report options
    Case("--features that no run has", [*REPORT, "--features", "nosuch"],
         "--features 'nosuch' matches no variant of the finished runs; they have: "),
    Case("report folder inside the run store", [*REPORT[:-3], "--out", "{runs}/bad/x"],
         "choose another --out"),
    Case("report | head", [*REPORT, "--format", "md"], "output closed early (broken pipe)",
         how="pipe"),
    # numbers on the command line
    Case("--max-parallel -1", ["run", "--grid", "{tmp}/bad.yaml", "--runs-dir", "{runs}",
                               "--max-parallel", "-1"], "--max-parallel: '-1' is not a whole"),
    Case("--max-parallel 0", ["run", "--grid", "{tmp}/bad.yaml", "--runs-dir", "{runs}",
                              "--max-parallel", "0"], "is not a whole number >= 1"),
    Case("--seeds reversed", ["run", "--grid", "{tmp}/bad.yaml", "--runs-dir", "{runs}",
                              "--seeds", "3-1"], "use a range like 0-4"),
    Case("--only unknown axis", ["run", "--grid", "{tmp}/bad.yaml", "--runs-dir", "{runs}",
                                 "--only", "colour=red"], "use k=v pairs"),
    Case("bench --batch 0", ["bench", "--out", "{tmp}/b.json", "--batch", "0"],
         "--batch: '0' is not a whole number >= 1"),
    Case("describe an IR beyond n_max", ["describe", "cifar10", "--ir", "1e9"],
         "the largest IR that keeps one image per class is 5000"),
    Case("describe IR 175 on digits", ["describe", "digits", "--ir", "175"],
         "the largest IR that keeps one image per class is 174"),
    Case("clean without a target", ["clean", "--runs-dir", "{runs}"], "say what to clean"),
    # where the run store lives
    Case("runs dir on a read-only filesystem", [*RUN_G[:4], "{ro}/runs", "--executor", "debug"],
         "cannot be written (Read-only file system", grid_file(AXES), how="readonly"),
    Case("runs dir under a file", [*RUN_G[:4], "{tmp}/afile/runs", "--executor", "debug"],
         "is a file, not a folder", lambda r, t: (grid_file(AXES)(r, t),
                                                  (t / "afile").write_text("x"))),
    Case("runs dir is a file", [*RUN_G[:4], "{tmp}/afile", "--executor", "debug"],
         "is a file, not a folder", lambda r, t: (grid_file(AXES)(r, t),
                                                  (t / "afile").write_text("x"))),
    Case("runs dir in /proc", [*RUN_G[:4], "/proc/harness-runs", "--executor", "debug"],
         "cannot be written", grid_file(AXES)),
    # grid files: values checked by type when the grid loads, before anything runs
    Case("seed: [zero]", RUN_G, "'zero' is not a seed; seeds are whole numbers >= 0",
         grid_file(AXES.replace("seed: [0]", "seed: [zero]"))),
    Case("seed: [-1]", RUN_G, "-1 is not a seed",
         grid_file(AXES.replace("seed: [0]", "seed: [-1]"))),
    Case("method: [3]", RUN_G, "3 is not a method name; write names as text",
         grid_file(AXES.replace("method: [simclr]", "method: [3]"))),
    Case("ir: [500] on digits", RUN_G, "the largest IR that keeps one image per class is 174",
         grid_file("grid: {method: [kmeans], dataset: [digits], ir: [500], seed: [0]}\n")),
    Case("ir: [0.5]", RUN_G, "IR = n_max / n_min must be >= 1",
         grid_file(AXES.replace("ir: [10]", "ir: [0.5]"))),
    Case("epochs: four", RUN_G, "params.epochs = 'four' must be a whole number",
         grid_file(AXES + "methods: {simclr: {params: {epochs: four}}}\n")),
    Case("lr: 1e-3 read as text", RUN_G, "write it with a dot",
         grid_file(AXES + "fixed: {params.lr: 1e-3}\n")),
    Case("layers with a word", RUN_G, "params.layers = [1, 'x'] must be a list of whole numbers",
         grid_file(AXES + "fixed: {params: {layers: [1, x]}}\n")),
    Case("unknown parameter", RUN_G, "unknown parameter(s) epoch",
         grid_file(AXES + "fixed: {params: {epoch: 3}}\n")),
    Case("cpu_threads: 0", RUN_G, "cpu_threads = 0 must be at least 1",
         grid_file(AXES + "fixed: {cpu_threads: 0}\n")),
    Case("protocol n_init: ten", RUN_G, "protocol.n_init = 'ten' must be a whole number",
         grid_file(AXES + "fixed: {protocol: {n_init: ten}}\n")),
    Case("unknown protocol key", RUN_G, "unknown protocol key 'protocol.colour'",
         grid_file(AXES + "fixed: {protocol: {colour: red}}\n")),
    Case("eval_seeds: first0", RUN_G, "use conmix10, firstN (N >= 1)",
         grid_file(AXES + "fixed: {eval_seeds: first0}\n")),
    Case("unknown grid key", RUN_G, "unknown key 'methds'",
         grid_file(AXES + "methds: {}\n")),
]


def _command(case: Case, runs: Path, tmp: Path, ro: Path) -> list[str]:
    return [a.format(runs=runs, tmp=tmp, ro=ro) for a in case.argv]


def _run_inproc(argv: list[str], capsys: pytest.CaptureFixture) -> tuple[int, str]:
    try:
        code = main(argv)
    except SystemExit as exc:  # argparse
        code = exc.code
    return int(code), capsys.readouterr().err


def _run_piped(argv: list[str]) -> tuple[int, str]:
    """The command's stdout into a pipe whose reader has gone (`| head` after it exited)."""
    read_end, write_end = os.pipe()
    os.close(read_end)
    proc = subprocess.run([sys.executable, "-m", "harness.cli", *argv], stdout=write_end,
                          stderr=subprocess.PIPE, text=True)
    os.close(write_end)
    return proc.returncode, proc.stderr


def _run_read_only(argv: list[str], ro: Path) -> tuple[int, str]:
    """The command inside a private mount namespace where `ro` is a read-only tmpfs."""
    import shlex

    if shutil.which("unshare") is None:
        pytest.skip("needs unshare(1) to mount a read-only filesystem")
    probe = subprocess.run(["unshare", "-m", "--propagation", "private", "true"],
                           capture_output=True)
    if probe.returncode != 0:
        pytest.skip("cannot create a mount namespace here (needs CAP_SYS_ADMIN)")
    ro.mkdir(exist_ok=True)
    inner = (f"mount -t tmpfs -o ro tmpfs {shlex.quote(str(ro))} && exec "
             + " ".join(map(shlex.quote, [sys.executable, "-m", "harness.cli", *argv])))
    out = subprocess.run(["unshare", "-m", "--propagation", "private", "sh", "-c", inner],
                         capture_output=True, text=True)
    return out.returncode, out.stderr


def test_the_table_names_at_least_25_cases() -> None:
    assert len(CASES) >= 25 and len({c.name for c in CASES}) == len(CASES)


@pytest.mark.parametrize("case", CASES, ids=[c.name for c in CASES])
def test_bad_input_one_line_no_traceback_nothing_changed(case: Case, finished_store: Path,
                                                         tmp_path: Path,
                                                         capsys: pytest.CaptureFixture) -> None:
    runs = tmp_path / "runs"
    shutil.copytree(finished_store / "runs", runs, symlinks=True)
    shutil.copy(finished_store / "bad.yaml", tmp_path / "bad.yaml")
    case.setup(runs, tmp_path)
    before = snapshot(tmp_path)
    argv = _command(case, runs, tmp_path, tmp_path / "ro")
    if case.how == "pipe":
        code, err = _run_piped(argv)
    elif case.how == "readonly":
        code, err = _run_read_only(argv, tmp_path / "ro")
    else:
        code, err = _run_inproc(argv, capsys)
    lines = err.strip().splitlines()
    assert code != 0, err
    assert len(lines) == 1 and "Traceback" not in err, err
    assert case.needle in lines[0], lines[0]
    after = {k: v for k, v in snapshot(tmp_path).items() if not k.startswith(("rep", "ro"))}
    assert after == {k: v for k, v in before.items() if not k.startswith(("rep", "ro"))}
    assert "--variant" not in lines[0]  # the report's flag is --features


def test_damaged_cells_show_as_corrupt_and_retry_repairs_them(
        finished_store: Path, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    runs = tmp_path / "runs"
    shutil.copytree(finished_store / "runs", runs, symlinks=True)
    grid = str(finished_store / "bad.yaml")
    damaged = [cell(runs, "simclr", 0), cell(runs, "simclr", 1), cell(runs, "kmeans", 0)]
    truncate(damaged[0] / "metrics.json")
    (damaged[1] / "status.json").write_text("[]")
    (damaged[2] / "predictions.npz").unlink()
    (cell(runs, "simclr", 1) / "config.yaml").write_text("method: [unclosed\n")
    assert {cell_state(d) for d in damaged} == {"corrupt"}
    base = ["--grid", grid, "--runs-dir", str(runs)]
    capsys.readouterr()
    assert main(["status", *base, "--failed"]) == 0
    out = capsys.readouterr().out
    assert "0/3 runs done" in out and out.count("(corrupt):") == 3
    assert main(["clean", "--runs-dir", str(runs), "--failed", "--dry-run"]) == 0
    assert "0 folder(s) to remove" in capsys.readouterr().out  # damaged results are repaired
    assert main(["run", *base, "--executor", "debug"]) == 0
    assert "3 failed, interrupted or damaged cell(s) skipped: rerun them with --mode retry" in \
        capsys.readouterr().out
    assert main(["run", *base, "--executor", "debug", "--mode", "retry"]) == 0
    assert {cell_state(d) for d in damaged} == {"completed"}
    fresh = {d.name: read_run_file(d / "metrics.json")["variants"] for d in damaged}
    originals = {d.name: read_run_file(finished_store / "runs" / d.relative_to(runs)
                                       / "metrics.json")["variants"] for d in damaged}
    assert fresh == originals  # recomputed from the checkpoints: the same results
    assert main(["report", *base, "--out", str(tmp_path / "rep"), "--no-figures"]) == 0


def test_a_resumed_finished_cell_writes_null_not_nan(finished_store: Path, tmp_path: Path) -> None:
    """No epoch left to train: the attempt's loss is unknown and stored as null (standard JSON)."""
    runs = tmp_path / "runs"
    shutil.copytree(finished_store / "runs", runs, symlinks=True)
    (cell(runs) / "metrics.json").unlink()  # interrupted after training, before evaluation
    assert cell_state(cell(runs)) == "interrupted"
    assert main(["run", "--grid", str(finished_store / "bad.yaml"), "--runs-dir", str(runs),
                 "--executor", "debug", "--mode", "retry", "--only", "method=simclr",
                 "--seeds", "0"]) == 0
    text = (cell(runs) / "metrics.json").read_text()
    assert "NaN" not in text and json.loads(text)["train"]["final_loss"] is None
