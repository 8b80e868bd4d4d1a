"""Grouped, class-balanced k-fold and train/val/test splits."""

from __future__ import annotations

from collections import Counter

import pytest

from medtransfer.data.folds import grouped_stratified_kfold, train_val_test_folds
from medtransfer.data.pocus import read_pocus_clips
from medtransfer.errors import DatasetError


def _synthetic(n_groups: int = 30):
    labels, groups = [], []
    for g in range(n_groups):
        for _ in range(1 + g % 4):
            labels.append(g % 3)
            groups.append(f"p{g}")
    return labels, groups


def _check_partition(folds, labels, groups):
    flat = [i for f in folds for i in f]
    assert sorted(flat) == list(range(len(labels)))  # every sample exactly once
    owner = {}
    for f, idx in enumerate(folds):
        for i in idx:
            assert owner.setdefault(groups[i], f) == f  # no group in two folds


@pytest.fixture(scope="module")
def real_clips(need):
    return read_pocus_clips(need("pocus"), probe="convex")


@pytest.mark.realdata
def test_real_folds_grouped_and_balanced(real_clips):
    labels = [c["label"] for c in real_clips]
    groups = [c["group"] for c in real_clips]
    folds = grouped_stratified_kfold(labels, groups, k=5, seed=0)
    assert len(folds) == 5
    _check_partition(folds, labels, groups)
    for cls in set(labels):
        per_fold = [sum(labels[i] == cls for i in f) for f in folds]
        biggest_group = max(Counter(g for g, lab in zip(groups, labels, strict=True) if lab == cls).values())
        assert max(per_fold) - min(per_fold) <= biggest_group + 1, (cls, per_fold)


def test_synthetic_folds_balanced_and_deterministic():
    labels, groups = _synthetic()
    folds = grouped_stratified_kfold(labels, groups, k=5, seed=3)
    _check_partition(folds, labels, groups)
    for cls in range(3):
        per_fold = [sum(labels[i] == cls for i in f) for f in folds]
        assert max(per_fold) - min(per_fold) <= 4, per_fold  # 4 = largest group
    assert grouped_stratified_kfold(labels, groups, k=5, seed=3) == folds
    assert any(grouped_stratified_kfold(labels, groups, k=5, seed=s) != folds for s in range(4, 10))


def test_fewer_groups_than_k_raises():
    with pytest.raises(DatasetError, match="group"):
        grouped_stratified_kfold([0, 1, 0, 1], ["a", "a", "b", "c"], k=4)


@pytest.mark.parametrize("test_fold", [0, 2, 4])
def test_train_val_test_folds(test_fold):
    labels, groups = _synthetic()
    parts = train_val_test_folds(labels, groups, k=5, test_fold=test_fold, seed=1, val_fraction=0.15)
    assert parts["test"] == grouped_stratified_kfold(labels, groups, k=5, seed=1)[test_fold]
    sets = {k: set(v) for k, v in parts.items()}
    assert not (sets["train"] & sets["val"] or sets["train"] & sets["test"] or sets["val"] & sets["test"])
    assert sets["train"] | sets["val"] | sets["test"] == set(range(len(labels)))
    owners = {}
    for name, idx in parts.items():
        for i in idx:
            assert owners.setdefault(groups[i], name) == name  # groups never split
    assert {labels[i] for i in parts["val"]} == {0, 1, 2}
    assert 0.05 * len(labels) <= len(parts["val"]) <= 0.3 * len(labels)
    assert train_val_test_folds(labels, groups, k=5, test_fold=test_fold, seed=1) == parts


@pytest.mark.realdata
def test_real_train_val_test(real_clips):
    labels = [c["label"] for c in real_clips]
    groups = [c["group"] for c in real_clips]
    parts = train_val_test_folds(labels, groups, k=5, test_fold=1, seed=0)
    owners = {}
    for name, idx in parts.items():
        for i in idx:
            assert owners.setdefault(groups[i], name) == name
    assert sorted(i for v in parts.values() for i in v) == list(range(len(labels)))
    assert {labels[i] for i in parts["val"]} == set(labels)
    assert {labels[i] for i in parts["train"]} == set(labels)
