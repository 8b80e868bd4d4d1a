"""Nothing lost: a kill at the worst instant, a full disk, Ctrl-C, a second process, a failed run, a bad setting.

The faults are injected from outside the project (``tests/faults/sitecustomize.py`` patches ``os.replace``,
``os.unlink`` and ``open`` in the bundle's subprocess), so the code under test is exactly what users run.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from tests.conftest import BUSI_CONFIGS, FAST, REPO, run_bundle

TRAIN = BUSI_CONFIGS / "train.json"
FAULTS = str(Path(__file__).parent / "faults")

pytestmark = pytest.mark.slow


def _settings(demo_dir: Path, runs: Path, name: str, epochs: int = 3) -> list[str]:
    return ["--runs_dir", str(runs), "--run_name", name, "--dataset_dir", str(demo_dir), *FAST, "--epochs", str(epochs)]


def _with_fault(spec: str) -> dict:
    return {"MEDTRANSFER_TEST_FAULT": spec, "PYTHONPATH": os.pathsep.join([FAULTS, os.environ.get("PYTHONPATH", "")])}


def _load(path: Path) -> dict:
    return torch.load(path, weights_only=True, map_location="cpu")


def _assert_same_tensors(a, b, where: str = "") -> None:
    if isinstance(a, dict):
        assert set(a) == set(b), where
        for key in a:
            _assert_same_tensors(a[key], b[key], f"{where}/{key}")
    elif isinstance(a, torch.Tensor):
        assert torch.equal(a, b), where
    else:
        assert a == b, where


@pytest.fixture(scope="module")
def uninterrupted(demo_dir, tmp_path_factory) -> Path:
    """The reference: three epochs without a fault."""
    runs = tmp_path_factory.mktemp("reference")
    run_bundle([TRAIN], *_settings(demo_dir, runs, "ref"))
    return runs / "ref"


def _best_model_saves(run: Path) -> list[int]:
    """The epochs at which the run wrote model.pt: each validation at least as good as the best so far."""
    rows = json.loads((run / "history.json").read_text())["epochs"]
    best, saves = None, []
    for row in rows:
        if best is None or row["val_auc"] >= best:
            best = row["val_auc"]
            saves.append(row["epoch"])
    return saves


def _kill_then_resume(demo_dir: Path, runs: Path, fault: str) -> Path:
    killed = run_bundle([TRAIN], *_settings(demo_dir, runs, "cut"), check=False, env=_with_fault(fault))
    assert killed.returncode == -signal.SIGKILL, killed.stderr[-2000:]
    run_bundle([TRAIN], *_settings(demo_dir, runs, "cut"), "--resume", "true")
    return runs / "cut"


def _assert_identical_runs(reference: Path, resumed: Path) -> None:
    _assert_same_tensors(_load(reference / "checkpoint_epoch=3.pt"), _load(resumed / "checkpoint_epoch=3.pt"))
    _assert_same_tensors(_load(reference / "model.pt"), _load(resumed / "model.pt"))
    assert (
        json.loads((resumed / "history.json").read_text())["epochs"]
        == json.loads((reference / "history.json").read_text())["epochs"]
    )
    # keep_checkpoints 1 holds after the resume, and no temporary file is left behind
    assert sorted(p.name for p in resumed.glob("*.pt")) == ["checkpoint_epoch=3.pt", "init.pt", "model.pt"] or sorted(
        p.name for p in resumed.glob("*.pt")
    ) == ["checkpoint_epoch=3.pt", "model.pt"]
    assert not list(resumed.glob(".*.tmp"))


def test_sigkill_when_the_old_epoch_checkpoint_is_deleted_resumes_bit_identically(uninterrupted, demo_dir, tmp_path):
    # the instant after checkpoint_epoch=2.pt is in place and checkpoint_epoch=1.pt is about to go
    resumed = _kill_then_resume(demo_dir, tmp_path, "kill:unlink:checkpoint_epoch=1.pt:1")
    _assert_identical_runs(uninterrupted, resumed)


def test_sigkill_while_model_pt_is_replaced_resumes_bit_identically(uninterrupted, demo_dir, tmp_path):
    saves = _best_model_saves(uninterrupted)
    assert len(saves) >= 2, "the reference run must replace model.pt at least once for this test to bite"
    # the instant the complete new model.pt would be renamed over the old one (its last replacement)
    resumed = _kill_then_resume(demo_dir, tmp_path, f"kill:replace:model.pt:{len(saves)}")
    _assert_identical_runs(uninterrupted, resumed)


def _medtransfer_run(*args: str, env: dict | None = None, **popen) -> subprocess.CompletedProcess:
    cmd = [sys.executable, "-m", "medtransfer.cli", "run", "busi_classification", *args]
    environment = {**os.environ, **env} if env else None
    return subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=900, env=environment, **popen)


def _last_line(proc: subprocess.CompletedProcess) -> str:
    return proc.stderr.strip().splitlines()[-1]


def test_a_full_disk_keeps_the_previous_model_and_says_so_last(uninterrupted, demo_dir, tmp_path):
    saves = _best_model_saves(uninterrupted)  # the same run, so the same epochs write model.pt
    args = [*_settings(demo_dir, tmp_path, "full"), "--keep_checkpoints", "3"]
    proc = _medtransfer_run(*args, env=_with_fault(f"enospc:write:model.pt:{len(saves)}"))
    assert proc.returncode == 2
    run = tmp_path / "full"
    assert _last_line(proc) == (
        f"error: no space left on device ({_free_mib(run)} MiB free there) while writing {run / 'model.pt'}; the "
        f"previous checkpoint {run / 'model.pt'} is intact. Free some space (or point --runs_dir at a larger disk), "
        "then continue the run with --resume true"
    )
    # model.pt is still the model of the previous best epoch, whole
    _assert_same_tensors(_load(run / "model.pt"), _load(run / f"checkpoint_epoch={saves[-2]}.pt")["model"])
    assert not list(run.glob(".*.tmp"))


def _free_mib(folder: Path) -> str:
    import shutil

    return f"{shutil.disk_usage(folder).free / 2**20:.1f}"


def _main_last_line(capsys, *args: str) -> tuple[int, str]:
    from medtransfer.cli import main

    status = main(["run", "busi_classification", *args])
    lines = capsys.readouterr().err.strip().splitlines()
    return status, lines[-1] if lines else ""


def test_a_misspelled_override_is_the_last_line_and_nothing_runs(capsys, tmp_path):
    status, last = _main_last_line(capsys, "--epcohs", "1", "--runs_dir", str(tmp_path))
    assert status == 2
    assert last.startswith("error: unknown setting --epcohs: did you mean --epochs?")
    assert not any(tmp_path.iterdir())


def test_an_out_of_range_setting_is_the_last_line_before_any_folder_exists(capsys, demo_dir, tmp_path):
    args = ["--dataset_dir", str(demo_dir), "--runs_dir", str(tmp_path), "--run_name", "r", "--batch_size", "0"]
    status, last = _main_last_line(capsys, *args)
    assert status == 2
    assert last == "error: --batch_size 0 is out of range: images per batch must be a whole number >= 1"
    assert not (tmp_path / "r").exists()


def test_a_changed_split_or_setting_is_refused_on_resume_and_evaluation(capsys, uninterrupted, demo_dir, tmp_path):
    import shutil

    run = tmp_path / "copy"
    shutil.copytree(uninterrupted, run)
    common = ["--runs_dir", str(tmp_path), "--run_name", "copy", "--dataset_dir", str(demo_dir) + "/", *FAST]
    status, last = _main_last_line(capsys, *common, "--epochs", "3", "--workflow", "evaluate", "--split_seed", "1")
    assert status == 2 and "split_seed: trained with 0, now 1" in last and "--allow_changed_split true" in last
    assert not (run / "test_metrics.json").exists()
    status, last = _main_last_line(capsys, *common, "--epochs", "3", "--resume", "true", "--lr", "0.01")
    assert status == 2 and "cannot resume" in last and "--lr 0.01: it was started with --lr 0.001" in last
    # the same split written another way (a trailing slash) evaluates, and the report says nothing was changed
    assert _main_last_line(capsys, *common, "--epochs", "3", "--workflow", "evaluate")[0] == 0
    report = json.loads((run / "test_metrics.json").read_text())
    assert report["allow_changed_split"] is False and report["split_changes"] == []


def test_ctrl_c_says_which_checkpoint_is_kept_and_how_to_continue(demo_dir, tmp_path):
    args = [*_settings(demo_dir, tmp_path, "stop", epochs=50)]
    cmd = [sys.executable, "-m", "medtransfer.cli", "run", "busi_classification", *args]
    # a test runner started in the background ignores SIGINT, and children inherit that: restore Ctrl-C's default
    restore = lambda: signal.signal(signal.SIGINT, signal.SIG_DFL)  # noqa: E731
    proc = subprocess.Popen(
        cmd, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, preexec_fn=restore
    )
    deadline = time.time() + 300
    while not list((tmp_path / "stop").glob("checkpoint_epoch=*.pt")) and time.time() < deadline:
        time.sleep(0.2)
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=120)
    # 130, or killed by SIGINT itself: Python ends that way after a KeyboardInterrupt inside a config's eval(), and the
    # shell shows both as 130
    assert proc.returncode in (130, -signal.SIGINT)
    last = err.strip().splitlines()[-1]
    assert last.startswith(
        f"error: interrupted: run {tmp_path / 'stop'} keeps its last complete checkpoint checkpoint_"
    )
    assert last.endswith("continue it exactly with the same command plus --run_name stop --resume true")


def test_python_m_monai_bundle_run_refuses_a_misspelled_setting(tmp_path):
    proc = run_bundle([TRAIN], "--runs_dir", str(tmp_path), "--epcohs", "1", check=False)
    assert proc.returncode != 0
    assert "unknown setting --epcohs: did you mean --epochs?" in proc.stderr
    assert not any(tmp_path.iterdir())  # refused before a run folder or demo data was made
