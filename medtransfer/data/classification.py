"""Datalists for classification bundles: one entry point over every supported on-disk format.

Bundles call `classification_datalist(dataset_dir, dataset_format, split)` and get MONAI-style records
(``{"image": path or array, "label": int, "id": str}``), so switching from the demo set to real BUSI or to a MedMNIST
``.npz`` is a single override of ``dataset_dir`` / ``dataset_format``.
"""

from __future__ import annotations

from pathlib import Path

from medtransfer.data.busi import BUSI_CLASSES, read_busi
from medtransfer.data.imagefolder import IMAGE_SUFFIXES, folder_classes, image_folder_split
from medtransfer.data.medmnist import medmnist_records
from medtransfer.data.splits import SPLIT_NAMES, split_records
from medtransfer.errors import DatasetError

FORMATS = ("busi", "medmnist", "imagefolder")
SPLITS = SPLIT_NAMES

# Class names of the MedMNIST files this project uses, in label order (MedMNIST v2 `INFO`).
MEDMNIST_CLASSES = {
    "breastmnist": ("malignant", "normal_benign"),
    "pneumoniamnist": ("normal", "pneumonia"),
}


def class_names(dataset_format: str, dataset_dir: str | Path) -> list[str]:
    """Class names in label order, so the head size and report labels follow from the dataset."""
    _check_format(dataset_format)
    if dataset_format == "busi":
        return list(BUSI_CLASSES)
    if dataset_format == "imagefolder":
        return folder_classes(dataset_dir)
    stem = Path(dataset_dir).name.split(".")[0].lower()
    if stem in MEDMNIST_CLASSES:
        return list(MEDMNIST_CLASSES[stem])
    from medtransfer.data.medmnist import read_medmnist

    labels = read_medmnist(dataset_dir)["train"][1]
    return [f"class{i}" for i in range(int(labels.max()) + 1)]


def classification_datalist(
    dataset_dir: str | Path,
    dataset_format: str = "busi",
    split: str = "train",
    seed: int = 0,
    fractions: tuple[float, float, float] = (0.7, 0.15, 0.15),
) -> list[dict]:
    """Records of one split.

    MedMNIST files carry an official train/val/test split, which is used as is (so test numbers compare with the
    published ones); image folders use their own train/val/test folders where present. BUSI folders get a seeded
    stratified split; the same `seed` in training and evaluation
    gives the same test images, which training never sees.
    """
    _check_format(dataset_format)
    if split not in SPLITS:
        raise ValueError(f"split must be one of {SPLITS}, got {split!r}")
    if dataset_format == "medmnist":
        return medmnist_records(dataset_dir, split)
    if dataset_format == "imagefolder":
        return image_folder_split(dataset_dir, split, seed=seed)
    records = read_busi(dataset_dir)
    return [{k: r[k] for k in ("image", "label", "id")} for r in split_records(records, fractions, seed)[split]]


def image_folder_datalist(input_dir: str | Path) -> list[dict]:
    """Every image file under `input_dir` (recursively, sorted), for inference on unlabelled images."""
    root = Path(input_dir)
    if not root.is_dir():
        raise DatasetError(f"input folder {root} does not exist; pass --input_dir with the images to classify")
    files = sorted(p for p in root.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES and "_mask" not in p.stem)
    if not files:
        raise DatasetError(f"no images ({', '.join(IMAGE_SUFFIXES)}) found under {root}")
    return [{"image": str(p), "id": str(p.relative_to(root))} for p in files]


def _check_format(dataset_format: str) -> None:
    if dataset_format not in FORMATS:
        raise ValueError(f"dataset_format must be one of {FORMATS}, got {dataset_format!r}")
