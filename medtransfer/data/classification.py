"""Datalists for the classification bundles: one split of any registered format, or unlabelled images for inference.

Bundles call `classification_datalist(dataset_dir, dataset_format, split)` and get MONAI-style records
(``{"image": path or array, "label": int, "id": str}``), so switching from the demo set to real BUSI, a MedMNIST
``.npz`` or class folders is a single override of ``dataset_dir`` / ``dataset_format``. Reading goes through
:mod:`medtransfer.data.registry`, which lists the formats and their split rules.
"""

from __future__ import annotations

from pathlib import Path

from medtransfer.data.imagefolder import FOLDER_SUFFIXES
from medtransfer.data.registry import Records, dataset_class_names, dataset_records
from medtransfer.errors import DatasetError


def class_names(dataset_format: str, dataset_dir: str | Path) -> list[str]:
    """Class names in label order, so the head size and report labels follow from the dataset."""
    return dataset_class_names(dataset_format, dataset_dir)


def classification_datalist(
    dataset_dir: str | Path, dataset_format: str = "busi", split: str = "train", seed: int = 0
) -> Records:
    """Records of one split (the format's own split rule, :class:`~medtransfer.data.registry.DatasetFormat`).

    MedMNIST files carry an official train/val/test split, which is used as is (so test numbers compare with the
    published ones); image folders use their own train/val/test folders where present. BUSI folders get a seeded
    stratified split; the same `seed` in training and evaluation gives the same test images, which training never
    sees.
    """
    return dataset_records(dataset_format, dataset_dir, split, seed=seed)


def image_folder_datalist(input_dir: str | Path) -> list[dict]:
    """Every image file under `input_dir` (recursively, sorted), for inference on unlabelled images."""
    root = Path(input_dir)
    if not root.is_dir():
        raise DatasetError(f"input folder {root} does not exist; pass --input_dir with the images to classify")
    files = sorted(p for p in root.rglob("*") if p.suffix.lower() in FOLDER_SUFFIXES and "_mask" not in p.stem)
    if not files:
        raise DatasetError(f"no images ({', '.join(FOLDER_SUFFIXES)}) found under {root}")
    return [{"image": str(p), "id": str(p.relative_to(root))} for p in files]
