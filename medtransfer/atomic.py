"""Atomic file writes: a reader, or a crash mid-write, sees the old file or the complete new one, never half a file."""

from __future__ import annotations

import contextlib
import csv
import io
import os
import tempfile
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path

from medtransfer.errors import CheckpointWriteError, find_in_chain


def current_umask() -> int:
    """The process umask, read without changing it where the OS allows (``os.umask`` can only set and return)."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("Umask:"):
                return int(line.split()[1], 8)
    except (OSError, ValueError):
        pass
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


@contextlib.contextmanager
def atomic_path(path: Path | str) -> Iterator[Path]:
    """Yield a temporary path in the destination folder to write to; on success it is renamed to `path` (a
    same-filesystem rename), on failure it is deleted. For writers that need a file name (images, videos, torch)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    tmp = Path(tmp_name)
    try:
        yield tmp
        # mkstemp creates 0600 files; a result file gets the permissions any new file would (colleagues sharing a
        # run folder can read it under the usual umask 022)
        os.chmod(tmp, 0o666 & ~current_umask())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def write_text_atomic(path: Path | str, text: str) -> Path:
    """Write `text` to a temporary file in the destination folder and move it into place (flushed to disk first)."""
    with atomic_path(path) as tmp, open(tmp, "w", encoding="utf-8") as f:
        f.write(text)
        f.flush()
        os.fsync(f.fileno())
    return Path(path)


def write_csv_atomic(
    path: Path | str, header: Sequence, rows: Iterable[Sequence], lineterminator: str = "\r\n"
) -> Path:
    """Write a CSV (header row, then `rows`) atomically; the one CSV writer of every report, history and table."""
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator=lineterminator)
    writer.writerow(header)
    writer.writerows(rows)
    return write_text_atomic(path, buf.getvalue())


def fsync_directory(folder: Path | str) -> None:
    """Flush a folder's entries to disk, so a rename into it survives a power cut (a no-op where unsupported)."""
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def save_torch_atomic(obj: object, path: Path | str, previous: Path | str | None = None) -> Path:
    """``torch.save`` into a temporary file beside `path`, flushed to disk, then renamed over `path`.

    At every instant `path` is either the complete old file or the complete new one, so a kill or a full disk never
    leaves a torn checkpoint. A failed write (full disk, read-only folder) raises :class:`CheckpointWriteError`
    naming the file, the cause in words and `previous`, the complete checkpoint that is still there.
    """
    import torch

    path = Path(path)
    try:
        with atomic_path(path) as tmp:
            with open(tmp, "wb") as f:
                torch.save(obj, f)
                f.flush()
                os.fsync(f.fileno())
        fsync_directory(path.parent)
    except (OSError, RuntimeError) as exc:
        cause = find_in_chain(exc, OSError)
        if cause is None:
            raise
        raise CheckpointWriteError(_write_failure(path, cause, previous)) from exc
    return path


def _write_failure(path: Path, cause: OSError, previous: Path | str | None) -> str:
    import errno
    import shutil

    if cause.errno in (errno.ENOSPC, errno.EDQUOT):
        try:
            free = f" ({shutil.disk_usage(path.parent).free / 2**20:.1f} MiB free there)"
        except OSError:
            free = ""
        what = f"no space left on device{free}"
        fix = "free some space (or point --runs_dir at a larger disk)"
    elif cause.errno in (errno.EACCES, errno.EPERM, errno.EROFS):
        what = "the folder is not writable"
        fix = "make the folder writable (or point --runs_dir elsewhere)"
    else:
        what = cause.strerror or str(cause)
        fix = "fix the cause"
    kept = (
        f"the previous checkpoint {previous} is intact"
        if previous is not None and Path(previous).is_file()
        else "no earlier checkpoint was replaced"
    )
    return f"{what} while writing {path}; {kept}. {fix.capitalize()}, then continue the run with --resume true"
