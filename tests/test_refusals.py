"""The refusal promise, end to end through `medtransfer`: exit status 2, one last line naming the file or setting and the
fix, no traceback without ``--traceback``, and every file that existed before still where it was, byte-identical."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from medtransfer.cli import main


def snapshot(root: Path) -> dict[str, bytes]:
    """Every file under `root` (relative path -> bytes), and every folder (-> None)."""
    return {p.relative_to(root).as_posix(): p.read_bytes() if p.is_file() else None for p in sorted(root.rglob("*"))}


def refused(argv: list[str], root: Path, capsys, *named: str) -> str:
    """Run `argv`; assert the promise over `root` and that the last line names each of `named`; return that line."""
    before = snapshot(root)
    status = main(argv)
    err = capsys.readouterr().err
    last = err.strip().splitlines()[-1]
    assert status == 2, err
    assert "Traceback" not in err, err
    assert last.startswith("error: "), err
    for text in named:
        assert text in last, last
    assert snapshot(root) == before, "files were created, moved or changed"
    return last


@pytest.fixture
def busi_run(tmp_path, demo_dir):
    """`medtransfer run busi_classification` arguments with tiny settings, runs under tmp_path/runs."""
    runs = tmp_path / "runs"
    (runs / "finished").mkdir(parents=True)
    (runs / "finished" / "model.pt").write_bytes(b"a finished run's model")
    (runs / "finished" / "test_metrics.json").write_text('{"auc": 0.611}')
    return ["run", "busi_classification", "--runs_dir", str(runs), "--dataset_dir", str(demo_dir),
            "--epochs", "1", "--image_size", "32", "--batch_size", "8"]  # fmt: skip


@pytest.mark.parametrize("name", ["", ".", "..", "../outside", "a/b", "/tmp/abs"])
def test_a_run_name_that_is_not_one_folder_name_is_refused_before_anything_is_created(name, busi_run, tmp_path, capsys):
    refused([*busi_run, "--run_name", name], tmp_path, capsys, "--run_name", "single folder name", "Pass e.g.")


def test_a_folder_that_is_not_a_run_is_never_set_aside(busi_run, tmp_path, capsys):
    results = tmp_path / "runs" / "results"
    results.mkdir()
    (results / "table.csv").write_text("strategy,auc\nfull,0.9\n")
    refused([*busi_run, "--run_name", "results"], tmp_path, capsys, str(results), "not a medtransfer run", "--run_name")


def test_resuming_a_run_that_never_existed_creates_nothing(busi_run, tmp_path, capsys):
    refused([*busi_run, "--run_name", "never", "--resume", "true"], tmp_path, capsys, "no run", "never", "--run_name")


def test_a_fragment_with_a_json_syntax_error_is_named_with_line_and_column(busi_run, tmp_path, capsys):
    fragment = tmp_path / "mine.json"
    fragment.write_text('{\n    "strategy": "mine",\n    "lr": 0.001\n    "epochs": 3\n}\n')
    last = refused([*busi_run, "--strategy", str(fragment)], tmp_path, capsys, str(fragment), "line 4, column 5")
    assert "fix the JSON" in last


def test_a_misspelled_key_in_a_fragment_is_refused_like_one_on_the_command_line(busi_run, tmp_path, capsys):
    fragment = tmp_path / "mine.json"
    fragment.write_text('{"strategy": "mine", "+imports": ["$import medtransfer.metalr"], "weight_decayy": 0.1}\n')
    refused([*busi_run, "--strategy", str(fragment)], tmp_path, capsys, "weight_decayy", str(fragment),
            "did you mean weight_decay?")  # fmt: skip
    # a fragment's own setting, defined and used by it, is not a typo
    fragment.write_text('{"strategy": "mine", "my_decay": 0.1, "weight_decay": "@my_decay"}\n')
    from medtransfer.launch import check_overrides

    check_overrides("busi_classification", [str(fragment)], {})


@pytest.fixture(scope="module")
def trained_run(tmp_path_factory, demo_dir) -> tuple[Path, list[str]]:
    """A finished, evaluated busi run on the (non-demo) synthetic set, and the arguments that reach it."""
    root = tmp_path_factory.mktemp("evaluated")
    args = ["run", "busi_classification", "--runs_dir", str(root / "runs"), "--run_name", "r", "--dataset_dir",
            str(demo_dir), "--image_size", "32", "--batch_size", "8"]  # fmt: skip
    assert main([*args, "--epochs", "1", "--evaluate"]) == 0
    return root, args


def test_evaluating_again_with_other_settings_is_refused_and_replaces_nothing(trained_run, capsys):
    root, args = trained_run
    run = root / "runs" / "r"
    first = json.loads((run / "test_metrics.json").read_text())
    assert first["produced_by"]["settings"]["image_size"] == 32 and first["produced_by"]["workflow"] == "evaluate"
    assert main([*args, "--workflow", "evaluate"]) == 0  # the same settings: the same numbers, written again
    assert json.loads((run / "test_metrics.json").read_text())["auc"] == first["auc"]
    capsys.readouterr()
    argv = [*args[:-4], "--image_size", "48", "--batch_size", "8", "--workflow", "evaluate"]
    refused(argv, root, capsys, str(run / "test_metrics.json"), "--image_size: 32 before, 48 now", "--overwrite true")
    assert main([*argv, "--overwrite", "true"]) == 0  # asked for: the earlier result is kept aside
    kept = next((run / "replaced").iterdir())
    assert json.loads((kept / "test_metrics.json").read_text()) == first
    assert json.loads((run / "test_metrics.json").read_text())["produced_by"]["settings"]["image_size"] == 48


def test_inference_on_the_demo_set_of_a_run_trained_on_other_data_is_refused(trained_run, capsys):
    root, args = trained_run
    at = args.index("--dataset_dir")
    without_data = args[:at] + args[at + 2 :]  # the bundle's default dataset: its demo set
    refused([*without_data, "--workflow", "inference"], root, capsys, "synthetic demo images", "--input_dir")


def test_inference_with_evaluate_is_refused_instead_of_claiming_an_evaluation(trained_run, capsys):
    root, args = trained_run
    refused([*args, "--workflow", "inference", "--evaluate"], root, capsys, "--evaluate", "--workflow evaluate")


def test_summarize_refuses_runs_scored_on_different_data(tmp_path, capsys):
    for name, folder in (("a", "data/one"), ("b", "data/two")):
        (tmp_path / name).mkdir()
        metrics = {"accuracy": 0.8, "auc": 0.9, "macro_f1": 0.7, "dataset_dir": str(tmp_path / folder), "split": "test"}
        (tmp_path / name / "test_metrics.json").write_text(json.dumps(metrics))
    refused(["summarize", str(tmp_path / "a"), str(tmp_path / "b")], tmp_path, capsys, "different data", "dataset_dir")


def test_a_run_folder_removed_mid_training_ends_in_one_line_naming_it(busi_run, tmp_path, capsys):
    """A file system error inside the engine: no StatsHandler traceback, no raw OSError, the file and the fix."""
    fragment = tmp_path / "remove_run.json"
    fragment.write_text(json.dumps({
        "+imports": ["$import shutil", "$import ignite"],
        "+initialize": ["$@train#trainer.add_event_handler(ignite.engine.Events.ITERATION_COMPLETED(once=1), "
                        "lambda engine: shutil.rmtree(@output_dir))"],
    }))  # fmt: skip
    status = main([*busi_run, "--run_name", "gone", "--strategy", str(fragment)])
    err = capsys.readouterr().err
    assert status == 2 and "Traceback" not in err, err
    last = err.strip().splitlines()[-1]
    assert last.startswith("error: ") and str(tmp_path / "runs" / "gone") in last and "--resume true" in last, last


def test_under_monai_bundle_run_the_last_line_is_the_same_message(tmp_path, demo_dir):
    from conftest import BUSI_CONFIGS, run_bundle

    proc = run_bundle([BUSI_CONFIGS / "train.json"], "--runs_dir", str(tmp_path), "--run_name", "", "--dataset_dir",
                      str(demo_dir), check=False)  # fmt: skip
    assert proc.returncode != 0
    last = proc.stderr.strip().splitlines()[-1]
    assert last.startswith("error: --run_name '' is not a run name") and "Pass e.g." in last, proc.stderr[-2000:]
    assert "Traceback" not in proc.stderr
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize(
    ("code", "fix"),
    [("ENOENT", "does not exist"), ("EACCES", "permission denied"), ("EROFS", "read-only file system"),
     ("ENOSPC", "no space is left"), ("ELOOP", "too many symbolic links"), ("EDQUOT", "quota")],
)  # fmt: skip
def test_every_file_system_error_is_one_line_naming_the_file_and_the_fix(code, fix, tmp_path):
    import errno
    import os

    from medtransfer.launch import error_message

    number = getattr(errno, code)
    wrapped = RuntimeError("Failed to evaluate ConfigExpression")  # as a bundle run wraps what it meets
    wrapped.__cause__ = OSError(number, os.strerror(number), str(tmp_path / "run" / "model.pt"))
    message, traceback_useful = error_message(wrapped)
    assert message.startswith(f"error: {tmp_path / 'run' / 'model.pt'}: ") and fix in message and not traceback_useful


def test_a_symbolic_link_loop_met_by_a_command_is_one_line(tmp_path, capsys):
    loop = tmp_path / "loop"
    loop.symlink_to(loop)
    refused(["summarize", str(loop)], tmp_path, capsys, str(loop))
