"""Class-per-folder image sets: the set's own split folders, validation carved from train, clear errors."""

from collections import Counter

import numpy as np
import pytest
from PIL import Image

from medtransfer.data.classification import class_names, classification_datalist
from medtransfer.data.imagefolder import image_folder_split
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
