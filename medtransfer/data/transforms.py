"""Image loaders that turn any grey or colour 2D image (file, DICOM or array) into a float tensor in [0, 1].

One reader serves every loader: :func:`load_image` gives a grey (H,W) or an RGB (H,W,3) array, whichever the
``mode`` asks, from a file path (PNG/JPEG/... through PIL, DICOM through pydicom) or a uint8 array (MedMNIST records:
(H,W) or (H,W,3)). :class:`LoadImageModed` puts it channel-first (1 or 3 channels); :class:`LoadGreyImaged` and
:class:`LoadRGBd` are that loader with the mode fixed. Which mode a run uses is decided once for the whole data set
by :func:`medtransfer.data.image_mode.resolve_image_mode`; :class:`RepeatGreyd` then repeats grey images (only) to
the network's channel count.
"""

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
LOAD_MODES = ("grey", "rgb")  # what a loader gives: 1 channel (luminance) or 3 (grey repeated)
_GREY_MODES = ("1", "L", "LA", "I", "I;16", "I;16B", "I;16L", "I;16N", "F")  # PIL modes without colour


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


def _array_to_mode(arr: np.ndarray, mode: str, key: Hashable) -> np.ndarray:
    """uint8 HxW, HxWx1, HxWx3 or HxWx4 -> uint8 HxW (``grey``: ITU-R 601 luminance, like PIL's "L") or HxWx3
    (``rgb``: grey repeated, alpha dropped)."""
    if arr.dtype != np.uint8:
        raise DatasetError(f"array for {key!r} is {arr.dtype}; the image loaders expect uint8 (0-255) images")
    if arr.ndim == 3 and arr.shape[-1] == 1:
        arr = arr[..., 0]
    if arr.ndim == 3 and arr.shape[-1] in (3, 4):
        if mode == "rgb":
            return arr[..., :3]
        rgb = arr[..., :3].astype(np.float32)
        return np.rint(rgb @ _LUMA.astype(np.float32)).clip(0, 255).astype(np.uint8)
    if arr.ndim != 2:
        raise DatasetError(f"array for {key!r} has shape {arr.shape}; expected HxW, HxWx1, HxWx3 or HxWx4")
    return np.repeat(arr[..., None], 3, axis=-1) if mode == "rgb" else arr


def _dicom_to_unit(path: Path, mode: str) -> np.ndarray:
    """Read a DICOM file's first frame as float32 in [0, 1]: HxW for ``grey``, HxWx3 for ``rgb``; bright = dense.

    Rescale slope/intercept applied, MONOCHROME1 inverted, then the image's own min/max stretched to [0, 1]
    (a constant image gives zeros). Palette or RGB colour is turned to luminance for ``grey`` and kept for ``rgb``
    (the three channels stretched together); a grey image is repeated for ``rgb``.
    """
    import pydicom  # imported lazily: only DICOM inputs need it
    from pydicom.pixels import apply_color_lut, pixel_array

    ds = pydicom.dcmread(path)
    arr = pixel_array(ds, index=0)  # first frame only; YCbCr is returned as RGB
    photometric = str(ds.get("PhotometricInterpretation", "")).upper()
    if photometric == "PALETTE COLOR":
        arr = apply_color_lut(arr, ds)
    arr = arr.astype(np.float64)
    if arr.ndim == 3 and arr.shape[-1] == 1:
        arr = arr[..., 0]
    colour = arr.ndim == 3
    if colour:
        arr = arr[..., :3] if mode == "rgb" else arr[..., :3] @ _LUMA  # HxWx3 colour (e.g. ultrasound)
    if arr.ndim != (3 if colour and mode == "rgb" else 2):
        raise DatasetError(f"DICOM {path} has pixel data of shape {arr.shape}; expected a 2D grey or colour image")
    slope, intercept = ds.get("RescaleSlope"), ds.get("RescaleIntercept")
    arr = arr * float(slope if slope is not None else 1) + float(intercept if intercept is not None else 0)
    lo, hi = float(arr.min()), float(arr.max())
    unit = (arr - lo) / (hi - lo) if hi > lo else np.zeros_like(arr)
    if photometric == "MONOCHROME1" and hi > lo:  # MONOCHROME1: low values are bright
        unit = 1.0 - unit
    if mode == "rgb" and not colour:
        unit = np.repeat(unit[..., None], 3, axis=-1)
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


def _read_file(path: Path, mode: str) -> np.ndarray:
    """Float32 HxW (``grey``) or HxWx3 (``rgb``) in [0, 1] from an image file (PIL) or a DICOM file (pydicom)."""
    dicom = False
    try:
        if dicom := _is_dicom(path):
            return _dicom_to_unit(path, mode)
        with Image.open(path) as im:
            im.load()
            # grey source modes go through _pil_to_grey (16-bit scaling) in both modes, then are repeated for rgb
            pixels = _pil_to_grey(im) if mode == "grey" or im.mode in _GREY_MODES else np.asarray(im.convert("RGB"))
        return _array_to_mode(pixels, mode, str(path)).astype(np.float32) / 255.0
    except DatasetError:
        raise
    except Exception as exc:
        if dicom:
            advice = "check it is a DICOM image (compressed pixel data may need a decoder such as pylibjpeg)"
            raise DatasetError(f"cannot read DICOM {path}: {exc}; {advice}") from exc
        raise DatasetError(f"cannot read image {path}: {exc}; re-export it as PNG/JPEG or remove it") from exc


