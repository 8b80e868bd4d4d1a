"""Shared fixtures: locate the real data, skipping locally but failing under CI=true when it is missing."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest

from medtransfer.data import DATA_ENV, data_root, make_synthetic_busi

REPO = Path(__file__).resolve().parents[1]
BUSI_CONFIGS = REPO / "bundles" / "busi_classification" / "configs"
STRATEGIES = REPO / "configs" / "strategies"
FAST = ["--epochs", "1", "--image_size", "32", "--batch_size", "8"]


def pydicom_sample(name: str) -> Path:
    """A real DICOM file shipped inside pydicom (all of these are uncompressed: no extra decoder needed)."""
    from pydicom.data import get_testdata_file

    path = get_testdata_file(name)
    if path is None:
        pytest.skip(f"pydicom does not ship {name}")
    return Path(path)


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


def run_bundle(
    configs: list, *overrides: str, check: bool = True, env: dict | None = None
) -> subprocess.CompletedProcess:
    """``python -m monai.bundle run`` in a subprocess from the repository root, as a user runs it (`env` is added to
    the environment)."""
    configs = [str(c) for c in configs]
    config = configs[0] if len(configs) == 1 else "[" + ",".join(f"'{c}'" for c in configs) + "]"
    cmd = [sys.executable, "-m", "monai.bundle", "run", "--config_file", config, *overrides]
    environment = {**os.environ, **env} if env else None
    proc = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=900, env=environment)
    if check and proc.returncode != 0:
        raise AssertionError(f"{' '.join(cmd)} failed:\n{proc.stdout[-3000:]}\n{proc.stderr[-5000:]}")
    return proc


@pytest.fixture(scope="session")
def demo_dir(tmp_path_factory) -> Path:
    """A small synthetic BUSI-layout set (10 images per class) for fast bundle runs."""
    return make_synthetic_busi(tmp_path_factory.mktemp("data") / "synthetic_busi_demo", n_per_class=10, image_size=64)


def train_then_evaluate(configs_dir: Path, runs_dir: Path, run_name: str, *overrides: str) -> dict:
    """Train a bundle (FAST settings unless overridden), evaluate the run, return its test_metrics.json."""
    import json

    common = ["--runs_dir", str(runs_dir), "--run_name", run_name, *FAST, *overrides]
    run_bundle([configs_dir / "train.json"], *common)
    run_bundle([configs_dir / "train.json", configs_dir / "evaluate.json"], *common)
    return json.loads((runs_dir / run_name / "test_metrics.json").read_text())
