"""Classification metrics as pure numpy functions.

Written by hand instead of importing scikit-learn so the toolkit keeps a small dependency set; the
conventions follow scikit-learn's where it has one (``zero_division=0``, macro one-vs-rest AUC) so
numbers can be compared with papers that used it. Every returned value is a plain Python
``int``/``float``/``list``/``dict`` so results can go straight into JSON (NaN marks "undefined").
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np

__all__ = ["classification_report", "confusion_matrix", "mean_std", "roc_auc"]


def _as_int_labels(values: np.ndarray | Sequence[int], name: str) -> np.ndarray:
    """Accept integer-valued floats (e.g. labels read back from JSON/CSV) but nothing fractional."""
    arr = np.asarray(values)
    if arr.ndim != 1:
        raise ValueError(f"{name} must be 1-D with shape (N,), got shape {arr.shape}")
    if arr.dtype == bool:
        return arr.astype(np.int64)
    if np.issubdtype(arr.dtype, np.integer):
        return arr.astype(np.int64)
    if np.issubdtype(arr.dtype, np.floating) and arr.size and not np.all(np.isfinite(arr)):
        raise ValueError(f"{name} contains NaN or infinite values")
    if np.issubdtype(arr.dtype, np.floating) and np.all(arr == np.round(arr)):
        return arr.astype(np.int64)
    raise ValueError(f"{name} must hold integer class indices, got dtype {arr.dtype} with values like {arr[:5]}")


def _check_range(arr: np.ndarray, num_classes: int, name: str) -> None:
    if arr.size and (arr.min() < 0 or arr.max() >= num_classes):
        bad = arr[(arr < 0) | (arr >= num_classes)]
        raise ValueError(f"{name} must lie in [0, {num_classes - 1}], found {sorted(set(bad.tolist()))[:10]}")


def _average_ranks(x: np.ndarray) -> np.ndarray:
    """1-based ranks where tied values share the mean of the ranks they span (needed for exact AUC with ties)."""
    order = np.argsort(x, kind="mergesort")
    sorted_x = x[order]
    # Start index of each run of equal values in the sorted array.
    starts = np.flatnonzero(np.r_[True, sorted_x[1:] != sorted_x[:-1]])
    ends = np.r_[starts[1:], x.size]  # exclusive
    # Ranks start..end-1 (0-based) average to (start + end - 1) / 2; +1 for 1-based.
    group_rank = (starts + ends - 1) / 2.0 + 1.0
    ranks = np.empty(x.size, dtype=np.float64)
    ranks[order] = np.repeat(group_rank, ends - starts)
    return ranks


def roc_auc(scores: np.ndarray, positives: np.ndarray) -> float:
    """Area under the ROC curve for binary labels.

    Args:
        scores: shape (N,), higher means "more likely positive" (probabilities or logits; only order matters).
        positives: shape (N,), bool or 0/1, True for the positive class.

    Returns:
        The probability that a random positive outranks a random negative, ties counting 1/2
        (Mann-Whitney U / (n_pos * n_neg) with average ranks). Returns ``nan`` rather than raising when
        only one class is present, because small validation splits or per-class one-vs-rest slices hit
        that routinely and a whole evaluation should not crash on it.
    """
    s = np.asarray(scores, dtype=np.float64)
    p = np.asarray(positives)
    if s.ndim != 1 or p.ndim != 1:
        raise ValueError(f"scores and positives must be 1-D with shape (N,), got {s.shape} and {p.shape}")
    if s.shape != p.shape:
        raise ValueError(f"scores has {s.size} entries but positives has {p.size}")
    if not np.all(np.isfinite(s)):
        raise ValueError("scores contain NaN or infinite values")
    if p.dtype != bool:
        if not np.all((p == 0) | (p == 1)):
            raise ValueError(f"positives must be bool or 0/1, got values {np.unique(p)[:10].tolist()}")
        p = p.astype(bool)
    n_pos = int(p.sum())
    n_neg = int(p.size - n_pos)
    if n_pos == 0 or n_neg == 0:
        return float("nan")
    ranks = _average_ranks(s)
    u = ranks[p].sum() - n_pos * (n_pos + 1) / 2.0
    return float(u / (n_pos * n_neg))


def confusion_matrix(labels: np.ndarray, preds: np.ndarray, num_classes: int) -> np.ndarray:
    """Counts with rows = true class and columns = predicted class.

    Args:
        labels: shape (N,), true class indices in [0, num_classes).
        preds: shape (N,), predicted class indices in [0, num_classes).
        num_classes: C; fixed explicitly so classes absent from a split still get a row and column.

    Returns:
        int64 array of shape (C, C).
    """
    if int(num_classes) != num_classes or num_classes < 1:
        raise ValueError(f"num_classes must be a positive integer, got {num_classes!r}")
    num_classes = int(num_classes)
    y = _as_int_labels(labels, "labels")
    yhat = _as_int_labels(preds, "preds")
    if y.shape != yhat.shape:
        raise ValueError(f"labels has {y.size} entries but preds has {yhat.size}")
    _check_range(y, num_classes, "labels")
    _check_range(yhat, num_classes, "preds")
    flat = np.bincount(y * num_classes + yhat, minlength=num_classes * num_classes)
    return flat.reshape(num_classes, num_classes).astype(np.int64)


def _safe_div(num: float, den: float) -> float:
    """0/0 -> 0, matching scikit-learn's zero_division=0, so macro averages stay finite."""
    return float(num / den) if den else 0.0


