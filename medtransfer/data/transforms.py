"""A loader that turns any grey or RGB 2D image (file, DICOM or array) into a (1,H,W) float tensor in [0, 1]."""

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

_LUMA = np.array([0.299, 0.587, 0.114])  # ITU-R 601, as PIL's "L"


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
        return np.rint(rgb @ _LUMA.astype(np.float32)).clip(0, 255).astype(np.uint8)
    if arr.ndim != 2:
        raise DatasetError(f"array for {key!r} has shape {arr.shape}; expected HxW or HxWx3")
    return arr


def _dicom_to_unit(path: Path) -> np.ndarray:
    """Read a DICOM file's first frame as float32 HxW in [0, 1], bright = dense.

    Rescale slope/intercept applied, MONOCHROME1 inverted, palette or RGB colour turned to luminance,
    then the image's own min/max stretched to [0, 1] (a constant image gives zeros).
    """
    import pydicom  # imported lazily: only DICOM inputs need it
    from pydicom.pixels import apply_color_lut, pixel_array

    ds = pydicom.dcmread(path)
    arr = pixel_array(ds, index=0)  # first frame only; YCbCr is returned as RGB
    photometric = str(ds.get("PhotometricInterpretation", "")).upper()
    if photometric == "PALETTE COLOR":
        arr = apply_color_lut(arr, ds)
    arr = arr.astype(np.float64)
    if arr.ndim == 3:  # HxWx3 colour (e.g. ultrasound) -> luminance
        arr = arr[..., :3] @ _LUMA
    if arr.ndim != 2:
        raise DatasetError(f"DICOM {path} has pixel data of shape {arr.shape}; expected a 2D grey or colour image")
    slope, intercept = ds.get("RescaleSlope"), ds.get("RescaleIntercept")
    arr = arr * float(slope if slope is not None else 1) + float(intercept if intercept is not None else 0)
    lo, hi = float(arr.min()), float(arr.max())
    unit = (arr - lo) / (hi - lo) if hi > lo else np.zeros_like(arr)
    if photometric == "MONOCHROME1" and hi > lo:  # MONOCHROME1: low values are bright
        unit = 1.0 - unit
    return unit.astype(np.float32)


def _is_dicom(path: Path) -> bool:
    """``.dcm``, or the DICOM "DICM" magic after the 128-byte preamble (files often have no extension, or .IMA).

    Checked before PIL: some DICOM preambles hold a TIFF header that PIL would otherwise try to read.
    """
    if path.suffix.lower() == ".dcm":
        return True
    with path.open("rb") as f:
        f.seek(128)
        return f.read(4) == b"DICM"


def _read_file(path: Path) -> np.ndarray:
    """Float32 HxW in [0, 1] from an image file (PIL) or a DICOM file (pydicom); DatasetError naming it otherwise."""
    dicom = False
    try:
        if dicom := _is_dicom(path):
            return _dicom_to_unit(path)
        with Image.open(path) as im:
            im.load()
            return _pil_to_grey(im).astype(np.float32) / 255.0
    except DatasetError:
        raise
    except Exception as exc:
        if dicom:
            advice = "check it is a DICOM image (compressed pixel data may need a decoder such as pylibjpeg)"
            raise DatasetError(f"cannot read DICOM {path}: {exc}; {advice}") from exc
        raise DatasetError(f"cannot read image {path}: {exc}; re-export it as PNG or remove it") from exc


