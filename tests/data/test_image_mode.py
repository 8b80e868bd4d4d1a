"""image_mode: auto keeps colour where the source has it, grey where it has none; the bundles use and record it."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import BUSI_CONFIGS, run_bundle
from PIL import Image

from medtransfer.data import (
    RepeatGreyd,
    has_colour,
    medmnist_records,
    resolve_image_mode,
    trained_image_mode,
)
from medtransfer.data.classification import image_folder_datalist
from medtransfer.errors import DatasetError, RunDirectoryError

SIZES = {"train": 24, "val": 8, "test": 8}


def rgb_npz(path: Path, seed: int = 0) -> Path:
    """A tiny MedMNIST-layout .npz of colour images: (N,28,28,3) uint8, labels (N,1), the official array names."""
    rng = np.random.default_rng(seed)
    arrays = {}
    for split, n in SIZES.items():
        labels = np.arange(n) % 2
        images = rng.integers(0, 256, size=(n, 28, 28, 3), dtype=np.uint8)
        images[labels == 1, :, :, 0] //= 4  # class 1 is less red: colour carries the label
        arrays[f"{split}_images"] = images
        arrays[f"{split}_labels"] = labels.reshape(n, 1).astype(np.uint8)
    np.savez(path, **arrays)
    return path


def _colour_png(path: Path, seed: int) -> Path:
    rgb = np.random.default_rng(seed).integers(0, 256, size=(20, 24, 3), dtype=np.uint8)
    Image.fromarray(rgb).save(path)
    return path


def _grey(seed: int) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, size=(20, 24), dtype=np.uint8)


def test_auto_keeps_colour_of_an_rgb_medmnist_npz(tmp_path, caplog):
    npz = rgb_npz(tmp_path / "colourmnist.npz")
    records = medmnist_records(npz, "train")
    assert records[0]["image"].shape == (28, 28, 3)  # the datalist keeps the arrays as they are
    with caplog.at_level(logging.INFO, logger="medtransfer.data.image_mode"):
        assert resolve_image_mode("auto", records, npz) == "rgb"
    assert f"image mode: rgb (auto: {npz} has colour)" in caplog.text


@pytest.mark.realdata
def test_auto_is_grey_for_the_real_breastmnist(need, caplog):
    npz = need("medmnist/breastmnist.npz")
    with caplog.at_level(logging.INFO, logger="medtransfer.data.image_mode"):
        assert resolve_image_mode("auto", medmnist_records(npz, "train"), npz) == "grey"
    assert f"image mode: grey (auto: {npz} has no colour)" in caplog.text


@pytest.mark.realdata
def test_auto_is_grey_for_real_busi_rgb_pngs_and_rgb_for_cifar(need):
    from medtransfer.data.classification import classification_datalist

    busi = need("busi")  # BUSI's PNGs are RGB files with three equal channels, a few with yellow calipers drawn on
    assert Image.open(next((busi / "benign").glob("* (1).png"))).mode == "RGB"
    assert not has_colour(busi / "benign" / "benign (6).png")  # the calipers cover 3 % of that scan
    assert resolve_image_mode("auto", classification_datalist(busi, "busi", "train"), busi) == "grey"
    cifar = need("cifar10")
    assert resolve_image_mode("auto", classification_datalist(cifar, "imagefolder", "train"), cifar) == "rgb"


def test_a_real_fundus_photograph_is_colour(tmp_path):
    retina = pytest.importorskip("skimage.data").retina()  # a real fundus image shipped with scikit-image
    Image.fromarray(retina).save(tmp_path / "fundus.png")
    assert has_colour(retina) and has_colour(tmp_path / "fundus.png")
    assert resolve_image_mode("auto", image_folder_datalist(tmp_path)) == "rgb"


def test_auto_on_png_folders(tmp_path, caplog):
    colour, grey, encoded = (tmp_path / name for name in ("colour", "grey", "rgb_encoded_grey"))
    for folder in (colour, grey, encoded):
        folder.mkdir()
    for i in range(3):
        _colour_png(colour / f"{i}.png", i)
        Image.fromarray(_grey(i)).save(grey / f"{i}.png")  # mode L
        Image.fromarray(np.repeat(_grey(i)[..., None], 3, axis=-1)).save(encoded / f"{i}.png")  # RGB, R == G == B
        Image.fromarray(np.repeat(_grey(i)[..., None], 3, axis=-1)).save(encoded / f"{i}.jpg", quality=75)
    with caplog.at_level(logging.INFO, logger="medtransfer.data.image_mode"):
        assert resolve_image_mode("auto", image_folder_datalist(colour)) == "rgb"
        assert resolve_image_mode("auto", image_folder_datalist(grey)) == "grey"
        assert resolve_image_mode("auto", image_folder_datalist(encoded)) == "grey"  # equal channels count as grey
    assert f"image mode: rgb (auto: {colour} has colour)" in caplog.text  # the records' folder names the data
    assert Image.open(encoded / "0.png").mode == "RGB" and not has_colour(encoded / "0.png")
    assert not has_colour(str(encoded / "0.jpg"))  # JPEG chroma noise on a grey image is not colour


def test_auto_finds_colour_among_grey_records_and_looks_at_few(tmp_path, monkeypatch):
    grey = [{"image": _grey(i)} for i in range(40)]
    assert resolve_image_mode("auto", grey) == "grey"
    coloured = grey[:-1] + [{"image": np.asarray(Image.open(_colour_png(tmp_path / "c.png", 0)))}]
    assert resolve_image_mode("auto", coloured) == "rgb"  # the last record is among those looked at
    palette = Image.fromarray(np.random.default_rng(1).integers(0, 256, (8, 8, 3), dtype=np.uint8)).convert("P")
    palette.save(tmp_path / "palette.png")
    assert has_colour(tmp_path / "palette.png")

    looked: list[int] = []
    import medtransfer.data.image_mode as image_mode

    monkeypatch.setattr(image_mode, "has_colour", lambda value, key: looked.append(int(value[0, 0])) or False)
    numbered = [{"image": np.full((2, 2), i, np.uint8)} for i in range(200)]
    assert resolve_image_mode("auto", numbered) == "grey"
    assert len(looked) == image_mode.RECORDS_CHECKED and looked[0] == 0 and looked[-1] == 199


def test_grey_and_rgb_pass_through_and_bad_modes_are_named(tmp_path, caplog):
    records = [{"image": _grey(0)}]
    with caplog.at_level(logging.INFO, logger="medtransfer.data.image_mode"):
        assert resolve_image_mode("rgb", records) == "rgb"
        assert resolve_image_mode("grey", [{"image": np.zeros((2, 2, 3), np.uint8)}]) == "grey"
    assert "image mode: rgb (set by image_mode)" in caplog.text
    for bad in ("colour", "RGB", "gray", None):
        with pytest.raises(DatasetError, match="image_mode must be one of auto, grey, rgb"):
            resolve_image_mode(bad, records)
    with pytest.raises(DatasetError, match="no 'image' entry"):
        resolve_image_mode("auto", [{"img": _grey(0)}])
    with pytest.raises(DatasetError, match="gone.png"):
        resolve_image_mode("auto", [{"image": str(tmp_path / "gone.png")}])


def test_trained_image_mode_reads_the_run(tmp_path, caplog):
    run = tmp_path / "run"
    run.mkdir()
    (run / "run_info.json").write_text(json.dumps({"settings": {"image_mode": "auto", "image_mode_used": "rgb"}}))
    with caplog.at_level(logging.INFO, logger="medtransfer.data.image_mode"):
        assert trained_image_mode(run) == "rgb"
    assert f"image mode: rgb (as run {run} was trained)" in caplog.text
    assert trained_image_mode(run, "rgb") == "rgb"
    with pytest.raises(RunDirectoryError, match="trained with image_mode rgb.*--image_mode rgb"):
        trained_image_mode(run, "grey")
    old = tmp_path / "old"  # a run from before image_mode: what it was fed then
    old.mkdir()
    (old / "run_info.json").write_text(json.dumps({"settings": {"seed": 0}}))
    assert trained_image_mode(old) == "grey" and trained_image_mode(old, legacy="rgb") == "rgb"
    assert trained_image_mode(old, "rgb") == "rgb" and trained_image_mode(tmp_path / "none") == "grey"
    with pytest.raises(DatasetError, match="image_mode must be"):
        trained_image_mode(run, "colour")


def test_repeat_grey_repeats_only_grey():
    grey, colour = torch.rand(1, 4, 5), torch.rand(3, 4, 5)
    out = RepeatGreyd("image", channels=3)({"image": grey, "label": 1})
    assert out["image"].shape == (3, 4, 5) and all(torch.equal(c, grey[0]) for c in out["image"])
    assert out["label"] == 1
    assert RepeatGreyd("image", channels=3)({"image": colour})["image"] is colour
    assert RepeatGreyd("image", channels=1)({"image": grey})["image"] is grey
    with pytest.raises(DatasetError, match="3 channels but the network takes 1; use image_mode grey"):
        RepeatGreyd("image", channels=1)({"image": colour})
    with pytest.raises(DatasetError, match="2 channels"):
        RepeatGreyd("image", channels=3)({"image": torch.rand(2, 4, 5)})


def _first_conv_inputs(train_json: Path, overrides: dict) -> torch.Tensor:
    """The first convolution's input on one training batch, with the bundle's own pre-processing and network."""
    from monai.bundle import ConfigParser

    parser = ConfigParser()
    parser.read_config(train_json)
    parser.update(overrides)
    batch = next(iter(parser.get_parsed_content("train#dataloader")))
    network = parser.get_parsed_content("network").eval()
    conv = next(m for m in network.modules() if isinstance(m, torch.nn.Conv2d))
    seen: list[torch.Tensor] = []
    handle = conv.register_forward_hook(lambda module, args, output: seen.append(args[0].detach()))
    with torch.no_grad():
        network(batch["image"].to(parser.get_parsed_content("device")))
    handle.remove()
    return seen[0].cpu()


def _channel_correlation(x: torch.Tensor) -> float:
    """The smallest correlation between two channels of a batch: 1 when all three are one channel (up to scale)."""
    channels = x.transpose(0, 1).reshape(3, -1).double()
    return float(torch.corrcoef(channels).min())


@pytest.mark.slow
def test_bundle_trains_on_colour_and_records_it(tmp_path):
    npz = rgb_npz(tmp_path / "colourmnist.npz")
    runs = tmp_path / "runs"
    common = ["--runs_dir", str(runs), "--run_name", "rgb", "--dataset_format", "medmnist", "--dataset_dir", str(npz),
              "--image_size", "28", "--epochs", "1", "--batch_size", "8"]  # fmt: skip
    proc = run_bundle([BUSI_CONFIGS / "train.json"], *common)
    assert f"image mode: rgb (auto: {npz} has colour)" in proc.stdout + proc.stderr
    settings = json.loads((runs / "rgb" / "run_info.json").read_text())["settings"]
    assert settings["image_mode"] == "auto" and settings["image_mode_used"] == "rgb"
    assert settings["classes"] == ["class0", "class1"]

    # the network sees three different channels (ImageNet-normalised colour), not one grey channel repeated
    overrides = {"dataset_format": "medmnist", "dataset_dir": str(npz), "image_size": 28, "batch_size": 8,
                 "runs_dir": str(tmp_path / "unused"), "device": "$torch.device('cpu')"}  # fmt: skip
    x = _first_conv_inputs(BUSI_CONFIGS / "train.json", overrides)
    assert x.shape[1] == 3 and _channel_correlation(x) < 0.5
    grey = _first_conv_inputs(BUSI_CONFIGS / "train.json", {**overrides, "image_mode": "grey"})
    assert grey.shape[1] == 3 and _channel_correlation(grey) > 0.9999  # one grey channel, repeated and normalised

    # inference on a folder of grey images uses the run's mode (rgb), not one resolved from that folder
    folder = tmp_path / "grey_pngs"
    folder.mkdir()
    for i in range(2):
        Image.fromarray(_grey(i)).save(folder / f"{i}.png")
    proc = run_bundle(
        [BUSI_CONFIGS / "train.json", BUSI_CONFIGS / "inference.json"], *common, "--input_dir", str(folder)
    )
    assert f"image mode: rgb (as run {runs / 'rgb'} was trained)" in proc.stdout + proc.stderr
    assert (runs / "rgb" / "inference_predictions.csv").is_file()


def _natural_bundle(overrides: dict) -> tuple[str, torch.Tensor]:
    """The natural_transferability bundle's image mode and its pre-processed first training image (no training)."""
    from monai.bundle import ConfigParser
    from monai.transforms import Compose

    parser = ConfigParser()
    parser.read_config(BUSI_CONFIGS.parent.parent / "natural_transferability" / "configs" / "train.json")
    parser.update(overrides)
    pipeline = Compose(parser.get_parsed_content("load_transforms") + parser.get_parsed_content("normalize_transforms"))
    image = pipeline(parser.get_parsed_content("train#datalist")[0])["image"]
    return parser.get_parsed_content("image_mode_used"), image


@pytest.mark.realdata
def test_natural_bundle_keeps_cifar10_rgb_and_repeats_grey_targets(need, tmp_path):
    from medtransfer.data import make_synthetic_busi

    mode, image = _natural_bundle({"dataset_format": "imagefolder", "dataset_dir": str(need("cifar10"))})
    assert mode == "rgb" and image.shape[0] == 3 and _channel_correlation(image[None]) < 0.9999
    busi = make_synthetic_busi(tmp_path / "busi", n_per_class=4, image_size=32)
    mode, image = _natural_bundle({"dataset_format": "busi", "dataset_dir": str(busi)})
    assert mode == "grey" and image.shape[0] == 3 and _channel_correlation(image[None]) > 0.9999  # one, repeated
