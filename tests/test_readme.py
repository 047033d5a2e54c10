"""Every `harness` command in the README's code blocks is one the CLI accepts (docs do not drift)."""

from __future__ import annotations

import re
import shlex

import pytest

from harness.cli import build_parser
from harness.grids import load_grid

from conftest import REPO


def readme_commands() -> list[str]:
    """`harness ...` invocations in fenced shell code blocks, one per `&&`-separated command."""
    fenced = re.findall(r"```([a-z]*)\n(.*?)```", (REPO / "README.md").read_text(), flags=re.S)
    blocks = [text for lang, text in fenced if lang != "python"]
    commands = []
    for line in "\n".join(blocks).splitlines():
        for part in line.split("#")[0].split("&&"):
            words = shlex.split(part)
            for i, word in enumerate(words):
                if word.endswith("harness") or word == "harness.cli":
                    commands.append(shlex.join(words[i + 1:]))
                    break
    return commands


def test_the_readme_shows_the_main_commands() -> None:
    verbs = {command.split()[0] for command in readme_commands()}
    assert {"run", "report", "plan", "status", "prepare", "bench"} <= verbs


@pytest.mark.parametrize("command", readme_commands())
def test_readme_command_parses(command: str) -> None:
    args = build_parser().parse_args(shlex.split(command))  # argparse exits on a bad command
    if getattr(args, "grid", None):
        load_grid(args.grid)  # the grids the README names exist
