"""Reading the run store for reports (read-only): run folders, variant selection, grid cells.

Layout read: `<runs>/<grid>/<method>/<dataset>_ir<r>/seed<s>-<uid>/` with `config.yaml`,
`status.json`, `metrics.json` (completed cells) and `train_log.jsonl`. Nothing here writes.
"""

from __future__ import annotations

import fnmatch
import re
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pandas as pd

from harness.config import canonical_json
from harness.errors import HarnessError
from harness.lt import parse_ir
from harness.store import FAILED_STATES, CorruptRunFile, inspect_cell, read_run_file

RUN_COLUMNS = ["grid", "method", "dataset", "ir", "seed", "uid", "run_dir", "state", "attempts",
               "error", "error_tail", "log_path", "started", "ended", "manifest_sha256", "primary",
               "backbone", "git_sha", "epochs", "train_seconds", "final_loss", "class_counts",
               "class_names", "variants", "run_card", "reference_card", "params", "data", "device",
               "cpu_threads"]
_SEED_DIR = re.compile(r"^seed(\d+)-([0-9a-zA-Z]+)$")
# Fields of the protocol card that must agree across every method in one (dataset, IR) column.
COLUMN_PROTOCOL_FIELDS = ("split", "K", "matching")
# Head/medium/tail split classes by training count: undefined where every class is equally big.
GROUP_METRICS = ("head_acc", "medium_acc", "tail_acc")
# Features of a method with nothing learned (raw-pixel k-means): kept whatever --features asks.
RAW_FEATURES = "pixels"


def ir_key(value: object) -> str:
    """Canonical text of an imbalance ratio: '10', '2.5' or 'native'."""
    return str(parse_ir(value))


def _backbone(params: dict[str, Any]) -> str | None:
    for key in ("backbone", "arch"):
        if isinstance(params.get(key), str):
            return params[key]
    return None


def _git_sha(env: dict[str, Any]) -> str | None:
    """The run's code SHA, short, with '+dirty' when it ran from a modified tree."""
    sha = env.get("git_sha")
    return None if not sha else str(sha)[:12] + ("+dirty" if env.get("dirty") else "")


def _read_run(run_dir: Path, grid_name: str) -> dict[str, Any] | None:
    """The run's row, or None for a folder that is not a run folder of this layout."""
    match = _SEED_DIR.match(run_dir.name)
    ds_ir = run_dir.parent.name
    if match is None or "_ir" not in ds_ir:
        return None
    path_dataset, path_ir = ds_ir.rsplit("_ir", 1)
    view = inspect_cell(run_dir)
    try:
        cfg = read_run_file(run_dir / "config.yaml") or {}
    except CorruptRunFile:  # the cell is `corrupt`; its folder names say what it is
        cfg = {}
    try:
        ir = ir_key(cfg.get("ir", path_ir))
    except HarnessError:
        return None
    status, state = view.status, view.state
    metrics = view.metrics or {}
    train = metrics.get("train") or {}
    return {
        "grid": grid_name, "method": cfg.get("method", run_dir.parent.parent.name),
        "dataset": cfg.get("dataset", path_dataset), "ir": ir,
        "seed": int(cfg.get("seed", match.group(1))), "uid": cfg.get("uid", match.group(2)),
        "run_dir": str(run_dir), "state": state, "attempts": status.get("attempts", 0),
        "error": status.get("error") or view.problem or "",
        "error_tail": status.get("error_tail") or "",
        "log_path": status.get("log_path") or "",
        "started": status.get("started") or "", "ended": status.get("ended") or "",
        "manifest_sha256": metrics.get("manifest_sha256"), "primary": metrics.get("primary"),
        "backbone": _backbone(cfg.get("params") or {}),
        "git_sha": _git_sha(metrics.get("env") or {}), "epochs": train.get("epochs"),
        "train_seconds": train.get("seconds"), "final_loss": train.get("final_loss"),
        "class_counts": metrics.get("class_counts"), "class_names": metrics.get("class_names"),
        "variants": metrics.get("variants") if state == "completed" else None,
        "run_card": metrics.get("run_card") or None,
        "reference_card": metrics.get("reference_card") or None,
        "params": cfg.get("params") or {}, "data": cfg.get("data") or {},
        "device": (metrics.get("env") or {}).get("device"),
        "cpu_threads": _cpu_threads(run_dir, metrics) if state == "completed" else None,
    }


