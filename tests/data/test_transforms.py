"""LoadImageModed (and LoadGreyImaged, LoadRGBd): files or arrays in, (1|3,H,W) float32 in [0,1] out."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import pydicom_sample
from PIL import Image

from medtransfer.data import LoadGreyImaged, LoadImageModed, LoadRGBd
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


def _unit(arr: np.ndarray) -> np.ndarray:
    arr = arr.astype(np.float64)
    return (arr - arr.min()) / (arr.max() - arr.min())


@pytest.mark.parametrize("name", ["CT_small.dcm", "MR_small.dcm", "liver_1frame.dcm"])
def test_dicom_grey(name: str) -> None:
    import pydicom

    ds = pydicom.dcmread(pydicom_sample(name))
    pixels = ds.pixel_array
    out = LoadGreyImaged("image")({"image": pydicom_sample(name)})
    _assert_grey(out["image"], int(ds.Rows), int(ds.Columns))
    image = out["image"][0].numpy()
    assert float(image.std()) > 0.05 and image.min() == 0.0 and image.max() == 1.0
    assert np.unravel_index(image.argmax(), image.shape) == np.unravel_index(pixels.argmax(), pixels.shape)
    np.testing.assert_allclose(image, _unit(pixels), atol=1e-6)  # slope > 0: same ordering, own min/max
    assert out["image_path"] == str(pydicom_sample(name))


def test_dicom_without_extension_and_upper_case_suffix(tmp_path: Path) -> None:
    source = pydicom_sample("CT_small.dcm")
    expected = LoadGreyImaged("image")({"image": source})["image"]
    for name in ("IM00001", "SCAN.DCM"):  # recognised by the "DICM" magic, not the name
        (tmp_path / name).write_bytes(source.read_bytes())
        assert torch.equal(LoadGreyImaged("image")({"image": tmp_path / name})["image"], expected)


def test_dicom_monochrome1_is_inverted(tmp_path: Path) -> None:
    import pydicom

    ds = pydicom.dcmread(pydicom_sample("MR_small.dcm"))
    pixels = ds.pixel_array
    ds.PhotometricInterpretation = "MONOCHROME1"
    ds.save_as(tmp_path / "mono1.dcm")
    image = LoadGreyImaged("image")({"image": tmp_path / "mono1.dcm"})["image"][0].numpy()
    np.testing.assert_allclose(image, 1.0 - _unit(pixels), atol=1e-6)  # low values are bright in MONOCHROME1
    assert np.unravel_index(image.argmax(), image.shape) == np.unravel_index(pixels.argmin(), pixels.shape)


def test_dicom_rescale_multiframe_and_constant(tmp_path: Path) -> None:
    import pydicom

    ds = pydicom.dcmread(pydicom_sample("MR_small.dcm"))
    first = ds.pixel_array
    ds.PixelData = np.stack([first, first[::-1]]).tobytes()
    ds.NumberOfFrames = 2
    ds.RescaleSlope, ds.RescaleIntercept = -2, 100  # a negative slope flips the ordering
    ds.save_as(tmp_path / "two_frames.dcm")
    image = LoadGreyImaged("image")({"image": tmp_path / "two_frames.dcm"})["image"]
    _assert_grey(image, int(ds.Rows), int(ds.Columns))
    np.testing.assert_allclose(image[0].numpy(), 1.0 - _unit(first), atol=1e-6)  # first frame only

    ds = pydicom.dcmread(pydicom_sample("MR_small.dcm"))
    ds.PixelData = np.full_like(first, 7).tobytes()
    ds.save_as(tmp_path / "flat.dcm")
    image = LoadGreyImaged("image")({"image": tmp_path / "flat.dcm"})["image"]
    assert image.shape == (1, ds.Rows, ds.Columns) and float(image.abs().max()) == 0.0


def test_dicom_palette_ultrasound_to_luminance() -> None:
    import pydicom
    from pydicom.pixels import apply_color_lut

    ds = pydicom.dcmread(pydicom_sample("examples_palette.dcm"))
    assert ds.PhotometricInterpretation == "PALETTE COLOR"
    rgb = apply_color_lut(ds.pixel_array, ds).astype(np.float64)
    out = LoadGreyImaged("image")({"image": pydicom_sample("examples_palette.dcm")})["image"]
    _assert_grey(out, int(ds.Rows), int(ds.Columns))
    np.testing.assert_allclose(out[0].numpy(), _unit(rgb @ [0.299, 0.587, 0.114]), atol=1e-5)


def test_garbage_dicom_is_named(tmp_path: Path) -> None:
    bad = tmp_path / "not a scan.dcm"
    bad.write_bytes(b"DICM? no, just some bytes" * 10)
    with pytest.raises(DatasetError, match="not a scan.dcm"):
        LoadGreyImaged("image")({"image": bad})
    odd = tmp_path / "notes.xyz"
    odd.write_bytes(b"neither an image nor DICOM")
    with pytest.raises(DatasetError, match="notes.xyz"):
        LoadGreyImaged("image")({"image": str(odd)})


def test_one_loader_two_modes_on_arrays() -> None:
    grey = np.arange(12, dtype=np.uint8).reshape(3, 4) * 20
    colour = np.stack([grey, 255 - grey, np.full_like(grey, 7)], axis=-1)
    for value in (grey, grey[..., None]):
        out = LoadImageModed("image", mode="rgb")({"image": value})["image"]
        assert out.shape == (3, 3, 4) and all(torch.equal(c, torch.from_numpy(grey / np.float32(255))) for c in out)
        assert torch.equal(LoadImageModed("image", mode="grey")({"image": value})["image"][0], out[0])
    rgb = LoadImageModed("image", mode="rgb")({"image": colour})["image"]
    assert rgb.shape == (3, 3, 4) and rgb.dtype == torch.float32 and rgb.is_contiguous()
    np.testing.assert_array_equal(rgb.numpy(), colour.transpose(2, 0, 1) / np.float32(255))  # colour kept
    rgba = np.concatenate([colour, np.zeros_like(grey)[..., None]], axis=-1)
    assert torch.equal(LoadImageModed("image", mode="rgb")({"image": rgba})["image"], rgb)  # alpha dropped
    luma = LoadImageModed("image", mode="grey")({"image": colour})["image"]
    expected = np.rint(colour.astype(np.float32) @ np.float32([0.299, 0.587, 0.114])) / 255
    assert luma.shape == (1, 3, 4) and np.allclose(luma[0].numpy(), expected)
    with pytest.raises(DatasetError, match="shape"):
        LoadImageModed("image", mode="rgb")({"image": np.zeros((2, 2, 2), np.uint8)})


def test_aliases_and_bad_modes() -> None:
    assert isinstance(LoadGreyImaged("image"), LoadImageModed) and LoadGreyImaged("image").mode == "grey"
    assert isinstance(LoadRGBd("image"), LoadImageModed) and LoadRGBd("image").mode == "rgb"
    for bad in ("auto", "RGB", "colour"):
        with pytest.raises(DatasetError, match="resolve image_mode 'auto' first"):
            LoadImageModed("image", mode=bad)
    with pytest.raises(DatasetError, match="expected a file path or a uint8 array"):
        LoadImageModed("image", mode="rgb")({"image": [1, 2]})


def test_files_in_both_modes(tmp_path: Path) -> None:
    colour = np.random.default_rng(0).integers(0, 256, size=(6, 5, 3), dtype=np.uint8)
    Image.fromarray(colour).save(tmp_path / "colour.png")
    out = LoadImageModed("image", mode="rgb")({"image": tmp_path / "colour.png"})
    assert out["image_path"] == str(tmp_path / "colour.png")
    np.testing.assert_array_equal(out["image"].numpy(), colour.transpose(2, 0, 1) / np.float32(255))
    grey = LoadImageModed("image", mode="grey")({"image": tmp_path / "colour.png"})["image"]
    pil_l = np.asarray(Image.open(tmp_path / "colour.png").convert("L"))
    np.testing.assert_array_equal(grey[0].numpy(), pil_l / np.float32(255))  # PIL's own "L" for files, as before
    Image.fromarray(np.array([[0, 32768, 65535]], dtype=np.uint16)).save(tmp_path / "deep.png")
    deep = LoadImageModed("image", mode="rgb")({"image": tmp_path / "deep.png"})["image"]
    assert deep.shape == (3, 1, 3) and deep[2, 0].tolist() == pytest.approx([0.0, 128 / 255, 1.0], abs=1 / 255)
    Image.fromarray(colour).convert("P").save(tmp_path / "palette.png")
    assert LoadImageModed("image", mode="rgb")({"image": tmp_path / "palette.png"})["image"].shape == (3, 6, 5)


def test_dicom_in_rgb_mode_keeps_colour_and_repeats_grey() -> None:
    import pydicom
    from pydicom.pixels import apply_color_lut

    grey = LoadImageModed("image", mode="rgb")({"image": pydicom_sample("CT_small.dcm")})["image"]
    assert grey.shape[0] == 3 and torch.equal(grey[0], grey[2])
    assert torch.equal(grey[1], LoadGreyImaged("image")({"image": pydicom_sample("CT_small.dcm")})["image"][0])
    ds = pydicom.dcmread(pydicom_sample("examples_palette.dcm"))
    rgb = apply_color_lut(ds.pixel_array, ds).astype(np.float64)
    out = LoadImageModed("image", mode="rgb")({"image": pydicom_sample("examples_palette.dcm")})["image"]
    assert out.shape == (3, int(ds.Rows), int(ds.Columns))
    np.testing.assert_allclose(out.numpy(), _unit(rgb).transpose(2, 0, 1), atol=1e-6)  # channels stretched together
