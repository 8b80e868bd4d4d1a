"""The MetaLR fragment on the BUSI bundle: one config fragment away, LR logs written, resume exact."""

import csv
import json
import shutil

import pytest
import torch
from conftest import BUSI_CONFIGS, FAST, STRATEGIES, run_bundle

pytestmark = pytest.mark.slow

TRAIN = BUSI_CONFIGS / "train.json"
METALR = STRATEGIES / "metalr.json"


def _lr_rows(run) -> list[dict]:
    with open(run / "lr_history.csv") as f:
        return list(csv.DictReader(f))


def test_metalr_fragment_trains_and_logs_learning_rates(demo_dir, tmp_path):
    run_bundle([TRAIN, METALR], "--runs_dir", str(tmp_path), "--run_name", "m", "--dataset_dir", str(demo_dir), *FAST)
    run = tmp_path / "m"
    rows = _lr_rows(run)
    iterations = len(rows)
    assert iterations == 2  # 21 training images, at least one meta batch (8) held out, the rest in batches of 8
    groups = [k for k in rows[0] if k != "iteration"]
    assert groups[0] == "conv1+bn1" and groups[-1] == "fc" and len(groups) == 10
    assert float(rows[0]["fc"]) == pytest.approx(1e-3)  # head pinned at base LR during the first epochs
    backbone = [float(rows[-1][g]) for g in groups[:-1]]
    assert all(1e-6 <= lr <= 1e-2 for lr in backbone)
    assert any(lr != pytest.approx(1e-4, rel=1e-9) for lr in backbone)  # moved away from 0.1 x base
    assert (run / "lr_curves.png").stat().st_size > 1000
    info = json.loads((run / "run_info.json").read_text())
    assert info["settings"]["strategy"] == "metalr" and info["settings"]["metalr_rule"] == "multiplicative"
    assert info["settings"]["metalr_meta_source"] == "heldout" and info["settings"]["metalr_variant"] == "corrected"
    split = json.loads((run / "split.json").read_text())
    sizes = split["sizes"]  # the held-out slice is recorded, carved from the training split, apart from validation
    assert sizes["meta"] >= 8 and sizes["train"] + sizes["meta"] == 21 and sizes["val"] == 5
    state = torch.load(run / "checkpoint_epoch=1.pt", weights_only=True)
    assert state["metalr"]["metalr"]["history"].shape == (iterations, 10)
    assert state["metalr"]["val_batches"]["drawn"] == iterations


def test_metalr_resume_reproduces_the_lr_trajectory(demo_dir, tmp_path):
    common = ["--runs_dir", str(tmp_path), "--dataset_dir", str(demo_dir), *FAST, "--epochs", "2"]
    run_bundle([TRAIN, METALR], *common, "--run_name", "full", "--keep_checkpoints", "2")
    shutil.copytree(tmp_path / "full", tmp_path / "cut")
    (tmp_path / "cut" / "checkpoint_epoch=2.pt").unlink()
    run_bundle([TRAIN, METALR], *common, "--run_name", "cut", "--resume", "true")
    assert _lr_rows(tmp_path / "cut") == _lr_rows(tmp_path / "full")
    a = torch.load(tmp_path / "full" / "checkpoint_epoch=2.pt", weights_only=True)
    b = torch.load(tmp_path / "cut" / "checkpoint_epoch=2.pt", weights_only=True)
    assert torch.equal(a["metalr"]["metalr"]["history"], b["metalr"]["metalr"]["history"])
    for key, value in a["model"].items():
        assert torch.equal(value, b["model"][key]), key
