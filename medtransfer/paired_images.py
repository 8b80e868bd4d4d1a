"""Two classifiers on the same test images: is one better, with a p value that can be small with few seeds?

The per-seed differences of :mod:`medtransfer.paired` have one number per seed, so with 3 to 5 seeds only large effects
show. Within one seed both strategies scored the *same* test images, and that pairing carries much more information:

- **AUC: DeLong's test** (DeLong, DeLong & Clarke-Pearson, Biometrics 1988), with the midrank algorithm of Sun & Xu
  (IEEE Signal Processing Letters 2014): the two AUCs' covariance from their structural components, z = ΔAUC / se.
- **Accuracy: McNemar's exact test**: only the images one strategy gets right and the other wrong count; under "no
  difference" each such image is a fair coin (scipy's exact binomial test).
- **Over seeds: Stouffer's method on signed z** (each seed's one-sided z for "A is better", summed and divided by
  √seeds; two-sided p from the combined z), so seeds that disagree cancel instead of each adding evidence.
- **Over strategies: Holm's step-down correction** of the combined p values (family-wise error, no independence
  assumed).

Binary targets only (the positive class is label 1; a multi-class AUC has no DeLong test here).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from scipy import stats

__all__ = ["ImageTest", "combine_over_seeds", "delong_test", "holm", "mcnemar_test"]


@dataclass(frozen=True)
class ImageTest:
    """One paired test on one seed's test images: A's and B's score, their difference, its z and two-sided p."""

    score_a: float
    score_b: float
    difference: float
    z: float
    p: float


def _midranks(x: np.ndarray) -> np.ndarray:
    """1-based ranks of `x`, ties sharing the mean of their ranks."""
    return stats.rankdata(x, method="average")


def _binary(labels: Sequence) -> np.ndarray:
    y = np.asarray(labels).reshape(-1)
    values = set(np.unique(y).tolist())
    if not values <= {0, 1} or len(values) < 2:
        raise ValueError(
            f"DeLong's test needs binary labels with both classes present, got the values {sorted(values)}"
        )
    return y.astype(bool)


def delong_test(labels: Sequence, scores_a: Sequence[float], scores_b: Sequence[float]) -> ImageTest:
    """DeLong's test of AUC(A) − AUC(B) on the same images (scores: each image's probability of class 1).

    Args:
        labels: 0/1 per image.
        scores_a: strategy A's score per image.
        scores_b: strategy B's score per image, same order.
    """
    y = _binary(labels)
    scores = np.vstack([np.asarray(scores_a, float).reshape(-1), np.asarray(scores_b, float).reshape(-1)])
    if scores.shape[1] != y.size:
        raise ValueError(f"{y.size} labels but {scores.shape[1]} scores")
    positive, negative = scores[:, y], scores[:, ~y]
    m, n = positive.shape[1], negative.shape[1]
    tx = np.array([_midranks(row) for row in positive])
    ty = np.array([_midranks(row) for row in negative])
    tz = np.array([_midranks(row) for row in np.hstack([positive, negative])])
    aucs = (tz[:, :m].sum(axis=1) / m - (m + 1) / 2) / n
    v01 = (tz[:, :m] - tx) / n  # structural components of the positives
    v10 = 1.0 - (tz[:, m:] - ty) / m  # ... and of the negatives
    covariance = np.atleast_2d(np.cov(v01)) / m + np.atleast_2d(np.cov(v10)) / n
    variance = covariance[0, 0] + covariance[1, 1] - 2 * covariance[0, 1]
    difference = float(aucs[0] - aucs[1])
    if variance <= 0:
        z = 0.0 if difference == 0 else math.copysign(math.inf, difference)
    else:
        z = difference / math.sqrt(variance)
    return ImageTest(float(aucs[0]), float(aucs[1]), difference, z, float(2 * stats.norm.sf(abs(z))))


def mcnemar_test(labels: Sequence, predicted_a: Sequence, predicted_b: Sequence) -> ImageTest:
    """McNemar's exact test of accuracy(A) − accuracy(B) on the same images (predicted class per image).

    ``z`` is the signed normal quantile of the one-sided exact p for "A is better" (0 when no image is discordant),
    so seeds can be combined with :func:`combine_over_seeds`.
    """
    y = np.asarray(labels).reshape(-1)
    right_a, right_b = np.asarray(predicted_a).reshape(-1) == y, np.asarray(predicted_b).reshape(-1) == y
    only_a, only_b = int(np.sum(right_a & ~right_b)), int(np.sum(~right_a & right_b))
    accuracy_a, accuracy_b = float(right_a.mean()), float(right_b.mean())
    discordant = only_a + only_b
    if discordant == 0:
        return ImageTest(accuracy_a, accuracy_b, 0.0, 0.0, 1.0)
    p = float(stats.binomtest(only_a, discordant, 0.5).pvalue)
    one_sided = float(stats.binomtest(only_a, discordant, 0.5, alternative="greater").pvalue)
    z = float(stats.norm.isf(one_sided))
    return ImageTest(accuracy_a, accuracy_b, accuracy_a - accuracy_b, z, p)


def combine_over_seeds(tests: Sequence[ImageTest]) -> tuple[float, float]:
    """Stouffer's combination of per-seed tests: ``(z, two-sided p)`` with z = Σ z_seed / √seeds."""
    zs = np.array([t.z for t in tests], float)
    if zs.size == 0:
        return math.nan, math.nan
    z = float(zs.sum() / math.sqrt(zs.size))
    return z, float(2 * stats.norm.sf(abs(z)))


def holm(p_values: Sequence[float]) -> list[float]:
    """Holm's step-down adjusted p values, in the order given (NaN stays NaN and is not counted)."""
    p = np.asarray(p_values, float)
    finite = np.flatnonzero(np.isfinite(p))
    adjusted = np.full(p.shape, np.nan)
    order = finite[np.argsort(p[finite], kind="stable")]
    running = 0.0
    for k, index in enumerate(order):
        running = max(running, min(1.0, (len(order) - k) * p[index]))
        adjusted[index] = running
    return adjusted.tolist()
