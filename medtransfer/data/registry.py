"""One registry of dataset formats: name -> how to read a split, its class names and its split rule.

Every bundle and the transferability study read data through :func:`dataset_records` and
:func:`dataset_class_names`, so ``--dataset_format`` takes the same names everywhere (``format_names()``):
``busi``, ``medmnist``, ``imagefolder``, ``pocus_videos``, ``pocus_frames``, the natural-image sets of
:mod:`medtransfer.data.natural` (``cifar10``, ``caltech101``, ..., ``pocus``) and any format added with
:func:`register`. A record is ``{"image": path or uint8 array, "label": int, "id": str, ...}``.

The built-in formats are declared next to their readers (``FORMATS`` in :mod:`~medtransfer.data.busi`,
:mod:`~medtransfer.data.medmnist`, :mod:`~medtransfer.data.natural`, :mod:`~medtransfer.data.pocus_datalist`) and
registered on first use.
"""

from __future__ import annotations

import importlib
import inspect
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from medtransfer.data.heldout import cap_training
from medtransfer.data.splits import SPLIT_NAMES
from medtransfer.errors import DatasetError

Records = list[dict[str, Any]]
SPLITS = (*SPLIT_NAMES, "trainval")  # trainval: train + val, for runs that validate on the test split

_BUILTIN_MODULES = ("busi", "medmnist", "natural", "pocus_datalist")


@dataclass(frozen=True)
class DatasetFormat:
    """One on-disk format: where its files lie, where to get it, how it is split, how to read it.

    ``records(root, split, seed, **options)`` gives the records of ``split`` ("train", "val" or "test"; the same seed
    always gives the same split); ``classes(root, **options)`` the class names in label order. Options are
    format-specific keyword-only parameters (POCUS: ``fold``, ``num_folds``, ``probe``, ...).
    """

    name: str
    layout: str  # the expected tree, "{root}" standing for the root given (missing-data errors spell it out)
    source: str  # where to download it
    split_rule: str  # one line: official split, seeded stratified fractions, folds, ...
    records: Callable[..., Records]
    classes: Callable[..., list[str]]


_FORMATS: dict[str, DatasetFormat] = {}
_loaded = False


def register(dataset_format: DatasetFormat) -> DatasetFormat:
    """Add a format under its name; a name already taken is a ValueError (formats are never replaced silently)."""
    _load_builtin()
    _add(dataset_format)
    return dataset_format


def _add(dataset_format: DatasetFormat) -> None:
    if dataset_format.name in _FORMATS:
        raise ValueError(f"dataset format {dataset_format.name!r} is already registered")
    _FORMATS[dataset_format.name] = dataset_format


def _load_builtin() -> None:
    """Register the formats the built-in readers declare (their modules import this one, so not at import time)."""
    global _loaded
    if not _loaded:
        builtin = [f for m in _BUILTIN_MODULES for f in importlib.import_module(f"medtransfer.data.{m}").FORMATS]
        _loaded = True
        for dataset_format in builtin:
            _add(dataset_format)


def format_names() -> list[str]:
    """Every registered format name, sorted."""
    _load_builtin()
    return sorted(_FORMATS)


def get_format(name: str) -> DatasetFormat:
    """The format registered as ``name``; an unknown name is a DatasetError listing the known ones."""
    _load_builtin()
    if name not in _FORMATS:
        raise DatasetError(f"unknown dataset format {name!r}; choose one of {', '.join(format_names())}")
    return _FORMATS[name]


def _check_options(dataset_format: DatasetFormat, function: Callable, options: dict[str, Any]) -> None:
    """A keyword the format's function does not take is a DatasetError naming the ones it does take."""
    parameters = inspect.signature(function).parameters
    if any(p.kind is inspect.Parameter.VAR_KEYWORD for p in parameters.values()):
        return
    taken = [n for n, p in parameters.items() if p.kind is inspect.Parameter.KEYWORD_ONLY]
    unknown = sorted(set(options) - set(taken))
    if unknown:
        raise DatasetError(
            f"dataset format {dataset_format.name!r} takes no option {', '.join(unknown)} "
            f"(its options: {', '.join(taken) or 'none'})"
        )


def dataset_records(
    dataset_format: str,
    dataset_dir: str | Path,
    split: str = "train",
    seed: int = 0,
    max_train: int | None = None,
    **options: Any,
) -> Records:
    """Records of one split of the data under ``dataset_dir`` read as ``dataset_format`` (see :func:`format_names`).

    ``split`` is "train", "val", "test" or "trainval" (train plus val, for runs that validate on the test split).
    ``max_train`` draws a seeded, class-stratified subset of the training split (how the transferability study
    varies the data amount N of one target without changing its domain); the other splits are never subsampled.
    """
    spec = get_format(dataset_format)
    if split not in SPLITS:
        raise DatasetError(f"split must be one of {', '.join(SPLITS)}, got {split!r}")
    if max_train is not None and max_train < 1:
        raise DatasetError(f"max_train must be >= 1, got {max_train}")
    _check_options(spec, spec.records, options)
    if split == "trainval":
        train = dataset_records(dataset_format, dataset_dir, "train", seed, max_train, **options)
        return train + dataset_records(dataset_format, dataset_dir, "val", seed, **options)
    records = spec.records(Path(dataset_dir), split, seed, **options)
    if split in ("train", "val"):
        records = _without_held_out_copies(spec, Path(dataset_dir), split, seed, records, options)
    if split == "train":
        records = cap_training(records, max_train, seed)
    return records


def _without_held_out_copies(
    spec: DatasetFormat, root: Path, split: str, seed: int, records: Records, options: dict[str, Any]
) -> Records:
    """`records` without the copies of images in the splits after it (test; for train also val), which a dataset's
    own split may hold under other names (MedMNIST's do): the test split stays intact (:mod:`medtransfer.data.content`)."""
    from medtransfer.data.content import drop_copies

    held_out = {}
    for later in ("val", "test")[("train", "val").index(split) :]:
        try:
            held_out[later] = spec.records(root, later, seed, **options)
        except DatasetError:
            continue  # a format without that split
    return drop_copies(records, held_out, root, split)


def dataset_class_names(dataset_format: str, dataset_dir: str | Path, **options: Any) -> list[str]:
    """Class names in label order, so the head size and report labels follow from the data."""
    spec = get_format(dataset_format)
    _check_options(spec, spec.classes, options)
    return spec.classes(Path(dataset_dir), **options)


def dataset_size(dataset_format: str, dataset_dir: str | Path, seed: int = 0, max_train: int | None = None) -> int:
    """N of the transferability regression: the number of training records actually used."""
    return len(dataset_records(dataset_format, dataset_dir, "train", seed=seed, max_train=max_train))
