"""Plugin loading: private namespace, no `datasets`/`methods` import names, broken plugins."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from harness import plugins
from harness.registry import list_datasets, list_methods, method_class

REPO = Path(__file__).resolve().parent.parent


def test_plugins_register_under_private_names_only() -> None:
    assert "simclr" in list_methods() and "digits" in list_datasets()
    assert method_class("simclr").__module__ == "harness._plugins.methods.simclr"
    assert "methods" not in sys.modules or not hasattr(sys.modules["methods"], "SimCLR")
    assert not (REPO / "methods" / "__init__.py").exists()
    assert not (REPO / "datasets" / "__init__.py").exists()


def test_fnmatch_listing() -> None:
    assert list_methods("sim*") == ["simclr"]
    assert list_methods("zzz*") == []


def test_import_datasets_keeps_meaning_the_pypi_package(tmp_path: Path) -> None:
    """With a regular `datasets` package installed, running from the repo root still imports it."""
    site = tmp_path / "site" / "datasets"
    site.mkdir(parents=True)
    (site / "__init__.py").write_text("PYPI_MARKER = True\n")
    code = ("import harness.registry as r; r.list_datasets(); import datasets; "
            "print(datasets.PYPI_MARKER, r.dataset_class('digits').__module__)")
    out = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True,
                         env={"PYTHONPATH": str(tmp_path / "site"), "PATH": "/usr/bin:/bin"})
    assert out.returncode == 0, out.stderr
    assert out.stdout.split() == ["True", "harness._plugins.datasets.digits"]


def test_broken_plugin_is_reported_not_fatal(tmp_path: Path) -> None:
    (tmp_path / "methods").mkdir()
    (tmp_path / "methods" / "broken.py").write_text("raise RuntimeError('boom')\n")
    (tmp_path / "methods" / "_template.py").write_text("raise RuntimeError('never loaded')\n")
    plugins.load_all(tmp_path)
    errors = [b for b in plugins.broken if b.path.parent == tmp_path / "methods"]
    assert len(errors) == 1 and "boom" in errors[0].error
    assert "simclr" in list_methods()
