"""LoadGreyImaged: files or arrays in, (1,H,W) float32 in [0,1] out; unreadable files named."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from medtransfer.data import LoadGreyImaged
from medtransfer.errors import DatasetError


def _assert_grey(t: torch.Tensor, h: int, w: int) -> None:
    assert isinstance(t, torch.Tensor) and t.dtype == torch.float32
    assert tuple(t.shape) == (1, h, w)
    assert 0.0 <= float(t.min()) and float(t.max()) <= 1.0


def test_path_input_and_path_key(tmp_path: Path) -> None:
    arr = np.arange(20 * 30, dtype=np.uint32).reshape(20, 30) % 256
    path = tmp_path / "grey.png"
    Image.fromarray(arr.astype(np.uint8)).save(path)
    out = LoadGreyImaged("image")({"image": str(path), "label": 1})
    _assert_grey(out["image"], 20, 30)
    assert torch.allclose(out["image"][0], torch.from_numpy(arr.astype(np.float32) / 255))
    assert out["image_path"] == str(path) and out["label"] == 1
    assert LoadGreyImaged("image")({"image": path})["image_path"] == str(path)  # Path objects too


def test_array_inputs() -> None:
    grey = np.full((5, 7), 255, dtype=np.uint8)
    out = LoadGreyImaged("image")({"image": grey})
    _assert_grey(out["image"], 5, 7)
    assert float(out["image"].min()) == 1.0 and "image_path" not in out
    rgb = np.zeros((4, 6, 3), dtype=np.uint8)
    rgb[..., 1] = 200
    out = LoadGreyImaged("image")({"image": rgb})
    _assert_grey(out["image"], 4, 6)
    assert abs(float(out["image"][0, 0, 0]) - round(0.587 * 200) / 255) < 1e-6


def test_sixteen_bit_is_scaled_not_clipped(tmp_path: Path) -> None:
    path = tmp_path / "deep.png"
    Image.fromarray(np.array([[0, 32768, 65535]], dtype=np.uint16)).save(path)
    out = LoadGreyImaged("image")({"image": path})["image"]
    assert out[0, 0].tolist() == pytest.approx([0.0, 128 / 255, 1.0], abs=1 / 255)


@pytest.mark.realdata
def test_rgb_busi_png_and_mode1_mask(need) -> None:
    folder = need("busi") / "benign"
    out = LoadGreyImaged(["image", "mask"])(
        {"image": folder / "benign (4).png", "mask": str(folder / "benign (4)_mask.png")}
    )
    _assert_grey(out["image"], 465, 555)
    assert float(out["image"].std()) > 0.05
    assert set(out["mask"].unique().tolist()) == {0.0, 1.0}


def test_corrupt_and_missing_files(tmp_path: Path) -> None:
    bad = tmp_path / "broken image.png"
    bad.write_bytes(b"\x89PNG\r\n\x1a\n not really")
    with pytest.raises(DatasetError, match="broken image.png") as info:
        LoadGreyImaged("image")({"image": str(bad)})
    assert "re-export" in str(info.value)
    with pytest.raises(DatasetError, match="gone.png"):
        LoadGreyImaged("image")({"image": str(tmp_path / "gone.png")})


def test_missing_keys_and_bad_arrays() -> None:
    assert LoadGreyImaged(["image", "mask"], allow_missing_keys=True)({"image": np.zeros((2, 2), np.uint8)})[
        "image"
    ].shape == (1, 2, 2)
    with pytest.raises(KeyError):
        LoadGreyImaged(["image", "mask"])({"image": np.zeros((2, 2), np.uint8)})
    with pytest.raises(DatasetError, match="float64"):
        LoadGreyImaged("image")({"image": np.zeros((2, 2))})
