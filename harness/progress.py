"""Progress inside a training cell, per epoch: loss, images/s and the time left.

A person at a terminal gets a tqdm bar (on stderr); a log (SLURM output, a local worker's
`worker.out`) gets one line on stdout every N epochs (`HARNESS_PROGRESS_EVERY`, default 10) and
at the last epoch. `epoch_progress` picks one by whether stderr is a terminal.
"""

from __future__ import annotations

import os
import sys
import time
from typing import IO, Protocol

from harness.estimate import format_duration

DEFAULT_EVERY = 10


class EpochProgress(Protocol):
    """What the training loop reports to after each epoch."""

    def update(self, epoch: int, loss: float, images_per_s: float) -> None:
        """Epoch `epoch` ended with mean loss `loss` at `images_per_s`."""

    def close(self) -> None:
        """Training stopped (finished, failed or interrupted)."""


class LineProgress:
    """One line every `every` epochs and at the last one: epoch, loss, images/s, time left."""

    def __init__(self, label: str, total: int, done: int, stream: IO[str], every: int) -> None:
        self.label, self.total, self.done, self.stream = label, total, done, stream
        self.every, self.t0 = max(1, every), time.monotonic()

    def update(self, epoch: int, loss: float, images_per_s: float) -> None:
        if epoch % self.every and epoch != self.total:
            return
        pace = (time.monotonic() - self.t0) / max(epoch - self.done, 1)
        left = format_duration(pace * (self.total - epoch))
        print(f"[{self.label}] epoch {epoch}/{self.total}  loss {loss:.4f}  "
              f"{images_per_s:,.0f} img/s  {left} left", file=self.stream, flush=True)

    def close(self) -> None:
        """Nothing to release: every line is already written."""


class BarProgress:
    """A tqdm bar over the epochs, with the last loss and images/s beside it."""

    def __init__(self, label: str, total: int, done: int, stream: IO[str]) -> None:
        from tqdm import tqdm

        self.bar = tqdm(total=total, initial=done, desc=label, unit="epoch", file=stream,
                        leave=False, dynamic_ncols=True)

    def update(self, epoch: int, loss: float, images_per_s: float) -> None:
        self.bar.set_postfix_str(f"loss {loss:.4f}, {images_per_s:,.0f} img/s", refresh=False)
        self.bar.update(epoch - self.bar.n)

    def close(self) -> None:
        self.bar.close()


def progress_every() -> int:
    """Epochs between progress lines in logs (`HARNESS_PROGRESS_EVERY`, default 10)."""
    try:
        return max(1, int(os.environ.get("HARNESS_PROGRESS_EVERY", DEFAULT_EVERY)))
    except ValueError:
        return DEFAULT_EVERY


def epoch_progress(label: str, total: int, done: int,
                   stream: IO[str] | None = None) -> EpochProgress:
    """A bar when `stream` (default: stderr) is a terminal, else lines every `progress_every()`
    epochs (default stream: stdout, where logs collect); `done` epochs (from a checkpoint)
    count as finished already."""
    if (stream or sys.stderr).isatty():
        return BarProgress(label, total, done, stream or sys.stderr)
    return LineProgress(label, total, done, stream or sys.stdout, progress_every())
