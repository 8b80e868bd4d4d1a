"""`medtransfer run`: overrides read as monai.bundle reads them, fragments merged in order, one clear last line on error."""

from __future__ import annotations

import json
import os
import stat
import subprocess
import sys
from pathlib import Path

import pytest

from medtransfer.bundling import bundle_path, strategy_path
from medtransfer.errors import BundleError, DatasetError
from medtransfer.launch import config_files, error_message, parse_overrides

FAST = ["--epochs", "1", "--image_size", "32", "--batch_size", "8"]


def medtransfer(*args: str, cwd: Path, env: dict | None = None, umask: int | None = None):
    """The installed `medtransfer` command in a subprocess, as a user runs it."""
    preexec = (lambda: os.umask(umask)) if umask is not None else None
    return subprocess.run(
        [sys.executable, "-m", "medtransfer.cli", *args],
        cwd=cwd, capture_output=True, text=True, timeout=900, env={**os.environ, **(env or {})}, preexec_fn=preexec,
    )  # fmt: skip


def test_overrides_parse_like_monai_bundle_run():
    parsed = parse_overrides(
        [
            "--epochs",
            "5",
            "--lr",
            "1e-3",
            "--classes",
            "['a', 'b']",
            "--amp",
            "True",
            "--run_name=x1",
            "--dataset_dir",
            "/d",
            "--w",
            "-1",
        ]
    )
    assert parsed == {
        "epochs": 5,
        "lr": 1e-3,
        "classes": ["a", "b"],
        "amp": True,
        "run_name": "x1",
        "dataset_dir": "/d",
        "w": -1,
    }
    assert isinstance(parsed["epochs"], int)


def test_stray_argument_or_missing_value_is_a_clear_error():
    with pytest.raises(BundleError, match="--key value"):
        parse_overrides(["epochs", "5"])
    with pytest.raises(BundleError, match="--amp needs a value"):
        parse_overrides(["--amp", "--epochs", "1"])


def test_config_files_put_strategies_after_train_json():
    files = config_files("busi_classification", ["metalr"], workflow="evaluate")
    configs = bundle_path("busi_classification") / "configs"
    assert files == [configs / "train.json", strategy_path("metalr"), configs / "evaluate.json"]
    assert config_files(configs.parent, [], "inference")[-1] == configs / "inference.json"


def test_multi_process_training_merges_multi_gpu_train_json_right_after_train_json(tmp_path):
    from medtransfer.launch import torchrun_command

    configs = bundle_path("busi_classification") / "configs"
    files = config_files("busi_classification", ["metalr"], distributed=True)
    assert files == [configs / "train.json", configs / "multi_gpu_train.json", strategy_path("metalr")]
    with pytest.raises(BundleError, match="without --gpus"):
        config_files("busi_classification", [], "evaluate", distributed=True)
    bare = tmp_path / "my_bundle" / "configs"
    bare.mkdir(parents=True)
    (bare / "train.json").write_text("{}")
    with pytest.raises(BundleError, match="multi_gpu_train.json not found.*copy"):
        config_files(bare.parent, [], distributed=True)
    command = torchrun_command("busi_classification", ["metalr"], ["--epochs", "1"], 4, "r1")
    assert command[1:6] == ["-m", "torch.distributed.run", "--standalone", "--nproc_per_node=4", "-m"]
    assert command[6:] == [
        "medtransfer.cli", "run", "busi_classification", "--strategy", "metalr", "--distributed-worker",
        "--epochs", "1", "--run_name", "r1",
    ]  # fmt: skip
    named = torchrun_command("busi_classification", [], ["--run_name", "mine"], 2, "r1")
    assert named.count("--run_name") == 1 and named[-1] == "mine"


def test_every_bundle_ships_multi_gpu_training_in_the_model_zoo_pattern():
    from medtransfer.bundling import list_bundles

    for bundle in list_bundles():
        config = json.loads((bundle_path(bundle.name) / "configs" / "multi_gpu_train.json").read_text())
        assert config["train#dataloader#sampler"] == "@train#sampler"
        assert config["validate#dataloader#sampler"] == "@validate#sampler"
        assert config["train#trainer#network"] == "@ddp_network"
        assert config["initialize"][0] == "$medtransfer.distributed.init_process_group()"
        assert config["finalize"][-1] == "$medtransfer.distributed.destroy_process_group()"
        train = json.loads((bundle_path(bundle.name) / "configs" / "train.json").read_text())
        # the same steps as single-process training, the ones that write guarded to rank 0
        assert len(config["initialize"]) == len(train["initialize"]) + 1
        for single, multi in zip(train["initialize"], config["initialize"][1:], strict=True):
            assert single[1:] in multi
            writes = any(w in single for w in ("create_run_dir", "guard_split", "write_run_info"))
            assert multi.startswith("$medtransfer.distributed.on_main_process(") == writes


def test_unknown_bundle_and_strategy_name_the_known_ones():
    with pytest.raises(BundleError, match="busi_classification"):
        bundle_path("no_such_bundle")
    with pytest.raises(BundleError, match="metalr"):
        strategy_path("no_such_strategy")


def test_project_error_inside_config_wrappers_is_the_message():
    try:
        try:
            raise DatasetError("x.png is unreadable; re-export it")
        except DatasetError as inner:
            raise RuntimeError("Failed to evaluate ConfigExpression: ...") from inner
    except RuntimeError as outer:
        assert error_message(outer) == ("error: x.png is unreadable; re-export it", False)
    assert error_message(RuntimeError("boom"))[1] is True  # a bug keeps its traceback