def _cpu_threads(run_dir: Path, metrics: dict[str, Any]) -> int | None:
    """The thread count a finished run used: metrics.json, else env.json (runs from before
    metrics recorded it); None when neither says."""
    if "cpu_threads" in (metrics.get("env") or {}):
        return metrics["env"]["cpu_threads"]
    try:
        env = read_run_file(run_dir / "env.json") or {}
    except CorruptRunFile:
        return None
    return (env.get("device") or {}).get("cpu_threads")


def collect_runs(runs_dir: Path, grid_name: str) -> pd.DataFrame:
    """One row per run folder of `grid_name` under `runs_dir` (columns: `RUN_COLUMNS`)."""
    root = Path(runs_dir) / grid_name
    rows = [] if not root.is_dir() else [
        row for run_dir in sorted(root.glob("*/*/seed*-*")) if run_dir.is_dir()
        for row in [_read_run(run_dir, grid_name)] if row is not None]
    return pd.DataFrame(rows, columns=RUN_COLUMNS)


def pick_variant(variants: dict[str, Any], primary: str | None, wanted: str | None) -> str | None:
    """The variant key to report: `primary` by default, else `wanted` matched as an exact key,
    an fnmatch pattern or a features name ('backbone', 'head'); ties prefer the key sharing most
    '/'-parts with `primary`. None when the run has no such variant."""
    if wanted is None:
        return primary if primary in variants else None
    if wanted in variants:
        return wanted
    found = [k for k in variants if fnmatch.fnmatch(k, wanted) or k.split("/")[0] == wanted]
    if len(found) <= 1:
        return found[0] if found else None
    parts = (primary or "").split("/")

    def shared(key: str) -> int:
        return sum(a == b for a, b in zip(key.split("/"), parts))

    best = max(shared(k) for k in found)
    top = sorted(k for k in found if shared(k) == best)
    if len(top) > 1:
        raise HarnessError(f"variant '{wanted}' is ambiguous: it matches {', '.join(top)}; pass "
                           "one of these full names")
    return top[0]


def _equal_classes(counts: Any) -> bool:
    return isinstance(counts, list) and len(set(counts)) == 1


def select_variant(runs: pd.DataFrame, variant: str | None) -> pd.DataFrame:
    """Add the chosen variant's key, protocol card, signature, metrics, eval-seed stds and
    per-class arrays to each run row (`metric.<m>`, `evalstd.<m>` columns).

    A run whose only features are raw pixels keeps them whatever `variant` asks (there is
    nothing learned to choose from). Head/medium/tail metrics are dropped where every class has
    the same training count (at IR 1 their split would be arbitrary)."""
    extra: list[dict[str, Any]] = []
    for r in runs.itertuples(index=False):
        variants = r.variants if isinstance(r.variants, dict) else {}
        key = pick_variant(variants, r.primary, variant) if variants else None
        if key is None and variants and {k.split("/")[0] for k in variants} == {RAW_FEATURES}:
            key = r.primary if r.primary in variants else None
        v = variants.get(key, {}) if key else {}
        protocol = dict(v.get("protocol") or {})
        row: dict[str, Any] = {
            "variant": key, "protocol": protocol if key else None,
            "signature": canonical_json({**protocol, "backbone": r.backbone}) if key else None,
            "per_class_acc": v.get("per_class_acc"), "cluster_sizes": v.get("cluster_sizes")}
        dropped = GROUP_METRICS if _equal_classes(r.class_counts) else ()
        row.update({f"metric.{m}": val for m, val in (v.get("metrics") or {}).items()
                    if m not in dropped})
        row.update({f"evalstd.{m}": val for m, val in (v.get("metrics_std") or {}).items()
                    if m not in dropped})
        extra.append(row)
    added = pd.DataFrame(extra, index=range(len(runs)))
    for col in ("variant", "protocol", "signature", "per_class_acc", "cluster_sizes"):
        if col not in added:
            added[col] = None  # an empty store still yields the full set of columns
    return pd.concat([runs.reset_index(drop=True), added], axis=1)


