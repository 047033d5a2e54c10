"""In-process, sequential executor (for debugging and tests)."""

from __future__ import annotations

import time
from collections.abc import Sequence

from harness.executors.progress import finished_line
from harness.runner import ClaimedCell
from harness.worker import RunCell


class DebugExecutor:
    """Runs each cell in this process, one after the other; a failing cell does not stop the rest."""

    def __init__(self, quiet: bool = False, **_: object) -> None:
        self.quiet = quiet

    def submit(self, cells: Sequence[ClaimedCell]) -> None:
        for i, cell in enumerate(cells, 1):
            t0 = time.time()
            state = RunCell(cell.cfg.to_dict(), cell.fresh, cell.lock.token)()
            cell.lock.release()
            if not self.quiet:
                print(finished_line(i, len(cells), cell.cfg, time.time() - t0,
                                    busy=state == "busy"), flush=True)
