"""Transferability scores of a pre-trained model on a target dataset, computed without fine-tuning.

* LogME (You et al., ICML 2021, "LogME: Practical Assessment of Pre-trained Models for Transfer Learning"): the
  maximum log marginal evidence of a Bayesian linear model from the penultimate features to each one-vs-rest label,
  divided by N and averaged over classes.
* LEEP (Nguyen et al., ICML 2020, "LEEP: A New Measure to Evaluate Transferability of Learned Representations"): the
  mean log-likelihood of the target labels under the "expected empirical predictor" built from the source head's
  softmax outputs.

These go beyond Chen et al. (2022); :func:`rank_correlation` checks whether they rank target datasets the way the
measured layer-wise transferability T does.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np
from scipy import stats

from medtransfer.transferability.statistics import as_features, as_labels

__all__ = ["LogMEResult", "leep", "logme", "logme_evidence", "rank_correlation"]

# Constants of the reference implementation (thuml/LogME, LogME._fit_fixed_point).
_LOGME_MAX_ITER = 11
_LOGME_TOL = 1e-3
_LOGME_EPS = 1e-5


@dataclass
class LogMEResult:
    """Per-class outcome of LogME: ``evidence[c]`` is log p(y_c | F, alpha_c, beta_c) / N for one-vs-rest target c."""

    classes: np.ndarray  # (C,) the label values, in the order of the other arrays
    evidence: np.ndarray  # (C,) log marginal evidence / N
    alpha: np.ndarray  # (C,) prior precision of the weights
    beta: np.ndarray  # (C,) noise precision
    m: np.ndarray  # (C, F) posterior mean weights

    @property
    def score(self) -> float:
        """The LogME score: evidence / N averaged over classes."""
        return float(self.evidence.mean())


def _spectrum(f: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Non-zero squared singular values sigma (k,) of F and the matching right singular vectors V (F, k).

    As in the reference code, N > F goes through the F x F Gram matrix (memory F^2 instead of N * F) and N <= F
    through a thin SVD of F. Directions with (numerically) zero singular value carry no information about y and are
    dropped: they only contribute the prior, which the evidence accounts for exactly (see :func:`logme_evidence`).
    """
    n, d = f.shape
    if n > d:
        sigma, v = np.linalg.eigh(f.T @ f)
        sigma, v = sigma[::-1], v[:, ::-1]
        keep = sigma > sigma[0] * max(n, d) * np.finfo(np.float64).eps
    else:
        _, s, vh = np.linalg.svd(f, full_matrices=False)
        sigma, v = s**2, vh.T
        keep = s > s[0] * max(n, d) * np.finfo(np.float64).eps
    return sigma[keep], v[:, keep]


def _moments(t: float, sigma: np.ndarray, x2: np.ndarray, res_x2: float) -> tuple[float, float]:
    """|m|^2 and |F m - y|^2 at t = alpha / beta, in the singular basis of F."""
    m2 = float((sigma * x2 / (t + sigma) ** 2).sum())
    res2 = float((x2 / (1.0 + sigma / t) ** 2).sum()) + res_x2
    return m2, res2


def logme_evidence(features: np.ndarray, labels: np.ndarray | Sequence[int]) -> LogMEResult:
    """LogME per class: maximise the evidence of Bayesian linear regression F w -> one-vs-rest y over alpha, beta.

    Model: w ~ N(0, alpha^-1 I), y | F, w ~ N(F w, beta^-1 I). With sigma_i, x_i the squared singular values of F and
    the projections of y on its left singular vectors, the fixed-point updates are (reference ``_fit_fixed_point``)
    t = alpha/beta, gamma = sum sigma/(sigma+t), alpha = gamma/(|m|^2 + eps), beta = (N - gamma)/(|F m - y|^2 + eps),
    at most 11 iterations, stopping when t changes by <= 0.1 %. Two deliberate differences from that code, both so
    that ``evidence`` is exactly log p(y | F, alpha, beta) at the returned alpha, beta (what the ICML paper defines):

    * m, |m|^2 and |F m - y|^2 are re-evaluated at the final t (the reference keeps those of the previous step; the
      difference is within its convergence tolerance);
    * the log-determinant counts the F - k null directions of F^T F (k = rank F): log|A| = sum_k log(alpha + beta
      sigma) + (F - k) log alpha. The reference's fixed-point code omits this term, which inflates the score by
      (F - k)/(2N) log alpha whenever N < F; its ICML-version code (eigendecomposition of the full F^T F) includes it.
    """
    f = as_features(features, "features", min_samples=2)
    y = as_labels(labels, f.shape[0])
    classes = np.unique(y)
    if classes.size < 2:
        raise ValueError(f"labels hold a single class {classes.tolist()}; LogME needs at least two target classes")
    n, d = f.shape
    sigma, v = _spectrum(f)
    if sigma.size == 0:
        raise ValueError("features are all zero; LogME is undefined (check the feature extraction)")
    k = sigma.size
    s = np.sqrt(sigma)
    proj = (v.T @ f.T) / s[:, None]  # U^T = diag(1/s) V^T F^T, (k, N), without forming U (N, k)

    evidences, alphas, betas, ms = [], [], [], []
    for c in classes:
        y_c = (y == c).astype(np.float64)
        x = proj @ y_c
        x2 = x**2
        res_x2 = max(float(y_c @ y_c - x2.sum()), 0.0)  # |y|^2 outside the column space of F

        alpha, beta = 1.0, 1.0
        for _ in range(_LOGME_MAX_ITER):
            t = alpha / beta
            gamma = float((sigma / (sigma + t)).sum())
            m2, res2 = _moments(t, sigma, x2, res_x2)
            alpha = gamma / (m2 + _LOGME_EPS)
            beta = (n - gamma) / (res2 + _LOGME_EPS)
            if abs(alpha / beta - t) / t <= _LOGME_TOL:
                break
        t = alpha / beta
        m2, res2 = _moments(t, sigma, x2, res_x2)
        evidence = (
            k / 2.0 * np.log(alpha)  # D/2 log alpha - (D - k)/2 log alpha from the null directions of F^T F
            + n / 2.0 * np.log(beta)
            - 0.5 * np.sum(np.log(alpha + beta * sigma))
            - beta / 2.0 * res2
            - alpha / 2.0 * m2
            - n / 2.0 * np.log(2.0 * np.pi)
        )
        evidences.append(evidence / n)
        alphas.append(alpha)
        betas.append(beta)
        ms.append(v @ (s * x / (t + sigma)))
    return LogMEResult(
        classes=classes,
        evidence=np.asarray(evidences),
        alpha=np.asarray(alphas),
        beta=np.asarray(betas),
        m=np.stack(ms) if ms else np.zeros((0, d)),
    )


