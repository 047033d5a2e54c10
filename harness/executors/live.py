"""Live per-cell progress bars for the local executor, whose cells run in worker processes.

The parent reads each running cell's `train_log.jsonl` as it grows (its epoch-end rows carry the
epoch's mean loss and images/s) and draws one tqdm bar per slot. Bars appear only when stderr
is a terminal; otherwise lines go out as plain prints (the workers' own progress lines are in
their `worker.out`).
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

from harness.config import CellConfig
from harness.executors.progress import cell_label


class _Bar:
    """One running cell's bar and how far its log has been read."""

    def __init__(self, cfg: CellConfig, position: int) -> None:
        from tqdm import tqdm

        self.log = Path(cfg.run_dir) / "train_log.jsonl"
        self.offset = 0
        total = int(cfg.params.get("epochs", 0)) or None
        self.bar = tqdm(total=total, desc=cell_label(cfg), unit="epoch", position=position,
                        leave=False, dynamic_ncols=True, file=sys.stderr)

    def poll(self) -> None:
        """Advance to the newest epoch-end row appended since the last poll."""
        try:
            with open(self.log, "rb") as fh:
                fh.seek(self.offset)
                chunk = fh.read()
        except OSError:
            return
        complete = chunk[:chunk.rfind(b"\n") + 1]  # a row being written waits for the next poll
        self.offset += len(complete)
        last: dict[str, Any] | None = None
        for line in complete.decode(errors="replace").splitlines():
            try:
                row = json.loads(line)
            except json.JSONDecodeError:
                continue
            if row.get("epoch_end"):
                last = row
        if last is not None:
            self.bar.set_postfix_str(f"loss {last['loss']:.4f}, "
                                     f"{last.get('images_per_s', 0):,.0f} img/s", refresh=False)
            self.bar.update(int(last["epoch"]) - self.bar.n)

    def close(self) -> None:
        self.bar.close()


class LiveBars:
    """Per-slot bars for running cells (enabled on a terminal); `write` prints above them."""

    def __init__(self, enabled: bool | None = None) -> None:
        self.enabled = sys.stderr.isatty() if enabled is None else enabled
        self.bars: dict[int, _Bar] = {}

    def start(self, slot: int, cfg: CellConfig) -> None:
        """Show a bar for the cell that just started in `slot`."""
        if self.enabled:
            self.bars[slot] = _Bar(cfg, slot)

    def poll(self) -> None:
        """Bring every bar up to its cell's log."""
        for bar in self.bars.values():
            bar.poll()

    def finish(self, slot: int) -> None:
        """Remove the bar of the cell that ended in `slot`."""
        bar = self.bars.pop(slot, None)
        if bar is not None:
            bar.poll()
            bar.close()

    def close(self) -> None:
        """Remove every bar (the run ends or is interrupted)."""
        for slot in list(self.bars):
            self.finish(slot)

    def write(self, line: str) -> None:
        """Print a line without breaking the bars."""
        if self.bars:
            from tqdm import tqdm

            tqdm.write(line, file=sys.stdout)
        else:
            print(line, flush=True)
