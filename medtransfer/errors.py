"""Error types whose messages name the offending file and say how to fix it."""

from __future__ import annotations

from typing import TypeVar

E = TypeVar("E", bound=BaseException)


def exception_chain(exc: BaseException | None) -> list[BaseException]:
    """`exc` and its causes and contexts, outermost first (each once, however the chain loops)."""
    found: list[BaseException] = []
    seen: set[int] = set()
    while exc is not None and id(exc) not in seen:
        found.append(exc)
        seen.add(id(exc))
        exc = exc.__cause__ or exc.__context__
    return found


def find_in_chain(exc: BaseException | None, kind: type[E]) -> E | None:
    """The first exception of type `kind` in `exc`'s chain of causes and contexts, or None.

    Config expressions wrap what they raise in ``RuntimeError("Failed to evaluate ...")`` and torch wraps failed
    writes, so the error worth reporting is often a few links down.
    """
    return next((e for e in exception_chain(exc) if isinstance(e, kind)), None)


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


_FILESYSTEM_FIXES = {
    "ENOENT": "it does not exist (moved or deleted, perhaps while the run was going): check the path or restore it; a "
    "run continues from its last complete checkpoint with --resume true",
    "EACCES": "permission denied: make it readable (and its folder writable) for you, or choose another folder "
    "(--runs_dir for run folders)",
    "EPERM": "the operation is not permitted: check its owner and permissions, or choose another folder",
    "EROFS": "it is on a read-only file system: choose a writable folder (--runs_dir for run folders)",
    "ENOSPC": "no space is left on its device: free some (fewer epoch checkpoints: --keep_checkpoints 1) or choose a "
    "folder on another disk (--runs_dir)",
    "EDQUOT": "the disk quota is exceeded: free some space or choose a folder on another disk (--runs_dir)",
    "ELOOP": "too many symbolic links resolving it (a link that points to itself?): fix or remove the link",
    "ENOTDIR": "a part of the path is a file, not a folder: check the path",
    "EISDIR": "it is a folder where a file was expected: check the path",
    "ENAMETOOLONG": "the path is too long: use a shorter folder or run name",
    "EMFILE": "too many files are open: lower --num_workers, or raise the limit (ulimit -n)",
}


def filesystem_message(exc: BaseException) -> str | None:
    """One line for a file system error (missing, permission denied, read-only, disk full, link loop, ...): the file,
    what is wrong and the fix; None for any other exception."""
    import errno

    if not isinstance(exc, OSError) or exc.errno is None:
        return None
    code = errno.errorcode.get(exc.errno, "")
    fix = _FILESYSTEM_FIXES.get(code)
    if fix is None:
        return None
    import os

    names = [os.fsdecode(n) if isinstance(n, bytes) else str(n) for n in (exc.filename, exc.filename2) if n]
    where = " -> ".join(names) if names else "a file"
    return f"{where}: {fix} ({exc.strerror or code})"
