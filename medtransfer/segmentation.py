"""Segmentation pieces the LiTS bundle composes: 3D or 2D-slice patches, inferers and the Dice of label maps.

One setting, ``spatial_dims``, switches the whole pipeline between a 3D U-Net on 3D patches and a 2D U-Net trained on
axial slices (for machines without a GPU): the crops keep a depth of 1 and are squeezed, and inference runs the 2D
network slice by slice over the volume (MONAI's ``SliceInferer``), so both write masks on the input's grid. The Dice
metrics and the per-case report an evaluator uses are handlers: ``medtransfer.handlers.reports``.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from monai.inferers import Inferer, SliceInferer, SlidingWindowInferer
from monai.transforms import SqueezeDimd


def _check_dims(spatial_dims: int) -> None:
    if spatial_dims not in (2, 3):
        raise ValueError(f"spatial_dims must be 2 (slice mode) or 3, got {spatial_dims}")


def crop_size(spatial_dims: int, patch_size: Sequence[int], slice_size: Sequence[int]) -> list[int]:
    """Size of the random training crops taken from a (C, H, W, D) volume: the 3D patch, or one axial slice."""
    _check_dims(spatial_dims)
    return [int(s) for s in patch_size] if spatial_dims == 3 else [int(slice_size[0]), int(slice_size[1]), 1]


def slice_squeeze(spatial_dims: int, keys: Sequence[str] = ("image", "label")) -> list:
    """Transforms that turn a depth-1 crop into a 2D sample in slice mode; nothing in 3D."""
    _check_dims(spatial_dims)
    return [SqueezeDimd(keys=list(keys), dim=-1)] if spatial_dims == 2 else []


def make_inferer(
    spatial_dims: int,
    patch_size: Sequence[int],
    slice_size: Sequence[int],
    sw_batch_size: int = 4,
    overlap: float = 0.25,
) -> Inferer:
    """Whole-volume inference: sliding 3D windows, or the 2D network over every axial slice with 2D windows."""
    _check_dims(spatial_dims)
    if spatial_dims == 3:
        return SlidingWindowInferer(roi_size=list(patch_size), sw_batch_size=sw_batch_size, overlap=overlap)
    return SliceInferer(
        roi_size=list(slice_size), spatial_dim=2, sw_batch_size=sw_batch_size, overlap=overlap, progress=False
    )


def dice_per_label(pred: np.ndarray, truth: np.ndarray, num_classes: int) -> list[float]:
    """Dice of labels ``1..num_classes-1`` between two label maps of equal shape; NaN where both are empty
    (nothing to find and nothing found says nothing about the model, so it is left out of means)."""
    pred, truth = np.asarray(pred), np.asarray(truth)
    if pred.shape != truth.shape:
        raise ValueError(f"prediction {pred.shape} and ground truth {truth.shape} differ in shape")
    out = []
    for k in range(1, num_classes):
        p, t = pred == k, truth == k
        denom = int(p.sum()) + int(t.sum())
        out.append(float("nan") if denom == 0 else 2.0 * int((p & t).sum()) / denom)
    return out
