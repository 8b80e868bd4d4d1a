"""Read class-per-folder image collections (``CLASS/*.jpg``, optionally under ``train/``, ``val/``, ``test/``).

The generic layout of natural-image sets such as the CIFAR-10 JPEGs, used to pre-train a start checkpoint and by the
transferability experiments; class names are the sorted folder names. :func:`save_grey_image` writes such folders
(extracted POCUS frames, the synthetic demo sets).
"""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
from PIL import Image

from medtransfer.atomic import atomic_path
from medtransfer.data.splits import carve_val, split_records
from medtransfer.errors import DatasetError

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff")
# what class folders and inference folders take: the images above, and DICOM files (read through pydicom by
# medtransfer.data.transforms.load_image), as chest X-ray collections mix them
FOLDER_SUFFIXES = (*IMAGE_SUFFIXES, ".dcm")


def natural_key(text: str) -> list:
    """Sort key that orders embedded numbers by value: ``fold2`` before ``fold10``, ``volume-9`` before ``volume-10``."""
    return [int(t) if t.isdigit() else t.lower() for t in re.split(r"(\d+)", text)]


def save_grey_image(array: np.ndarray, path: Path, image_format: str = "PNG", **options) -> None:
    """Write an 8-bit grey image via a temporary name then rename, so a concurrent reader never sees half a file."""
    with atomic_path(path) as tmp:
        Image.fromarray(array, mode="L").save(tmp, format=image_format, **options)


def folder_classes(root: str | Path) -> list[str]:
    """Sorted class-folder names of `root` (or of `root/train` when the set is pre-split)."""
    base = Path(root)
    if not base.is_dir():
        raise DatasetError(f"image folder {base} does not exist; pass --dataset_dir with one sub-folder per class")
    if (base / "train").is_dir():
        base = base / "train"
    classes = sorted(p.name for p in base.iterdir() if p.is_dir() and not p.name.startswith("."))
    if len(classes) < 2:
        raise DatasetError(f"{base} needs at least two class folders, found {classes or 'none'}")
    return classes


def read_image_folder(folder: str | Path, classes: list[str]) -> list[dict]:
    """One record per image under `folder/CLASS/`, labels in the order of `classes`."""
    records = []
    for label, name in enumerate(classes):
        class_dir = Path(folder) / name
        if not class_dir.is_dir():
            raise DatasetError(f"class folder {class_dir} is missing; every split needs the classes {classes}")
        files = sorted(p for p in class_dir.iterdir() if p.suffix.lower() in FOLDER_SUFFIXES)
        if not files:
            raise DatasetError(f"class folder {class_dir} holds no images ({', '.join(FOLDER_SUFFIXES)})")
        records += [{"image": str(p), "label": label, "id": f"{name}/{p.name}"} for p in files]
    return records


def image_folder_split(root: str | Path, split: str, seed: int = 0, val_fraction: float = 0.1) -> list[dict]:
    """Records of one split: the set's own split folders where present, else a seeded stratified split.

    A set with ``train/`` and ``test/`` but no ``val/`` gets its validation images carved out of ``train/``
    (stratified, `val_fraction`), so model selection never touches the test images.
    """
    root, classes = Path(root), folder_classes(root)
    if not (root / "train").is_dir():
        records = read_image_folder(root, classes)
        return split_records(records, (1 - 2 * val_fraction, val_fraction, val_fraction), seed)[split]
    if split == "test" or (split == "val" and (root / "val").is_dir()):
        if not (root / split).is_dir():
            raise DatasetError(f"{root} has train/ but no {split}/ folder")
        return read_image_folder(root / split, classes)
    train = read_image_folder(root / "train", classes)
    if (root / "val").is_dir():
        return train
    return carve_val(train, split, val_fraction, seed)
