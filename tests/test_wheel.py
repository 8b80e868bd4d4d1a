"""The wheel a `pip install medtransfer` user gets: every bundle inside, runnable with no checkout anywhere in sight."""

from __future__ import annotations

import os
import subprocess
import sys
import sysconfig
import zipfile
from pathlib import Path

import pytest

from medtransfer.bundling import bundle_names, strategy_names

REPO = Path(__file__).resolve().parents[1]
FAST = ["--epochs", "1", "--image_size", "32", "--batch_size", "8"]


@pytest.fixture(scope="module")
def installed(tmp_path_factory) -> Path:
    """The project built as a wheel and installed with --target into a folder named like site-packages."""
    work = tmp_path_factory.mktemp("wheel")
    build = [sys.executable, "-m", "pip", "wheel", str(REPO), "--no-deps", "--no-build-isolation", "-q", "-w", work]
    subprocess.run(build, check=True, capture_output=True, timeout=600, cwd=work)
    (wheel,) = work.glob("medtransfer-*.whl")
    names = set(zipfile.ZipFile(wheel).namelist())
    for bundle in bundle_names():
        for config in ("train.json", "evaluate.json", "inference.json", "metadata.json", "logging.conf"):
            assert f"medtransfer/bundles/{bundle}/configs/{config}" in names
        assert f"medtransfer/bundles/{bundle}/docs/README.md" in names
    assert {f"medtransfer/configs/strategies/{s}.json" for s in strategy_names()} <= names
    assert not any(".demo_data" in n or "/runs/" in n for n in names), "generated files leaked into the wheel"
    target = work / "lib" / "site-packages"
    install = [sys.executable, "-m", "pip", "install", "--no-deps", "-q", "--target", str(target), str(wheel)]
    subprocess.run(install, check=True, capture_output=True, timeout=600)
    return target


def _run_installed(target: Path, args: list[str], cwd: Path, tmp: Path) -> subprocess.CompletedProcess:
    """Python without site processing (so the checkout's editable install is not seen), the wheel first on the path."""
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join([str(target), sysconfig.get_paths()["purelib"]]),
        "MEDTRANSFER_CACHE": str(tmp / "cache"),
    }
    return subprocess.run([sys.executable, "-S", *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=900)


@pytest.mark.slow
def test_installed_wheel_runs_a_bundle_and_a_copy_from_an_empty_folder(installed, tmp_path):
    empty = tmp_path / "empty"
    empty.mkdir()
    script = str(installed / "bin" / "medtransfer")
    where = _run_installed(installed, [script, "bundle", "path", "busi_classification"], empty, tmp_path)
    assert where.returncode == 0, where.stderr
    assert Path(where.stdout.strip()).is_relative_to(installed), "not the installed copy"

    proc = _run_installed(installed, [script, "run", "busi_classification", "--epochs", "1"], empty, tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert len(list((empty / "runs" / "busi_classification").glob("*/model.pt"))) == 1
    assert any((tmp_path / "cache" / "demo_data").rglob("*.png")), "demo data belongs in the user cache"
    assert not list(installed.rglob(".demo_data")), "nothing is written into site-packages"

    init = _run_installed(installed, [script, "bundle", "init", "busi_classification", "my_bundle"], empty, tmp_path)
    assert init.returncode == 0, init.stderr
    config = str(empty / "my_bundle" / "configs" / "train.json")
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    copy = _run_installed(installed, ["-m", "monai.bundle", "run", "--config_file", config, *FAST], elsewhere, tmp_path)
    assert copy.returncode == 0, copy.stderr[-3000:]
    assert len(list((elsewhere / "runs" / "my_bundle").glob("*/model.pt"))) == 1
    assert any((empty / "my_bundle" / ".demo_data").rglob("*.png"))
