"""The study's workflow: pre-train keeps θr, fine-tune keeps θB0, T is measured between real runs, the table is made."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import REPO

from medtransfer.cli import main
from medtransfer.data import make_synthetic_busi, make_synthetic_shapes
from medtransfer.data.registry import dataset_records, dataset_size
from medtransfer.data.synthetic.shapes import SHAPE_CLASSES
from medtransfer.handlers import SaveInitialWeights
from medtransfer.transferability.study import measure_runs, study_row, study_table, train_and_evaluate

BUNDLE = REPO / "bundles" / "natural_transferability"
TINY = {"epochs": 1, "batch_size": 16, "image_size": 32}


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """A pre-training run on synthetic shapes (4 classes) and a fine-tuning run on synthetic BUSI (3 classes)."""
    base = tmp_path_factory.mktemp("transfer")
    shapes = make_synthetic_shapes(base / "shapes", n_per_class=12)
    busi = make_synthetic_busi(base / "busi", n_per_class=8, image_size=48)
    common = {**TINY, "runs_dir": str(base / "runs")}
    pre = train_and_evaluate(
        BUNDLE, {**common, "dataset_format": "imagefolder", "dataset_dir": str(shapes), "run_name": "pre"}
    )
    ft = train_and_evaluate(
        BUNDLE,
        {**common, "dataset_format": "busi", "dataset_dir": str(busi), "run_name": "ft",
         "pretrained_ckpt": str(pre / "model.pt")},
    )  # fmt: skip
    return pre, ft, busi


def test_runs_keep_their_starting_weights(runs):
    pre, ft, _ = runs
    theta_r, theta_a = torch.load(pre / "init.pt", weights_only=True), torch.load(pre / "model.pt", weights_only=True)
    theta_b0 = torch.load(ft / "init.pt", weights_only=True)
    assert theta_a["fc.weight"].shape == (len(SHAPE_CLASSES), 512) and theta_b0["fc.weight"].shape == (3, 512)
    assert not torch.equal(theta_r["conv1.weight"], theta_a["conv1.weight"])  # pre-training moved the weights
    for key, value in theta_a.items():  # θB0 is θA's body (saved after loading, before the first step)
        if not key.startswith("fc.") and value.is_floating_point():
            assert torch.equal(theta_b0[key], value), key


def test_measure_between_runs_and_from_the_command_line(runs, tmp_path, capsys):
    pre, ft, _ = runs
    result = measure_runs(pre, ft)
    assert [layer.name for layer in result.layers][-1] == "fc" and len(result.layers) == 10
    assert result.layers[-1].t == pytest.approx(1.0)  # the new head against its own initialisation
    body = [layer.t for layer in result.layers[:-1]]
    assert all(t > 0 for t in body) and result.overall == pytest.approx(sum(body) / len(body))
    argv = ["transfer", "measure", "--init", str(pre / "init.pt"), "--pretrained", str(pre / "model.pt"),
            "--finetuned", str(ft / "model.pt"), "--finetune-init", str(ft / "init.pt"), "--out", str(tmp_path)]  # fmt: skip
    assert main(argv) == 0
    saved = json.loads((tmp_path / "transferability.json").read_text())
    assert saved["overall"] == pytest.approx(result.overall)
    assert (tmp_path / "transferability.png").stat().st_size > 1000 and "layer1.0" in capsys.readouterr().out


def test_study_table_with_statistics(runs, tmp_path):
    pre, ft, _ = runs
    result = measure_runs(pre, ft)
    row = study_row("busi", pre, ft, result=result)
    assert row["N"] == dataset_size("busi", _dataset_dir(ft)) and 0 <= row["D"] <= 1 and row["G"] >= 0
    assert (ft / "transferability" / "transferability.csv").is_file() and (ft / "target_stats.json").is_file()
    rows = [row, dict(row, dataset="b2", T=row["T"] * 2, LogME=row["LogME"] + 1, LEEP=row["LEEP"] + 1),
            dict(row, dataset="b3", T=row["T"] * 3, LogME=row["LogME"] + 2, LEEP=row["LEEP"] - 1)]  # fmt: skip
    text = study_table(rows, {"busi": result, "again": result}, tmp_path)
    summary = json.loads((tmp_path / "study.json").read_text())
    assert summary["rank_correlation"]["LogME"]["spearman"] == pytest.approx(1.0)
    assert summary["rank_correlation"]["LEEP"]["spearman"] == pytest.approx(-0.5)
    assert "not fitted" in text and "regression" not in summary  # 3 datasets cannot fit 4 parameters
    assert (tmp_path / "curves.png").is_file()


def _dataset_dir(run: Path) -> str:
    return json.loads((run / "run_info.json").read_text())["settings"]["dataset_dir"]


def test_save_initial_weights_is_written_once(tmp_path):
    from ignite.engine import Engine

    model = torch.nn.Linear(2, 2)
    engine = Engine(lambda e, b: None)
    SaveInitialWeights(str(tmp_path), model).attach(engine)
    engine.run([0], max_epochs=1)
    first = torch.load(tmp_path / "init.pt", weights_only=True)
    assert torch.equal(first["weight"], model.weight.detach())
    with torch.no_grad():
        model.weight.add_(1.0)
    engine.run([0], max_epochs=2)  # a resumed run must keep the true starting point
    assert torch.equal(torch.load(tmp_path / "init.pt", weights_only=True)["weight"], first["weight"])


def test_transfer_records_subset_and_trainval(runs):
    busi = runs[2]
    train = dataset_records("busi", busi, "train")
    subset = dataset_records("busi", busi, "train", max_train=9)
    assert len(subset) == 9 and {r["id"] for r in subset} <= {r["id"] for r in train}
    assert {r["label"] for r in subset} == {0, 1, 2}  # stratified: every class kept
    both = dataset_records("busi", busi, "trainval")
    assert len(both) == len(train) + len(dataset_records("busi", busi, "val"))
    with pytest.raises(ValueError, match="unknown dataset"):
        dataset_records("imagenet", busi, "train")


def test_bundle_properties(runs, tmp_path):
    from monai.bundle import ConfigWorkflow

    shapes = make_synthetic_shapes(tmp_path / "shapes", n_per_class=4)
    train = ConfigWorkflow(
        config_file=str(BUNDLE / "configs" / "train.json"), workflow_type="train", runs_dir=str(tmp_path),
        dataset_dir=str(shapes),
    )  # fmt: skip
    train.initialize()
    assert train.check_properties() == []


def test_regress_and_correlate_commands(tmp_path, capsys):
    rows = [
        {"dataset": f"d{i}", "G": g, "D": d, "N": n, "LogME": float(i), "LEEP": float(-i),
         "T": float(np.exp(0.5 * g - 0.3 * d + 0.1 * np.log(n) + 1.0))}
        for i, (g, d, n) in enumerate([(0.1, 0.5, 100), (0.4, 0.2, 1000), (0.3, 0.9, 50), (0.8, 0.4, 5000), (0.6, 0.7, 300)])
    ]  # fmt: skip
    (tmp_path / "rows.json").write_text(json.dumps({"rows": rows}))
    assert main(["transfer", "regress", str(tmp_path / "rows.json"), "--out", str(tmp_path / "effects.png")]) == 0
    out = capsys.readouterr().out
    assert "R² = 1.000" in out and (tmp_path / "effects.png").stat().st_size > 1000
    assert main(["transfer", "correlate", str(tmp_path / "rows.json")]) == 0
    out = capsys.readouterr().out
    t_rank = np.argsort(np.argsort([r["T"] for r in rows]))
    expected = np.corrcoef(t_rank, np.arange(5))[0, 1]  # Spearman of LogME = index against T, by hand
    assert f"LogME vs T over 5 datasets: Spearman {expected:.3f}" in out
