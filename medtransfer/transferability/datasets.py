"""One entry point for every dataset the transferability study pre-trains or fine-tunes on.

Natural-image sets come through :mod:`medtransfer.data.natural` (CIFAR, Caltech, CUB, ..., POCUS, image folders);
the medical classification sets through :func:`medtransfer.data.classification.classification_datalist` (``busi``
folders, ``medmnist`` ``.npz`` files). ``max_train`` draws a seeded, class-stratified subset of the training split,
which is how the study varies the data amount N of one target without changing its domain.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from medtransfer.data.classification import class_names, classification_datalist
from medtransfer.data.natural import NATURAL_DATASETS, natural_class_names, natural_records
from medtransfer.data.splits import split_records

MEDICAL_DATASETS = ("busi", "medmnist")


def transfer_dataset_names() -> list[str]:
    """Every name :func:`transfer_records` accepts."""
    return sorted(NATURAL_DATASETS) + list(MEDICAL_DATASETS)


def _check(dataset: str) -> None:
    if dataset not in NATURAL_DATASETS and dataset not in MEDICAL_DATASETS:
        raise ValueError(f"unknown dataset {dataset!r}; choose one of {', '.join(transfer_dataset_names())}")


def transfer_class_names(dataset: str, root: str | Path) -> list[str]:
    """Class names in label order (the head size follows from them)."""
    _check(dataset)
    if dataset in MEDICAL_DATASETS:
        return class_names(dataset, root)
    return natural_class_names(dataset, root)


def transfer_records(
    dataset: str, root: str | Path, split: str, seed: int = 0, max_train: int | None = None
) -> list[dict[str, Any]]:
    """Records ``{"image", "label", "id"}`` of one split; ``max_train`` subsamples the training split only.

    ``split="trainval"`` is training plus validation, for runs that validate on another split (pre-training on all
    5,000 CIFAR-10 training images, validating on its test images, as the study does).
    """
    _check(dataset)
    if split == "trainval":
        return transfer_records(dataset, root, "train", seed, max_train) + transfer_records(dataset, root, "val", seed)
    if dataset in MEDICAL_DATASETS:
        records = classification_datalist(root, dataset, split, seed=seed)
    else:
        records = natural_records(dataset, root, split, seed=seed)
    if split == "train" and max_train is not None and max_train < len(records):
        if max_train < 1:
            raise ValueError(f"max_train must be >= 1, got {max_train}")
        fraction = max_train / len(records)
        records = split_records(records, (fraction, 1 - fraction, 0.0), seed)["train"]
    return records


def transfer_dataset_size(dataset: str, root: str | Path, seed: int = 0, max_train: int | None = None) -> int:
    """N of the regression: the number of training records actually used."""
    return len(transfer_records(dataset, root, "train", seed=seed, max_train=max_train))
