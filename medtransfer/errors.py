"""Error types whose messages name the offending file and say how to fix it."""

from __future__ import annotations

from typing import TypeVar

E = TypeVar("E", bound=BaseException)


def find_in_chain(exc: BaseException | None, kind: type[E]) -> E | None:
    """The first exception of type `kind` in `exc`'s chain of causes and contexts, or None.

    Config expressions wrap what they raise in ``RuntimeError("Failed to evaluate ...")`` and torch wraps failed
    writes, so the error worth reporting is often a few links down.
    """
    seen: set[int] = set()
    while exc is not None and id(exc) not in seen:
        if isinstance(exc, kind):
            return exc
        seen.add(id(exc))
        exc = exc.__cause__ or exc.__context__
    return None


class MedTransferError(Exception):
    """Base class: every error medtransfer raises on bad input."""


class DatasetError(MedTransferError, ValueError):
    """A dataset on disk is missing, empty, unreadable or inconsistent (the message names the file)."""


class CheckpointError(MedTransferError, ValueError):
    """A checkpoint cannot be loaded into the model (missing file, wrong keys or shapes)."""


class RunDirectoryError(MedTransferError, FileExistsError):
    """A run directory already holds a previous run; nothing is overwritten silently."""


class BundleError(MedTransferError, ValueError):
    """A bundle or strategy name that does not exist, or a folder that is not a bundle."""


class StrategyError(MedTransferError, ValueError):
    """A fine-tuning strategy's settings do not fit the network (a group it does not have, a k beyond its depth)."""


class CheckpointWriteError(MedTransferError, OSError):
    """A checkpoint could not be written (full disk, read-only folder); the message says which earlier one is intact."""


class SettingsError(MedTransferError, ValueError):
    """A bundle setting is unknown, out of range, or changed against what the run recorded."""


class RunInterrupted(MedTransferError):
    """The user stopped a run (Ctrl-C); the message says what was kept and how to continue."""
