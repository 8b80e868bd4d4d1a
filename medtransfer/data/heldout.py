"""Parts of a training split: a capped subset (``max_train``) and the held-out meta slice MetaLR learns its LRs on.

Meta data, validation (checkpoint selection) and test (reporting) must be three disjoint sets: LRs tuned on the
images that then choose the checkpoint bias the validation score upward, and the selection with it. So MetaLR's
default meta source, ``heldout``, carves a fixed slice out of the training split, grouped as validation is
(records with a ``"group"`` key, e.g. POCUS patients, stay whole on one side), class-stratified otherwise, seeded by the
split seed. The slice is never trained on; the bundles record it in ``split.json`` (its fingerprint is checked on
resume, its images count as fit images the test split must not hold).
"""

from __future__ import annotations

import logging
import math
import os
from collections.abc import Sequence
from typing import Any

import numpy as np

from medtransfer.data.folds import grouped_validation_split
from medtransfer.data.splits import stratified_split
from medtransfer.errors import DatasetError

logger = logging.getLogger(__name__)

Records = list[dict[str, Any]]


def _split_off(records: Sequence[dict], fraction: float, seed: int, keep: float | None = None) -> tuple[list, list]:
    """(kept, split off) indices: about `fraction` of the records split off, by group, else by class, else at random.

    `keep` (default 1 − fraction) is the kept share as the caller computed it, so a cap keeps exactly the stratified
    counts of ``max_train / n`` (the same floating-point value gives the same rounding)."""
    n = len(records)
    shares = (1 - fraction, fraction, 0.0) if keep is None else (keep, 1 - keep, 0.0)
    if all("group" in r for r in records):
        labels = [r.get("label", 0) for r in records]
        return grouped_validation_split(labels, [r["group"] for r in records], range(n), fraction, seed=seed)
    labels = [r.get("label") for r in records]
    if all(isinstance(label, (int, np.integer)) for label in labels):
        names = {r["label"]: r["class_name"] for r in records if "class_name" in r}
        parts = stratified_split(labels, shares, seed=seed, label_names=names)
        return parts["train"], parts["val"]
    order = np.random.default_rng(seed).permutation(n)  # labels that are files (segmentation masks): unstratified
    k = round(fraction * n)
    return sorted(int(i) for i in order[k:]), sorted(int(i) for i in order[:k])


def cap_training(records: Sequence[dict], max_train: int | None, seed: int = 0) -> Records:
    """A seeded subset of about `max_train` training records (class-stratified; whole groups where records have one).

    Args:
        records: the training split.
        max_train: the cap (None: every record).
        seed: the split seed (the same seed gives the same subset).
    """
    if max_train is None:
        return list(records)
    if int(max_train) < 1:
        raise DatasetError(f"max_train must be >= 1, got {max_train}")
    if int(max_train) >= len(records):
        return list(records)
    keep = int(max_train) / len(records)
    kept, _ = _split_off(records, 1 - keep, seed, keep=keep)
    return [records[i] for i in kept]


def fit_and_meta(
    records: Sequence[dict],
    max_train: int | None = None,
    meta_source: str = "validation",
    meta_fraction: float = 0.1,
    min_meta: int = 1,
    seed: int = 0,
) -> dict[str, Records]:
    """``{"train": ..., "meta": ...}``: the records training uses and the held-out meta slice (empty unless
    `meta_source` is ``heldout``).

    Args:
        records: the training split as the dataset defines it.
        max_train: cap the training split first (:func:`cap_training`).
        meta_source: MetaLR's meta source; only ``heldout`` carves a slice.
        meta_fraction: the slice's share of the (capped) training split.
        min_meta: the slice holds at least this many records: one meta batch per process (the fraction is raised to
            reach it, and the raise is logged). Under torchrun it is multiplied by ``WORLD_SIZE``.
        seed: the split seed.
    """
    capped = cap_training(records, max_train, seed)
    if meta_source != "heldout":
        return {"train": capped, "meta": []}
    if not 0 < float(meta_fraction) < 1:
        raise DatasetError(f"metalr_meta_fraction must be in (0, 1), got {meta_fraction}")
    needed = int(min_meta) * int(os.environ.get("WORLD_SIZE", "1"))
    fraction = float(meta_fraction)
    if math.floor(fraction * len(capped)) < needed:
        fraction = min(needed / max(len(capped), 1), 1.0)
        logger.info(
            f"metalr_meta_fraction {meta_fraction} of {len(capped)} training records is less than one meta batch "
            f"({needed}); holding out {fraction:.3f} instead"
        )
    if fraction >= 1 or len(capped) - needed < 1:
        raise DatasetError(
            f"the training split has {len(capped)} records: too few to hold out a meta batch of {needed} and still "
            "train; lower batch_size, or use --metalr_meta_source train or train_next"
        )
    kept, meta = _split_off(capped, fraction, seed + 104_729)
    while len(meta) < needed and fraction < 0.5:  # whole groups can fall short of the target: aim higher
        fraction = min(fraction + (needed - len(meta)) / len(capped), 0.5)
        kept, meta = _split_off(capped, fraction, seed + 104_729)
    if len(meta) < needed:
        raise DatasetError(
            f"the held-out meta slice has {len(meta)} records, fewer than one meta batch ({needed}); raise "
            "--metalr_meta_fraction or lower --batch_size"
        )
    return {"train": [capped[i] for i in kept], "meta": [capped[i] for i in meta]}


def meta_records(meta_source: str, fit: dict[str, Records], val_records: Records, batch_size: int) -> Records:
    """The records of the bundle's ``meta_dataset`` for a meta source.

    ``heldout``: the held-out slice; ``train``: the training records (un-augmented by the bundle);
    ``first_train_batch``: the first ``batch_size`` of them per process, in dataset order; ``validation``: the
    validation split; ``train_next``: none.
    """
    if meta_source == "heldout":
        return fit["meta"]
    if meta_source == "train":
        return fit["train"]
    if meta_source == "first_train_batch":
        return fit["train"][: int(batch_size) * int(os.environ.get("WORLD_SIZE", "1"))]
    if meta_source == "validation":
        return list(val_records)
    if meta_source == "train_next":
        return []
    raise DatasetError(
        f"meta_source must be heldout, train, validation, train_next or first_train_batch, got {meta_source!r}"
    )
