"""Run directories: never overwrite a run silently; find checkpoints and runs; refuse leaky evaluations."""

import os
import time

import pytest
import torch

from medtransfer.errors import RunDirectoryError, SettingsError
from medtransfer.runs import (
    FAILED_ATTEMPTS,
    create_run_dir,
    latest_checkpoint,
    latest_run,
    release_run_dir,
    require_run_dir,
    require_trained_model,
    train_then_evaluate,
    write_run_info,
)


def _checkpoint(path):
    torch.save({"model": {"w": torch.zeros(1)}}, path)


def test_new_run_refuses_existing_non_empty_folder(tmp_path):
    run = tmp_path / "runs" / "a"
    assert create_run_dir(run) == str(run) and run.is_dir()
    create_run_dir(run)  # still empty: fine
    (run / "model.pt").write_bytes(b"x")
    with pytest.raises(RunDirectoryError, match="already exists.*--run_name"):
        create_run_dir(run)
    assert (run / "model.pt").read_bytes() == b"x"  # nothing lost


def test_resume_needs_a_checkpoint(tmp_path):
    with pytest.raises(RunDirectoryError, match="cannot resume"):
        create_run_dir(tmp_path, resume=True)
    _checkpoint(tmp_path / "checkpoint_epoch=2.pt")
    (tmp_path / ".model.pt.abc.tmp").write_bytes(b"half")  # left by a writer killed mid-write
    assert create_run_dir(tmp_path, resume=True) == str(tmp_path)
    assert not (tmp_path / ".model.pt.abc.tmp").exists()


def test_latest_checkpoint_is_numeric_not_lexicographic(tmp_path):
    assert latest_checkpoint(tmp_path) is None
    for n in (2, 9, 10):
        _checkpoint(tmp_path / f"checkpoint_epoch={n}.pt")
    assert latest_checkpoint(tmp_path).endswith("checkpoint_epoch=10.pt")


def test_latest_checkpoint_passes_over_a_torn_file(tmp_path):
    _checkpoint(tmp_path / "checkpoint_epoch=1.pt")
    whole = (tmp_path / "checkpoint_epoch=1.pt").read_bytes()
    (tmp_path / "checkpoint_epoch=2.pt").write_bytes(whole[: len(whole) // 2])  # torn by a crash: no zip directory
    assert latest_checkpoint(tmp_path).endswith("checkpoint_epoch=1.pt")


def test_latest_run_and_require(tmp_path):
    with pytest.raises(RunDirectoryError, match="no finished run"):
        latest_run(tmp_path)
    for i, name in enumerate(["old", "new", "torn"]):
        (tmp_path / name).mkdir()
        _checkpoint(tmp_path / name / "model.pt")
        os.utime(tmp_path / name / "model.pt", (time.time() + i, time.time() + i))
    (tmp_path / "old" / "test_metrics.json").write_text("{}")  # evaluating the old run does not make it newest
    whole = (tmp_path / "torn" / "model.pt").read_bytes()
    (tmp_path / "torn" / "model.pt").write_bytes(whole[:100])  # the newest, but torn (a crash outside our writer)
    (tmp_path / "unfinished").mkdir()
    assert latest_run(tmp_path) == "new"
    assert require_run_dir(tmp_path / "old") == str(tmp_path / "old")
    for unusable in ("unfinished", "torn"):
        with pytest.raises(RunDirectoryError, match=unusable):
            require_run_dir(tmp_path / unusable)


def test_run_info_keeps_history_on_resume(tmp_path):
    first = write_run_info(tmp_path, {"seed": 1})
    second = write_run_info(tmp_path, {"seed": 1})
    assert first["settings"] == {"seed": 1}
    assert second["previous"][0]["started"] == first["started"]


def test_resume_refuses_a_changed_setting_naming_both_values(tmp_path):
    write_run_info(tmp_path, {"lr": 0.001, "epochs": 5, "dataset_dir": "data/busi"})
    with pytest.raises(SettingsError, match=r"--lr 0.01: it was started with --lr 0.001.*Pass --lr 0.001"):
        write_run_info(tmp_path, {"lr": 0.01, "epochs": 5, "dataset_dir": "data/busi"}, resume=True)
    # the dataset path is the split guard's to compare (resolved); the same settings resume
    write_run_info(
        tmp_path,
        {"lr": 0.001, "epochs": 5, "dataset_dir": "data/busi/"},
        resume=True,
        split_settings={"dataset_dir": 0},
    )
    with pytest.raises(SettingsError, match="--dataset_dir"):  # not a split setting of this bundle: compared as is
        write_run_info(tmp_path, {"lr": 0.001, "epochs": 5, "dataset_dir": "other"}, resume=True)


def test_a_failed_attempt_is_set_aside_and_the_name_restarts(tmp_path):
    run = tmp_path / "a"
    create_run_dir(run)
    (run / "run_info.json").write_text("{}")  # died at data loading: no checkpoint
    (run / "train.log").write_text("the error")
    release_run_dir(run)
    assert create_run_dir(run) == str(run)
    kept = list((run / FAILED_ATTEMPTS).iterdir())
    assert len(kept) == 1 and (kept[0] / "train.log").read_text() == "the error"
    assert sorted(p.name for p in run.iterdir() if not p.name.startswith(".")) == [FAILED_ATTEMPTS]
    release_run_dir(run)


def test_a_run_folder_in_use_by_another_process_is_refused_with_its_pid(tmp_path):
    import subprocess
    import sys

    run = tmp_path / "a"
    holder = subprocess.Popen(
        [sys.executable, "-c", "import sys, time; from medtransfer.runs import create_run_dir; "
         f"create_run_dir({str(run)!r}); print('locked', flush=True); time.sleep(60)"],
        stdout=subprocess.PIPE, text=True,
    )  # fmt: skip
    try:
        assert holder.stdout.readline().strip() == "locked"
        with pytest.raises(RunDirectoryError, match=f"in use by pid {holder.pid}"):
            create_run_dir(run)
        with pytest.raises(RunDirectoryError, match=f"in use by pid {holder.pid}"):
            _checkpoint(run / "checkpoint_epoch=1.pt")
            create_run_dir(run, resume=True)
    finally:
        holder.kill()
        holder.wait()
    assert create_run_dir(run, resume=True) == str(run)  # the lock died with its process
    release_run_dir(run)


def test_training_that_wrote_no_model_fails(tmp_path):
    with pytest.raises(RunDirectoryError, match="without writing .*model.pt.*val_interval"):
        require_trained_model(tmp_path)
    (tmp_path / "model.pt").write_bytes(b"x")
    assert require_trained_model(tmp_path) == str(tmp_path)


def test_a_study_restarts_a_run_that_failed_before_its_first_checkpoint(tmp_path, monkeypatch):
    from medtransfer import runs

    run = tmp_path / "r"
    run.mkdir()
    (run / "run_info.json").write_text('{"settings": {"epochs": 2}}')
    calls = []
    monkeypatch.setattr(runs, "run_bundle_workflow", lambda files, settings: calls.append(dict(settings)))
    assert train_then_evaluate(run, ["train.json"], ["evaluate.json"], {"run_name": "r"}) == "new"
    assert "resume" not in calls[0]
