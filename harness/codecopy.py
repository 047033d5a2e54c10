"""Frozen code copies for SLURM submissions (harness_design.md D11).

Jobs wait in a queue for hours; if they imported the working tree, an edit made meanwhile would
change what they run. Each submission therefore copies the git-tracked files of the project into
`<runs>/_code/<sha12>/` (or `<sha12>-dirty-<diffhash12>/` for a dirty tree, which is refused unless
`--allow-dirty`) and the jobs run with `PYTHONPATH` and `HARNESS_PLUGIN_ROOT` pointing there.
A copy is made once per key and reused. `code_copy.json` in the copy records the SHA, the dirty
flag and the diff hash (`harness.provenance` reads it), `code_copy.diff` the diff itself.

Build choice: "dirty" means what `git status --porcelain` reports, untracked files included, since
an untracked plugin file would otherwise run or vanish silently; a dirty copy holds the working
tree's version of every tracked and untracked (not ignored) file.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path

from harness.errors import HarnessError
from harness.store import now

MANIFEST = "code_copy.json"
DIFF = "code_copy.diff"


@dataclass(frozen=True)
class CodeState:
    """What a submission would freeze: the commit, dirty changes and the copy's folder name."""

    source: Path
    git_sha: str
    changes: tuple[str, ...]  # `git status --porcelain` lines
    diff: bytes

    @property
    def dirty(self) -> bool:
        return bool(self.changes)

    @property
    def diff_sha256(self) -> str | None:
        return hashlib.sha256(self.diff).hexdigest() if self.dirty else None

    @property
    def key(self) -> str:
        """`<sha12>` or `<sha12>-dirty-<diffhash12>`."""
        short = self.git_sha[:12]
        return f"{short}-dirty-{self.diff_sha256[:12]}" if self.diff_sha256 else short


def _git(root: Path, *args: str) -> bytes:
    try:
        out = subprocess.run(["git", "-C", str(root), *args], capture_output=True, timeout=60)
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise HarnessError(f"cannot run git in {root} ({exc}); SLURM submission freezes a copy "
                           "of the git checkout, so git must be installed") from None
    if out.returncode not in (0, 1) or (out.returncode == 1 and args[0] != "diff"):
        raise HarnessError(f"{root} is not a usable git checkout (git {args[0]}: "
                           f"{out.stderr.decode(errors='replace').strip()}); SLURM submission "
                           "runs a frozen copy of the committed code")
    return out.stdout


def code_state(source: Path) -> CodeState:
    """Inspect the checkout at `source` without copying anything."""
    root = Path(_git(source, "rev-parse", "--show-toplevel").decode().strip())
    sha = _git(root, "rev-parse", "HEAD").decode().strip()
    changes = tuple(line for line in _git(root, "status", "--porcelain", "--untracked-files=all")
                    .decode(errors="replace").splitlines() if line.strip())
    diff = b""
    if changes:
        diff = _git(root, "diff", "--binary", "HEAD")
        for name in _untracked(root):
            # `git diff --no-index` exits 1 when files differ; that is the expected case here
            diff += _git(root, "diff", "--binary", "--no-index", "--", "/dev/null", name)
    return CodeState(root, sha, changes, diff)


def _untracked(root: Path) -> list[str]:
    out = _git(root, "ls-files", "-z", "--others", "--exclude-standard")
    return sorted(n for n in out.decode().split("\0") if n)


def _files(root: Path, dirty: bool) -> list[str]:
    """Files to copy: tracked ones (as in the working tree), plus untracked ones when dirty."""
    args = ["ls-files", "-z", "--cached"] + (["--others", "--exclude-standard"] if dirty else [])
    names = sorted({n for n in _git(root, *args).decode().split("\0") if n})
    return [n for n in names if (root / n).is_file()]  # skips files deleted but not committed


def check_clean(state: CodeState, allow_dirty: bool) -> None:
    """Refuse a dirty tree unless allowed, naming the changed files."""
    if state.dirty and not allow_dirty:
        shown = ", ".join(line.strip() for line in state.changes[:5])
        more = f" and {len(state.changes) - 5} more" if len(state.changes) > 5 else ""
        raise HarnessError(f"the working tree at {state.source} has uncommitted changes "
                           f"({shown}{more}); commit them so that the jobs run a known commit, "
                           "or pass --allow-dirty (the diff is stored with the code copy)")


def code_dir(runs_dir: Path, state: CodeState) -> Path:
    """Where the copy of `state` lives (made or not)."""
    return Path(runs_dir).resolve() / "_code" / state.key


def freeze(source: Path, runs_dir: Path, allow_dirty: bool = False) -> tuple[Path, CodeState]:
    """Copy the checkout at `source` to `<runs>/_code/<key>/` (once per key) and return it.

    Files are made read-only. The copy appears atomically (built under a temp name, renamed).
    """
    state = code_state(source)
    check_clean(state, allow_dirty)
    dest = code_dir(runs_dir, state)
    if (dest / MANIFEST).is_file():
        return dest, state
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = dest.parent / f".tmp-{state.key}-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    for name in _files(state.source, state.dirty):
        target = tmp / name
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(state.source / name, target)
        target.chmod(target.stat().st_mode & 0o555)
    if state.dirty:
        (tmp / DIFF).write_bytes(state.diff)
    (tmp / MANIFEST).write_text(json.dumps(
        {"git_sha": state.git_sha, "dirty": state.dirty, "diff_sha256": state.diff_sha256,
         "changes": list(state.changes), "source": str(state.source), "created": now()},
        indent=2) + "\n")
    try:
        tmp.rename(dest)
    except OSError:  # another submission made the same copy meanwhile
        shutil.rmtree(tmp, ignore_errors=True)
        if not (dest / MANIFEST).is_file():
            raise
    return dest, state


def setup_lines(copy: Path, cpus: int) -> list[str]:
    """Shell lines that make a job import `harness` and the plugins from `copy`.

    `cd` matters: `python -m` puts the working directory first on `sys.path`, so a job started
    from the checkout would import the live `harness` package instead of the copy.
    """
    import shlex

    q = shlex.quote(str(copy))
    return [f"export PYTHONPATH={q}${{PYTHONPATH:+:$PYTHONPATH}}",
            f"export HARNESS_PLUGIN_ROOT={q}",
            f"export OMP_NUM_THREADS={cpus} MKL_NUM_THREADS={cpus}",
            f"cd {q}"]
