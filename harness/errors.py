"""Errors the CLI turns into one clear line and a non-zero exit."""

from __future__ import annotations

import difflib
from collections.abc import Iterable


class HarnessError(Exception):
    """A user-facing error: its message says what went wrong and what to do."""


class UnknownNameError(HarnessError):
    """An unknown method, dataset or grid name."""

    def __init__(self, kind: str, name: str, known: Iterable[str]) -> None:
        known = sorted(known)
        close = difflib.get_close_matches(name, known, n=3, cutoff=0.5)
        hint = f" Did you mean: {', '.join(close)}?" if close else ""
        super().__init__(
            f"unknown {kind} '{name}'.{hint} Known {kind}s: {', '.join(known) or '(none)'}"
            f" (see `harness list {kind}s`)."
        )


class DatasetFilesError(HarnessError):
    """Dataset files are missing or corrupt."""


class TrainingFailure(HarnessError):
    """A cell's training stopped: non-finite loss or out of memory."""

    def __init__(self, message: str, **details: object) -> None:
        super().__init__(message)
        self.details = details
