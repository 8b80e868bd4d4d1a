"""Paired tests on the same test images, each against an independent computation on known numbers."""

from __future__ import annotations

import math

import numpy as np
import pytest
from scipy import stats

from medtransfer.paired_images import ImageTest, combine_over_seeds, delong_test, holm, mcnemar_test


def _delong_by_definition(y: np.ndarray, a: np.ndarray, b: np.ndarray) -> tuple[float, float]:
    """DeLong 1988 from its definition: placement values of every positive/negative pair (O(n²)), no ranks."""
    pos, neg = y == 1, y == 0
    v10, v01 = [], []
    for s in (a, b):
        x, z = s[pos][:, None], s[neg][None, :]
        psi = (x > z) + 0.5 * (x == z)
        v10.append(psi.mean(axis=1))  # one per positive
        v01.append(psi.mean(axis=0))  # one per negative
    auc = [float(v.mean()) for v in v10]
    s10, s01 = np.cov(np.vstack(v10)), np.cov(np.vstack(v01))
    var = (s10[0, 0] + s10[1, 1] - 2 * s10[0, 1]) / pos.sum() + (s01[0, 0] + s01[1, 1] - 2 * s01[0, 1]) / neg.sum()
    z = (auc[0] - auc[1]) / math.sqrt(var)
    return auc[0] - auc[1], 2 * stats.norm.sf(abs(z))


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_delong_equals_its_definition_and_the_mann_whitney_aucs(seed):
    rng = np.random.default_rng(seed)
    y = rng.integers(0, 2, 120)
    a = np.round(y * 0.8 + rng.normal(0, 0.6, y.size), 1)  # rounded: ties, which the midranks must handle
    b = np.round(y * 0.5 + rng.normal(0, 0.6, y.size), 1)
    test = delong_test(y, a, b)
    for score, s in ((test.score_a, a), (test.score_b, b)):  # AUC = U / (positives x negatives)
        u = stats.mannwhitneyu(s[y == 1], s[y == 0]).statistic
        assert score == pytest.approx(u / ((y == 1).sum() * (y == 0).sum()))
    difference, p = _delong_by_definition(y, a, b)
    assert test.difference == pytest.approx(difference) and test.p == pytest.approx(p, rel=1e-9)


def test_delong_refuses_what_it_cannot_test():
    with pytest.raises(ValueError, match="binary labels"):
        delong_test([0, 1, 2], [0.1, 0.2, 0.3], [0.1, 0.2, 0.3])
    assert delong_test([0, 1, 0, 1], [0.1, 0.9, 0.2, 0.8], [0.1, 0.9, 0.2, 0.8]).p == 1.0  # identical scores


def test_mcnemar_is_the_exact_binomial_test_of_the_discordant_images():
    y = np.zeros(30, int)
    a = np.zeros(30, int)
    b = np.zeros(30, int)
    a[:2], b[2:10] = 1, 1  # A wrong on 2 images B gets right; B wrong on 8 images A gets right
    test = mcnemar_test(y, a, b)
    # by hand: 8 of 10 discordant images favour A; two-sided exact p = 2 * P(X >= 8), X ~ Bin(10, 1/2)
    tail = sum(math.comb(10, k) for k in range(8, 11)) / 2**10
    assert test.p == pytest.approx(2 * tail) and test.difference == pytest.approx(6 / 30)
    assert test.z == pytest.approx(stats.norm.isf(tail)) and test.z > 0
    assert mcnemar_test(y, a, a).p == 1.0


def test_stouffer_combines_signed_z_over_seeds():
    z, p = combine_over_seeds([ImageTest(0, 0, 0, 1.0, 0.3)] * 4)
    assert z == pytest.approx(2.0) and p == pytest.approx(0.04550026, rel=1e-6)
    assert combine_over_seeds([ImageTest(0, 0, 0, 1.5, 0.1), ImageTest(0, 0, 0, -1.5, 0.1)]) == (0.0, 1.0)


def test_holm_on_a_worked_example():
    # sorted 0.005, 0.01, 0.03, 0.04 times 4, 3, 2, 1 = 0.02, 0.03, 0.06, 0.04 -> running max 0.02, 0.03, 0.06, 0.06
    assert holm([0.01, 0.04, 0.03, 0.005]) == pytest.approx([0.03, 0.06, 0.06, 0.02])
    adjusted = holm([0.2, float("nan"), 0.6])
    assert adjusted[0] == pytest.approx(0.4) and math.isnan(adjusted[1]) and adjusted[2] == pytest.approx(0.6)
