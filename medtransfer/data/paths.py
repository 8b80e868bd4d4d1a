"""Where the real data lives: one env var, then the sibling ``../shared/data`` used in development and CI."""

from __future__ import annotations

import os
from pathlib import Path

from medtransfer.errors import DatasetError

DATA_ENV = "MEDTRANSFER_DATA"

CACHE_ENV = "MEDTRANSFER_CACHE"


def data_root() -> Path:
    """Return the data folder: ``$MEDTRANSFER_DATA``, else ``../shared/data`` relative to the working directory.

    The default suits a checkout run from its own root (development and CI); installed users set the variable.
    A missing folder is returned unchecked, so callers decide whether it is an error or a skip.
    """
    env = os.environ.get(DATA_ENV)
    if env:
        return Path(env).expanduser()
    candidate = Path.cwd() / ".." / "shared" / "data"
    return candidate.resolve() if candidate.is_dir() else candidate


def cache_root() -> Path:
    """The user cache for generated files (demo sets): ``$MEDTRANSFER_CACHE``, else ``$XDG_CACHE_HOME/medtransfer``."""
    env = os.environ.get(CACHE_ENV)
    if env:
        return Path(env).expanduser()
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "medtransfer"


def _installed(path: Path) -> bool:
    return any(part in ("site-packages", "dist-packages") for part in path.parts)


def demo_data_dir(bundle_root: str | os.PathLike) -> str:
    """Where a bundle writes its synthetic demo set: ``<bundle_root>/.demo_data`` for a checkout or a copied bundle,
    the user cache (``cache_root()/demo_data``) for the installed package, whose folder is not the user's to write."""
    root = Path(bundle_root).expanduser().resolve()
    if _installed(root) or not os.access(root, os.W_OK):
        return str(cache_root() / "demo_data")
    return str(root / ".demo_data")


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
