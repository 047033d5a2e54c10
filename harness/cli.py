"""The `harness` command line."""

from __future__ import annotations

import argparse
import os
import sys
import time
from collections.abc import Sequence
from pathlib import Path

from harness.cli_args import Command, build_parser as build_args
from harness.errors import HarnessError
from harness.executors.progress import count_cells
from harness.grids import load_grid


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


def _resolve_executor(args: argparse.Namespace) -> str:
    """Replace `--executor auto` by the executor it means here; the line saying which and why."""
    from harness.executors import choose_executor

    load_grid(args.grid)  # a bad grid is the error to see first
    if args.executor != "auto":
        return f"executor: {args.executor} (--executor {args.executor})"
    args.executor, why = choose_executor()
    return f"executor: {args.executor} (auto: {why})"


def _cmd_run(args: argparse.Namespace) -> int:
    from harness.cell_lock import live_owner
    from harness.executors import get_executor
    from harness.method import resolve_device
    from harness.runner import BusyCell, check_data, claim, link_reused, plan_cells, release
    from harness.store import FAILED_STATES, cell_state, check_writable

    print(_resolve_executor(args), flush=True)
    if args.executor == "slurm":
        from harness.executors.slurm_cli import run_slurm

        return run_slurm(args)
    runs_dir = Path(args.runs_dir)
    planned = plan_cells(args.grid, only=args.only, seeds=args.seeds, mode=args.mode,
                         runs_dir=runs_dir, data_root=args.root, device=args.device)
    todo = [c for c in planned if c.run]
    reused = [c for c in planned if c.reuse is not None]
    skipped = len(planned) - len(todo) - len(reused)
    name = load_grid(args.grid).name
    print(f"grid {name}: {count_cells(len(planned))}, {len(todo)} to run, {skipped} skipped, "
          f"{len(reused)} reused from other grids (mode {args.mode}; runs in {runs_dir / name})",
          flush=True)
    for cell in planned:
        if not cell.run and cell.owner is not None and cell.state in ("pending", "running"):
            print(BusyCell(cell.cfg, cell.owner).line(), flush=True)
    failed_before = sum(c.state in FAILED_STATES for c in planned if not c.run)
    if failed_before and args.mode == "cached":
        print(f"  {failed_before} failed, interrupted or damaged cell(s) skipped: rerun them "
              "with --mode retry", flush=True)
    if args.dry_run or not (todo or reused):
        return 0
    if todo:
        check_data(todo)
        resolve_device(args.device)  # the cells run here: a missing GPU fails before any write
    check_writable(runs_dir, "--runs-dir")
    for cell in reused:
        link_reused(cell)
    if not todo:
        return 0
    claimed, busy = claim(todo, args.mode, args.executor)
    for cell in busy:
        print(cell.line(), flush=True)
    t0 = time.time()
    try:
        get_executor(args.executor, max_parallel=args.max_parallel).submit(claimed)
    finally:
        release(claimed)
    states = [cell_state(Path(c.cfg.run_dir)) for c in claimed]
    taken = sum(s != "completed" and live_owner(Path(c.cfg.run_dir)) is not None
                for c, s in zip(claimed, states))
    failed = sum(s != "completed" for s in states) - taken
    print(f"done in {time.time() - t0:.1f}s: {states.count('completed')} completed, {failed} "
          f"failed" + (f", {taken} taken over by another process" if taken else ""), flush=True)
    return 1 if failed else 0


def _cmd_report(args: argparse.Namespace) -> int:
    from harness.registry import list_datasets, list_methods
    from harness.report import build_report
    from harness.runner import expected_cells
    from harness.store import check_writable

    name = load_grid(args.grid).name
    out_dir = Path(args.out) if args.out else Path("results") / name
    check_writable(out_dir, "--out")
    result = build_report(name, expected_cells(args.grid, args.only, args.seeds),
                          Path(args.runs_dir), out_dir,
                          formats=[f.strip() for f in args.format.split(",") if f.strip()],
                          metrics=[m.strip() for m in args.metric.split(",") if m.strip()],
                          variant=args.features, references=args.references, stats=args.stats,
                          lt_columns=args.lt, figures=not args.no_figures,
                          known_methods=set(list_methods()),
                          known_datasets=set(list_datasets()), latex_layout=args.latex_layout,
                          standalone=args.standalone)
    print(result.markdown)
    print(f"written ({len(result.files)} files, each report writes them fresh):")
    print("\n".join(f"  {f}" for f in result.files))
    for note in result.notes:
        print(f"note: {note}")
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

    print(_resolve_executor(args))
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
    if args.world_size:
        return _bench_scaling(args, methods)
    report = run_bench(methods, device=args.device, dataset=args.dataset, ir=args.ir,
                       batch=args.batch, size=args.size, paths=tuple(args.paths.split(",")),
                       warmup=args.warmup, windows=args.windows, steps=args.steps,
                       peak_tflops=args.peak_tflops, compile=args.compile,
                       reference_workers=args.workers, out=args.out)
    print("\n".join(summary_lines(report)))
    print(f"written: {output_path(args.out, report)}")
    return 0


def _bench_scaling(args: argparse.Namespace, methods: list[str]) -> int:
    from harness.bench import output_path
    from harness.bench_scaling import run_scaling, scaling_lines

    report = run_scaling(methods, args.world_size, device=args.device, dataset=args.dataset,
                         ir=args.ir, batch=args.batch, size=args.size, warmup=args.warmup,
                         windows=args.windows, steps=args.steps, threads=args.threads or 1,
                         out=args.out)
    print("\n".join(scaling_lines(report)))
    print(f"written: {output_path(args.out, report)}")
    return 0


def _bench_eval(args: argparse.Namespace) -> int:
    from harness.bench import output_path
    from harness.bench_eval import bench_eval, eval_summary_lines
    from harness.store import atomic_write_json

    if args.method or args.world_size:
        raise HarnessError("--eval times the evaluation's k-means, not a method: drop --method "
                           "and --world-size")
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


COMMANDS: dict[str, Command] = {
    "bench": _cmd_bench,
    "clean": _cmd_clean,
    "describe": _cmd_describe,
    "describe-method": _cmd_describe_method,
    "list": _cmd_list,
    "plan": _cmd_plan,
    "prepare": _cmd_prepare,
    "report": _cmd_report,
    "run": _cmd_run,
    "status": _cmd_status,
    "test": _cmd_test,
}


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of every subcommand."""
    return build_args(COMMANDS, __doc__ or "")


def _pipe_closed(command: str) -> int:
    """Output went to a pipe that closed early (`harness report | head`): say so on one line."""
    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, sys.stdout.fileno())  # so that the exit flush does not fail again
    what = ("cells not started are picked up by `harness run ... --mode retry`"
            if command == "run" else "the files it writes are complete; pipe into `less` to "
            "read all of the output")
    print(f"harness: error: output closed early (broken pipe); {what}", file=sys.stderr)
    return 141


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point: user errors print one line and exit 2."""
    args = build_parser().parse_args(argv)
    try:
        code = int(args.func(args) or 0)
        sys.stdout.flush()  # a closed pipe shows here, not in the interpreter's exit flush
        return code
    except HarnessError as exc:
        print(f"harness: error: {exc}", file=sys.stderr)
        return 2
    except BrokenPipeError:
        return _pipe_closed(args.command)
    except KeyboardInterrupt:
        print("harness: interrupted; running cells are marked interrupted and keep their last "
              "checkpoint, queued cells stay staged: resume both with `harness run ... --mode "
              "retry`", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
