"""The command line a new user meets: `--version`, help that says what every option does and
its default, `--executor auto` and the line that says what it chose, `plan --summary`."""

from __future__ import annotations

import argparse
import os
import stat
from pathlib import Path

import pytest

from harness import __version__
from harness.cli import build_parser, main
from harness.executors import choose_executor


def _subparsers() -> dict[str, argparse.ArgumentParser]:
    parser = build_parser()
    action = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    return dict(action.choices)


def test_version(capsys: pytest.CaptureFixture) -> None:
    with pytest.raises(SystemExit) as exit_info:
        main(["--version"])
    assert exit_info.value.code == 0 and capsys.readouterr().out.strip() == f"harness {__version__}"


def test_every_option_says_what_it_does_and_its_default() -> None:
    for name, parser in _subparsers().items():
        assert parser.description, name
        help_text = parser.format_help()
        for action in parser._actions:
            if isinstance(action, argparse._HelpAction):
                continue
            assert action.help, (name, action.dest)
            shown = action.default not in (None, False)
            if shown and action.option_strings:
                assert f"(default: {action.default})" in " ".join(help_text.split()), \
                    (name, action.dest)
    run = " ".join(_subparsers()["run"].format_help().split())
    assert "(default: cached)" in run and "(default: auto)" in run and "cells at once" in run


def _fake_slurm(folder: Path, sinfo_code: int) -> None:
    folder.mkdir()
    for tool, body in (("sbatch", "exit 0"), ("sinfo", f"echo 'debug*'; exit {sinfo_code}")):
        path = folder / tool
        path.write_text(f"#!/bin/sh\n{body}\n")
        path.chmod(path.stat().st_mode | stat.S_IEXEC)


def test_auto_executor_asks_whether_slurm_answers(tmp_path: Path,
                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PATH", str(tmp_path))  # no sbatch at all
    assert choose_executor() == ("local", "no sbatch on PATH, so no SLURM cluster")
    _fake_slurm(tmp_path / "up", 0)
    monkeypatch.setenv("PATH", str(tmp_path / "up"))
    name, why = choose_executor()
    assert name == "slurm" and "controller answers (partitions: debug)" in why
    _fake_slurm(tmp_path / "down", 1)
    monkeypatch.setenv("PATH", str(tmp_path / "down"))
    name, why = choose_executor()
    assert name == "local" and "does not answer" in why


def test_run_says_which_executor_it_chose_and_why(tmp_path: Path,
                                                  monkeypatch: pytest.MonkeyPatch,
                                                  capsys: pytest.CaptureFixture) -> None:
    monkeypatch.setenv("PATH", str(tmp_path) + os.pathsep + "/nonexistent")
    assert main(["run", "--grid", "smoke", "--runs-dir", str(tmp_path / "runs"),
                 "--dry-run"]) == 0
    first = capsys.readouterr().out.splitlines()[0]
    assert first == "executor: local (auto: no sbatch on PATH, so no SLURM cluster)"


def test_plan_summary_is_a_few_lines(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    assert main(["plan", "--grid", "paper_table2", "--summary", "--executor", "local",
                 "--runs-dir", str(tmp_path)]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert len(lines) <= 6 and lines[0] == "executor: local (--executor local)"
    assert "150 to submit" in lines[1] and "simclr 18" in lines[2] and "cifar10 50" in lines[3]
