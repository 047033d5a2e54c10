"""The `harness` command line."""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Sequence
from pathlib import Path

from harness.errors import HarnessError
from harness.grids import load_grid
from harness.store import default_runs_dir


def _cmd_list(args: argparse.Namespace) -> int:
    from harness import plugins, registry
    from harness.grids import list_grids

    kinds = [args.kind] if args.kind else ["methods", "datasets", "grids"]
    for kind in kinds:
        print(f"{kind}:")
        if kind == "grids":
            import fnmatch

            for name, desc in list_grids().items():
                if fnmatch.fnmatch(name, args.pattern):
                    print(f"  {name:<22} {desc}")
            continue
        names = registry.list_methods(args.pattern) if kind == "methods" else \
            registry.list_datasets(args.pattern)
        get = registry.method_class if kind == "methods" else registry.dataset_class
        for name in names:
            print(f"  {name:<22} {get(name).description}")
        for bad in plugins.broken:
            if bad.path.parent.name == kind:
                print(f"  BROKEN {bad.path}: {bad.error}")
    return 0


def _cmd_run(args: argparse.Namespace) -> int:
    from harness.executors import get_executor
    from harness.method import resolve_device
    from harness.runner import check_data, link_reused, plan_cells, stage

    if args.executor == "slurm":
        from harness.executors.slurm import run_slurm

        return run_slurm(args)
    runs_dir = Path(args.runs_dir)
    planned = plan_cells(args.grid, only=args.only, seeds=args.seeds, mode=args.mode,
                         runs_dir=runs_dir, data_root=args.root, device=args.device)
    todo = [c for c in planned if c.run]
    reused = [c for c in planned if c.reuse is not None]
    skipped = len(planned) - len(todo) - len(reused)
    name = load_grid(args.grid).name
    print(f"grid {name}: {len(planned)} cells, {len(todo)} to run, {skipped} skipped, "
          f"{len(reused)} reused from other grids (mode {args.mode}; runs in {runs_dir / name})",
          flush=True)
    if args.dry_run:
        return 0
    for cell in reused:
        link_reused(cell)
    if not todo:
        return 0
    check_data(todo)
    resolve_device(args.device)  # the cells run on this machine: a missing GPU fails before any write
    for cell in todo:
        stage(cell, args.mode)
    t0 = time.time()
    get_executor(args.executor, max_parallel=args.max_parallel).submit([c.cfg for c in todo])
    from harness.store import cell_state

    failed = [c for c in todo if cell_state(Path(c.cfg.run_dir)) != "completed"]
    print(f"done in {time.time() - t0:.1f}s: {len(todo) - len(failed)} completed, "
          f"{len(failed)} failed", flush=True)
    return 1 if failed else 0


def _cmd_report(args: argparse.Namespace) -> int:
    from harness.registry import list_datasets, list_methods
    from harness.report import build_report
    from harness.runner import expected_cells

    name = load_grid(args.grid).name
    out_dir = Path(args.out) if args.out else Path("results") / name
    result = build_report(name, expected_cells(args.grid, args.only, args.seeds),
                          Path(args.runs_dir), out_dir,
                          formats=[f.strip() for f in args.format.split(",") if f.strip()],
                          metrics=[m.strip() for m in args.metric.split(",") if m.strip()],
                          variant=args.features, references=args.references, stats=args.stats,
                          lt_columns=args.lt, figures=not args.no_figures,
                          known_methods=set(list_methods()),
                          known_datasets=set(list_datasets()))
    print(result.markdown)
    print(f"\nwritten: {', '.join(str(f) for f in result.files)}")
    return 0


def _cmd_status(args: argparse.Namespace) -> int:
    from harness.executors.slurm import reconcile
    from harness.report import status_table
    from harness.runner import expected_cells

    # cells without SLURM job ids need no scheduler; `--reconcile` also reports a silent one
    reconcile(args.grid, Path(args.runs_dir), verbose=args.reconcile)
    print(status_table(load_grid(args.grid).name, expected_cells(args.grid, args.only, args.seeds),
                       Path(args.runs_dir), show_failed=args.failed))
    return 0


def _cmd_plan(args: argparse.Namespace) -> int:
    from harness.executors.slurm_cli import plan_slurm

    print(plan_slurm(args), end="")
    return 0


def _cmd_prepare(args: argparse.Namespace) -> int:
    from harness.prepare import prepare_dataset

    for path in prepare_dataset(args.dataset, args.root, args.ir or [],
                                download=not args.no_download, verify=not args.no_verify):
        print(path)
    return 0


def _cmd_describe(args: argparse.Namespace) -> int:
    from harness.prepare import describe

    from harness.registry import dataset_class

    ir = args.ir if args.ir is not None else dataset_class(args.dataset).irs[0]
    print(describe(args.dataset, ir, root=args.root))
    return 0


def _cmd_describe_method(args: argparse.Namespace) -> int:
    from harness.recipe import describe_method

    print(describe_method(args.method, args.dataset))
    return 0


