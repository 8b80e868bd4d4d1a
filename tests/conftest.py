"""Shared fixtures: locate the real data, skipping locally but failing under CI=true when it is missing."""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path

import pytest

from medtransfer.data import DATA_ENV, data_root


def _need(relative: str = "") -> Path:
    """Return data_root()/relative, or skip (fail under CI=true) when it is missing."""
    root = data_root()
    path = root / relative if relative else root
    if not path.exists():
        message = f"real data {path} not found; set {DATA_ENV} to the folder holding busi/ and medmnist/"
        if os.environ.get("CI") == "true":
            pytest.fail(message)
        pytest.skip(message)
    return path


@pytest.fixture(scope="session")
def real_data() -> Path:
    """The real-data root (``medtransfer.data.data_root()``)."""
    return _need()


@pytest.fixture(scope="session")
def need() -> Callable[[str], Path]:
    """``need("busi")`` -> the subpath of the real data, skipped/failed like ``real_data`` when missing."""
    return _need
