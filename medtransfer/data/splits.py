"""Seeded, class-stratified train/val/test splits for datasets that ship without an official split (BUSI)."""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from medtransfer.errors import DatasetError

SPLIT_NAMES = ("train", "val", "test")


def _largest_remainder(n: int, fractions: Sequence[float], deficit: Sequence[float]) -> list[int]:
    """Split ``n`` into integer counts closest to ``n * fractions`` (each within 1 of its target).

    Leftover units go to the largest fractional parts; ties go to the split furthest behind its
    overall target so far (``deficit``), so e.g. three classes of 10 don't all round val up.
    """
    targets = [n * f for f in fractions]
    counts = [math.floor(t + 1e-9) for t in targets]
    order = sorted(
        range(len(fractions)),
        key=lambda j: (-round(targets[j] - counts[j], 9), -deficit[j], j),
    )
    for j in order[: n - sum(counts)]:
        counts[j] += 1
    return counts


def stratified_split(
    labels: Sequence[Any] | np.ndarray,
    fractions: tuple[float, float, float] = (0.7, 0.15, 0.15),
    seed: int = 0,
    label_names: Mapping[Any, str] | None = None,
) -> dict[str, list[int]]:
    """Return ``{"train", "val", "test"}`` -> sorted sample indices, stratified by label.

    Per class the counts follow the largest-remainder rule, so each split gets its share of every
    class (within one sample). Every split with a non-zero fraction gets at least one sample of every
    class (taken from the split with most to spare), so validation metrics never miss a class; a class
    with fewer samples than non-zero splits is an error rather than a silently missing class.
    The same labels and seed always give the same split. ``label_names`` names the classes in that error.
    """
    arr = np.asarray(labels)
    if arr.ndim == 2 and arr.shape[1] == 1:
        arr = arr[:, 0]
    if arr.ndim != 1 or arr.size == 0:
        raise DatasetError(f"labels must be a non-empty 1-D sequence, got shape {arr.shape}")
    fr = [float(f) for f in fractions]
    if len(fr) != len(SPLIT_NAMES) or any(f < 0 or not math.isfinite(f) for f in fr):
        raise DatasetError(f"fractions must be three non-negative numbers (train, val, test), got {fractions!r}")
    if abs(sum(fr) - 1.0) > 1e-6:
        raise DatasetError(f"fractions {fractions!r} sum to {sum(fr):g}, not 1; e.g. use (0.7, 0.15, 0.15)")

    active = [j for j, f in enumerate(fr) if f > 0]
    classes, inverse = np.unique(arr, return_inverse=True)
    rng = np.random.default_rng(seed)
    splits: list[list[int]] = [[] for _ in SPLIT_NAMES]
    assigned = [0] * len(SPLIT_NAMES)
    seen = 0
    for c, cls in enumerate(classes):
        idx = np.flatnonzero(inverse == c)
        n = len(idx)
        if n < len(active):
            name = (label_names or {}).get(cls.item())
            shown = f"{name!r} (label {cls.item()})" if name else repr(cls.item())
            raise DatasetError(
                f"class {shown} has {n} sample(s) but {len(active)} splits need one each; "
                "add samples, merge the class, or set a split's fraction to 0"
            )
        deficit = [(seen + n) * fr[j] - assigned[j] for j in range(len(fr))]
        counts = _largest_remainder(n, fr, deficit)
        for j in active:
            if counts[j] == 0:
                donor = max(
                    (k for k in active if counts[k] > 1),
                    key=lambda k: (counts[k] - n * fr[k], counts[k]),
                )
                counts[donor] -= 1
                counts[j] = 1
        perm = idx[rng.permutation(n)]
        start = 0
        for j, count in enumerate(counts):
            splits[j].extend(int(i) for i in perm[start : start + count])
            assigned[j] += count
            start += count
        seen += n
    return {name: sorted(part) for name, part in zip(SPLIT_NAMES, splits, strict=True)}


def split_records(records: Sequence[dict], fractions: tuple[float, float, float], seed: int = 0) -> dict[str, list]:
    """:func:`stratified_split` applied to records by their ``"label"``: ``{"train", "val", "test"}`` -> records.

    Copies of one image under other names land in the same split as it (without copies the split is unchanged).
    """
    from medtransfer.data.content import split_keeping_copies_together

    return split_keeping_copies_together(records, _stratified_records, fractions, seed)


def _stratified_records(records: Sequence[dict], fractions: tuple[float, float, float], seed: int) -> dict[str, list]:
    names = {r["label"]: r["class_name"] for r in records if "class_name" in r}
    idx = stratified_split([r["label"] for r in records], fractions=fractions, seed=seed, label_names=names)
    return {name: [records[i] for i in part] for name, part in idx.items()}


def carve_val(records: Sequence[dict], split: str, val_fraction: float, seed: int = 0) -> list:
    """The ``"train"`` or ``"val"`` part of a training set whose validation is a seeded, stratified fraction of it
    (so model selection never touches a test split)."""
    return split_records(records, (1 - val_fraction, val_fraction, 0.0), seed)[split]