@pytest.mark.slow
def test_bad_dataset_dir_ends_with_one_line_and_no_traceback(tmp_path):
    missing = tmp_path / "no_busi_here"
    proc = medtransfer("run", "busi_classification", *FAST, "--dataset_dir", str(missing), cwd=tmp_path)
    assert proc.returncode != 0
    last = proc.stderr.strip().splitlines()[-1]
    assert last.startswith("error: ") and str(missing) in last and "pass the folder" in last
    assert "Traceback" not in proc.stderr
    assert not (tmp_path / "runs" / "busi_classification").exists() or not any(
        (tmp_path / "runs" / "busi_classification").rglob("model.pt")
    )

    shown = medtransfer("run", "busi_classification", *FAST, "--dataset_dir", str(missing), "--traceback", cwd=tmp_path)
    assert shown.returncode != 0 and "Traceback" in shown.stderr
    assert shown.stderr.strip().splitlines()[-1] == last


@pytest.mark.slow
def test_run_with_strategy_and_evaluate_writes_readable_files(tmp_path, demo_dir):
    proc = medtransfer(
        "run", "busi_classification", "--strategy", "metalr", "--evaluate", *FAST,
        "--dataset_dir", str(demo_dir), "--run_name", "r1", cwd=tmp_path, umask=0o022,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    run = tmp_path / "runs" / "busi_classification" / "r1"
    assert json.loads((run / "run_info.json").read_text())["settings"]["strategy"] == "metalr"
    assert (run / "test_metrics.json").is_file()
    for name in ("run_info.json", "history.json", "history.csv", "lr_history.csv", "test_metrics.json", "model.pt"):
        mode = stat.S_IMODE((run / name).stat().st_mode)
        assert mode & 0o044 == 0o044, f"{name} is {oct(mode)} under umask 022"


@pytest.mark.slow
def test_plain_run_records_per_group_lrs(tmp_path, demo_dir):
    proc = medtransfer(
        "run", "busi_classification", *FAST, "--dataset_dir", str(demo_dir), "--run_name", "p", cwd=tmp_path
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    rows = (tmp_path / "runs" / "busi_classification" / "p" / "lr_history.csv").read_text().splitlines()
    header = rows[0].split(",")
    assert header[0] == "iteration" and header[1:] == [g.strip() for g in header[1:]] and len(header) == 11
    # cosine schedule over one epoch: every group trains at the base LR during the epoch
    assert {float(v) for v in rows[1].split(",")[1:]} == {1e-3}
    assert any((tmp_path / "runs" / "busi_classification" / "p" / "tensorboard").iterdir())


@pytest.mark.slow
def test_evaluate_without_run_name_takes_the_newest_run(tmp_path, demo_dir):
    common = [*FAST, "--dataset_dir", str(demo_dir)]
    assert medtransfer("run", "busi_classification", *common, "--run_name", "first", cwd=tmp_path).returncode == 0
    proc = medtransfer("run", "busi_classification", "--workflow", "evaluate", *common, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert (tmp_path / "runs" / "busi_classification" / "first" / "test_metrics.json").is_file()


def test_dashed_and_underscored_keys_name_the_same_setting():
    assert parse_overrides(["--allow-changed-split", "true"]) == parse_overrides(["--allow_changed_split", "true"])


def _start_run(runs: Path, bad: dict) -> None:
    from medtransfer.launch import run

    run("busi_classification", ["metalr"], overrides=[*(t for k, v in bad.items() for t in (f"--{k}", str(v))),
                                                       "--runs_dir", str(runs)])  # fmt: skip


def _start_cv(runs: Path, bad: dict) -> None:
    from medtransfer.cv import run_cross_validation

    run_cross_validation("pocus_classification", folds=2, overrides=bad, runs_dir=runs, name="cv")


def _start_compare(runs: Path, bad: dict) -> None:
    from medtransfer.workflows.compare import run_comparison
    from medtransfer.workflows.study import Placement

    run_comparison(
        "busi_classification", ["full", "l2_sp"], seeds=[0], overrides=bad, placement=Placement(runs_dir=runs)
    )


def _start_transfer(runs: Path, bad: dict) -> None:
    from medtransfer.transferability.study import train_and_evaluate

    train_and_evaluate("natural_transferability", {"runs_dir": str(runs), "run_name": "pre", **bad})


@pytest.mark.parametrize("start", [_start_run, _start_cv, _start_compare, _start_transfer])
def test_every_entry_point_refuses_a_misspelled_setting_before_anything_runs(start, tmp_path):
    from medtransfer.errors import SettingsError

    runs = tmp_path / "runs"
    with pytest.raises(SettingsError, match=r"unknown setting --epcohs: did you mean --epochs\?"):
        start(runs, {"epcohs": 1})
    assert not runs.exists()  # no study, fold or run folder was made


def test_the_plain_monai_command_line_is_checked_too():
    from medtransfer.errors import SettingsError
    from medtransfer.launch import check_monai_command_line

    monai_main = "/venv/lib/site-packages/monai/bundle/__main__.py"
    configs = bundle_path("busi_classification") / "configs"
    both = f"['{configs / 'train.json'}', '{configs / 'evaluate.json'}']"
    check_monai_command_line([monai_main, "run", "--config_file", both, "--epochs", "1", "--eval_split", "val"])
    with pytest.raises(SettingsError, match=r"unknown setting --epcohs: did you mean --epochs\?"):
        check_monai_command_line([monai_main, "run", "--config_file", both, "--epcohs", "1"])
    check_monai_command_line(["medtransfer", "run", "--epcohs", "1"])  # other processes check before a run starts


def test_config_file_is_refused_with_its_own_message():
    from medtransfer.launch import run

    with pytest.raises(BundleError, match="--config_file is chosen by `medtransfer run`"):
        run("busi_classification", overrides=["--config_file", "x.json"])
