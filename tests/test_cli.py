"""The `medtransfer` command: thin wrappers, checked through their output."""

import json

import pytest

from medtransfer.cli import main
from medtransfer.data import read_busi


def test_layers_prints_the_ten_resnet18_groups(capsys):
    assert main(["layers", "--arch", "resnet18"]) == 0
    out = capsys.readouterr().out
    for name in ("conv1+bn1", "layer1.0", "layer4.1", "fc"):
        assert name in out
    assert main(["layers", "--arch", "resnet18", "--granularity", "stage"]) == 0
    assert "layer1.0" not in capsys.readouterr().out


def test_demo_data_is_readable_busi(tmp_path, capsys):
    assert main(["demo-data", str(tmp_path / "demo"), "--n-per-class", "4", "--image-size", "48"]) == 0
    assert "SYNTHETIC" in capsys.readouterr().out
    assert len(read_busi(tmp_path / "demo", require_masks=True)) == 12


def test_demo_data_other_tasks_are_readable(tmp_path):
    from medtransfer.data import read_lits
    from medtransfer.data.pocus import read_pocus_clips

    assert main(["demo-data", str(tmp_path / "lits"), "--task", "lits"]) == 0
    assert len(read_lits(tmp_path / "lits")) == 6
    assert main(["demo-data", str(tmp_path / "pocus"), "--task", "pocus"]) == 0
    assert {c["class_name"] for c in read_pocus_clips(tmp_path / "pocus")} == {"covid19", "pneumonia", "regular"}


def test_summarize_gives_mean_and_std_over_seeds(tmp_path, capsys):
    for seed, acc in enumerate([0.8, 0.9, 1.0]):
        run = tmp_path / f"seed{seed}"
        run.mkdir()
        (run / "test_metrics.json").write_text(json.dumps({"accuracy": acc, "auc": 0.5, "macro_f1": acc, "seed": seed}))
    assert main(["summarize", *(str(tmp_path / f"seed{s}") for s in range(3)), "--out", str(tmp_path / "t")]) == 0
    assert "0.900 ± 0.100" in capsys.readouterr().out
    assert json.loads((tmp_path / "t.json").read_text())["mean"]["accuracy"] == pytest.approx(0.9)


def test_errors_are_reported_without_traceback(tmp_path, capsys):
    assert main(["summarize", str(tmp_path / "missing")]) == 2
    assert "test_metrics.json" in capsys.readouterr().err


def test_data_errors_inside_a_bundle_run_reach_the_user_plainly(tmp_path, capsys):
    argv = ["transfer", "pretrain", "--dataset", "cifar100", "--root", str(tmp_path / "none"), "--name", "x"]
    assert main([*argv, "--runs-dir", str(tmp_path / "runs")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: cifar100 not found under") and "cifar-100-python" in err and "Traceback" not in err
