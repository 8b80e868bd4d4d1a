"""read_medmnist / medmnist_records on the real BreastMNIST file and on broken fabricated ones; class names."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from medtransfer.data import MEDMNIST_CLASSES, medmnist_class_names, medmnist_records, read_medmnist
from medtransfer.data.medmnist import MEDMNIST_MULTI_LABEL
from medtransfer.errors import DatasetError

SIZES = {"train": 6, "val": 2, "test": 3}


def _npz(path: Path, drop: tuple[str, ...] = (), **override: np.ndarray) -> Path:
    arrays = {}
    for split, n in SIZES.items():
        arrays[f"{split}_images"] = np.zeros((n, 28, 28), dtype=np.uint8)
        arrays[f"{split}_labels"] = (np.arange(n) % 2).reshape(n, 1).astype(np.uint8)
    arrays.update(override)
    np.savez(path, **{k: v for k, v in arrays.items() if k not in drop})
    return path


@pytest.mark.realdata
def test_real_breastmnist(need) -> None:
    data = read_medmnist(need("medmnist/breastmnist.npz"))
    assert {k: len(v[0]) for k, v in data.items()} == {"train": 546, "val": 78, "test": 156}
    for images, labels in data.values():
        assert images.shape[1:] == (28, 28) and images.dtype == np.uint8
        assert labels.shape == (len(images),) and labels.dtype == np.int64
        assert set(np.unique(labels)) == {0, 1}


@pytest.mark.realdata
def test_real_breastmnist_records(need) -> None:
    records = medmnist_records(need("medmnist/breastmnist.npz"), "val")
    assert len(records) == 78
    assert records[5]["id"] == "val-5"
    assert records[5]["image"].shape == (28, 28) and records[5]["image"].dtype == np.uint8
    assert type(records[5]["label"]) is int and records[5]["label"] in (0, 1)


@pytest.mark.realdata
def test_real_pneumoniamnist_sizes(need) -> None:
    data = read_medmnist(need("medmnist/pneumoniamnist.npz"))
    assert {k: len(v[1]) for k, v in data.items()} == {"train": 4708, "val": 524, "test": 624}


def test_fabricated_ok_and_flat_or_rgb(tmp_path: Path) -> None:
    data = read_medmnist(_npz(tmp_path / "ok.npz"))
    assert data["train"][1].tolist() == [0, 1, 0, 1, 0, 1]
    flat = read_medmnist(_npz(tmp_path / "flat.npz", val_labels=np.array([1, 0], dtype=np.int32)))
    assert flat["val"][1].tolist() == [1, 0]
    rgb = read_medmnist(_npz(tmp_path / "rgb.npz", test_images=np.zeros((3, 28, 28, 3), dtype=np.uint8)))
    assert rgb["test"][0].shape == (3, 28, 28, 3)


def test_missing_file(tmp_path: Path) -> None:
    with pytest.raises(DatasetError, match="absent.npz"):
        read_medmnist(tmp_path / "absent.npz")


def test_missing_arrays_named(tmp_path: Path) -> None:
    path = _npz(tmp_path / "partial.npz", drop=("val_labels", "test_images"))
    with pytest.raises(DatasetError, match="partial.npz") as info:
        read_medmnist(path)
    assert "val_labels" in str(info.value) and "test_images" in str(info.value)
    assert "train_images" not in str(info.value).split("has")[0]


def test_not_an_npz(tmp_path: Path) -> None:
    text = tmp_path / "notes.npz"
    text.write_text("just text, not a zip archive")
    with pytest.raises(DatasetError, match="notes.npz"):
        read_medmnist(text)
    npy = tmp_path / "single.npz"
    with npy.open("wb") as fh:
        np.save(fh, np.zeros(3))
    with pytest.raises(DatasetError, match="single.npz"):
        read_medmnist(npy)


def test_label_count_and_shape(tmp_path: Path) -> None:
    short = _npz(tmp_path / "short.npz", train_labels=np.zeros((5, 1), dtype=np.uint8))
    with pytest.raises(DatasetError, match="short.npz.*6 images but 5 labels"):
        read_medmnist(short)
    multi = _npz(tmp_path / "multi.npz", test_labels=np.zeros((3, 14), dtype=np.uint8))
    with pytest.raises(DatasetError, match="multi.npz.*test_labels"):
        read_medmnist(multi)
    wrong = _npz(tmp_path / "float.npz", train_images=np.zeros((6, 28, 28), dtype=np.float32))
    with pytest.raises(DatasetError, match="float.npz"):
        read_medmnist(wrong)


def test_unknown_split(tmp_path: Path) -> None:
    with pytest.raises(DatasetError, match="validation"):
        medmnist_records(_npz(tmp_path / "ok.npz"), "validation")


# class counts of the MedMNIST v2 2D sets, as the MedMNIST documentation lists them
DOCUMENTED_CLASS_COUNTS = {
    "pathmnist": 9,
    "chestmnist": 14,
    "dermamnist": 7,
    "octmnist": 4,
    "pneumoniamnist": 2,
    "retinamnist": 5,
    "breastmnist": 2,
    "bloodmnist": 8,
    "tissuemnist": 8,
    "organamnist": 11,
    "organcmnist": 11,
    "organsmnist": 11,
}


def test_every_2d_set_has_its_documented_classes(tmp_path: Path) -> None:
    assert {name: len(classes) for name, classes in MEDMNIST_CLASSES.items()} == DOCUMENTED_CLASS_COUNTS
    assert all(len(set(classes)) == len(classes) for classes in MEDMNIST_CLASSES.values())
    for name in set(DOCUMENTED_CLASS_COUNTS) - MEDMNIST_MULTI_LABEL:
        # the names come from the file name alone (the file is not opened), MedMNIST+'s size suffix included
        for file in (f"{name}.npz", f"{name.upper()}_224.npz"):
            assert medmnist_class_names(tmp_path / file) == list(MEDMNIST_CLASSES[name])
    assert MEDMNIST_CLASSES["dermamnist"][4] == "melanoma" and MEDMNIST_CLASSES["pathmnist"][0] == "adipose"
    assert MEDMNIST_CLASSES["organamnist"] == MEDMNIST_CLASSES["organcmnist"] == MEDMNIST_CLASSES["organsmnist"]


def test_breast_and_pneumonia_names_unchanged() -> None:
    assert medmnist_class_names("breastmnist.npz") == ["malignant", "normal_benign"]
    assert medmnist_class_names("pneumoniamnist.npz") == ["normal", "pneumonia"]


def test_unknown_file_names_number_their_classes(tmp_path: Path) -> None:
    assert medmnist_class_names(_npz(tmp_path / "mydata.npz")) == ["class0", "class1"]
    assert medmnist_class_names(_npz(tmp_path / "breastmnist_v2.npz")) == ["class0", "class1"]


def test_chestmnist_is_multi_label_and_refused_clearly(tmp_path: Path) -> None:
    assert "chestmnist" in MEDMNIST_MULTI_LABEL
    with pytest.raises(DatasetError, match="chestmnist.npz is chestmnist, a multi-label set .14 findings") as info:
        medmnist_class_names(tmp_path / "chestmnist.npz")
    assert "cannot train it" in str(info.value) and "atelectasis" in str(info.value)
    chest = _npz(tmp_path / "chestmnist.npz", train_labels=np.zeros((6, 14), np.uint8))
    with pytest.raises(DatasetError, match="multi-label set"):
        read_medmnist(chest)


def test_rgb_file_keeps_its_colour(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    colour = {f"{s}_images": rng.integers(0, 256, (n, 28, 28, 3), dtype=np.uint8) for s, n in SIZES.items()}
    path = _npz(tmp_path / "dermamnist.npz", **colour)
    records = medmnist_records(path, "train")
    assert records[2]["image"].shape == (28, 28, 3)
    np.testing.assert_array_equal(records[2]["image"], colour["train_images"][2])  # kept as they are
    assert len(medmnist_class_names(path)) == 7