def normalise_expected(expected: Sequence[dict[str, Any]]) -> pd.DataFrame:
    """The grid's expected cells as a frame (method, dataset, ir, seed, uid, budget), duplicates
    dropped; `budget` (paper, cpu, test) is None where the caller does not know it."""
    rows = []
    for i, cell in enumerate(expected):
        missing = [k for k in ("method", "dataset", "ir", "seed") if k not in cell]
        if missing:
            raise HarnessError(f"expected cell #{i} {cell!r} lacks {', '.join(missing)}; the grid "
                               "expansion must give method, dataset, ir and seed")
        rows.append({"method": str(cell["method"]), "dataset": str(cell["dataset"]),
                     "ir": ir_key(cell["ir"]), "seed": int(cell["seed"]), "uid": cell.get("uid"),
                     "budget": cell.get("budget")})
    df = pd.DataFrame(rows, columns=["method", "dataset", "ir", "seed", "uid", "budget"])
    return df.drop_duplicates(["method", "dataset", "ir", "seed"], ignore_index=True)


def grid_order(expected: pd.DataFrame) -> tuple[list[str], list[tuple[str, str]]]:
    """The methods and the (dataset, IR) columns of expected cells, in the grid's order."""
    return (list(dict.fromkeys(expected["method"])),
            list(dict.fromkeys(zip(expected["dataset"], expected["ir"]))))


def _pick_run(cands: pd.DataFrame, where: str, strict: bool) -> pd.Series | None:
    if cands.empty:
        return None
    done = cands[cands["state"] == "completed"].sort_values(["ended", "uid"])
    if len(done) > 1 and strict:
        raise HarnessError(
            f"{where} has {len(done)} completed run folders (uids {', '.join(done['uid'])}), "
            "e.g. from an older grid definition; pass the grid's uids to the report or remove "
            "the stale folders")
    if len(done):
        return done.iloc[-1]
    return cands.sort_values(["started", "uid"]).iloc[-1]  # the latest attempt wins


def resolve_expected(expected: pd.DataFrame, runs: pd.DataFrame, strict: bool = True
                     ) -> pd.DataFrame:
    """One row per expected cell with its run's columns; `state` is 'missing' without a folder,
    and `done` is True only for completed runs that hold the selected variant.

    An expected `uid` selects that folder only. Without one, a completed folder wins over others
    and, among unfinished ones, the latest started; several completed folders for one seed are
    an error when `strict` (reports), else the latest ended is shown (status)."""
    by_key = {k: g for k, g in runs.groupby(["method", "dataset", "ir", "seed"], sort=False)}
    rows = []
    for e in expected.itertuples(index=False):
        cands = by_key.get((e.method, e.dataset, e.ir, e.seed), runs.iloc[0:0])
        if e.uid:
            cands = cands[cands["uid"] == e.uid]
        where = f"{e.method} {e.dataset} IR{e.ir} seed {e.seed}"
        run = _pick_run(cands, where, strict)
        row = {c: None for c in runs.columns} if run is None else run.to_dict()
        row.update(method=e.method, dataset=e.dataset, ir=e.ir, seed=e.seed, budget=e.budget,
                   state=row["state"] or "missing")
        row["done"] = row["state"] == "completed" and isinstance(row.get("variant"), str)
        rows.append(row)
    return pd.DataFrame(rows)


