"""The `harness` command line's arguments: every subcommand and option, with help that says what
it does and its default (`_Help` appends the default where there is one)."""

from __future__ import annotations

import argparse
from collections.abc import Callable
from pathlib import Path
from typing import NoReturn

from harness import __version__
from harness.store import default_runs_dir

Command = Callable[[argparse.Namespace], int]


class _Help(argparse.HelpFormatter):
    """Appends '(default: X)' to an option's help unless its default is None or False."""

    def _get_help_string(self, action: argparse.Action) -> str:
        text = action.help or ""
        if ("%(default)" in text or not action.option_strings
                or action.default in (None, False, argparse.SUPPRESS)):
            return text
        return text + " (default: %(default)s)"


class OneLineParser(argparse.ArgumentParser):
    """argparse with its errors on one line (usage is one `--help` away), exit code 2."""

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"{self.prog}: error: {message} (see `{self.prog} --help`)\n")


def _count(least: int) -> Callable[[str], int]:
    """An argparse type: a whole number >= `least`."""
    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            value = least - 1
        if value < least:
            raise argparse.ArgumentTypeError(f"{text!r} is not a whole number >= {least}")
        return value

    return parse


def _positive(text: str) -> float:
    """An argparse type: a finite number > 0."""
    try:
        value = float(text)
    except ValueError:
        value = -1.0
    if not 0 < value < float("inf"):
        raise argparse.ArgumentTypeError(f"{text!r} is not a number > 0")
    return value


def _add_selection(p: argparse.ArgumentParser) -> None:
    p.add_argument("--grid", required=True, help="grid name (harness list grids) or YAML path")
    p.add_argument("--only", help="only cells matching k=v filters, e.g. "
                                  "method=simclr|conmix,ir=10 (default: every cell)")
    p.add_argument("--seeds", help="training seeds, a range or list, e.g. 0-4 or 0,2 "
                                   "(default: the grid's)")
    p.add_argument("--runs-dir", default=str(default_runs_dir()),
                   help="run store folder ($HARNESS_RUNS_DIR if set, else ./runs)")


_MODE_HELP = ("cached: run missing cells; retry: also failed, killed or interrupted ones (they "
              "resume from their checkpoint); force: rerun every selected cell from scratch")
_EXECUTOR_HELP = ("auto: slurm where sbatch is installed and the SLURM controller answers, else "
                  "local; local: one process per cell on this machine; debug: in this process, "
                  "one after another; slurm: job arrays through submitit")
_DEVICE_HELP = "training device: auto (CUDA when present), cpu, cuda or cuda:N"


def _add_execution(p: argparse.ArgumentParser) -> None:
    """Options `run` and `plan` share: mode, executor, device and data root."""
    p.add_argument("--mode", default="cached", choices=["cached", "retry", "force"],
                   help=_MODE_HELP)
    p.add_argument("--executor", default="auto", choices=["auto", "debug", "local", "slurm"],
                   help=_EXECUTOR_HELP)
    p.add_argument("--device", default="auto", help=_DEVICE_HELP)
    p.add_argument("--root", type=Path, default=None,
                   help="data root (default ~/.cache/harness/data or $HARNESS_DATA_ROOT)")


def _sub(sub: argparse._SubParsersAction, name: str, text: str) -> argparse.ArgumentParser:
    return sub.add_parser(name, help=text, description=text[0].upper() + text[1:] + ".",
                          formatter_class=_Help)


