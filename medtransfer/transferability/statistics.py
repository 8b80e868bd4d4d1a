"""Dataset statistics for the transferability regression: domain gap G, diversity D and size N.

Chen, Li, Ding and Liu, "Rethinking Two Consensuses of the Transferability in Deep Learning" (2022), relate a
network's mean layer-wise transferability to the target dataset's domain gap, diversity and size, but do not publish
how they compute G and D. Here both are computed from the pre-trained network's penultimate features
(:func:`medtransfer.transferability.features.extract_features`), i.e. from what the source model "sees":

* **G** (:func:`domain_gap`) -- Fréchet distance between Gaussian fits of source and target features (the FID
  formula), or the distance of their means.
* **D** (:func:`diversity`) -- within-class variance as a fraction of the total variance of the target features.

Both use features L2-normalised per sample (``normalize=True``), so they lie on the unit sphere: the numbers do not
depend on the scale of a backbone's feature space (ResNet and DenseNet activations differ in magnitude, and the scale
drifts with input normalisation), which is what lets datasets -- and backbones -- be put on one regression.
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence

import numpy as np
from scipy import linalg

__all__ = [
    "as_features",
    "as_labels",
    "dataset_statistics",
    "diversity",
    "domain_gap",
    "frechet_distance",
    "gaussian_stats",
    "l2_normalize",
]

GAP_METHODS = ("frechet", "mean")


def as_features(features: np.ndarray | Sequence, name: str, min_samples: int = 1) -> np.ndarray:
    """``features`` as a finite float64 (N, F) array of at least ``min_samples`` rows; ValueError naming ``name``."""
    arr = np.asarray(features, dtype=np.float64)
    if arr.ndim != 2:
        raise ValueError(f"{name} must be a 2-D array (N samples, F features), got shape {arr.shape}")
    if arr.shape[0] < min_samples:
        raise ValueError(f"{name} has {arr.shape[0]} samples but at least {min_samples} are needed")
    if not np.all(np.isfinite(arr)):
        raise ValueError(f"{name} contains NaN or infinite values; check the feature extraction (e.g. fp16 overflow)")
    return arr


def as_labels(labels: np.ndarray | Sequence, n: int, name: str = "labels") -> np.ndarray:
    """``labels`` as int64 class indices of shape (n,), matching n feature rows; ValueError naming ``name``."""
    arr = np.asarray(labels)
    if arr.ndim != 1 or arr.shape[0] != n:
        raise ValueError(f"{name} must have shape ({n},) to match the features, got shape {arr.shape}")
    if np.issubdtype(arr.dtype, np.floating):
        if not np.all(np.isfinite(arr)) or not np.all(arr == np.round(arr)):
            raise ValueError(f"{name} must hold integer class indices, got values like {arr[:5]}")
        arr = arr.astype(np.int64)
    elif not (np.issubdtype(arr.dtype, np.integer) or arr.dtype == bool):
        raise ValueError(f"{name} must hold integer class indices, got dtype {arr.dtype}")
    return arr.astype(np.int64)


def l2_normalize(features: np.ndarray) -> np.ndarray:
    """Each row scaled to unit length (all-zero rows stay zero) so only feature directions matter."""
    norms = np.linalg.norm(features, axis=1, keepdims=True)
    return np.divide(features, norms, out=np.zeros_like(features), where=norms > 0)


def gaussian_stats(features: np.ndarray, normalize: bool = True) -> tuple[np.ndarray, np.ndarray]:
    """Mean (F,) and covariance (F, F) of ``features`` (unbiased, as FID), after optional L2 normalisation.

    Public so that the source statistics (e.g. of ImageNet) can be computed once and reused for every target.
    """
    x = as_features(features, "features", min_samples=2)
    if normalize:
        x = l2_normalize(x)
    return x.mean(axis=0), np.atleast_2d(np.cov(x, rowvar=False))


def frechet_distance(
    mu1: np.ndarray, sigma1: np.ndarray, mu2: np.ndarray, sigma2: np.ndarray, ridge: float = 1e-6
) -> float:
    """||mu1 - mu2||^2 + Tr(S1 + S2 - 2 (S1 S2)^1/2) with S = sigma + ridge * I.

    The ridge keeps the matrix square root defined when a covariance is singular (fewer samples than features, dead
    ReLU units); on L2-normalised features (variances of order 1/F) 1e-6 changes the distance by about 1e-6 * F.
    As in the FID reference code, a non-finite square root is retried with a 1000x larger ridge, and the tiny
    imaginary part that ``sqrtm`` returns for nearly singular products is dropped -- unless it is large, which means
    the result is not trustworthy.
    """
    mu1, mu2 = np.atleast_1d(np.asarray(mu1, np.float64)), np.atleast_1d(np.asarray(mu2, np.float64))
    s1, s2 = np.atleast_2d(np.asarray(sigma1, np.float64)), np.atleast_2d(np.asarray(sigma2, np.float64))
    f = mu1.shape[0]
    if mu2.shape != (f,) or s1.shape != (f, f) or s2.shape != (f, f):
        raise ValueError(
            f"shapes do not match: mu1 {mu1.shape}, mu2 {mu2.shape}, sigma1 {s1.shape}, sigma2 {s2.shape}; "
            "both feature sets must come from the same backbone layer"
        )
    if ridge < 0:
        raise ValueError(f"ridge must be >= 0, got {ridge}")
    eye = np.eye(f)
    s1, s2 = s1 + ridge * eye, s2 + ridge * eye
    covmean = linalg.sqrtm(s1 @ s2)
    if not np.all(np.isfinite(covmean)):
        offset = max(ridge, 1e-9) * 1000
        warnings.warn(
            f"frechet_distance: sqrtm(S1 S2) is not finite (singular covariances); retrying with ridge {offset:g}",
            RuntimeWarning,
            stacklevel=2,
        )
        s1, s2 = s1 + offset * eye, s2 + offset * eye
        covmean = linalg.sqrtm(s1 @ s2)
    if np.iscomplexobj(covmean):
        scale = max(1.0, float(np.abs(np.diagonal(covmean)).max()))
        worst = float(np.abs(np.diagonal(covmean).imag).max())
        if worst > 1e-3 * scale:
            raise ValueError(
                f"frechet_distance: sqrtm(S1 S2) has imaginary part {worst:.3g} on its diagonal, so the covariances "
                "are too ill-conditioned; use more samples than features or a larger ridge"
            )
        covmean = covmean.real
    diff = mu1 - mu2
    value = float(diff @ diff + np.trace(s1) + np.trace(s2) - 2.0 * np.trace(covmean))
    return max(value, 0.0)  # round-off can give -1e-12 for identical sets; a squared distance is never negative


def domain_gap(
    source_features: np.ndarray,
    target_features: np.ndarray,
    method: str = "frechet",
    normalize: bool = True,
    ridge: float = 1e-6,
) -> float:
    """Domain gap G between source and target feature sets (N_s, F) and (N_t, F) of the same pre-trained layer.

    ``method="frechet"``: Fréchet distance of Gaussian fits (the FID formula), which sees both a shift of the mean
    and a change of shape/spread of the feature cloud. ``method="mean"``: Euclidean distance of the mean
    embeddings, cruder but needs few samples. With ``normalize=True`` (default) features are L2-normalised per
    sample first, so G is scale-free and comparable across datasets and backbones (Fréchet G is then at most
    about 4, mean G at most 2).

    The paper this reproduces does not publish its formula for G; this is our choice, documented so that results
    can be compared with it.
    """
    if method not in GAP_METHODS:
        raise ValueError(f"method must be one of {GAP_METHODS}, got {method!r}")
    src = as_features(source_features, "source_features", min_samples=2 if method == "frechet" else 1)
    tgt = as_features(target_features, "target_features", min_samples=2 if method == "frechet" else 1)
    if src.shape[1] != tgt.shape[1]:
        raise ValueError(
            f"source_features have {src.shape[1]} features but target_features have {tgt.shape[1]}; "
            "extract both with the same network"
        )
    if method == "mean":
        if normalize:
            src, tgt = l2_normalize(src), l2_normalize(tgt)
        return float(np.linalg.norm(src.mean(axis=0) - tgt.mean(axis=0)))
    mu1, s1 = gaussian_stats(src, normalize)
    mu2, s2 = gaussian_stats(tgt, normalize)
    return frechet_distance(mu1, s1, mu2, s2, ridge=ridge)


def diversity(features: np.ndarray, labels: np.ndarray | Sequence[int], normalize: bool = True) -> float:
    """Diversity D: mean within-class variance divided by the total variance of the same features, in [0, 1].

    Per class c, Tr(Cov_c) / F is the mean per-feature variance; these are averaged with weights n_c / N and divided
    by Tr(Cov) / F of all samples (population covariances, ddof=0). By the law of total variance
    total = within + between, so D = 1 - between/total: D near 0 means each class is a tight cluster (little intra-class
    variation), D near 1 means the samples of each class spread as widely as the whole dataset. The ratio is invariant
    to scaling the features; ``normalize=True`` also L2-normalises per sample, as :func:`domain_gap` does.

    The paper this reproduces does not publish its formula for diversity; this is our choice.
    """
    x = as_features(features, "features", min_samples=2)
    y = as_labels(labels, x.shape[0])
    if normalize:
        x = l2_normalize(x)
    total = float(((x - x.mean(axis=0)) ** 2).sum(axis=1).mean())
    if total <= 0.0:
        raise ValueError("features have zero variance (all samples identical); diversity is undefined")
    within = 0.0
    for c in np.unique(y):
        xc = x[y == c]
        within += float(((xc - xc.mean(axis=0)) ** 2).sum())  # n_c * Tr(Cov_c)
    return within / x.shape[0] / total


def dataset_statistics(
    source_features: np.ndarray,
    target_features: np.ndarray,
    target_labels: np.ndarray | Sequence[int],
    n_train: int,
    method: str = "frechet",
    normalize: bool = True,
) -> dict:
    """``{"G": domain gap, "D": diversity, "N": n_train}`` for one target dataset, ready to become a regression row.

    ``n_train`` is passed separately because features are often extracted from a subsample (or a held-out split)
    while the regression needs the size of the training set that fine-tuning used.
    """
    n = int(n_train)
    if n != n_train or n < 1:
        raise ValueError(f"n_train must be a positive integer (training-set size), got {n_train!r}")
    return {
        "G": domain_gap(source_features, target_features, method=method, normalize=normalize),
        "D": diversity(target_features, target_labels, normalize=normalize),
        "N": n,
    }