def _check_mode(mode: str) -> str:
    if mode not in LOAD_MODES:
        raise DatasetError(
            f"image loader mode must be one of {', '.join(LOAD_MODES)}, got {mode!r}; resolve image_mode 'auto' "
            "first (medtransfer.data.resolve_image_mode)"
        )
    return mode


def load_image(value: Any, mode: str, key: Hashable = "image") -> np.ndarray:
    """Float32 (H,W) for ``mode="grey"`` or (H,W,3) for ``"rgb"``, in [0, 1], from a file path or a uint8 array.

    Grey from colour is the ITU-R 601 luminance (PIL's "L"); RGB from grey repeats it. A missing or unreadable file
    or an unsupported array is a DatasetError naming it.
    """
    _check_mode(mode)
    if isinstance(value, (str, os.PathLike)):
        path = Path(value)
        if not path.is_file():
            raise DatasetError(f"image file {path} not found (key {key!r}); check the path in the data list")
        return _read_file(path, mode)
    if isinstance(value, np.ndarray):
        return _array_to_mode(value, mode, key).astype(np.float32) / 255.0
    raise DatasetError(f"{key!r} holds a {type(value).__name__}; expected a file path or a uint8 array")


class _EachKeyd(MapTransform):
    """A dictionary transform whose :meth:`_entries` turns each key's value into the entries to set."""

    def _entries(self, key: Hashable, value: Any) -> dict[Hashable, Any]:
        raise NotImplementedError

    def __call__(self, data: Mapping[Hashable, Any]) -> dict[Hashable, Any]:
        d = dict(data)
        for key in self.key_iterator(d):
            d.update(self._entries(key, d[key]))
        return d


class LoadImageModed(_EachKeyd):
    """Load each key (file path or uint8 array, grey or colour) as a float32 tensor in [0, 1]:
    (1,H,W) for ``mode="grey"``, (3,H,W) for ``mode="rgb"``.

    A path is kept in ``data[f"{key}_path"]`` so per-image outputs (CSV rows) can name the source file. DICOM files
    (``.dcm``, or any file with the DICOM magic whatever its name) are read with pydicom and stretched to [0, 1] by
    their own min/max. ``mode`` is ``grey`` or ``rgb``; a bundle's ``image_mode: auto`` is resolved to one of them
    for the whole data set before the loader is built (:func:`~medtransfer.data.image_mode.resolve_image_mode`).
    """

    def __init__(self, keys: KeysCollection, mode: str = "grey", allow_missing_keys: bool = False) -> None:
        super().__init__(keys, allow_missing_keys)
        self.mode = _check_mode(mode)

    def _entries(self, key: Hashable, value: Any) -> dict[Hashable, Any]:
        unit = load_image(value, self.mode, key)
        channel_first = unit[None] if unit.ndim == 2 else unit.transpose(2, 0, 1)
        out: dict[Hashable, Any] = {key: torch.from_numpy(np.ascontiguousarray(channel_first))}
        if isinstance(value, (str, os.PathLike)):
            out[f"{key}_path"] = str(Path(value))
        return out


class LoadGreyImaged(LoadImageModed):
    """:class:`LoadImageModed` with ``mode="grey"``: (1,H,W); colour is turned to luminance.

    BUSI PNGs are saved as RGB although they are grey, and MedMNIST comes as arrays, so one loader for both keeps a
    pipeline single-channel (masks too).
    """

    def __init__(self, keys: KeysCollection, allow_missing_keys: bool = False) -> None:
        super().__init__(keys, "grey", allow_missing_keys)


class LoadRGBd(LoadImageModed):
    """:class:`LoadImageModed` with ``mode="rgb"``: (3,H,W); grey images are repeated over the three channels, so
    they feed the same ImageNet-style networks as RGB natural images."""

    def __init__(self, keys: KeysCollection, allow_missing_keys: bool = False) -> None:
        super().__init__(keys, "rgb", allow_missing_keys)


class RepeatGreyd(_EachKeyd):
    """Repeat a one-channel (grey) image to ``channels``; an image that already has ``channels`` is left as it is.

    The classification bundles' channel step: the network always gets ``in_channels`` (3) channels, colour images
    keep theirs and grey ones are repeated (what ``RepeatChanneld`` did for every image). Any other channel count is
    a DatasetError saying which ``image_mode`` fits the network.
    """

    def __init__(self, keys: KeysCollection, channels: int = 3, allow_missing_keys: bool = False) -> None:
        super().__init__(keys, allow_missing_keys)
        self.channels = int(channels)

    def _entries(self, key: Hashable, image: Any) -> dict[Hashable, Any]:
        have = int(image.shape[0])
        if have == 1 and self.channels != 1:
            return {key: image.repeat(self.channels, *([1] * (image.ndim - 1)))}
        if have != self.channels:
            raise DatasetError(
                f"{key!r} has {have} channels but the network takes {self.channels}; "
                f"use image_mode {'grey' if self.channels == 1 else 'rgb'} (or in_channels {have})"
            )
        return {key: image}
