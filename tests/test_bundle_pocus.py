"""The POCUS bundle: patient-grouped cross-validation with MetaLR on the 3-class demo set, the real clips by override."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest
from conftest import REPO, STRATEGIES, run_bundle

from medtransfer.cv import parse_overrides, run_cross_validation
from medtransfer.data import make_synthetic_pocus
from medtransfer.data.pocus import read_pocus_clips
from medtransfer.data.pocus_datalist import pocus_datalist
from medtransfer.errors import RunDirectoryError

BUNDLE = REPO / "bundles" / "pocus_classification"
CONFIGS = BUNDLE / "configs"
TRAIN, EVALUATE, INFERENCE = (CONFIGS / f"{n}.json" for n in ("train", "evaluate", "inference"))
SMALL = {"epochs": 1, "image_size": 32, "batch_size": 8, "max_frames_per_clip": 3}

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def pocus3(tmp_path_factory) -> Path:
    """Three classes, three patients each, two clips per patient."""
    return make_synthetic_pocus(tmp_path_factory.mktemp("data") / "pocus3", n_patients=(3, 3, 3), n_frames=12)


def _rows(path: Path) -> list[dict]:
    with path.open(newline="") as f:
        return list(csv.DictReader(f))


def test_parse_overrides():
    assert parse_overrides(["--epochs", "3", "--lr=1e-3", "--classes", "['a', 'b']", "--dataset_dir", "x/y"]) == {
        "epochs": 3, "lr": 1e-3, "classes": ["a", "b"], "dataset_dir": "x/y",
    }  # fmt: skip
    with pytest.raises(ValueError, match="--epochs needs a value"):
        parse_overrides(["--epochs"])


@pytest.fixture(scope="module")
def cv_run(pocus3, tmp_path_factory):
    runs = tmp_path_factory.mktemp("cv")
    config = [STRATEGIES / "metalr.json"]
    overrides = {**SMALL, "dataset_dir": str(pocus3)}
    summary = run_cross_validation(BUNDLE, folds=3, config_files=config, overrides=overrides, runs_dir=runs, name="m")
    return runs / "m", summary, config, overrides


def test_cross_validation_pools_disjoint_test_folds(pocus3, cv_run):
    cv_dir, summary, _, _ = cv_run
    clips = read_pocus_clips(pocus3)
    assert summary["frame"]["class_names"] == ["covid19", "pneumonia", "regular"]
    tested: list[str] = []
    cms = []
    for f in range(3):
        fold = cv_dir / f"fold{f}"
        assert json.loads((fold / "run_info.json").read_text())["settings"]["fold"] == f
        assert (fold / "lr_history.csv").is_file()  # the MetaLR fragment was merged
        tested += [r["source"] for r in _rows(fold / "test_clip_predictions.csv")]
        cms.append(np.asarray(json.loads((fold / "test_metrics.json").read_text())["confusion_matrix"]))
        train_clips = {r["clip"] for r in pocus_datalist(pocus3, split="train", fold=f, num_folds=3, **_args())}
        assert not train_clips & {r["source"] for r in _rows(fold / "test_clip_predictions.csv")}
    assert sorted(tested) == sorted(c["clip"] for c in clips)  # every clip tested once, in exactly one fold

    pooled = np.asarray(summary["frame"]["confusion_matrix"])
    np.testing.assert_array_equal(pooled, sum(cms))
    assert summary["clip"]["n"] == len(clips) and summary["frame"]["n"] == pooled.sum()
    for k, name in enumerate(summary["frame"]["class_names"]):  # per-class numbers follow from the summed matrix
        per_class = summary["frame"]["per_class"][name]
        assert per_class["recall"] == pytest.approx(pooled[k, k] / pooled[k].sum())
        assert per_class["precision"] == pytest.approx(pooled[k, k] / max(pooled[:, k].sum(), 1))
    assert summary["frame"]["accuracy"] == pytest.approx(np.trace(pooled) / pooled.sum())
    assert (cv_dir / "cv_frame_confusion_matrix.png").is_file() and "| covid19 |" in (
        cv_dir / "cv_summary.md"
    ).read_text()


def _args() -> dict:
    return {"fps": 3.0, "max_frames": SMALL["max_frames_per_clip"], "image_size": SMALL["image_size"]}


def test_cross_validation_refuses_overwrite_and_resumes(cv_run):
    cv_dir, _, config, overrides = cv_run
    kwargs = {
        "folds": 3,
        "config_files": config,
        "overrides": overrides,
        "runs_dir": cv_dir.parent,
        "name": cv_dir.name,
    }
    with pytest.raises(RunDirectoryError, match="--resume"):
        run_cross_validation(BUNDLE, **kwargs)
    with pytest.raises(RunDirectoryError, match="overrides differ"):  # resuming with other settings would mix runs
        run_cross_validation(BUNDLE, resume=True, **{**kwargs, "overrides": {**overrides, "epochs": 2}})
    kept = (cv_dir / "fold0" / "test_metrics.json").stat().st_mtime_ns
    (cv_dir / "fold2" / "test_metrics.json").unlink()
    summary = run_cross_validation(BUNDLE, resume=True, **kwargs)
    assert (cv_dir / "fold0" / "test_metrics.json").stat().st_mtime_ns == kept  # finished folds are kept
    assert (cv_dir / "fold2" / "test_metrics.json").is_file() and summary["folds"] == ["fold0", "fold1", "fold2"]


def test_evaluating_another_fold_is_refused(pocus3, cv_run):
    cv_dir = cv_run[0]
    common = ["--runs_dir", str(cv_dir), "--run_name", "fold0", "--dataset_dir", str(pocus3), "--num_folds", "3"]
    proc = run_bundle([TRAIN, EVALUATE], *common, "--fold", "1", check=False)
    # fold 1's test clips were fold 0's training clips: the split guard names the setting and both values
    assert proc.returncode != 0 and "fold: trained with 0, now 1" in proc.stderr


@pytest.mark.realdata
def test_real_clips_train_evaluate_and_predict(need, tmp_path):
    pocus = need("pocus")
    common = ["--runs_dir", str(tmp_path), "--run_name", "real", "--dataset_dir", str(pocus)]
    common += [x for k, v in SMALL.items() for x in (f"--{k}", str(v))]
    run_bundle([TRAIN], *common)
    run_bundle([TRAIN, EVALUATE], *common)
    run = tmp_path / "real"
    report = json.loads((run / "test_clip_metrics.json").read_text())
    assert report["class_names"] == ["covid19", "regular"]  # the CC-BY subset has no pneumonia clips
    expected = {r["clip"] for r in pocus_datalist(pocus, split="test", fold=0, **_args())}
    assert {r["source"] for r in _rows(run / "test_clip_predictions.csv")} == expected

    clip = next((pocus / "pocus_videos" / "convex").glob("Cov_*"))
    run_bundle([TRAIN, INFERENCE], *common, "--input_dir", str(clip))
    rows = _rows(run / "inference_clip_predictions.csv")
    assert [r["source"] for r in rows] == [clip.name]
    assert float(rows[0]["p_covid19"]) + float(rows[0]["p_regular"]) == pytest.approx(1.0, abs=1e-4)


def test_bundle_properties(pocus3, tmp_path):
    from monai.bundle import ConfigWorkflow

    train = ConfigWorkflow(
        config_file=str(TRAIN), workflow_type="train", runs_dir=str(tmp_path), dataset_dir=str(pocus3), num_folds=3
    )
    train.initialize()
    assert train.check_properties() == []
