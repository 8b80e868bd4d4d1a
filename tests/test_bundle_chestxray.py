"""The chest X-ray bundle end to end: Kermany folders (synthetic), PneumoniaMNIST, real X-ray JPEGs, MetaLR fragment."""

import csv
import json
from pathlib import Path

import pytest
import torch
from conftest import FAST, REPO, STRATEGIES, run_bundle, train_then_evaluate

from medtransfer.data import make_synthetic_kermany

CONFIGS = REPO / "bundles" / "chestxray_classification" / "configs"
TRAIN, EVALUATE, INFERENCE = (CONFIGS / f"{n}.json" for n in ("train", "evaluate", "inference"))

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def kermany(tmp_path_factory) -> Path:
    return make_synthetic_kermany(tmp_path_factory.mktemp("data") / "synthetic_kermany", n_per_class=(8, 3, 4))


@pytest.mark.realdata
def test_kermany_layout_trains_evaluates_and_predicts_real_xrays(kermany, need, tmp_path):
    samples = need("chestxray_samples")
    common = ["--runs_dir", str(tmp_path), "--run_name", "k", "--dataset_dir", str(kermany), *FAST]
    run_bundle([TRAIN, STRATEGIES / "metalr.json"], *common)
    run_bundle([TRAIN, EVALUATE], *common)
    run_bundle([TRAIN, INFERENCE], *common, "--input_dir", str(samples))
    run = tmp_path / "k"
    assert torch.load(run / "model.pt", weights_only=True)["fc.weight"].shape == (2, 512)
    report = json.loads((run / "test_metrics.json").read_text())
    assert report["n"] == 8 and report["class_names"] == ["NORMAL", "PNEUMONIA"]  # the test/ folder only
    assert (run / "lr_curves.png").is_file()
    with open(run / "inference_predictions.csv") as f:
        rows = list(csv.DictReader(f))
    assert sorted(Path(r["source"]).name for r in rows) == sorted(p.name for p in samples.glob("*.jpeg"))
    for row in rows:  # full-size RGB/grey JPEGs become the network's 3 channels without errors
        assert float(row["p_NORMAL"]) + float(row["p_PNEUMONIA"]) == pytest.approx(1.0, abs=1e-4)


@pytest.mark.realdata
def test_pneumoniamnist_official_test_split(need, tmp_path):
    npz = need("medmnist/pneumoniamnist.npz")
    medmnist = ["--dataset_format", "medmnist", "--dataset_dir", str(npz), "--image_size", "28", "--batch_size", "128"]
    report = train_then_evaluate(CONFIGS, tmp_path, "pm", *medmnist)
    assert report["n"] == 624 and report["class_names"] == ["normal", "pneumonia"]
