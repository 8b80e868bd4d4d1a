"""Atomic file writes: a reader, or a crash mid-write, sees the old file or the complete new one, never half a file."""

from __future__ import annotations

import csv
import io
import os
import tempfile
from collections.abc import Iterable, Sequence
from pathlib import Path


def write_text_atomic(path: Path | str, text: str) -> Path:
    """Write `text` to a temporary file in the destination folder (a same-filesystem rename) and move it into place."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp_name, path)
    except BaseException:
        try:
            os.unlink(tmp_name)
        except FileNotFoundError:
            pass
        raise
    return path


def write_csv_atomic(
    path: Path | str, header: Sequence, rows: Iterable[Sequence], lineterminator: str = "\r\n"
) -> Path:
    """Write a CSV (header row, then `rows`) atomically; the one CSV writer of every report, history and table."""
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator=lineterminator)
    writer.writerow(header)
    writer.writerows(rows)
    return write_text_atomic(path, buf.getvalue())