def _cmd_bench(args: argparse.Namespace) -> int:
    from harness.bench import output_path, run_bench, summary_lines

    if args.eval:
        return _bench_eval(args)
    methods = args.method or ["simclr", "conmix"]
    report = run_bench(methods, device=args.device, dataset=args.dataset, ir=args.ir,
                       batch=args.batch, size=args.size, paths=tuple(args.paths.split(",")),
                       warmup=args.warmup, windows=args.windows, steps=args.steps,
                       peak_tflops=args.peak_tflops, compile=args.compile,
                       reference_workers=args.workers, out=args.out)
    print("\n".join(summary_lines(report)))
    print(f"written: {output_path(args.out, report)}")
    return 0


def _bench_eval(args: argparse.Namespace) -> int:
    from harness.bench import output_path
    from harness.bench_eval import bench_eval, eval_summary_lines
    from harness.store import atomic_write_json

    if args.method:
        raise HarnessError("--eval times the evaluation's k-means, not a method: drop --method")
    report = bench_eval(device=args.device, dataset=args.dataset, ir=args.ir,
                        repeats=args.windows, threads=args.threads)
    path = output_path(args.out, report)
    atomic_write_json(path, report)
    print("\n".join(eval_summary_lines(report)))
    print(f"written: {path}")
    return 0


def _cmd_test(args: argparse.Namespace) -> int:
    from harness.contract import run_contract
    from harness.registry import list_methods

    results = run_contract(args.method or list_methods(), args.keep)
    for r in results:
        print(f"{'PASS' if r.ok else 'FAIL'} {r.method:<20} {r.check:<22} {r.seconds:6.1f}s  {r.detail}")
    failed = [r for r in results if not r.ok]
    print(f"{len(results) - len(failed)} passed, {len(failed)} failed")
    return 1 if failed else 0


def _cmd_clean(args: argparse.Namespace) -> int:
    from harness.clean import clean_targets, parse_age, remove

    if not (args.submitit_logs or args.code or args.failed):
        raise HarnessError("say what to clean: --submitit-logs, --code and/or --failed "
                           "(completed cells are never removed)")
    grid = load_grid(args.grid).name if args.grid else None
    older_than = parse_age(args.older_than) if args.older_than else None
    targets = clean_targets(Path(args.runs_dir), grid, args.submitit_logs, args.code, args.failed,
                            older_than)
    for path in targets:
        print(("would remove " if args.dry_run else "removing ") + str(path))
    if not args.dry_run:
        remove(targets)
    print(f"{len(targets)} folder(s) {'to remove' if args.dry_run else 'removed'}")
    return 0


