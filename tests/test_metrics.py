"""Metrics checked against independent brute-force or hand-worked computations."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest

from medtransfer.metrics import classification_report, confusion_matrix, mean_std, roc_auc


def brute_force_auc(scores: np.ndarray, positives: np.ndarray) -> float:
    """Fraction of (positive, negative) pairs ordered correctly, ties counting 1/2."""
    pos = scores[positives.astype(bool)]
    neg = scores[~positives.astype(bool)]
    total = 0.0
    for sp in pos:
        for sn in neg:
            total += 1.0 if sp > sn else 0.5 if sp == sn else 0.0
    return total / (len(pos) * len(neg))


def probs_from_preds(preds: list[int], num_classes: int) -> np.ndarray:
    """Scores whose argmax is the given prediction."""
    p = np.full((len(preds), num_classes), 0.1)
    p[np.arange(len(preds)), preds] = 0.8
    return p / p.sum(axis=1, keepdims=True)


# ---------------------------------------------------------------- roc_auc


@pytest.mark.parametrize("seed", range(5))
def test_roc_auc_matches_pairwise_count_with_ties(seed: int) -> None:
    rng = np.random.default_rng(seed)
    n = 60
    scores = rng.integers(0, 6, n) / 5.0  # only 6 distinct values -> many ties
    positives = rng.random(n) < 0.4
    assert positives.any() and (~positives).any()
    assert len(np.unique(scores)) < n  # the test really exercises ties
    assert roc_auc(scores, positives) == pytest.approx(brute_force_auc(scores, positives), abs=1e-12)


def test_roc_auc_matches_pairwise_count_continuous() -> None:
    rng = np.random.default_rng(42)
    scores = rng.normal(size=200)
    positives = (scores + rng.normal(size=200)) > 0  # informative but imperfect
    auc = roc_auc(scores, positives.astype(int))
    assert auc == pytest.approx(brute_force_auc(scores, positives), abs=1e-12)
    assert 0.6 < auc < 1.0


def test_roc_auc_known_value() -> None:
    # Pairs (pos, neg): (0.35,0.1)+ (0.35,0.4)- (0.8,0.1)+ (0.8,0.4)+ -> 3/4.
    assert roc_auc(np.array([0.1, 0.4, 0.35, 0.8]), np.array([0, 0, 1, 1])) == pytest.approx(0.75)


def test_roc_auc_perfect_inverted_and_all_tied() -> None:
    y = np.array([0, 0, 0, 1, 1])
    s = np.array([0.1, 0.2, 0.3, 0.7, 0.9])
    assert roc_auc(s, y) == 1.0
    assert roc_auc(-s, y) == 0.0
    assert roc_auc(np.full(5, 0.5), y) == 0.5


def test_roc_auc_single_class_is_nan() -> None:
    assert math.isnan(roc_auc(np.array([0.1, 0.5, 0.9]), np.array([1, 1, 1])))
    assert math.isnan(roc_auc(np.array([0.1, 0.5, 0.9]), np.array([False, False, False])))


def test_roc_auc_rejects_bad_input() -> None:
    with pytest.raises(ValueError, match="entries"):
        roc_auc(np.array([0.1, 0.2, 0.3]), np.array([0, 1]))
    with pytest.raises(ValueError, match="0/1"):
        roc_auc(np.array([0.1, 0.2, 0.3]), np.array([0, 1, 2]))
    with pytest.raises(ValueError, match="1-D"):
        roc_auc(np.zeros((3, 2)), np.zeros((3, 2)))
    with pytest.raises(ValueError, match="NaN"):
        roc_auc(np.array([0.1, np.nan]), np.array([0, 1]))


# ---------------------------------------------------------------- confusion_matrix


def test_confusion_matrix_matches_loop() -> None:
    rng = np.random.default_rng(0)
    c = 4
    labels = rng.integers(0, c, 300)
    preds = rng.integers(0, c, 300)
    expected = np.zeros((c, c), dtype=int)
    for t, p in zip(labels, preds, strict=True):
        expected[t, p] += 1
    cm = confusion_matrix(labels, preds, c)
    assert cm.shape == (c, c)
    np.testing.assert_array_equal(cm, expected)
    assert cm.sum() == 300


def test_confusion_matrix_orientation_and_absent_classes() -> None:
    # Two samples of true class 0 predicted as 1: the count must sit in row 0, column 1.
    cm = confusion_matrix([0, 0], [1, 1], 3)
    np.testing.assert_array_equal(cm, [[0, 2, 0], [0, 0, 0], [0, 0, 0]])


def test_confusion_matrix_rejects_bad_input() -> None:
    with pytest.raises(ValueError, match=r"labels must lie in \[0, 1\]"):
        confusion_matrix([0, 2], [0, 1], 2)
    with pytest.raises(ValueError, match="preds must lie"):
        confusion_matrix([0, 1], [0, -1], 2)
    with pytest.raises(ValueError, match="entries"):
        confusion_matrix([0, 1, 1], [0, 1], 2)
    with pytest.raises(ValueError, match="integer"):
        confusion_matrix([0, 0.5], [0, 1], 2)


# ---------------------------------------------------------------- classification_report


def test_report_precision_recall_f1_by_hand() -> None:
    labels = [0, 0, 0, 0, 1, 1, 2, 2]
    preds = [0, 0, 0, 1, 1, 2, 2, 2]
    # Confusion matrix (rows true, cols pred):
    #   true 0: [3, 1, 0]   true 1: [0, 1, 1]   true 2: [0, 0, 2]
    # class 0: TP=3 FP=0 FN=1 -> P=3/3=1,   R=3/4, F1=2*3/(2*3+0+1)=6/7
    # class 1: TP=1 FP=1 FN=1 -> P=1/2,     R=1/2, F1=2*1/(2+1+1)=1/2
    # class 2: TP=2 FP=1 FN=0 -> P=2/3,     R=2/2=1, F1=2*2/(4+1+0)=4/5
    # accuracy = (3+1+2)/8 = 3/4; macro F1 = (6/7 + 1/2 + 4/5) / 3
    rep = classification_report(probs_from_preds(preds, 3), np.array(labels), ["a", "b", "c"])
    assert rep["n"] == 8
    assert rep["confusion_matrix"] == [[3, 1, 0], [0, 1, 1], [0, 0, 2]]
    assert rep["accuracy"] == pytest.approx(3 / 4)
    expected = {
        "a": (1.0, 3 / 4, 6 / 7, 4),
        "b": (1 / 2, 1 / 2, 1 / 2, 2),
        "c": (2 / 3, 1.0, 4 / 5, 2),
    }
    for name, (p, r, f1, support) in expected.items():
        pc = rep["per_class"][name]
        assert pc["precision"] == pytest.approx(p)
        assert pc["recall"] == pytest.approx(r)
        assert pc["f1"] == pytest.approx(f1)
        assert pc["support"] == support
        # F1 from precision/recall agrees with the 2TP/(2TP+FP+FN) form.
        assert pc["f1"] == pytest.approx(2 * p * r / (p + r))
    assert rep["macro_f1"] == pytest.approx((6 / 7 + 1 / 2 + 4 / 5) / 3)
    assert rep["class_names"] == ["a", "b", "c"]


def test_report_zero_division_gives_zero() -> None:
    labels = [0, 0, 1, 1]
    preds = [0, 0, 0, 0]
    # class 1 is never predicted: precision 0/0 -> 0, recall 0/2 = 0, F1 0.
    # class 0: TP=2 FP=2 FN=0 -> P=1/2 R=1 F1=4/6=2/3; class 2 is neither present nor predicted.
    rep = classification_report(probs_from_preds(preds, 3), np.array(labels), ["x", "y", "z"])
    assert rep["per_class"]["y"] == {
        "precision": 0.0,
        "recall": 0.0,
        "f1": 0.0,
        "support": 2,
        "auc": rep["per_class"]["y"]["auc"],
    }
    assert rep["per_class"]["z"]["precision"] == 0.0
    assert rep["per_class"]["z"]["f1"] == 0.0
    assert math.isnan(rep["per_class"]["z"]["auc"])  # no positives for class z
    # Macro F1 averages the classes that occur in labels or predictions (x, y), like scikit-learn.
    assert rep["macro_f1"] == pytest.approx((2 / 3 + 0.0) / 2)


def test_report_binary_auc_is_class1_probability_auc() -> None:
    rng = np.random.default_rng(1)
    n = 50
    labels = rng.integers(0, 2, n)
    p1 = np.clip(0.3 * labels + rng.random(n) * 0.7, 0, 1)
    probs = np.stack([1 - p1, p1], axis=1)
    rep = classification_report(probs, labels, ["neg", "pos"])
    assert rep["auc"] == pytest.approx(brute_force_auc(p1, labels == 1), abs=1e-12)
    assert rep["per_class"]["pos"]["auc"] == pytest.approx(rep["auc"])
    assert rep["accuracy"] == pytest.approx(np.mean((p1 > 0.5) == (labels == 1)))
    # With columns that do not sum to 1 (e.g. independent sigmoids) class 0's AUC differs: "auc" must
    # still be the one of column 1.
    scores = rng.random((n, 2))
    rep = classification_report(scores, labels, ["neg", "pos"])
    assert rep["auc"] == pytest.approx(brute_force_auc(scores[:, 1], labels == 1), abs=1e-12)
    assert rep["auc"] != pytest.approx(brute_force_auc(scores[:, 0], labels == 0))


def test_report_macro_ovr_auc_is_mean_of_per_class() -> None:
    rng = np.random.default_rng(2)
    n, c = 80, 4
    labels = rng.integers(0, c, n)
    logits = rng.normal(size=(n, c))
    logits[np.arange(n), labels] += 1.0
    probs = np.exp(logits) / np.exp(logits).sum(axis=1, keepdims=True)
    rep = classification_report(probs, labels, ["a", "b", "c", "d"])
    per_class = [brute_force_auc(probs[:, k], labels == k) for k in range(c)]
    assert rep["auc"] == pytest.approx(np.mean(per_class), abs=1e-12)
    for k, name in enumerate("abcd"):
        assert rep["per_class"][name]["auc"] == pytest.approx(per_class[k], abs=1e-12)


def test_report_macro_auc_skips_absent_class() -> None:
    rng = np.random.default_rng(3)
    n = 40
    labels = rng.integers(0, 2, n)  # class 2 never occurs
    probs = rng.dirichlet(np.ones(3), size=n)
    rep = classification_report(probs, labels, ["a", "b", "c"])
    assert math.isnan(rep["per_class"]["c"]["auc"])
    expected = np.mean([roc_auc(probs[:, k], labels == k) for k in range(2)])
    assert rep["auc"] == pytest.approx(expected)
    assert not math.isnan(rep["auc"])


def test_report_is_plain_json() -> None:
    rng = np.random.default_rng(4)
    probs = rng.dirichlet(np.ones(3), size=10)
    rep = classification_report(probs, np.array([0, 1, 2, 0, 1, 2, 0, 1, 2, 0]), ["a", "b", "c"])
    assert json.loads(json.dumps(rep)) == rep
    assert type(rep["n"]) is int and type(rep["accuracy"]) is float
    assert all(type(v) is int for row in rep["confusion_matrix"] for v in row)
    assert all(type(v) in (int, float) for pc in rep["per_class"].values() for v in pc.values())


def test_report_rejects_bad_shapes() -> None:
    probs = np.full((4, 3), 1 / 3)
    with pytest.raises(ValueError, match="4 rows but labels has 3"):
        classification_report(probs, np.array([0, 1, 2]), ["a", "b", "c"])
    with pytest.raises(ValueError, match="3 columns but 2 class_names"):
        classification_report(probs, np.array([0, 1, 1, 0]), ["a", "b"])
    with pytest.raises(ValueError, match=r"labels must lie in \[0, 2\]"):
        classification_report(probs, np.array([0, 1, 3, 0]), ["a", "b", "c"])
    with pytest.raises(ValueError, match=r"shape \(N, C\)"):
        classification_report(np.zeros(4), np.array([0, 1, 1, 0]), ["a", "b"])
    with pytest.raises(ValueError, match="0 samples"):
        classification_report(np.zeros((0, 2)), np.array([], dtype=int), ["a", "b"])


# ---------------------------------------------------------------- mean_std


def test_mean_std_matches_numpy_sample_std() -> None:
    values = [0.81, 0.84, 0.79, 0.88]
    mean, std = mean_std(values)
    assert mean == pytest.approx(np.mean(values))
    assert std == pytest.approx(np.std(values, ddof=1))
    assert std != pytest.approx(np.std(values, ddof=0))  # really the sample std
    assert type(mean) is float and type(std) is float


def test_mean_std_single_and_empty() -> None:
    assert mean_std([0.7]) == (0.7, 0.0)
    with pytest.raises(ValueError):
        mean_std([])