def classification_report(probs: np.ndarray, labels: np.ndarray, class_names: Sequence[str]) -> dict:
    """Accuracy, AUC, F1 and per-class metrics for one evaluation split.

    Args:
        probs: shape (N, C), per-class scores (softmax probabilities; prediction = argmax).
        labels: shape (N,), true class indices in [0, C).
        class_names: length C, used as keys of ``per_class``.

    Returns:
        dict with ``n``, ``accuracy``, ``auc``, ``macro_f1``, ``per_class`` ({name: {precision, recall,
        f1, support, auc}}), ``confusion_matrix`` (list of lists of int) and ``class_names``.

        ``auc`` is the AUC of class 1's probability when C == 2, else the macro one-vs-rest mean over
        classes whose AUC is defined (a class absent from ``labels`` has NaN AUC and is skipped; NaN if
        none is defined). Precision/recall/F1 are 0 when their denominator is 0. ``macro_f1`` averages
        over classes that occur in the labels or the predictions (scikit-learn's default label set), so
        a class that is neither present nor predicted does not drag the mean down.
    """
    p = np.asarray(probs, dtype=np.float64)
    names = [str(c) for c in class_names]
    if p.ndim != 2:
        raise ValueError(f"probs must have shape (N, C), got shape {p.shape}")
    n, c = p.shape
    y = _as_int_labels(labels, "labels")
    if y.size != n:
        raise ValueError(f"probs has {n} rows but labels has {y.size} entries; they must describe the same samples")
    if c != len(names):
        raise ValueError(f"probs has {c} columns but {len(names)} class_names were given: {names}")
    if len(set(names)) != len(names):
        raise ValueError(f"class_names must be unique, got {names}")
    if c < 2:
        raise ValueError(f"need at least 2 classes, got {c}")
    if n == 0:
        raise ValueError("cannot report metrics on 0 samples")
    if not np.all(np.isfinite(p)):
        raise ValueError("probs contain NaN or infinite values")
    _check_range(y, c, "labels")

    report = confusion_report(confusion_matrix(y, p.argmax(axis=1), c), names)
    aucs = []
    for k, name in enumerate(names):
        report["per_class"][name]["auc"] = roc_auc(p[:, k], y == k)
        aucs.append(report["per_class"][name]["auc"])
    if c == 2:
        auc = aucs[1]
    else:
        defined = [a for a in aucs if not math.isnan(a)]
        auc = float(np.mean(defined)) if defined else float("nan")
    return {"n": report["n"], "accuracy": report["accuracy"], "auc": float(auc), **report}


def confusion_report(cm: np.ndarray | Sequence[Sequence[int]], class_names: Sequence[str]) -> dict:
    """Accuracy, macro-F1 and per-class precision/recall/F1/support from a confusion matrix (rows = true class).

    Separate from :func:`classification_report` because cross-validation pools folds by summing their confusion
    matrices (the paper's table), where no probabilities remain. Same conventions: 0 for an empty denominator,
    macro-F1 over classes that occur in the labels or the predictions.
    """
    cm = np.asarray(cm, dtype=np.int64)
    names = [str(c) for c in class_names]
    if cm.ndim != 2 or cm.shape[0] != cm.shape[1] or cm.shape[0] != len(names):
        raise ValueError(f"confusion matrix must be {len(names)}x{len(names)} for classes {names}, got {cm.shape}")
    n = int(cm.sum())
    if n == 0:
        raise ValueError("cannot report metrics on 0 samples")
    tp = np.diag(cm)
    support = cm.sum(axis=1)  # true count per class
    predicted = cm.sum(axis=0)  # predicted count per class
    per_class: dict[str, dict] = {}
    f1s: list[float] = []
    for k, name in enumerate(names):
        # 2TP / (2TP + FP + FN) equals 2PR / (P + R) whenever both are defined and is 0 otherwise.
        f1 = _safe_div(2 * tp[k], support[k] + predicted[k])
        per_class[name] = {
            "precision": _safe_div(tp[k], predicted[k]),
            "recall": _safe_div(tp[k], support[k]),
            "f1": f1,
            "support": int(support[k]),
        }
        if support[k] or predicted[k]:
            f1s.append(f1)
    return {
        "n": n,
        "accuracy": float(tp.sum() / n),
        "macro_f1": float(np.mean(f1s)) if f1s else 0.0,
        "per_class": per_class,
        "confusion_matrix": cm.tolist(),
        "class_names": names,
    }


def mean_std(values: Sequence[float]) -> tuple[float, float]:
    """Mean and sample standard deviation (ddof=1), for reporting "mean ± std over seeds".

    ddof=1 because seeds are a small sample of possible runs; a single value gets std 0.0 rather than
    NaN so one-seed tables still render. NaN inputs propagate (an undefined metric in any run makes the
    summary undefined instead of silently dropping that run).
    """
    arr = np.asarray(list(values), dtype=np.float64)
    if arr.ndim != 1 or arr.size == 0:
        raise ValueError(f"mean_std needs a non-empty flat sequence of numbers, got shape {arr.shape}")
    mean = float(arr.mean())
    if arr.size > 1:
        std = float(arr.std(ddof=1))
    else:
        std = 0.0 if math.isfinite(mean) else float("nan")
    return mean, std
