"""The LiTS bundle end to end: 3D and 2D-slice training, MetaLR, masks on the input's grid, the real CT by override."""

from __future__ import annotations

import json
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch
from conftest import REPO, STRATEGIES, run_bundle

from medtransfer.data import make_synthetic_lits, segmentation_datalist

CONFIGS = REPO / "bundles" / "lits_segmentation" / "configs"
TRAIN, EVALUATE, INFERENCE = (CONFIGS / f"{n}.json" for n in ("train", "evaluate", "inference"))
# tiny network and patches so that a CPU epoch takes seconds
TINY = ["--epochs", "1", "--channels", "[8, 16, 32]", "--num_res_units", "1", "--patch_size", "[32, 32, 32]",
        "--slice_size", "[48, 48]", "--samples_per_volume", "2", "--spacing", "[3.0, 3.0, 3.0]"]  # fmt: skip

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def lits(tmp_path_factory) -> Path:
    return make_synthetic_lits(tmp_path_factory.mktemp("data") / "synthetic_lits", n_volumes=5, shape=(48, 48, 24))


def _dice(pred: np.ndarray, truth: np.ndarray, k: int) -> float:
    p, t = pred == k, truth == k
    return float("nan") if p.sum() + t.sum() == 0 else 2 * (p & t).sum() / (p.sum() + t.sum())


def _assert_same_grid(mask: Path, source: Path) -> np.ndarray:
    out, src = nib.load(mask), nib.load(source)
    assert out.shape == src.shape[:3]
    np.testing.assert_allclose(out.affine, src.affine, atol=1e-4)
    return np.asarray(out.dataobj)


@pytest.mark.parametrize("spatial_dims", [3, 2])
def test_trains_with_metalr_evaluates_and_writes_masks_on_the_input_grid(lits, tmp_path, spatial_dims):
    common = ["--runs_dir", str(tmp_path), "--run_name", "r", "--dataset_dir", str(lits), *TINY]
    common += ["--spatial_dims", str(spatial_dims)]
    run_bundle([TRAIN, STRATEGIES / "metalr.json"], *common)
    run_bundle([TRAIN, EVALUATE], *common)
    run = tmp_path / "r"
    assert (run / "lr_history.csv").read_text().splitlines()[0].split(",")[1:4] == ["down1", "down2", "bottom"]
    weight = torch.load(run / "model.pt", weights_only=True)["model.0.conv.unit0.conv.weight"]
    assert weight.ndim == 2 + spatial_dims  # a 2D network in slice mode, a 3D one otherwise

    report = json.loads((run / "test_metrics.json").read_text())
    test = segmentation_datalist(lits, "lits", "test")
    assert report["n_cases"] == len(test) and set(report["cases"]) == {r["id"] for r in test}
    for record in test:
        mask = _assert_same_grid(run / "test_masks" / f"{record['id']}_seg.nii.gz", Path(record["image"]))
        truth = np.asarray(nib.load(record["label"]).dataobj)
        assert set(np.unique(mask)) <= {0, 1, 2}
        for k, name in ((1, "liver"), (2, "tumour")):  # the report's Dice, recomputed from the files on disk
            expected, reported = _dice(mask, truth, k), report["cases"][record["id"]][name]
            assert (np.isnan(expected) and np.isnan(reported)) or reported == pytest.approx(expected, abs=1e-6)

    run_bundle([TRAIN, INFERENCE], *common, "--input_dir", str(lits))
    written = sorted(p.name for p in (run / "inference_masks").iterdir())
    assert written == sorted(f"volume-{i}_seg.nii.gz" for i in range(5))
    _assert_same_grid(run / "inference_masks" / "volume-0_seg.nii.gz", lits / "volume-0.nii.gz")


def test_bundle_properties(lits, tmp_path):
    from monai.bundle import ConfigWorkflow

    train = ConfigWorkflow(config_file=str(TRAIN), workflow_type="train", runs_dir=str(tmp_path), dataset_dir=str(lits))
    train.initialize()
    assert train.check_properties() == []


@pytest.mark.realdata
def test_real_ct_with_label_map(need, tmp_path):
    """The real TotalSegmentator CT (liver = label 5) through a datalist JSON and label_map: one case, so this is a
    smoke test of the files and geometry, not a score."""
    ct = need("liver_ct")
    case = {"image": str(ct / "example_ct_sm.nii.gz"), "label": str(ct / "example_seg.nii.gz")}
    datalist = tmp_path / "datalist.json"
    datalist.write_text(json.dumps({"training": [case], "validation": [case], "test": [case]}))
    common = ["--runs_dir", str(tmp_path), "--run_name", "ct", "--dataset_format", "datalist",
              "--dataset_dir", str(datalist), "--label_map", "{'5': 1}", "--unmapped_labels", "background", *TINY]  # fmt: skip
    run_bundle([TRAIN], *common)
    # one case in every split: the split guard refuses to test on a training image unless told it is deliberate
    refused = run_bundle([TRAIN, EVALUATE], *common, check=False)
    assert refused.returncode != 0 and "test images the run trained or selected on: 1 of 1" in refused.stderr
    run_bundle([TRAIN, EVALUATE], *common, "--allow_changed_split", "true")
    run = tmp_path / "ct"
    assert torch.load(run / "model.pt", weights_only=True)["model.2.0.conv.weight"].shape[1] == 2  # background, liver
    mask = _assert_same_grid(run / "test_masks" / "example_ct_sm_seg.nii.gz", ct / "example_ct_sm.nii.gz")
    assert set(np.unique(mask)) <= {0, 1}
    report = json.loads((run / "test_metrics.json").read_text())
    assert report["allow_changed_split"] is True and report["split_changes"][0]["now"].startswith("1 of 1")
    truth = np.asarray(nib.load(ct / "example_seg.nii.gz").dataobj) == 5
    assert report["cases"]["example_ct_sm"]["liver"] == pytest.approx(_dice(mask, truth.astype(int), 1), abs=1e-6)

    # inference on the full-length CT (112 slices): the mask keeps its grid too
    run_bundle([TRAIN, INFERENCE], *common, "--input_dir", str(ct / "example_ct.nii.gz"))
    _assert_same_grid(run / "inference_masks" / "example_ct_seg.nii.gz", ct / "example_ct.nii.gz")


@pytest.mark.realdata
def test_real_labels_outside_the_map_are_an_error(need, tmp_path):
    ct = need("liver_ct")
    case = {"image": str(ct / "example_ct_sm.nii.gz"), "label": str(ct / "example_seg.nii.gz")}
    datalist = tmp_path / "datalist.json"
    datalist.write_text(json.dumps({"training": [case], "validation": [case]}))
    proc = run_bundle(
        [TRAIN], "--runs_dir", str(tmp_path), "--run_name", "x", "--dataset_format", "datalist",
        "--dataset_dir", str(datalist), *TINY, check=False,
    )  # fmt: skip
    assert proc.returncode != 0
    assert "example_seg.nii.gz" in proc.stderr and "--label_map" in proc.stderr
