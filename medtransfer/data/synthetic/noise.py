"""Random textures shared by the synthetic generators: smooth Gaussian noise and ultrasound speckle."""

from __future__ import annotations

import numpy as np
from scipy import ndimage


def smooth_noise(
    rng: np.random.Generator, shape: tuple[int, ...], sigma: float | tuple[float, ...], mode: str = "reflect"
) -> np.ndarray:
    """Zero-mean, unit-std Gaussian-filtered noise: slowly varying texture for every synthetic generator."""
    field = ndimage.gaussian_filter(rng.standard_normal(shape), sigma, mode=mode)
    return (field - field.mean()) / (field.std() + 1e-8)


def speckle(
    rng: np.random.Generator, shape: tuple[int, int], sigma: tuple[float, float], mode: str = "reflect"
) -> np.ndarray:
    """Fully developed speckle with mean 1: |complex Gaussian| (Rayleigh) correlated over ``sigma`` pixels."""
    re = ndimage.gaussian_filter(rng.standard_normal(shape), sigma, mode=mode)
    im = ndimage.gaussian_filter(rng.standard_normal(shape), sigma, mode=mode)
    amp = np.hypot(re, im)
    return amp / amp.mean()
