"""Where the real data lives: one env var, then the sibling ``../shared/data`` used in development and CI."""

from __future__ import annotations

import os
from pathlib import Path

from medtransfer.errors import DatasetError

DATA_ENV = "MEDTRANSFER_DATA"

# medtransfer/data/paths.py -> parents[2] is the repository (or site-packages) root.
_REPO_ROOT = Path(__file__).resolve().parents[2]


def data_root() -> Path:
    """Return the data folder: ``$MEDTRANSFER_DATA``, else the first existing ``../shared/data``.

    The cwd-relative candidate comes first so a checkout run from its own root finds its sibling data;
    the file-relative one covers running from elsewhere. When neither exists the cwd-relative default
    is returned unchecked, so callers decide whether a missing folder is an error or a skip.
    """
    env = os.environ.get(DATA_ENV)
    if env:
        return Path(env).expanduser()
    candidates = [Path.cwd() / ".." / "shared" / "data", _REPO_ROOT / ".." / "shared" / "data"]
    for candidate in candidates:
        if candidate.is_dir():
            return candidate.resolve()
    return candidates[0]


def require_data(relative: str) -> Path:
    """Return ``data_root()/relative``, raising a DatasetError that says how to point at the data if missing."""
    root = data_root()
    path = root / relative
    if not path.exists():
        where = f"${DATA_ENV}={os.environ[DATA_ENV]}" if os.environ.get(DATA_ENV) else f"default {root}"
        raise DatasetError(
            f"{path} not found ({where}); set {DATA_ENV} to the folder that holds `busi/`, `medmnist/`, ... "
            "(see SOURCES.md in that folder for what goes where)"
        )
    return path
