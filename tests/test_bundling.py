"""Shipped bundles: listed, found, copied out as self-contained bundles whose files follow the copy; MLflow tracking."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from medtransfer.bundling import bundle_names, bundle_path, init_bundle, list_bundles, strategy_names
from medtransfer.data.paths import demo_data_dir
from medtransfer.errors import BundleError
from medtransfer.runs import create_run_dir, latest_run

FAST = ["--epochs", "1", "--image_size", "32", "--batch_size", "8"]
BUNDLES = ("busi_classification", "chestxray_classification", "lits_segmentation", "natural_transferability",
           "pocus_classification")  # fmt: skip


def test_every_bundle_and_strategy_ships_in_the_package():
    assert set(BUNDLES) <= set(bundle_names())
    assert "metalr" in strategy_names()
    for info in list_bundles():
        assert info.task and (info.path / "configs" / "train.json").is_file() and info.path.is_relative_to(
            Path(__import__("medtransfer").__file__).parent
        )


def test_bundle_path_takes_a_name_or_a_folder(tmp_path):
    path = bundle_path("busi_classification")
    assert bundle_path(path) == path.resolve() and bundle_path(path / "configs") == path.resolve()
    with pytest.raises(BundleError, match="not a folder|neither"):
        bundle_path(tmp_path)


def test_init_copies_a_self_contained_bundle(tmp_path):
    target = init_bundle("busi_classification", tmp_path / "my_busi")
    config = json.loads((target / "configs" / "train.json").read_text())
    assert config["bundle_root"] == str(target)
    assert (target / "configs" / "strategies" / "metalr.json").is_file()
    assert {p.name for p in (target / "configs").iterdir()} >= {"train.json", "evaluate.json", "metadata.json"}
    assert not (target / ".demo_data").exists()
    with pytest.raises(BundleError, match="not empty"):
        init_bundle("busi_classification", target)


def test_demo_data_of_an_installed_bundle_goes_to_the_user_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("MEDTRANSFER_CACHE", str(tmp_path / "cache"))
    installed = tmp_path / "lib" / "site-packages" / "medtransfer" / "bundles" / "busi_classification"
    installed.mkdir(parents=True)
    assert demo_data_dir(installed) == str(tmp_path / "cache" / "demo_data")
    assert demo_data_dir(tmp_path) == str(tmp_path / ".demo_data")


def test_mlflow_config_copy_does_not_block_a_new_run(tmp_path):
    run = tmp_path / "r"
    run.mkdir()
    (run / "config_20261201_101010.json").write_text("{}")  # what `monai.bundle run --tracking mlflow` writes first
    assert create_run_dir(run) == str(run)
    (run / "model.pt").write_text("{}")  # a result: the folder now holds a run
    with pytest.raises(Exception, match="already exists"):
        create_run_dir(run)


def test_latest_run_finds_cross_validation_folds(tmp_path):
    for name in ("old", "cv_a/fold0", "cv_a/fold1"):
        (tmp_path / name).mkdir(parents=True)
        torch.save({"w": torch.zeros(1)}, tmp_path / name / "model.pt")
    os.utime(tmp_path / "old" / "model.pt", (1, 1))
    os.utime(tmp_path / "cv_a" / "fold0" / "model.pt", (2, 2))
    assert latest_run(tmp_path) == "cv_a/fold1"


def _files(folder: Path) -> set[Path]:
    return {p for p in folder.rglob("*") if p.is_file()}


@pytest.mark.slow
def test_copied_bundle_runs_from_any_folder_and_keeps_its_files(tmp_path):
    source = bundle_path("busi_classification")
    source_before = _files(source)
    target = init_bundle("busi_classification", tmp_path / "copies" / "my_busi")
    workdir = tmp_path / "elsewhere"
    workdir.mkdir()
    cmd = [sys.executable, "-m", "monai.bundle", "run", "--config_file", str(target / "configs" / "train.json"), *FAST]
    proc = subprocess.run(cmd, cwd=workdir, capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert any((target / ".demo_data").rglob("*.png")), "the copy's demo data belongs in the copy"
    runs = list((workdir / "runs" / "my_busi").glob("*/model.pt"))
    assert len(runs) == 1, "runs are named after the copy, not the bundle it came from"
    assert {p.relative_to(workdir).parts[0] for p in _files(workdir)} == {"runs"}
    assert _files(source) == source_before, "running the copy wrote into the bundle it was copied from"


def _mlflow_metrics(db: Path) -> tuple[set[str], dict]:
    import mlflow

    client = mlflow.tracking.MlflowClient(tracking_uri=f"sqlite:///{db}")
    runs = [r for e in client.search_experiments() for r in client.search_runs([e.experiment_id])]
    assert runs, f"no MLflow run in {db}"
    return {k for r in runs for k in r.data.metrics}, {k: v for r in runs for k, v in r.data.params.items()}


@pytest.mark.slow
def test_tracking_mlflow_logs_metrics_params_and_group_lrs(tmp_path, demo_dir):
    pytest.importorskip("mlflow")
    common = [*FAST, "--dataset_dir", str(demo_dir), "--runs_dir", str(tmp_path / "runs"), "--tracking", "mlflow"]
    cmd = [sys.executable, "-m", "medtransfer.cli", "run", "busi_classification", "--run_name", "m1", *common]
    proc = subprocess.run(cmd, cwd=tmp_path, capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stderr[-3000:]
    metrics, params = _mlflow_metrics(tmp_path / "runs" / "m1" / "mlruns.db")
    assert {"train_loss", "val_auc", "lr_group_0", "lr_group_9"} <= metrics
    assert params.get("seed") == "0" and params.get("strategy") == "full"

    # the MONAI user's own form: python -m monai.bundle run --tracking mlflow on a brand-new run name
    config = str(bundle_path("busi_classification") / "configs" / "train.json")
    cmd = [sys.executable, "-m", "monai.bundle", "run", "--config_file", config, "--run_name", "m2", *common]
    proc = subprocess.run(cmd, cwd=tmp_path, capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stderr[-3000:]
    metrics, _ = _mlflow_metrics(tmp_path / "runs" / "m2" / "mlruns.db")
    assert {"train_loss", "val_auc"} <= metrics


def test_composed_bundle_configs_are_up_to_date_with_their_parts():
    from medtransfer.bundling import compose_bundles

    assert compose_bundles(check=True) == [], "run `make bundles` (medtransfer bundle compose) and commit the result"


def test_merge_config_follows_monai_merge_rules():
    from medtransfer.bundling import merge_config

    base = {"a": 1, "network_def": {}, "h": [1], "d": {"x": 1}, "train": {"datalist": "old", "n": 2}}
    part = {"a": 2, "new": 3, "+h": [2], "+d": {"y": 2}, "train#datalist": "new"}
    merged = merge_config(base, part, insert_before="network_def")
    assert merged == {"a": 2, "new": 3, "network_def": {}, "h": [1, 2], "d": {"x": 1, "y": 2},
                      "train": {"datalist": "new", "n": 2}}  # fmt: skip
    assert list(merged) == ["a", "new", "network_def", "h", "d", "train"]
    assert base["h"] == [1] and base["train"]["datalist"] == "old", "the base is not modified"


def test_a_fix_in_the_shared_part_reaches_every_classification_bundle(tmp_path, monkeypatch):
    import medtransfer.bundling as bundling

    parts = tmp_path / "parts"
    __import__("shutil").copytree(bundling.parts_dir(), parts)
    shared = json.loads((parts / "classification" / "train.json").read_text())
    shared["keep_checkpoints"] = 3
    (parts / "classification" / "train.json").write_text(json.dumps(shared))
    monkeypatch.setattr(bundling, "parts_dir", lambda: parts)
    composed = {p.parent.parent.name: json.loads(t) for p, t in bundling.composed_configs().items() if p.name == "train.json"}
    recipes = json.loads((parts / "recipes.json").read_text())
    assert set(composed) == set(recipes) and all(c["keep_checkpoints"] == 3 for c in composed.values())
