"""Class-per-folder image sets: the set's own split folders, validation carved from train, clear errors."""

from collections import Counter

import numpy as np
import pytest
from conftest import pydicom_sample
from PIL import Image

from medtransfer.data.classification import class_names, classification_datalist
from medtransfer.data.imagefolder import image_folder_split, read_image_folder
from medtransfer.errors import DatasetError


def _folder(root, classes=("a", "b"), n=10):
    for c in classes:
        (root / c).mkdir(parents=True)
        for i in range(n):
            Image.fromarray(np.full((8, 8), i, np.uint8)).save(root / c / f"{i}.png")
    return root


@pytest.mark.realdata
def test_cifar10_train_val_test(need):
    root = need("cifar10")
    splits = {s: classification_datalist(root, "imagefolder", s) for s in ("train", "val", "test")}
    assert [len(splits[s]) for s in ("train", "val", "test")] == [4500, 500, 500]
    assert Counter(r["label"] for r in splits["val"]) == dict.fromkeys(range(10), 50)  # stratified
    images = [{r["image"] for r in splits[s]} for s in ("train", "val", "test")]
    assert not (images[0] & images[1]) and not (images[0] & images[2])
    assert all("/test/" in r["image"] for r in splits["test"])
    assert class_names("imagefolder", root)[:3] == ["airplane", "automobile", "bird"]


def test_unsplit_folder_gets_a_stratified_split(tmp_path):
    root = _folder(tmp_path / "set")
    parts = {s: image_folder_split(root, s, seed=1) for s in ("train", "val", "test")}
    assert sum(map(len, parts.values())) == 20
    assert all({r["label"] for r in part} == {0, 1} for part in parts.values())
    assert parts["val"] != image_folder_split(root, "val", seed=2)


def test_errors_name_the_folder(tmp_path):
    root = _folder(tmp_path / "set")
    (root / "empty").mkdir()
    with pytest.raises(DatasetError, match="empty.*holds no images"):
        image_folder_split(root, "train")
    split = _folder(tmp_path / "split" / "train")
    _folder(tmp_path / "split" / "test", classes=("a",))
    assert len(image_folder_split(split.parent, "train")) == 18  # 10 % of train carved out for validation
    with pytest.raises(DatasetError, match=r"test/b is missing"):
        image_folder_split(split.parent, "test")
    with pytest.raises(DatasetError, match="does not exist"):
        image_folder_split(tmp_path / "nope", "train")


def test_class_folders_take_dicom_beside_jpeg_and_dicom_only_folders(tmp_path):
    """A Kermany-style folder mixing .jpeg and .dcm trains on both; a DICOM-only folder is not "empty"; the
    records load through the bundles' loader to the pixels pydicom reads."""
    import shutil

    import pydicom

    from medtransfer.data.classification import image_folder_datalist
    from medtransfer.data.transforms import LoadGreyImaged

    source = pydicom_sample("CT_small.dcm")
    for split in ("train", "test"):
        for name in ("NORMAL", "PNEUMONIA"):
            folder = tmp_path / "mixed" / split / name
            folder.mkdir(parents=True)
            Image.fromarray(np.full((8, 8), 40, np.uint8)).save(folder / "a.jpeg")
            shutil.copy(source, folder / "b.DCM")
    records = classification_datalist(tmp_path / "mixed", "imagefolder", "test")
    names = sorted(r["id"].split("/", 1)[-1] for r in records)
    assert names == ["NORMAL/a.jpeg", "NORMAL/b.DCM", "PNEUMONIA/a.jpeg", "PNEUMONIA/b.DCM"]
    dicom = next(r for r in records if r["id"].endswith("PNEUMONIA/b.DCM"))
    image = LoadGreyImaged("image")(dict(dicom))["image"][0].numpy()
    pixels = pydicom.dcmread(source).pixel_array.astype(np.float64)
    expected = (pixels - pixels.min()) / (pixels.max() - pixels.min())
    np.testing.assert_allclose(image, expected, atol=1e-5)

    only = tmp_path / "dicom_only"
    for name in ("NORMAL", "PNEUMONIA"):
        (only / name).mkdir(parents=True)
        shutil.copy(source, only / name / "x.dcm")
    assert [r["label"] for r in read_image_folder(only, ["NORMAL", "PNEUMONIA"])] == [0, 1]
    assert len(image_folder_datalist(only)) == 2  # inference folders take DICOM too
