"""Read MedMNIST ``.npz`` files (official train/val/test splits) with checks that name the file."""

from __future__ import annotations

import os
import re
import zipfile
from pathlib import Path
from typing import Any

import numpy as np

from medtransfer.data.registry import DatasetFormat
from medtransfer.data.splits import SPLIT_NAMES
from medtransfer.errors import DatasetError

_ORGANS = (
    "bladder",
    "femur-left",
    "femur-right",
    "heart",
    "kidney-left",
    "kidney-right",
    "liver",
    "lung-left",
    "lung-right",
    "pancreas",
    "spleen",
)  # OrganA/C/SMNIST: 11 body organs, the same labels in the axial, coronal and sagittal views
MEDMNIST_SPLITS = SPLIT_NAMES
# Class names of every 2D MedMNIST set, in label order: the label names of MedMNIST v2's `INFO`
# (medmnist/info.py of the MedMNIST package, v2.1.0, https://github.com/MedMNIST/MedMNIST), which the .npz files
# do not carry. BreastMNIST's "normal, benign" is spelt "normal_benign", as this toolkit always has.
MEDMNIST_CLASSES: dict[str, tuple[str, ...]] = {
    "pathmnist": (
        "adipose",
        "background",
        "debris",
        "lymphocytes",
        "mucus",
        "smooth muscle",
        "normal colon mucosa",
        "cancer-associated stroma",
        "colorectal adenocarcinoma epithelium",
    ),
    "chestmnist": (  # multi-label: 14 findings, each present or not (see MEDMNIST_MULTI_LABEL)
        "atelectasis",
        "cardiomegaly",
        "effusion",
        "infiltration",
        "mass",
        "nodule",
        "pneumonia",
        "pneumothorax",
        "consolidation",
        "edema",
        "emphysema",
        "fibrosis",
        "pleural",
        "hernia",
    ),
    "dermamnist": (
        "actinic keratoses and intraepithelial carcinoma",
        "basal cell carcinoma",
        "benign keratosis-like lesions",
        "dermatofibroma",
        "melanoma",
        "melanocytic nevi",
        "vascular lesions",
    ),
    "octmnist": ("choroidal neovascularization", "diabetic macular edema", "drusen", "normal"),
    "pneumoniamnist": ("normal", "pneumonia"),
    "retinamnist": ("0", "1", "2", "3", "4"),  # diabetic retinopathy grade (MedMNIST: ordinal regression)
    "breastmnist": ("malignant", "normal_benign"),
    "bloodmnist": (
        "basophil",
        "eosinophil",
        "erythroblast",
        "immature granulocytes(myelocytes, metamyelocytes and promyelocytes)",
        "lymphocyte",
        "monocyte",
        "neutrophil",
        "platelet",
    ),
    "tissuemnist": (
        "Collecting Duct, Connecting Tubule",
        "Distal Convoluted Tubule",
        "Glomerular endothelial cells",
        "Interstitial endothelial cells",
        "Leukocytes",
        "Podocytes",
        "Proximal Tubule Segments",
        "Thick Ascending Limb",
    ),
    "organamnist": _ORGANS,
    "organcmnist": _ORGANS,
    "organsmnist": _ORGANS,
}
# Sets whose images carry several labels at once; the classification bundles train one softmax label per image.
MEDMNIST_MULTI_LABEL = frozenset({"chestmnist"})
_STEM = re.compile(r"([a-z]+mnist)(?:_\d+)?")  # breastmnist.npz, and MedMNIST+'s sizes: dermamnist_224.npz


def medmnist_name(path: str | os.PathLike[str]) -> str | None:
    """The MedMNIST set a file is named after (``dermamnist_224.npz`` -> ``dermamnist``), or None."""
    match = _STEM.fullmatch(Path(path).name.split(".")[0].lower())
    return match.group(1) if match and match.group(1) in MEDMNIST_CLASSES else None


def _refuse_multi_label(file: Path, name: str | None) -> None:
    if name in MEDMNIST_MULTI_LABEL:
        raise DatasetError(
            f"{file} is {name}, a multi-label set ({len(MEDMNIST_CLASSES[name])} findings, any number per image: "
            f"{', '.join(MEDMNIST_CLASSES[name])}); the classification bundles train one label per image "
            "(softmax, cross-entropy) and cannot train it. Use a single-label MedMNIST set"
        )


