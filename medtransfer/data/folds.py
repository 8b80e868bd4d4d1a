"""Grouped, class-balanced k-fold splits: all samples of one patient/series land in the same fold."""

from __future__ import annotations

from collections import Counter
from collections.abc import Hashable, Sequence
from typing import Any

import numpy as np

from medtransfer.errors import DatasetError


def _group_table(labels: Sequence[Any], groups: Sequence[Hashable]) -> tuple[list[Any], dict[Hashable, list[int]]]:
    labels = list(np.asarray(labels).tolist()) if isinstance(labels, np.ndarray) else list(labels)
    groups = list(np.asarray(groups).tolist()) if isinstance(groups, np.ndarray) else list(groups)
    if not labels or len(labels) != len(groups):
        raise DatasetError(f"labels and groups must be non-empty and equally long, got {len(labels)} and {len(groups)}")
    members: dict[Hashable, list[int]] = {}
    for i, g in enumerate(groups):
        members.setdefault(g, []).append(i)
    return labels, members


def _majority(labels: list[Any], idx: list[int]) -> Any:
    counts = Counter(labels[i] for i in idx)
    best = max(counts.values())
    return min((c for c, n in counts.items() if n == best), key=repr)  # deterministic tie-break


def grouped_stratified_kfold(
    labels: Sequence[Any] | np.ndarray, groups: Sequence[Hashable] | np.ndarray, k: int = 5, seed: int = 0
) -> list[list[int]]:
    """Split sample indices into ``k`` folds (sorted index lists) keeping each group in one fold.

    Greedy: groups are taken largest first (equal sizes in a seeded random order) and each goes to
    the fold holding the fewest samples of the group's majority class, ties going to the fold with
    the fewest samples overall, then the lowest fold number. The same inputs and seed always give
    the same folds. Fewer distinct groups than ``k`` is a :class:`DatasetError`.
    """
    if k < 2:
        raise DatasetError(f"k must be >= 2, got {k}")
    labels, members = _group_table(labels, groups)
    if len(members) < k:
        raise DatasetError(
            f"only {len(members)} group(s) for {k} folds; every fold needs a whole group: lower k or add patients"
        )
    rng = np.random.default_rng(seed)
    keys = list(members)
    shuffle = rng.permutation(len(keys))
    order = sorted(range(len(keys)), key=lambda j: (-len(members[keys[j]]), shuffle[j]))
    folds: list[list[int]] = [[] for _ in range(k)]
    per_class: list[Counter] = [Counter() for _ in range(k)]
    for j in order:
        idx = members[keys[j]]
        major = _majority(labels, idx)
        f = min(range(k), key=lambda f: (per_class[f][major], len(folds[f]), f))
        folds[f].extend(idx)
        per_class[f].update(labels[i] for i in idx)
    return [sorted(f) for f in folds]


def grouped_validation_split(
    labels: Sequence[Any] | np.ndarray,
    groups: Sequence[Hashable] | np.ndarray,
    pool: Sequence[int],
    val_fraction: float = 0.15,
    seed: int = 0,
) -> tuple[list[int], list[int]]:
    """Split the sample indices ``pool`` into ``(train, val)`` by whole groups.

    Groups of the pool (seeded order) go to validation until it holds about ``val_fraction`` of all
    samples, first one group per class where the class has at least two groups in the pool (so
    validation sees each class but training keeps it too). Used for checkpoint selection and MetaLR's
    meta batches, which must never come from the test fold.
    """
    if not 0 <= val_fraction < 1:
        raise DatasetError(f"val_fraction must be in [0, 1), got {val_fraction}")
    labels, members = _group_table(labels, groups)
    pool_set = set(pool)
    pool_groups = [g for g, idx in members.items() if idx[0] in pool_set]
    rng = np.random.default_rng(seed)
    pool_groups = [pool_groups[j] for j in rng.permutation(len(pool_groups))]
    target = val_fraction * len(labels)
    val_groups: list[Hashable] = []
    if target > 0 and len(pool_groups) > 1:
        by_class: dict[Any, list[Hashable]] = {}
        for g in pool_groups:
            by_class.setdefault(_majority(labels, members[g]), []).append(g)
        for cls in sorted(by_class, key=repr):
            candidates = sorted(by_class[cls], key=lambda g: len(members[g]))  # smallest first: stay near target
            if len(candidates) >= 2:
                val_groups.append(candidates[0])
        n_val = sum(len(members[g]) for g in val_groups)
        for g in pool_groups:
            if n_val >= target or len(val_groups) >= len(pool_groups) - 1:
                break
            if g in val_groups:
                continue
            if abs(n_val + len(members[g]) - target) <= abs(target - n_val) or n_val == 0:
                val_groups.append(g)
                n_val += len(members[g])
    val_set = set(val_groups)
    val = sorted(i for g in val_groups for i in members[g])
    train = sorted(i for g in pool_groups if g not in val_set for i in members[g])
    return train, val


def train_val_test_folds(
    labels: Sequence[Any] | np.ndarray,
    groups: Sequence[Hashable] | np.ndarray,
    k: int = 5,
    test_fold: int = 0,
    seed: int = 0,
    val_fraction: float = 0.15,
) -> dict[str, list[int]]:
    """``{"train", "val", "test"}`` -> sorted indices: test is fold ``test_fold`` of
    :func:`grouped_stratified_kfold`; the other folds are split by :func:`grouped_validation_split`
    (seed + 1). No group is in two parts.
    """
    if not 0 <= test_fold < k:
        raise DatasetError(f"test_fold must be in [0, {k}), got {test_fold}")
    if not 0 <= val_fraction < 1:
        raise DatasetError(f"val_fraction must be in [0, 1), got {val_fraction}")
    folds = grouped_stratified_kfold(labels, groups, k=k, seed=seed)
    test = folds[test_fold]
    test_set = set(test)
    n = sum(len(f) for f in folds)
    pool = [i for i in range(n) if i not in test_set]
    train, val = grouped_validation_split(labels, groups, pool, val_fraction=val_fraction, seed=seed + 1)
    return {"train": train, "val": val, "test": list(test)}