def _add_selection(p: argparse.ArgumentParser) -> None:
    p.add_argument("--grid", required=True, help="grid name (harness list grids) or YAML path")
    p.add_argument("--only", help="filter, e.g. method=simclr|conmix,ir=10")
    p.add_argument("--seeds", help="seed range or list, e.g. 0-4 or 0,2")
    p.add_argument("--runs-dir", default=str(default_runs_dir()),
                   help="run store (default ./runs or $HARNESS_RUNS_DIR)")


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of every subcommand."""
    parser = argparse.ArgumentParser(prog="harness", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("list", help="list methods, datasets or grids")
    p.add_argument("kind", nargs="?", choices=["methods", "datasets", "grids"])
    p.add_argument("pattern", nargs="?", default="*", help="fnmatch pattern, e.g. 'con*'")
    p.set_defaults(func=_cmd_list)

    p = sub.add_parser("run", help="run the missing cells of a grid")
    _add_selection(p)
    p.add_argument("--mode", default="cached", choices=["cached", "retry", "force"])
    p.add_argument("--executor", default="local", choices=["debug", "local", "slurm"])
    p.add_argument("--max-parallel", type=int, default=None)
    p.add_argument("--device", default="auto", help="auto, cpu or cuda")
    p.add_argument("--root", type=Path, default=None, help="data root")
    p.add_argument("--dry-run", action="store_true", help="show what would run")
    p.add_argument("--profile", default=None, help="SLURM profile (slurm/<name>.yaml)")
    p.add_argument("--allow-dirty", action="store_true", help="SLURM: submit a dirty tree")
    p.set_defaults(func=_cmd_run)

    p = sub.add_parser("plan", help="what `run` would submit: cells, arrays, sbatch preview")
    _add_selection(p)
    p.add_argument("--mode", default="cached", choices=["cached", "retry", "force"])
    p.add_argument("--executor", default="slurm", choices=["debug", "local", "slurm"])
    p.add_argument("--profile", default=None, help="SLURM profile (slurm/<name>.yaml or a path)")
    p.add_argument("--allow-dirty", action="store_true", help="SLURM: submit a dirty tree")
    p.add_argument("--device", default="auto", help="auto, cpu or cuda")
    p.add_argument("--root", type=Path, default=None, help="data root")
    p.set_defaults(func=_cmd_plan)

    p = sub.add_parser("status", help="grid coverage: done/running/pending/failed per cell")
    _add_selection(p)
    p.add_argument("--failed", action="store_true", help="show failed cells' error tails")
    p.add_argument("--reconcile", action="store_true", help="check the scheduler for orphans")
    p.set_defaults(func=_cmd_status)

    p = sub.add_parser("report", help="paper-style tables (read-only)")
    _add_selection(p)
    p.add_argument("--format", default="md,latex,csv")
    p.add_argument("--metric", default="acc,nmi,ari")
    p.add_argument("--features", default=None, help="variant: projector, backbone, head, pixels")
    p.add_argument("--references", action="store_true", help="published numbers beside ours")
    p.add_argument("--stats", action="store_true", help="paired tests over shared seeds")
    p.add_argument("--lt", action="store_true", help="long-tail columns (CAA, head/medium/tail)")
    p.add_argument("--no-figures", action="store_true")
    p.add_argument("--out", default=None, help="output folder (default results/<grid>)")
    p.set_defaults(func=_cmd_report)

    p = sub.add_parser("prepare", help="check/download a dataset and build its LT manifests")
    p.add_argument("--dataset", required=True)
    p.add_argument("--root", type=Path, default=None)
    p.add_argument("--ir", nargs="*", default=None)
    p.add_argument("--no-download", action="store_true", help="only check existing files")
    p.add_argument("--no-verify", action="store_true", help="skip the published checksums")
    p.set_defaults(func=_cmd_prepare)

    p = sub.add_parser("describe", help="class names and counts of an LT subset (no files needed)")
    p.add_argument("dataset")
    p.add_argument("--ir", default=None, help="imbalance ratio (default: the dataset's first)")
    p.add_argument("--root", type=Path, default=None, help="data root (for names read from files)")
    p.set_defaults(func=_cmd_describe)

    p = sub.add_parser("describe-method",
                       help="a method's resolved training recipe on a dataset beside upstream's")
    p.add_argument("method")
    p.add_argument("--dataset", required=True, help="dataset whose paper settings to resolve")
    p.set_defaults(func=_cmd_describe_method)
    p = sub.add_parser("clean", help="remove submitit logs, unused code copies, failed cells")
    p.add_argument("--grid", default=None, help="only this grid (default: every grid)")
    p.add_argument("--runs-dir", default=str(default_runs_dir()))
    p.add_argument("--submitit-logs", action="store_true", help="submitit folders of idle grids")
    p.add_argument("--code", action="store_true", help="code copies no queued cell uses")
    p.add_argument("--failed", action="store_true", help="folders of failed/killed cells")
    p.add_argument("--older-than", default=None, metavar="AGE",
                   help="only what last changed longer ago than AGE (7d, 12h, 30m)")
    p.add_argument("--dry-run", action="store_true", help="list, do not remove")
    p.set_defaults(func=_cmd_clean)

    p = sub.add_parser("test", help="contract checks of method plugins on tiny synthetic data (CPU)")
    p.add_argument("--method", action="append", help="method (repeatable; default: all)")
    p.add_argument("--keep", type=Path, default=None, help="keep the check runs in this folder")
    p.set_defaults(func=_cmd_test)

    p = sub.add_parser("bench", help="time one training step per method and data path (JSON)")
    p.add_argument("--method", action="append", help="method (repeatable; default simclr, conmix)")
    p.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"])
    p.add_argument("--batch", type=int, default=None, help="batch size (default: the paper's)")
    p.add_argument("--steps", type=int, default=5, help="steps per timed window")
    p.add_argument("--windows", type=int, default=5, help="timed windows (median reported)")
    p.add_argument("--warmup", type=int, default=3, help="untimed warm-up steps")
    p.add_argument("--dataset", default="cifar10", help="shape and size of the data")
    p.add_argument("--ir", default=10)
    p.add_argument("--size", choices=["paper", "tiny"], default=None,
                   help="network size (default: paper on CUDA, tiny on CPU)")
    p.add_argument("--paths", default="fast,reference", help="data paths to time")
    p.add_argument("--peak-tflops", type=float, default=400.0, help="for the FLOP floor")
    p.add_argument("--compile", action=argparse.BooleanOptionalAction, default=None,
                   help="torch.compile the networks and the augmentation (default: on CUDA only)")
    p.add_argument("--workers", type=int, default=8, help="DataLoader workers of the reference path")
    p.add_argument("--eval", action="store_true",
                   help="time the evaluation's k-means against scikit-learn's instead (features "
                        "of the LT subset's size; --windows repeats, median reported)")
    p.add_argument("--threads", type=int, default=None,
                   help="CPU threads for --eval (default: torch's current count)")
    p.add_argument("--out", type=Path, required=True,
                   help="JSON output file, or a folder (the file is then named after the device)")
    p.set_defaults(func=_cmd_bench)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point: user errors print one line and exit 2."""
    args = build_parser().parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except HarnessError as exc:
        print(f"harness: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("harness: interrupted; running cells are marked interrupted and keep their last "
              "checkpoint: resume them with `harness run ... --mode retry`", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