def build_parser(commands: dict[str, Command], description: str) -> argparse.ArgumentParser:
    """The argument parser of every subcommand; `commands` maps each name to its function."""
    parser = OneLineParser(prog="harness", description=description,
                                     formatter_class=_Help)
    parser.add_argument("--version", action="version", version=f"harness {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)

    p = _sub(sub, "list", "list methods, datasets or grids")
    p.add_argument("kind", nargs="?", choices=["methods", "datasets", "grids"],
                   help="what to list (default: all three)")
    p.add_argument("pattern", nargs="?", default="*", help="fnmatch pattern, e.g. 'con*'")
    p.set_defaults(func=commands["list"])

    p = _sub(sub, "run", "run the missing cells of a grid")
    _add_selection(p)
    _add_execution(p)
    p.add_argument("--max-parallel", type=_count(1), default=None,
                   help="local executor: cells at once (default: one per GPU, else up to 2)")
    p.add_argument("--dry-run", action="store_true", help="say what would run, run nothing")
    p.add_argument("--profile", default=None,
                   help="SLURM resource profile, slurm/<name>.yaml (default: each method's own)")
    p.add_argument("--allow-dirty", action="store_true",
                   help="SLURM: submit from a tree with uncommitted changes (the diff is stored)")
    p.set_defaults(func=commands["run"])

    p = _sub(sub, "plan", "what `run` would submit: cells, cost estimate, arrays, sbatch preview")
    _add_selection(p)
    _add_execution(p)
    p.add_argument("--summary", action="store_true",
                   help="a few lines: counts per method and dataset, total estimate, arrays")
    p.add_argument("--profile", default=None,
                   help="SLURM resource profile, slurm/<name>.yaml or a path (default: each "
                        "method's own)")
    p.add_argument("--allow-dirty", action="store_true",
                   help="SLURM: plan as if submitting a tree with uncommitted changes")
    p.set_defaults(func=commands["plan"])

    p = _sub(sub, "status", "grid coverage: done/running/pending/failed per cell")
    _add_selection(p)
    p.add_argument("--failed", action="store_true", help="show failed cells' error tails")
    p.add_argument("--reconcile", action="store_true",
                   help="ask the scheduler about running cells and mark orphans killed")
    p.set_defaults(func=commands["status"])

    p = _sub(sub, "report", "paper-style tables, figures and data files (read-only)")
    _add_selection(p)
    p.add_argument("--format", default="md,latex,csv",
                   help="comma-separated outputs among md, latex, csv (the tidy results CSV, "
                        "parquet and figures are always written)")
    p.add_argument("--metric", default="acc,nmi,ari",
                   help="comma-separated metrics of the main table (acc, nmi, ari, caa, kappa, "
                        "head_acc, medium_acc, tail_acc, size_entropy)")
    p.add_argument("--features", default=None,
                   help="variant to report: projector, backbone, head, pixels or a full variant "
                        "name (default: each run's primary; raw-pixel baselines keep pixels)")
    p.add_argument("--references", action="store_true",
                   help="list published numbers for the grid's cells beside ours")
    p.add_argument("--stats", action="store_true",
                   help="paired tests against each column's best (Holm-corrected, bootstrap CI)")
    p.add_argument("--lt", action="store_true",
                   help="also the long-tail table (CAA, head/medium/tail ACC), its own file")
    p.add_argument("--latex-layout", default="per-dataset", choices=["per-dataset", "wide"],
                   help="per-dataset: one table per dataset; wide: one table* for the grid; "
                        "both scaled down to the line width only where wider")
    p.add_argument("--standalone", action="store_true",
                   help="also write a compilable <grid>_standalone.tex and its PDF (pdflatex)")
    p.add_argument("--no-figures", action="store_true", help="skip the figures")
    p.add_argument("--out", default=None, help="output folder (default: results/<grid>)")
    p.set_defaults(func=commands["report"])

    p = _sub(sub, "prepare", "check or download a dataset and build its LT manifests")
    p.add_argument("--dataset", required=True, help="dataset name (harness list datasets)")
    p.add_argument("--root", type=Path, default=None,
                   help="data root (default ~/.cache/harness/data or $HARNESS_DATA_ROOT)")
    p.add_argument("--ir", nargs="*", default=None,
                   help="imbalance ratios to write manifests for (default: the dataset's)")
    p.add_argument("--no-download", action="store_true", help="only check existing files")
    p.add_argument("--no-verify", action="store_true", help="skip the published checksums")
    p.set_defaults(func=commands["prepare"])

    p = _sub(sub, "describe", "class names and counts of an LT subset (no files needed)")
    p.add_argument("dataset", help="dataset name (harness list datasets)")
    p.add_argument("--ir", default=None, help="imbalance ratio (default: the dataset's first)")
    p.add_argument("--root", type=Path, default=None, help="data root (for names read from files)")
    p.set_defaults(func=commands["describe"])

    p = _sub(sub, "describe-method",
             "a method's resolved training recipe on a dataset beside upstream's")
    p.add_argument("method", help="method name (harness list methods)")
    p.add_argument("--dataset", required=True, help="dataset whose paper settings to resolve")
    p.set_defaults(func=commands["describe-method"])
    p = _sub(sub, "clean", "remove submitit logs, unused code copies, failed cells")
    p.add_argument("--grid", default=None, help="only this grid (default: every grid)")
    p.add_argument("--runs-dir", default=str(default_runs_dir()),
                   help="run store folder ($HARNESS_RUNS_DIR if set, else ./runs)")
    p.add_argument("--submitit-logs", action="store_true", help="submitit folders of idle grids")
    p.add_argument("--code", action="store_true", help="code copies no queued cell uses")
    p.add_argument("--failed", action="store_true", help="folders of failed/killed cells")
    p.add_argument("--older-than", default=None, metavar="AGE",
                   help="only what last changed longer ago than AGE (7d, 12h, 30m)")
    p.add_argument("--dry-run", action="store_true", help="list, do not remove")
    p.set_defaults(func=commands["clean"])

    p = _sub(sub, "test", "contract checks of method plugins on tiny synthetic data (CPU)")
    p.add_argument("--method", action="append", help="method (repeatable; default: all)")
    p.add_argument("--keep", type=Path, default=None, help="keep the check runs in this folder")
    p.set_defaults(func=commands["test"])

    p = _sub(sub, "bench", "time one training step per method and data path (JSON)")
    p.add_argument("--method", action="append", help="method (repeatable; default simclr, conmix)")
    p.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"],
                   help="device to time on (auto: CUDA when present)")
    p.add_argument("--batch", type=_count(1), default=None, help="batch size (default: the paper's)")
    p.add_argument("--steps", type=_count(1), default=5, help="steps per timed window")
    p.add_argument("--windows", type=_count(1), default=5, help="timed windows (median reported)")
    p.add_argument("--warmup", type=_count(0), default=3, help="untimed warm-up steps")
    p.add_argument("--dataset", default="cifar10", help="shape and size of the data")
    p.add_argument("--ir", default=10, help="imbalance ratio of the data's size")
    p.add_argument("--size", choices=["paper", "tiny"], default=None,
                   help="network size (default: paper on CUDA, tiny on CPU)")
    p.add_argument("--paths", default="fast,reference", help="data paths to time")
    p.add_argument("--peak-tflops", type=_positive, default=400.0, help="for the FLOP floor")
    p.add_argument("--compile", action=argparse.BooleanOptionalAction, default=None,
                   help="torch.compile the networks and the augmentation (default: on CUDA only)")
    p.add_argument("--workers", type=_count(0), default=8, help="DataLoader workers of the reference path")
    p.add_argument("--eval", action="store_true",
                   help="time the evaluation's k-means against scikit-learn's instead (features "
                        "of the LT subset's size; --windows repeats, median reported)")
    p.add_argument("--threads", type=_count(1), default=None,
                   help="CPU threads for --eval (default: torch's current count), or per rank "
                        "on CPU for --world-size (default 1)")
    p.add_argument("--world-size", type=_count(1), default=None,
                   help="time data-parallel scaling instead: each method's step on 1 and N ranks "
                        "(N GPUs, or N gloo processes with --device cpu)")
    p.add_argument("--out", type=Path, required=True,
                   help="JSON output file, or a folder (the file is then named after the device)")
    p.set_defaults(func=commands["bench"])
    return parser
