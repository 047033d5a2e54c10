"""Progress a person can watch: per-epoch lines for logs, a bar on a terminal, and the local
executor's bars fed from each running cell's train_log.jsonl."""

from __future__ import annotations

import io
import json
from pathlib import Path

import pytest

from harness.config import CellConfig
from harness.executors.live import LiveBars
from harness.progress import BarProgress, LineProgress, epoch_progress


class _Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_lines_every_n_epochs_and_at_the_last(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HARNESS_PROGRESS_EVERY", "2")
    stream = io.StringIO()
    progress = epoch_progress("cell", total=5, done=0, stream=stream)
    assert isinstance(progress, LineProgress)
    for epoch in range(1, 6):
        progress.update(epoch, 1.0 / epoch, 1234.0)
    progress.close()
    lines = stream.getvalue().splitlines()
    assert [line.split()[2] for line in lines] == ["2/5", "4/5", "5/5"]
    assert lines[0].startswith("[cell] epoch 2/5  loss 0.5000  1,234 img/s") and "left" in lines[0]


def test_a_terminal_gets_a_bar_that_starts_at_the_resumed_epoch() -> None:
    stream = _Terminal()
    progress = epoch_progress("cell", total=10, done=4, stream=stream)
    assert isinstance(progress, BarProgress) and progress.bar.n == 4
    progress.update(5, 2.5, 100.0)
    assert progress.bar.n == 5 and "loss 2.5000" in progress.bar.postfix
    progress.close()


def test_live_bars_follow_the_epoch_end_rows_of_a_running_cell(tmp_path: Path) -> None:
    cfg = CellConfig(method="simclr", dataset="synthetic", ir=10, seed=0, params={"epochs": 8},
                     run_dir=str(tmp_path))
    log = tmp_path / "train_log.jsonl"
    bars = LiveBars(enabled=True)
    bars.start(0, cfg)
    bars.poll()  # no log yet
    assert bars.bars[0].bar.n == 0 and bars.bars[0].bar.total == 8
    row = {"epoch": 3, "step": 30, "loss": 4.0, "epoch_end": True, "images_per_s": 50.0}
    step = {"epoch": 4, "step": 35, "loss": 3.9}
    log.write_text(json.dumps(row) + "\n" + json.dumps(step) + "\n" + '{"epoch": 4, "st')
    bars.poll()
    assert bars.bars[0].bar.n == 3 and "loss 4.0000" in bars.bars[0].bar.postfix
    with open(log, "a") as fh:  # the half-written row completes
        fh.write('ep": 40, "loss": 3.5, "epoch_end": true}\n')
    bars.poll()
    assert bars.bars[0].bar.n == 4
    bars.finish(0)
    assert not bars.bars
    assert not LiveBars(enabled=False).bars