class _LoadImaged(MapTransform):
    """Shared loop of the image loaders: each key holds a file path or a uint8 array; a path is kept in
    ``data[f"{key}_path"]`` so per-image outputs (CSV rows) can name the source file."""

    def __init__(self, keys: KeysCollection, allow_missing_keys: bool = False) -> None:
        super().__init__(keys, allow_missing_keys)

    def _from_file(self, path: Path) -> np.ndarray:
        raise NotImplementedError

    def _from_array(self, value: np.ndarray, key: Hashable) -> np.ndarray:
        raise NotImplementedError

    def _to_tensor(self, unit: np.ndarray) -> torch.Tensor:
        raise NotImplementedError

    def __call__(self, data: Mapping[Hashable, Any]) -> dict[Hashable, Any]:
        d = dict(data)
        for key in self.key_iterator(d):
            value = d[key]
            if isinstance(value, (str, os.PathLike)):
                path = Path(value)
                if not path.is_file():
                    raise DatasetError(f"image file {path} not found (key {key!r}); check the path in the data list")
                unit = self._from_file(path)
                d[f"{key}_path"] = str(path)
            elif isinstance(value, np.ndarray):
                unit = self._from_array(value, key).astype(np.float32) / 255.0
            else:
                raise DatasetError(f"{key!r} holds a {type(value).__name__}; expected a file path or a uint8 array")
            d[key] = self._to_tensor(unit)
        return d


class LoadGreyImaged(_LoadImaged):
    """Load each key (file path or uint8 array) as a float32 tensor (1,H,W) in [0, 1].

    BUSI PNGs are saved as RGB although they are grey, and MedMNIST comes as arrays, so one loader
    for both keeps the rest of the pipeline single-channel. DICOM files (``.dcm``, or any file with
    the DICOM magic whatever its name) are read with pydicom and stretched to [0, 1] by their own min/max
    (:func:`_dicom_to_unit`).
    """

    def _from_file(self, path: Path) -> np.ndarray:
        return _read_file(path)

    def _from_array(self, value: np.ndarray, key: Hashable) -> np.ndarray:
        return _array_to_grey(value, key)

    def _to_tensor(self, unit: np.ndarray) -> torch.Tensor:
        return torch.from_numpy(unit).unsqueeze(0)


_GREY_MODES = ("1", "L", "I", "I;16", "I;16B", "I;16L", "I;16N", "F")


def _array_to_rgb(arr: np.ndarray, key: Hashable) -> np.ndarray:
    """uint8 HxW, HxWx1, HxWx3 or HxWx4 -> uint8 HxWx3 (grey repeated, alpha dropped)."""
    if arr.dtype != np.uint8:
        raise DatasetError(f"array for {key!r} is {arr.dtype}; LoadRGBd expects uint8 (0-255) images")
    if arr.ndim == 3 and arr.shape[-1] == 1:
        arr = arr[..., 0]
    if arr.ndim == 2:
        return np.repeat(arr[..., None], 3, axis=-1)
    if arr.ndim == 3 and arr.shape[-1] in (3, 4):
        return arr[..., :3]
    raise DatasetError(f"array for {key!r} has shape {arr.shape}; expected HxW, HxWx1, HxWx3 or HxWx4")


def _read_rgb(path: Path) -> np.ndarray:
    """Float32 HxWx3 in [0, 1] from an image or DICOM file; a DatasetError naming the file otherwise."""
    try:
        if _is_dicom(path):
            return np.repeat(_dicom_to_unit(path)[..., None], 3, axis=-1)
        with Image.open(path) as im:
            im.load()
            if im.mode in _GREY_MODES:
                rgb = _array_to_rgb(_pil_to_grey(im), str(path))
            else:
                rgb = np.asarray(im.convert("RGB"), dtype=np.uint8)
        return rgb.astype(np.float32) / 255.0
    except DatasetError:
        raise
    except Exception as exc:
        raise DatasetError(f"cannot read image {path}: {exc}; re-export it as PNG/JPEG or remove it") from exc


class LoadRGBd(_LoadImaged):
    """Load each key (file path or uint8 array, grey or colour) as a float32 tensor (3,H,W) in [0, 1].

    Grey medical images are repeated over three channels so they feed the same ImageNet-style networks as RGB
    natural images (the transferability study fine-tunes one network on both).
    """

    def _from_file(self, path: Path) -> np.ndarray:
        return _read_rgb(path)

    def _from_array(self, value: np.ndarray, key: Hashable) -> np.ndarray:
        return _array_to_rgb(value, key)

    def _to_tensor(self, unit: np.ndarray) -> torch.Tensor:
        return torch.from_numpy(np.ascontiguousarray(unit.transpose(2, 0, 1)))
