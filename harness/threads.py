"""The CPU thread count a cell runs with, fixed by the harness rather than by the machine.

CPU results depend on it: float reductions split over another number of threads round
differently, and a short training run can end far apart (a digits demo cell: ARI 42.6 with one
thread, 54.4 with two). Each cell therefore runs with its `cpu_threads` setting (grid key
`cpu_threads`, default `harness.config.DEFAULT_CPU_THREADS`), whatever the executor, the
machine's cores or `OMP_NUM_THREADS`; `env.json` and `metrics.json` record it.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

from threadpoolctl import threadpool_limits


@contextlib.contextmanager
def cpu_threads(n: int) -> Iterator[None]:
    """Run the block with `n` threads for torch and the BLAS/OpenMP pools NumPy and SciPy use;
    the previous settings come back afterwards."""
    import torch

    previous = torch.get_num_threads()
    with threadpool_limits(limits=n):
        torch.set_num_threads(n)
        try:
            yield
        finally:
            torch.set_num_threads(previous)
