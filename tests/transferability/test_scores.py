"""LogME, LEEP and rank correlation."""

from __future__ import annotations

import numpy as np
import pytest

from medtransfer.transferability.scores import leep, logme, logme_evidence, rank_correlation


def _direct_log_evidence(f: np.ndarray, y: np.ndarray, alpha: float, beta: float) -> tuple[float, np.ndarray]:
    """log p(y | F, alpha, beta) of Bayesian linear regression, by plain linear algebra (no SVD)."""
    n, d = f.shape
    a = alpha * np.eye(d) + beta * f.T @ f
    m = beta * np.linalg.solve(a, f.T @ y)
    sign, logdet = np.linalg.slogdet(a)
    assert sign > 0
    r = f @ m - y
    value = (
        n / 2 * np.log(beta)
        + d / 2 * np.log(alpha)
        - n / 2 * np.log(2 * np.pi)
        - beta / 2 * r @ r
        - alpha / 2 * m @ m
        - logdet / 2
    )
    return float(value), m


def _informative(n: int, d: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    labels = np.arange(n) % 3
    return np.eye(3)[labels] @ rng.normal(size=(3, d)) + 0.5 * rng.normal(size=(n, d)), labels


@pytest.mark.parametrize("kind", ["random", "informative"])
@pytest.mark.parametrize(("n", "d"), [(40, 5), (8, 12)], ids=["N>F gram path", "N<F svd path"])
def test_logme_evidence_matches_direct_bayesian_regression(n, d, kind):
    rng = np.random.default_rng(n)
    f, labels = _informative(n, d, rng) if kind == "informative" else (rng.normal(size=(n, d)), np.arange(n) % 3)
    result = logme_evidence(f, labels)
    np.testing.assert_array_equal(result.classes, [0, 1, 2])
    for c in range(3):
        y = (labels == c).astype(float)
        direct, m = _direct_log_evidence(f, y, result.alpha[c], result.beta[c])
        assert result.evidence[c] == pytest.approx(direct / n, rel=1e-9, abs=1e-12)
        np.testing.assert_allclose(result.m[c], m, rtol=1e-7, atol=1e-10)
    assert logme(f, labels) == pytest.approx(result.evidence.mean())


@pytest.mark.parametrize(("n", "d"), [(60, 6), (10, 14)])
def test_logme_alpha_beta_maximise_the_evidence(n, d):
    # With features that carry signal the maximum is interior (for pure noise it lies at alpha -> infinity, which
    # the reference's 11 fixed-point steps only approach), so +-10 % in alpha or beta must lower the evidence.
    f, labels = _informative(n, d, np.random.default_rng(n))
    result = logme_evidence(f, labels)
    for c in range(3):
        y = (labels == c).astype(float)
        alpha, beta = result.alpha[c], result.beta[c]
        best = _direct_log_evidence(f, y, alpha, beta)[0]
        for k in (0.9, 1.1):
            assert _direct_log_evidence(f, y, k * alpha, beta)[0] < best
            assert _direct_log_evidence(f, y, alpha, k * beta)[0] < best


def test_logme_rank_deficient_features_match_direct():
    rng = np.random.default_rng(9)
    base = rng.normal(size=(30, 3))
    f = np.column_stack([base, base @ rng.normal(size=(3, 2)), np.zeros(30)])  # 6 features of rank 3
    labels = rng.integers(0, 2, 30)
    result = logme_evidence(f, labels)
    for c in range(2):
        direct, _ = _direct_log_evidence(f, (labels == c).astype(float), result.alpha[c], result.beta[c])
        assert result.evidence[c] == pytest.approx(direct / 30, rel=1e-8)


def test_logme_higher_for_separable_features():
    rng = np.random.default_rng(10)
    labels = np.repeat(np.arange(3), 40)
    separable = 3.0 * np.eye(3)[labels] @ rng.normal(size=(3, 16)) + 0.3 * rng.normal(size=(120, 16))
    random = rng.normal(size=(120, 16))
    assert logme(separable, labels) > logme(random, labels) + 0.5


def test_logme_label_values_need_not_be_contiguous():
    rng = np.random.default_rng(11)
    f, labels = rng.normal(size=(30, 4)), rng.integers(0, 2, 30)
    assert logme(f, labels * 5 + 2) == pytest.approx(logme(f, labels))


def test_logme_rejects_single_class():
    with pytest.raises(ValueError, match="single class"):
        logme(np.random.default_rng(0).normal(size=(10, 3)), np.zeros(10, dtype=int))


def test_leep_hand_computed():
    theta = np.array([[0.8, 0.2], [0.3, 0.7], [0.6, 0.4]])
    labels = np.array([0, 1, 0])
    # P(y, z) * 3: y=0 -> (1.4, 0.6), y=1 -> (0.3, 0.7); P(z) * 3 = (1.7, 1.3)
    p0 = (1.4 / 1.7, 0.6 / 1.3)  # P(y=0 | z)
    p1 = (0.3 / 1.7, 0.7 / 1.3)  # P(y=1 | z)
    expected = np.mean(
        [
            np.log(0.8 * p0[0] + 0.2 * p0[1]),
            np.log(0.3 * p1[0] + 0.7 * p1[1]),
            np.log(0.6 * p0[0] + 0.4 * p0[1]),
        ]
    )
    assert leep(theta, labels) == pytest.approx(expected, rel=1e-12)


def test_leep_higher_when_source_predictions_informative():
    rng = np.random.default_rng(12)
    labels = rng.integers(0, 3, 200)
    # Source class z = 2 * y (5 source classes) predicted confidently vs. uninformative uniform predictions.
    informative = np.full((200, 5), 0.02)
    informative[np.arange(200), 2 * labels] = 0.92
    uniform = np.full((200, 5), 0.2)
    good, bad = leep(informative, labels), leep(uniform, labels)
    assert good > bad + 0.5
    assert good <= 0.0
    _, counts = np.unique(labels, return_counts=True)
    prior = counts / 200  # uninformative predictions reduce LEEP to the label entropy
    assert bad == pytest.approx(float(np.mean(np.log(prior[labels]))))


def test_leep_rejects_logits():
    with pytest.raises(ValueError, match="softmax"):
        leep(np.array([[2.0, -1.0], [0.5, 0.1]]), [0, 1])


def test_rank_correlation():
    x = [0.1, 0.4, 0.2, 0.9, 0.5]
    assert rank_correlation(x, [1, 4, 2, 9, 5]) == pytest.approx(1.0)
    assert rank_correlation(x, [-1, -40, -2, -90, -50], method="kendall") == pytest.approx(-1.0)
    # one swapped pair of 5 items: Kendall tau = (9 - 1) / 10
    assert rank_correlation([1, 2, 3, 4, 5], [1, 2, 3, 5, 4], method="kendall") == pytest.approx(0.8)
    # Spearman: d = (0, 0, 0, 1, 1) -> 1 - 6 * 2 / (5 * 24) = 0.9
    assert rank_correlation([1, 2, 3, 4, 5], [1, 2, 3, 5, 4]) == pytest.approx(0.9)
    with pytest.raises(ValueError, match="method"):
        rank_correlation(x, x, method="pearson")
    with pytest.raises(ValueError, match="same length"):
        rank_correlation(x, x[:3])
