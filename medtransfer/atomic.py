"""Atomic file writes: a reader, or a crash mid-write, sees the old file or the complete new one, never half a file."""

from __future__ import annotations

import contextlib
import csv
import io
import os
import tempfile
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path


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