def logme(features: np.ndarray, labels: np.ndarray | Sequence[int]) -> float:
    """LogME score of features (N, F) for class labels (N,): higher means a linear head on them fits the labels better.

    Comparable across models on the same target (that is what it was designed for); across targets it also depends
    on the number of classes and N, so rank-correlate it with T rather than regress on its raw value.
    """
    return logme_evidence(features, labels).score


def leep(source_probs: np.ndarray, labels: np.ndarray | Sequence[int]) -> float:
    """LEEP score from source-head probabilities theta (N, C_source) and target labels (N,); always <= 0.

    P(y, z) = 1/N sum_{i: y_i = y} theta_iz is the empirical joint of target label and source class, P(y|z) its
    column-normalised conditional, and the score is the mean over samples of log sum_z P(y_i|z) theta_iz. Pass
    probabilities, not logits: ``scipy.special.softmax(logits, axis=1)``.
    """
    theta = as_features(source_probs, "source_probs", min_samples=1)
    y = as_labels(labels, theta.shape[0])
    if theta.min() < 0 or not np.allclose(theta.sum(axis=1), 1.0, atol=1e-4):
        raise ValueError(
            "source_probs must be probabilities (non-negative rows summing to 1); "
            "convert logits with scipy.special.softmax(logits, axis=1)"
        )
    classes, y_idx = np.unique(y, return_inverse=True)
    joint = np.zeros((classes.size, theta.shape[1]))
    np.add.at(joint, y_idx, theta / theta.shape[0])  # P(y, z)
    p_z = joint.sum(axis=0, keepdims=True)
    # A source class no sample gives any probability has P(z) = 0; theta_iz = 0 there, so P(y|z) does not matter.
    p_y_given_z = np.divide(joint, p_z, out=np.zeros_like(joint), where=p_z > 0)
    eep = (theta @ p_y_given_z.T)[np.arange(y.size), y_idx]  # P(y_i | x_i) of the expected empirical predictor
    return float(np.mean(np.log(eep)))


def rank_correlation(
    x: Sequence[float] | np.ndarray, y: Sequence[float] | np.ndarray, method: str = "spearman"
) -> float:
    """Spearman's rho or Kendall's tau between two score lists (e.g. LogME per dataset vs measured T).

    Returns NaN when either list is constant (the correlation is undefined), as scipy does.
    """
    a, b = np.asarray(x, dtype=np.float64).reshape(-1), np.asarray(y, dtype=np.float64).reshape(-1)
    if a.shape != b.shape:
        raise ValueError(f"x and y must have the same length, got {a.size} and {b.size}")
    if a.size < 2:
        raise ValueError(f"rank correlation needs at least 2 pairs, got {a.size}")
    if not (np.all(np.isfinite(a)) and np.all(np.isfinite(b))):
        raise ValueError("x and y must be finite; drop datasets whose score or T is NaN first")
    if method == "spearman":
        result = stats.spearmanr(a, b)
    elif method == "kendall":
        result = stats.kendalltau(a, b)
    else:
        raise ValueError(f"method must be 'spearman' or 'kendall', got {method!r}")
    return float(result.statistic)


def score_correlations(
    rows: Sequence[Mapping], scores: Sequence[str] = ("LogME", "LEEP")
) -> dict[str, dict[str, float]]:
    """``{score: {"spearman": rho, "kendall": tau}}`` of each score against ``T`` over study rows (one per dataset)."""
    t = [r["T"] for r in rows]
    return {
        score: {m: rank_correlation([r[score] for r in rows], t, m) for m in ("spearman", "kendall")}
        for score in scores
    }