def _differing(cards: list[dict[str, Any]]) -> list[str]:
    keys = sorted({k for c in cards for k in c})
    return [k for k in keys if len({canonical_json(c.get(k)) for c in cards}) > 1]


def check_protocols(resolved: pd.DataFrame) -> None:
    """Refuse (HarnessError) mixed protocols or LT manifests where they would share a cell or a
    column; the message names the runs so the user can rerun or remove them."""
    done = resolved[resolved["done"]]
    for (method, dataset, ir), g in done.groupby(["method", "dataset", "ir"], sort=False):
        if g["signature"].nunique() > 1:
            cards = [{**p, "backbone": b} for p, b in zip(g["protocol"], g["backbone"])]
            raise HarnessError(
                f"{method} {dataset} IR{ir}: runs use different protocols (differing: "
                f"{', '.join(_differing(cards))}; seeds {sorted(g['seed'])}, uids "
                f"{', '.join(g['uid'])}); they are not mixed in one cell: pick one with "
                "--features or rerun the odd seeds under the grid's protocol")
    for (dataset, ir), g in done.groupby(["dataset", "ir"], sort=False):
        shas = g["manifest_sha256"].dropna()
        if shas.nunique() > 1:
            groups = "; ".join(f"{sha[:12]}: {', '.join(sorted(set(sub['method'])))}"
                               for sha, sub in g.groupby("manifest_sha256"))
            raise HarnessError(
                f"{dataset} IR{ir}: runs were built on different LT manifests ({groups}); results "
                "on different subsets cannot share a table column: rerun the stale runs on the "
                "current manifest (`harness prepare`, then `harness run --mode force`)")
        cards = [{k: p.get(k) for k in COLUMN_PROTOCOL_FIELDS} for p in g["protocol"]]
        diff = _differing(cards)
        if diff:
            per = "; ".join(f"{m}: {canonical_json({k: p.get(k) for k in diff})}"
                            for m, p in zip(g["method"], g["protocol"]))
            raise HarnessError(
                f"{dataset} IR{ir}: methods use different evaluation protocols ({per}); a column "
                "holds one protocol only: select a common variant with --features or report them "
                "separately")


def check_readable(resolved: pd.DataFrame, variant: str | None) -> None:
    """Refuse a report over damaged run folders, or for a variant that no finished run has."""
    corrupt = resolved[resolved["state"] == "corrupt"]
    if len(corrupt):
        raise HarnessError(
            f"{len(corrupt)} run folder(s) of this grid hold damaged files (first: "
            f"{corrupt.iloc[0]['error']}); recompute them with `harness run` on this grid with "
            "--mode retry (a report never changes run folders)")
    completed = resolved[resolved["state"] == "completed"]
    learned = completed[completed["variant"].map(  # raw pixels are kept whatever --features asks
        lambda k: not isinstance(k, str) or k.split("/")[0] != RAW_FEATURES)]
    if variant is not None and len(learned) and not learned["done"].any():
        have = sorted({k for v in learned["variants"] if isinstance(v, dict) for k in v})
        raise HarnessError(f"--features {variant!r} matches no variant of the finished runs; "
                           f"they have: {', '.join(have)} (a feature kind such as "
                           f"{have[0].split('/')[0]} or a full name)")


def state_bucket(state: str) -> str:
    """Status-table bucket of a run state: done, running, pending, failed or missing."""
    if state == "completed":
        return "done"
    if state in FAILED_STATES:
        return "failed"
    return state if state in ("running", "pending") else "missing"


def read_train_log(run_dir: Path) -> pd.DataFrame:
    """`train_log.jsonl` as a frame (epoch, step, loss, ...); empty when absent. Bad lines are
    skipped (a run killed mid-write leaves a partial last line)."""
    return pd.DataFrame(read_run_file(Path(run_dir) / "train_log.jsonl") or [])
