"""`medtransfer doctor`: small synthetic sets, each broken in known ways, must give exactly those rows."""

from __future__ import annotations

import csv
import json
import shutil
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
from PIL import Image

from medtransfer.cli import main
from medtransfer.data import make_synthetic_busi, make_synthetic_kermany, make_synthetic_lits, make_synthetic_pocus
from medtransfer.doctor import Diagnosis, diagnose
from medtransfer.errors import DatasetError

# 14 images per class split 70/15/15 give 10/2/2 per class: no class is ever down to one image
BUSI_PER_CLASS = 14


def _rows(diagnosis: Diagnosis) -> list[tuple[str, str, str, str]]:
    return [(p.severity, p.check, p.split, p.where) for p in diagnosis.problems]


@pytest.fixture(scope="module")
def busi_source(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A clean synthetic BUSI set; tests copy it before breaking it."""
    out = tmp_path_factory.mktemp("busi") / "source"
    return make_synthetic_busi(out, n_per_class=BUSI_PER_CLASS, image_size=32)


@pytest.fixture
def busi(busi_source: Path, tmp_path: Path) -> Path:
    return Path(shutil.copytree(busi_source, tmp_path / "busi"))


@pytest.fixture
def kermany(tmp_path: Path) -> Path:
    """train/val/test class folders, NORMAL and PNEUMONIA, 3/2/2 images each."""
    return make_synthetic_kermany(tmp_path / "kermany", n_per_class=(3, 2, 2), image_size=32)


def test_clean_synthetic_busi_has_no_problem(busi: Path) -> None:
    diagnosis = diagnose(busi, "busi", progress=False)
    assert diagnosis.problems == []
    assert diagnosis.records == {"train": 30, "val": 6, "test": 6}
    assert (diagnosis.errors, diagnosis.warnings, diagnosis.exit_status) == (0, 0, 0)
    assert diagnosis.report().endswith("no problems found\n\n0 errors, 0 warnings")


def test_broken_busi_lists_every_problem_not_only_the_first(busi: Path) -> None:
    (busi / "benign" / "benign (3).png").write_bytes(b"\x89PNG\r\n\x1a\n but no image data")
    (busi / "malignant" / "malignant (5).png").unlink()
    (busi / "normal" / "normal (2)_mask.png").unlink()
    Image.fromarray(np.zeros((16, 16), np.uint8)).save(busi / "normal" / "normal (4)_mask.png")

    diagnosis = diagnose(busi, "busi", progress=False)

    # read_busi stops at the corrupt benign image; its row says nothing the first row does not, so it is left out
    assert _rows(diagnosis) == [
        ("error", "unreadable file", "all", "benign/benign (3).png"),
        ("error", "mask without image", "all", "malignant/malignant (5)_mask.png"),
        ("error", "label/shape mismatch", "all", "normal/normal (4)_mask.png"),
        ("warning", "image without mask", "all", "normal/normal (2).png"),
    ]
    mismatch = diagnosis.problems[2]
    assert mismatch.detail == "mask is 16x16 but its image normal (4).png is 32x32"
    assert diagnosis.records == {}
    assert (diagnosis.errors, diagnosis.warnings, diagnosis.exit_status) == (3, 1, 1)
    assert diagnosis.summary() == "3 errors, 1 warning"


def test_copies_unreadable_files_and_single_images_in_class_folders(kermany: Path) -> None:
    train_normal = sorted((kermany / "train" / "NORMAL").iterdir())[0]
    shutil.copy(train_normal, kermany / "test" / "NORMAL" / "leaked.jpeg")
    train_pneumonia = sorted((kermany / "train" / "PNEUMONIA").iterdir())[0]
    shutil.copy(train_pneumonia, kermany / "train" / "PNEUMONIA" / "twice.jpeg")
    sorted((kermany / "val" / "PNEUMONIA").iterdir())[0].unlink()
    (kermany / "val" / "NORMAL" / "broken.jpeg").write_bytes(b"not a JPEG")

    diagnosis = diagnose(kermany, "imagefolder", progress=False)

    shown = f"train/NORMAL/{train_normal.name}"
    # the dataset's own split holds a training image in test too: a run leaves it out of training (a warning, since
    # nothing leaks), and the training split doctor checks is the one a run uses
    assert _rows(diagnosis) == [
        ("error", "unreadable file", "val", "val/NORMAL/broken.jpeg"),
        ("warning", "single-image class", "val", "PNEUMONIA"),
        ("warning", "duplicate within split", "train", f"train/PNEUMONIA/{train_pneumonia.name}"),
        ("warning", "copy of a held-out image", "train", shown),
    ]
    assert "a run leaves it out of train" in diagnosis.problems[3].detail
    assert diagnosis.records == {"train": 6, "val": 4, "test": 5}


def test_an_empty_class_folder_is_one_row_and_the_other_splits_are_still_checked(kermany: Path) -> None:
    for path in (kermany / "test" / "PNEUMONIA").iterdir():
        path.unlink()
    train_normal = sorted((kermany / "train" / "NORMAL").iterdir())[0]
    shutil.copy(train_normal, kermany / "val" / "NORMAL" / "copy.jpeg")

    diagnosis = diagnose(kermany, "imagefolder", progress=False)

    # the reader's own error for test/ names the same folder, so it adds no row; train and val are read and checked
    assert _rows(diagnosis) == [
        ("error", "empty class", "test", "PNEUMONIA"),
        ("warning", "copy of a held-out image", "train", f"train/NORMAL/{train_normal.name}"),
    ]
    assert diagnosis.records == {"train": 5, "val": 5}


def test_medmnist_labels_outside_the_classes_empty_classes_and_leaked_arrays(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    images = {split: rng.integers(0, 256, (n, 8, 8), dtype=np.uint8) for split, n in (("train", 4), ("val", 3), ("test", 4))}  # fmt: skip
    images["test"][3] = images["train"][2]
    labels = {"train": [0, 0, 1, 1], "val": [0, 0, 5], "test": [0, 0, 1, 1]}
    npz = tmp_path / "breastmnist.npz"  # named after BreastMNIST: classes malignant, normal_benign
    arrays = {f"{s}_images": images[s] for s in images} | {f"{s}_labels": np.array(labels[s])[:, None] for s in labels}
    np.savez(npz, **arrays)

    diagnosis = diagnose(npz, "medmnist", progress=False)

    assert _rows(diagnosis) == [
        ("error", "empty class", "val", "normal_benign"),
        ("error", "label outside classes", "val", "label 5"),
        ("warning", "single-image class", "train", "normal_benign"),  # train-2 left out: a copy of test-3
        ("warning", "copy of a held-out image", "train", "train-2"),
    ]
    assert "the 2 classes are 0..1 (malignant, normal_benign)" in diagnosis.problems[1].detail


def test_segmentation_shape_mismatch_and_a_volume_listed_in_two_splits(tmp_path: Path) -> None:
    lits = make_synthetic_lits(tmp_path / "lits", n_volumes=3, shape=(16, 16, 16))
    assert diagnose(lits, "lits", progress=False).problems == []

    datalist = {
        "training": [{"image": f"volume-{i}.nii.gz", "label": f"segmentation-{i}.nii.gz"} for i in (0, 1)],
        "validation": [{"image": "volume-2.nii.gz", "label": "segmentation-2.nii.gz"}],
        "test": [{"image": "volume-0.nii.gz", "label": "segmentation-0.nii.gz"}],
    }
    (lits / "datalist.json").write_text(json.dumps(datalist))
    assert _rows(diagnose(lits, "datalist", progress=False)) == [
        ("error", "duplicate across splits", "train, test", "volume-0.nii.gz")
    ]

    label = nib.load(lits / "segmentation-1.nii.gz")
    nib.save(nib.Nifti1Image(np.zeros((16, 16, 8), np.uint8), label.affine), lits / "segmentation-1.nii.gz")
    diagnosis = diagnose(lits, "lits", progress=False)
    assert _rows(diagnosis) == [("error", "reader", "all", "")]
    detail = diagnosis.problems[0].detail
    assert (
        "segmentation-1.nii.gz has shape (16, 16, 8)" in detail and "volume-1.nii.gz has shape (16, 16, 16)" in detail
    )
    assert diagnosis.problems[0].fix == "pair each volume with its own segmentation"


def test_an_undecodable_clip_is_named_once(tmp_path: Path) -> None:
    pocus = make_synthetic_pocus(tmp_path / "pocus", n_patients=(5, 5, 5), clips_per_patient=1, n_frames=4, frame_size=32)  # fmt: skip
    assert diagnose(pocus, "pocus_videos", progress=False).problems == []
    clip = sorted((pocus / "pocus_videos" / "convex").glob("Reg_*"))[0]
    clip.write_bytes(b"not a video")

    diagnosis = diagnose(pocus, "pocus_videos", progress=False)

    assert _rows(diagnosis) == [("error", "unreadable file", "all", f"pocus_videos/convex/{clip.name}")]


def test_a_missing_folder_is_one_reader_row(tmp_path: Path) -> None:
    diagnosis = diagnose(tmp_path / "nothing", "busi", progress=False)
    assert _rows(diagnosis) == [("error", "reader", "all", "")]
    assert diagnosis.problems[0].detail.startswith(f"BUSI folder {tmp_path / 'nothing'} not found")


def test_unknown_format_is_a_usage_error(tmp_path: Path) -> None:
    with pytest.raises(DatasetError, match="unknown dataset format 'bussi'; choose one of .*busi.*lits, msd, datalist"):
        diagnose(tmp_path, "bussi")


def test_cli_prints_the_table_saves_it_and_sets_the_exit_status(busi: Path, tmp_path: Path, capsys) -> None:
    out_json, out_csv = tmp_path / "doctor.json", tmp_path / "doctor.csv"
    assert main(["doctor", str(busi), "--format", "busi", "--json", str(out_json), "--csv", str(out_csv)]) == 0
    assert capsys.readouterr().out.rstrip().splitlines()[-1] == "0 errors, 0 warnings"
    assert json.loads(out_json.read_text())["records"] == {"train": 30, "val": 6, "test": 6}

    (busi / "malignant" / "malignant (5).png").unlink()
    argv = [
        "doctor",
        str(busi),
        "--format",
        "busi",
        "--split_seed",
        "3",
        "--json",
        str(out_json),
        "--csv",
        str(out_csv),
    ]
    assert main(argv) == 1
    lines = capsys.readouterr().out.rstrip().splitlines()
    assert lines[-1] == "1 error, 0 warnings"
    assert any("| error | mask without image | all | malignant/malignant (5)_mask.png |" in line for line in lines)
    saved = json.loads(out_json.read_text())
    assert (saved["split_seed"], saved["errors"], saved["problems"][0]["check"]) == (3, 1, "mask without image")
    with out_csv.open(newline="") as f:
        rows = list(csv.DictReader(f))
    assert [(r["severity"], r["check"], r["where"]) for r in rows] == [
        ("error", "mask without image", "malignant/malignant (5)_mask.png")
    ]

    assert main(["doctor", str(busi), "--format", "bussi"]) == 2
    assert "unknown dataset format 'bussi'" in capsys.readouterr().err


@pytest.mark.realdata
def test_real_busi_sample_is_clean_but_thin(need) -> None:
    """30 real BUSI images, 10 per class, each with its mask(s): 7/1-2/1-2 per class after the 70/15/15 split, so
    val (5 images) has one class and test (4 images) two classes down to a single image."""
    diagnosis = diagnose(need("busi"), "busi", progress=False)
    assert diagnosis.records == {"train": 21, "val": 5, "test": 4}
    assert diagnosis.errors == 0 and diagnosis.exit_status == 0
    single = [(p.split, p.check) for p in diagnosis.problems]
    assert sorted(single) == [("test", "single-image class")] * 2 + [("val", "single-image class")]
