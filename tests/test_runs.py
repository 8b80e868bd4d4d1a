"""Run directories: never overwrite a run silently; find checkpoints and runs; refuse leaky evaluations."""

import os
import time

import pytest

from medtransfer.errors import RunDirectoryError
from medtransfer.runs import (
    check_same_data,
    create_run_dir,
    latest_checkpoint,
    latest_run,
    require_run_dir,
    write_run_info,
)


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
    (tmp_path / "checkpoint_epoch=2.pt").write_bytes(b"x")
    assert create_run_dir(tmp_path, resume=True) == str(tmp_path)


def test_latest_checkpoint_is_numeric_not_lexicographic(tmp_path):
    assert latest_checkpoint(tmp_path) is None
    for n in (2, 9, 10):
        (tmp_path / f"checkpoint_epoch={n}.pt").write_bytes(b"x")
    assert latest_checkpoint(tmp_path).endswith("checkpoint_epoch=10.pt")


def test_latest_run_and_require(tmp_path):
    with pytest.raises(RunDirectoryError, match="no finished run"):
        latest_run(tmp_path)
    for i, name in enumerate(["old", "new"]):
        (tmp_path / name).mkdir()
        (tmp_path / name / "model.pt").write_bytes(b"x")
        os.utime(tmp_path / name / "model.pt", (time.time() + i, time.time() + i))
    (tmp_path / "old" / "test_metrics.json").write_text("{}")  # evaluating the old run does not make it newest
    (tmp_path / "unfinished").mkdir()
    assert latest_run(tmp_path) == "new"
    assert require_run_dir(tmp_path / "old") == str(tmp_path / "old")
    with pytest.raises(RunDirectoryError, match="unfinished"):
        require_run_dir(tmp_path / "unfinished")


def test_evaluating_with_another_split_seed_is_refused(tmp_path):
    write_run_info(tmp_path, {"dataset_dir": "/data/busi", "split_seed": 0})
    check_same_data(tmp_path, dataset_dir="/data/busi", split_seed=0)
    check_same_data(tmp_path, dataset_dir="/other", split_seed=5)  # other data: no overlap possible
    with pytest.raises(RunDirectoryError, match="--split_seed 0"):
        check_same_data(tmp_path, dataset_dir="/data/busi", split_seed=1)


def test_run_info_keeps_history_on_resume(tmp_path):
    first = write_run_info(tmp_path, {"seed": 1})
    second = write_run_info(tmp_path, {"seed": 1})
    assert first["settings"] == {"seed": 1}
    assert second["previous"][0]["started"] == first["started"]
