"""In-process, sequential executor (for debugging and tests)."""

from __future__ import annotations

import time
from collections.abc import Sequence

from harness.config import CellConfig
from harness.executors.progress import finished_line
from harness.worker import RunCell


class DebugExecutor:
    """Runs each cell in this process, one after the other; a failing cell does not stop the rest."""

    def __init__(self, quiet: bool = False, **_: object) -> None:
        self.quiet = quiet

    def submit(self, cfgs: Sequence[CellConfig]) -> None:
        for i, cfg in enumerate(cfgs, 1):
            t0 = time.time()
            RunCell(cfg.to_dict())()
            if not self.quiet:
                print(finished_line(i, len(cfgs), cfg, time.time() - t0), flush=True)
