"""The refusal promise, end to end through `medtransfer`: exit status 2, one last line naming the file or setting and the
fix, no traceback without ``--traceback``, and every file that existed before still where it was, byte-identical."""

from __future__ import annotations

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
