"""Load the plugin folders `methods/` and `datasets/` by file path.

The folders are not packages: each file is executed under the private module name
`harness._plugins.<kind>.<stem>`, so no top-level `methods` or `datasets` import name exists and
`import datasets` keeps meaning the PyPI package.
"""

from __future__ import annotations

import importlib.util
import os
import sys
import traceback
from dataclasses import dataclass
from pathlib import Path

KINDS = ("methods", "datasets")
PRIVATE_PREFIX = "harness._plugins"


@dataclass(frozen=True)
class BrokenPlugin:
    """A plugin file that failed to import."""

    path: Path
    error: str


_loaded_roots: set[Path] = set()
broken: list[BrokenPlugin] = []


def default_plugin_root() -> Path:
    """`HARNESS_PLUGIN_ROOT`, else the project root (the folder above the `harness` package)."""
    env = os.environ.get("HARNESS_PLUGIN_ROOT")
    return Path(env).resolve() if env else Path(__file__).resolve().parent.parent


def plugin_files(root: Path, kind: str) -> list[Path]:
    """Plugin files of one kind, skipping names that start with `_` (templates)."""
    folder = root / kind
    return sorted(p for p in folder.glob("[!_]*.py")) if folder.is_dir() else []


def load_file(path: Path, kind: str) -> None:
    """Execute one plugin file under its private module name."""
    module_name = f"{PRIVATE_PREFIX}.{kind}.{path.stem}"
    if module_name in sys.modules:
        return
    spec = importlib.util.spec_from_file_location(module_name, path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[module_name] = module
    try:
        spec.loader.exec_module(module)
    except Exception as exc:  # a broken plugin must not abort discovery
        del sys.modules[module_name]
        tail = traceback.format_exception_only(type(exc), exc)[-1].strip()
        broken.append(BrokenPlugin(path, tail))


def load_named(kind: str, stem: str) -> None:
    """Load `<root>/<kind>/<stem>.py` of every loaded root now, so that a plugin can resolve
    another by name while discovery is still running (discovery order does not matter)."""
    for root in sorted(_loaded_roots):
        path = root / kind / f"{stem}.py"
        # a name registered by a file of another stem (byol in propos.py): load the rest
        for candidate in [path] if path.is_file() else plugin_files(root, kind):
            load_file(candidate, kind)


def load_all(root: Path | None = None) -> None:
    """Load every plugin file under `root` (default: `default_plugin_root()`) once."""
    root = (root or default_plugin_root()).resolve()
    if root in _loaded_roots:
        return
    _loaded_roots.add(root)
    for kind in KINDS:
        for path in plugin_files(root, kind):
            load_file(path, kind)
