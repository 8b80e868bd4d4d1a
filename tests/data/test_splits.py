"""stratified_split: disjoint, complete, proportional per class, seeded, and strict about tiny classes."""

from __future__ import annotations

from collections import Counter

import numpy as np
import pytest

from medtransfer.data import read_busi, read_medmnist, stratified_split
from medtransfer.errors import DatasetError


def _check(labels: list, fractions: tuple[float, float, float], seed: int) -> dict[str, list[int]]:
    split = stratified_split(labels, fractions, seed=seed)
    assert list(split) == ["train", "val", "test"]
    everything = [i for part in split.values() for i in part]
    assert len(everything) == len(set(everything)), "splits overlap"
    assert sorted(everything) == list(range(len(labels))), "splits do not cover every sample"
    totals = Counter(labels)
    for name, fraction in zip(split, fractions, strict=True):
        counts = Counter(labels[i] for i in split[name])
        for cls, n in totals.items():
            assert abs(counts[cls] - n * fraction) <= 1, (name, cls, counts[cls], n * fraction)
            if fraction > 0 and n >= 3:
                assert counts[cls] >= 1, f"class {cls} missing from {name}"
    assert stratified_split(labels, fractions, seed=seed) == split, "not deterministic"
    return split


@pytest.mark.realdata
def test_real_busi_labels(need) -> None:
    labels = [r["label"] for r in read_busi(need("busi"), check_images=False)]
    split = _check(labels, (0.7, 0.15, 0.15), seed=0)
    assert len(split["train"]) == 21
    assert {len(split["val"]), len(split["test"])} == {4, 5}  # rounding ties alternate, not always val
    assert _check(labels, (0.7, 0.15, 0.15), seed=1) != split


@pytest.mark.realdata
def test_real_breastmnist_labels(need) -> None:
    data = read_medmnist(need("medmnist/breastmnist.npz"))
    labels = np.concatenate([data[s][1] for s in ("train", "val", "test")]).tolist()
    split = _check(labels, (0.7, 0.1, 0.2), seed=3)
    assert len(split["train"]) + len(split["val"]) + len(split["test"]) == 780
    assert _check(labels, (0.7, 0.1, 0.2), seed=4)["test"] != split["test"]


def test_breastmnist_sized_labels() -> None:
    labels = [0] * 210 + [1] * 570  # BreastMNIST's class sizes, no file needed
    split = _check(labels, (0.7, 0.15, 0.15), seed=0)
    assert [len(v) for v in split.values()] == [546, 117, 117]
    assert split != _check(labels, (0.7, 0.15, 0.15), seed=1)


def test_small_and_string_classes() -> None:
    labels = ["a"] * 3 + ["b"] * 4 + ["c"] * 25
    split = stratified_split(labels, seed=0)
    for part in split.values():
        assert {labels[i] for i in part} == {"a", "b", "c"}
    assert sorted(i for part in split.values() for i in part) == list(range(len(labels)))


def test_numpy_column_labels_and_zero_fraction() -> None:
    labels = np.array([[0], [1]] * 10)
    split = stratified_split(labels, (0.8, 0.2, 0.0), seed=0)
    assert split["test"] == [] and len(split["train"]) == 16 and len(split["val"]) == 4


def test_bad_fractions() -> None:
    with pytest.raises(DatasetError, match="sum"):
        stratified_split([0, 1] * 10, (0.7, 0.2, 0.2))
    with pytest.raises(DatasetError):
        stratified_split([0, 1] * 10, (1.2, -0.1, -0.1))
    with pytest.raises(DatasetError):
        stratified_split([], (0.7, 0.15, 0.15))


def test_class_too_small() -> None:
    with pytest.raises(DatasetError, match="'rare'"):
        stratified_split(["common"] * 20 + ["rare"] * 2)
    split = stratified_split(["common"] * 20 + ["rare"] * 2, (0.5, 0.5, 0.0))  # two splits: two samples suffice
    assert sum(1 for i in split["val"] if i >= 20) == 1
