"""A loader that turns any grey or RGB 2D image (file or array) into a (1,H,W) float tensor in [0, 1]."""

from __future__ import annotations

import os
from collections.abc import Hashable, Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch
from monai.config import KeysCollection
from monai.transforms import MapTransform
from PIL import Image

from medtransfer.errors import DatasetError


def _pil_to_grey(im: Image.Image) -> np.ndarray:
    """Return an 8-bit HxW array; 16/32-bit integer images are scaled from their 16-bit range, not clipped."""
    if im.mode in ("I", "I;16", "I;16B", "I;16L", "I;16N"):
        arr = np.asarray(im, dtype=np.float64)
        return np.clip(np.rint(arr / 65535.0 * 255.0), 0, 255).astype(np.uint8)
    if im.mode == "F":
        arr = np.asarray(im, dtype=np.float64)
        lo, hi = float(np.nanmin(arr)), float(np.nanmax(arr))
        scaled = (arr - lo) / (hi - lo) if hi > lo else np.zeros_like(arr)
        return np.rint(np.nan_to_num(scaled) * 255.0).astype(np.uint8)
    return np.asarray(im.convert("L"), dtype=np.uint8)


def _array_to_grey(arr: np.ndarray, key: Hashable) -> np.ndarray:
    """Accept HxW, HxWx1, HxWx3 or HxWx4 uint8 arrays; RGB is converted with ITU-R 601 luminance like PIL's "L"."""
    if arr.dtype != np.uint8:
        raise DatasetError(f"array for {key!r} is {arr.dtype}; LoadGreyImaged expects uint8 (0-255) images")
    if arr.ndim == 3 and arr.shape[-1] in (1, 3, 4):
        if arr.shape[-1] == 1:
            return arr[..., 0]
        rgb = arr[..., :3].astype(np.float32)
        return np.rint(rgb @ np.array([0.299, 0.587, 0.114], dtype=np.float32)).clip(0, 255).astype(np.uint8)
    if arr.ndim != 2:
        raise DatasetError(f"array for {key!r} has shape {arr.shape}; expected HxW or HxWx3")
    return arr


class LoadGreyImaged(MapTransform):
    """Load each key (file path or uint8 array) as a float32 tensor (1,H,W) in [0, 1].

    BUSI PNGs are saved as RGB although they are grey, and MedMNIST comes as arrays, so one loader
    for both keeps the rest of the pipeline single-channel. For paths, ``data[f"{key}_path"]`` keeps
    the source file so per-image outputs (CSV rows) can name it.
    """

    def __init__(self, keys: KeysCollection, allow_missing_keys: bool = False) -> None:
        super().__init__(keys, allow_missing_keys)

    def __call__(self, data: Mapping[Hashable, Any]) -> dict[Hashable, Any]:
        d = dict(data)
        for key in self.key_iterator(d):
            value = d[key]
            if isinstance(value, (str, os.PathLike)):
                path = Path(value)
                if not path.is_file():
                    raise DatasetError(f"image file {path} not found (key {key!r}); check the path in the data list")
                try:
                    with Image.open(path) as im:
                        im.load()
                        grey = _pil_to_grey(im)
                except DatasetError:
                    raise
                except Exception as exc:
                    raise DatasetError(f"cannot read image {path}: {exc}; re-export it as PNG or remove it") from exc
                d[f"{key}_path"] = str(path)
            elif isinstance(value, np.ndarray):
                grey = _array_to_grey(value, key)
            else:
                raise DatasetError(f"{key!r} holds a {type(value).__name__}; expected a file path or a uint8 array")
            d[key] = torch.from_numpy(grey.astype(np.float32) / 255.0).unsqueeze(0)
        return d