def read_medmnist(path: str | os.PathLike[str]) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """Load all three splits as ``{split: (images uint8 (N,H,W[,3]), labels int64 (N,))}``.

    Arrays are read eagerly (MedMNIST files are small) so the npz handle is closed before returning.
    Grey sets give (N,H,W) images and RGB sets (PathMNIST, DermaMNIST, RetinaMNIST, BloodMNIST) (N,H,W,3), kept as
    they are. Only single-label files are accepted: multi-label sets such as ChestMNIST need a different head.
    """
    file = Path(path)
    if not file.is_file():
        what = "is a folder" if file.is_dir() else "not found"
        raise DatasetError(f"MedMNIST file {file} {what}; pass the path of a .npz such as medmnist/breastmnist.npz")
    try:
        npz = np.load(file, allow_pickle=False)
    except (OSError, ValueError, EOFError, zipfile.BadZipFile) as exc:
        raise DatasetError(f"cannot open {file} as a MedMNIST .npz: {exc}; download the .npz again") from exc
    if not isinstance(npz, np.lib.npyio.NpzFile):
        raise DatasetError(f"{file} is a single .npy array, not a MedMNIST .npz archive; download the .npz again")

    with npz:
        expected = [f"{split}_{kind}" for split in MEDMNIST_SPLITS for kind in ("images", "labels")]
        missing = [name for name in expected if name not in npz.files]
        if missing:
            raise DatasetError(
                f"{file} lacks arrays {missing} (has {sorted(npz.files)}); "
                "a MedMNIST .npz needs train/val/test _images and _labels"
            )
        try:
            arrays = {name: npz[name] for name in expected}
        except (OSError, ValueError, EOFError, zipfile.BadZipFile) as exc:
            raise DatasetError(f"cannot read arrays from {file}: {exc}; download the .npz again") from exc

    out: dict[str, tuple[np.ndarray, np.ndarray]] = {}
    for split in MEDMNIST_SPLITS:
        images, labels = arrays[f"{split}_images"], arrays[f"{split}_labels"]
        if not (images.ndim == 3 or (images.ndim == 4 and images.shape[-1] == 3)):
            raise DatasetError(
                f"{file}: {split}_images has shape {images.shape}; expected (N,H,W) grey or (N,H,W,3) RGB (2D MedMNIST)"
            )
        if images.dtype != np.uint8:
            raise DatasetError(f"{file}: {split}_images is {images.dtype}, expected uint8; re-export as uint8 0-255")
        if labels.ndim == 2 and labels.shape[1] == 1:
            labels = labels[:, 0]
        elif labels.ndim != 1:
            _refuse_multi_label(file, medmnist_name(file))
            raise DatasetError(
                f"{file}: {split}_labels has shape {labels.shape}; expected (N,1) or (N,) single-label classes "
                "(multi-label MedMNIST sets are not supported)"
            )
        if len(labels) != len(images):
            raise DatasetError(
                f"{file}: {split} has {len(images)} images but {len(labels)} labels; the file is inconsistent"
            )
        if labels.size and (not np.issubdtype(labels.dtype, np.integer) or labels.min() < 0):
            raise DatasetError(f"{file}: {split}_labels must be non-negative integers, got {labels.dtype}")
        out[split] = (images, labels.astype(np.int64))
    return out


def medmnist_records(path: str | os.PathLike[str], split: str) -> list[dict[str, Any]]:
    """Return one ``{"image": HxW[x3] uint8 array, "label": int, "id": "split-i"}`` record per sample."""
    if split not in MEDMNIST_SPLITS:
        raise DatasetError(f"unknown MedMNIST split {split!r} for {path}; use one of {MEDMNIST_SPLITS}")
    images, labels = read_medmnist(path)[split]
    return [{"image": images[i], "label": int(labels[i]), "id": f"{split}-{i}"} for i in range(len(images))]


def medmnist_class_names(path: str | os.PathLike[str]) -> list[str]:
    """The published class names of a file named after a MedMNIST 2D set (:data:`MEDMNIST_CLASSES`, also with
    MedMNIST+'s size suffix), else ``class0``, ``class1``, ...; ChestMNIST (multi-label) is a DatasetError."""
    name = medmnist_name(path)
    _refuse_multi_label(Path(path), name)
    if name is not None:
        return list(MEDMNIST_CLASSES[name])
    labels = read_medmnist(path)["train"][1]
    return [f"class{i}" for i in range(int(labels.max()) + 1)]


FORMATS = (
    DatasetFormat(
        "medmnist",
        "{root} is the .npz file itself (e.g. medmnist/breastmnist.npz) with train/val/test _images and _labels",
        "https://medmnist.com/ (MedMNIST v2, the 2D .npz files)",
        "the official train/val/test split of the .npz, as published (seed unused)",
        lambda root, split, seed: medmnist_records(root, split),
        medmnist_class_names,
    ),
)
