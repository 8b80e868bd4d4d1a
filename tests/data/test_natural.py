"""Natural-image adapters: official splits, carved validation, exact errors for missing data, the RGB loader."""

from __future__ import annotations

import hashlib
import pickle
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
import torch
import torchvision
from PIL import Image

from medtransfer.data.natural import CIFAR10_CLASSES, NATURAL_FORMATS
from medtransfer.data.pocus_datalist import pocus_datalist
from medtransfer.data.registry import dataset_class_names, dataset_records, dataset_size
from medtransfer.data.transforms import LoadRGBd
from medtransfer.errors import DatasetError

SPLITS = ("train", "val", "test")

# A piece of each adapter's expected layout that its missing-data error must spell out.
LAYOUT_HINTS = {
    "cifar10": "cifar-10-batches-py",
    "cifar100": "cifar-100-python",
    "caltech101": "caltech101/101_ObjectCategories/<class>/",
    "cub200": "CUB_200_2011/{images.txt, image_class_labels.txt, train_test_split.txt, classes.txt}",
    "aircraft": "fgvc-aircraft-2013b/data/",
    "flowers17": "flowers17/<class>/*.jpg",
    "flowers102": "flowers-102/{imagelabels.mat, setid.mat}",
    "ucmerced": "UCMerced_LandUse/Images/<class>/",
    "dtd": "dtd/dtd/labels/{train1.txt, val1.txt, test1.txt}",
    "domainnet_real": "real_train.txt",
    "domainnet_painting": "painting/<class>/*.jpg",
    "domainnet_clipart": "clipart_test.txt",
    "pocus": "pocus_videos/{convex,linear}",
    "imagefolder": "<class>/*.jpg",
}


_MADE = {"images": 0}


def _image(path: Path, value: int = 0, size: int = 4, mode: str = "RGB") -> Path:
    """A small grey image of `value`, made unique by a counter written as a pattern of its pixels (identical files
    would be one image to the splitters, which keep copies on one side)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    _MADE["images"] += 1
    bits = np.array([(_MADE["images"] >> i) & 1 for i in range(size * size)], np.uint8).reshape(size, size)
    plane = (value + 128 * bits).astype(np.uint8)  # a high-contrast pattern: it survives JPEG
    array = np.repeat(plane[..., None], 3, axis=2) if mode == "RGB" else plane
    Image.fromarray(array).save(path)
    return path


def _splits(name: str, root: Path, seed: int = 0) -> dict[str, list[dict]]:
    return {s: dataset_records(name, root, s, seed=seed) for s in SPLITS}


def _check_carved(parts: dict[str, list[dict]]) -> None:
    """Train/val/test ids are pairwise disjoint and val holds every class that train holds."""
    ids = [{r["id"] for r in parts[s]} for s in SPLITS]
    assert all(len(i) == len(parts[s]) for i, s in zip(ids, SPLITS, strict=True))
    assert not (ids[0] & ids[1]) and not (ids[0] & ids[2]) and not (ids[1] & ids[2])
    assert {r["label"] for r in parts["val"]} == {r["label"] for r in parts["train"]}


def test_registry_holds_every_study_dataset():
    assert set(NATURAL_FORMATS) == set(LAYOUT_HINTS)
    assert all(spec.source and spec.split_rule for spec in NATURAL_FORMATS.values())


@pytest.mark.parametrize("name", sorted(LAYOUT_HINTS))
def test_missing_data_error_names_root_layout_and_source(tmp_path, name):
    for root in (tmp_path, tmp_path / "absent"):
        for call, args in ((dataset_records, (name, root, "train")), (dataset_class_names, (name, root))):
            with pytest.raises(DatasetError) as info:
                call(*args)
            message = str(info.value)
            assert not isinstance(info.value, RuntimeError)
            assert message.startswith(f"{name} not found under {root}"), message
            assert f"{root}/{LAYOUT_HINTS[name]}" in message, message
            assert NATURAL_FORMATS[name].source in message
    assert list(tmp_path.iterdir()) == []  # nothing created (torchvision's Caltech101 would make root/caltech101)


def test_unknown_name_and_split_are_refused(tmp_path):
    with pytest.raises(ValueError, match="cifar10"):
        dataset_records("cifar1O", tmp_path, "train")
    with pytest.raises(ValueError, match="split"):
        dataset_records("cifar10", tmp_path, "validation")


# --- CIFAR-10 ------------------------------------------------------------------------------------------------------


@pytest.mark.realdata
def test_real_cifar10_jpeg_folders(need):
    root = need("cifar10")
    parts = _splits("cifar10", root)
    assert [len(parts[s]) for s in SPLITS] == [4500, 500, 500]
    _check_carved(parts)
    assert Counter(r["label"] for r in parts["val"]) == dict.fromkeys(range(10), 50)  # stratified
    assert Counter(r["label"] for r in parts["test"]) == dict.fromkeys(range(10), 50)
    assert all("/train/" in r["image"] for r in parts["train"] + parts["val"])
    assert all("/test/" in r["image"] for r in parts["test"])
    classes = dataset_class_names("cifar10", root)
    assert classes == list(CIFAR10_CLASSES) == [
        "airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck",
    ]  # fmt: skip
    assert all(Path(r["image"]).parent.name == classes[r["label"]] for r in parts["train"][::97])
    assert dataset_records("cifar10", root, "val", seed=0) == parts["val"]  # seeded
    assert dataset_records("cifar10", root, "val", seed=1) != parts["val"]
    assert dataset_size("cifar10", root) == 4500
    image = LoadRGBd("image")(parts["test"][0])["image"]
    assert image.shape == (3, 32, 32) and image.dtype == torch.float32


def test_cifar10_order_is_torchvisions():
    """torchvision takes the order from batches.meta; its class list documents the same canonical order."""
    from torchvision.datasets import CIFAR10

    assert CIFAR10.meta["key"] == "label_names"
    assert list(CIFAR10_CLASSES) == sorted(CIFAR10_CLASSES)


def _fake_cifar10(root: Path, per_batch: int = 10) -> dict[str, tuple[np.ndarray, list[int]]]:
    """The official python-pickle layout: dicts with data (N x 3072, channel planes, row-major) and labels."""
    folder = root / "cifar-10-batches-py"
    folder.mkdir(parents=True)
    rng = np.random.default_rng(0)
    written = {}
    for name in [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]:
        hwc = rng.integers(0, 256, (per_batch, 32, 32, 3), dtype=np.uint8)
        labels = rng.integers(0, 10, per_batch).tolist()
        if name != "test_batch":
            labels = [(i * 3) % 10 for i in range(per_batch)]  # every class 5 times over the 5 train batches
        data = hwc.transpose(0, 3, 1, 2).reshape(per_batch, 3072)
        entry = {"batch_label": name, "labels": labels, "data": data, "filenames": [f"{name}_{i}.png" for i in labels]}
        (folder / name).write_bytes(pickle.dumps(entry, protocol=2))
        written[name] = (hwc, labels)
    meta = {"num_cases_per_batch": per_batch, "label_names": list(CIFAR10_CLASSES), "num_vis": 3072}
    (folder / "batches.meta").write_bytes(pickle.dumps(meta, protocol=2))
    return written


def _accept_fake(monkeypatch, root: Path) -> None:
    """Give torchvision the fake's checksums (it checks the official release's md5s), so it really reads them."""
    from torchvision.datasets import CIFAR10

    folder = root / "cifar-10-batches-py"

    def md5(name: str) -> str:
        return hashlib.md5((folder / name).read_bytes()).hexdigest()

    monkeypatch.setattr(CIFAR10, "train_list", [[n, md5(n)] for n, _ in CIFAR10.train_list])
    monkeypatch.setattr(CIFAR10, "test_list", [[n, md5(n)] for n, _ in CIFAR10.test_list])
    monkeypatch.setattr(CIFAR10, "meta", {**CIFAR10.meta, "md5": md5("batches.meta")})


def test_cifar10_torchvision_pickles_give_uint8_arrays(tmp_path, monkeypatch):
    written = _fake_cifar10(tmp_path)
    _accept_fake(monkeypatch, tmp_path)
    tv = torchvision.datasets.CIFAR10(str(tmp_path), train=True, download=False)  # torchvision accepts the format
    assert len(tv) == 50
    parts = _splits("cifar10", tmp_path)
    assert [len(parts[s]) for s in SPLITS] == [40, 10, 10]  # val: one of the five images of each class
    _check_carved({"train": parts["train"], "val": parts["val"], "test": []})
    train_pool = {r["id"]: r for r in parts["train"] + parts["val"]}
    expected_images = np.concatenate([written[f"data_batch_{i}"][0] for i in range(1, 6)])
    expected_labels = sum((written[f"data_batch_{i}"][1] for i in range(1, 6)), [])
    for i in range(50):
        record = train_pool[f"train/{i:05d}"]
        assert record["image"].dtype == np.uint8 and record["image"].shape == (32, 32, 3)
        np.testing.assert_array_equal(record["image"], expected_images[i])  # HWC, channels in the right place
        assert record["label"] == expected_labels[i]
    test_hwc, test_labels = written["test_batch"]
    assert [r["label"] for r in parts["test"]] == test_labels
    np.testing.assert_array_equal(parts["test"][3]["image"], test_hwc[3])
    assert dataset_class_names("cifar10", tmp_path) == list(CIFAR10_CLASSES)
    assert dataset_size("cifar10", tmp_path) == 40


def test_cifar10_pickles_failing_torchvisions_checks_give_a_dataset_error(tmp_path):
    _fake_cifar10(tmp_path)
    with pytest.raises(DatasetError, match=r"torchvision rejected the files.*not the official release") as info:
        dataset_records("cifar10", tmp_path, "test")
    assert "https://www.cs.toronto.edu/~kriz/cifar.html" in str(info.value)


def test_cifar10_folders_must_hold_the_ten_classes(tmp_path):
    for part in ("train", "test"):
        for c in ("cat", "dog"):
            _image(tmp_path / part / c / "0.jpg")
    with pytest.raises(DatasetError, match="CIFAR-10 needs"):
        dataset_records("cifar10", tmp_path, "test")


# --- CUB-200-2011 --------------------------------------------------------------------------------------------------


def test_cub200_uses_train_test_split_txt(tmp_path):
    base = tmp_path / "CUB_200_2011"
    classes = ["001.Black_footed_Albatross", "002.Laysan_Albatross", "003.Sooty_Albatross"]
    images, labels, split = [], [], []
    n = 0
    for c, cls in enumerate(classes, 1):
        for k in range(8):
            n += 1
            rel = f"{cls}/{cls[4:]}_{k:04d}.jpg"
            _image(base / "images" / rel, value=n)
            images.append(f"{n} {rel}")
            labels.append(f"{n} {c}")
            split.append(f"{n} {int(k < 5)}")  # 5 train, 3 test per class
    (base / "images.txt").write_text("\n".join(images) + "\n")
    (base / "image_class_labels.txt").write_text("\n".join(labels) + "\n")
    (base / "train_test_split.txt").write_text("\n".join(split) + "\n")
    (base / "classes.txt").write_text("\n".join(f"{i} {c}" for i, c in enumerate(classes, 1)) + "\n")

    parts = _splits("cub200", tmp_path)
    assert [len(parts[s]) for s in SPLITS] == [12, 3, 9]
    _check_carved(parts)
    assert Counter(r["label"] for r in parts["test"]) == {0: 3, 1: 3, 2: 3}
    assert all(int(Path(r["image"]).stem[-4:]) >= 5 for r in parts["test"])  # the files marked 0 in the split
    assert all(classes[r["label"]] in r["image"] and Path(r["image"]).is_file() for r in parts["train"])
    assert dataset_class_names("cub200", tmp_path) == classes
    assert dataset_size("cub200", tmp_path) == 12
    (base / "classes.txt").unlink()
    with pytest.raises(DatasetError, match="lacks classes.txt"):
        dataset_records("cub200", tmp_path, "train")


# --- DomainNet -----------------------------------------------------------------------------------------------------


def test_domainnet_reads_its_domain_split_files(tmp_path):
    classes = ["aircraft_carrier", "airplane", "alarm_clock"]
    for domain, n_train, n_test in (("real", 6, 2), ("clipart", 3, 1)):
        for part, count in (("train", n_train), ("test", n_test)):
            lines = []
            for label, cls in enumerate(classes):
                for k in range(count):
                    rel = f"{domain}/{cls}/{domain}_{part}_{label:03d}_{k:06d}.jpg"
                    _image(tmp_path / rel, value=label)
                    lines.append(f"{rel} {label}")
            (tmp_path / f"{domain}_{part}.txt").write_text("\n".join(lines) + "\n")

    parts = _splits("domainnet_real", tmp_path)
    assert [len(parts[s]) for s in SPLITS] == [15, 3, 6]
    _check_carved(parts)
    assert all(r["id"].startswith("real/") and Path(r["image"]).is_file() for s in SPLITS for r in parts[s])
    assert all("_test_" in r["id"] for r in parts["test"]) and not any("_test_" in r["id"] for r in parts["val"])
    assert dataset_class_names("domainnet_real", tmp_path) == classes
    assert len(dataset_records("domainnet_clipart", tmp_path, "test")) == 3
    assert dataset_size("domainnet_clipart", tmp_path) == 6
    with pytest.raises(DatasetError, match="painting_train.txt"):
        dataset_records("domainnet_painting", tmp_path, "train")
    (tmp_path / "real_test.txt").write_text("real/airplane/x.jpg 0\n")  # label 0 is aircraft_carrier in train
    with pytest.raises(DatasetError, match="label 0"):
        dataset_class_names("domainnet_real", tmp_path)


# --- Caltech-101 ---------------------------------------------------------------------------------------------------


def test_caltech101_takes_30_per_class_for_training(tmp_path):
    base = tmp_path / "caltech101" / "101_ObjectCategories"
    counts = {"Faces": 33, "accordion": 35, "BACKGROUND_Google": 4}
    for cls, n in counts.items():
        for i in range(1, n + 1):
            _image(base / cls / f"image_{i:04d}.jpg", value=i)
    parts = _splits("caltech101", tmp_path, seed=3)
    assert dataset_class_names("caltech101", tmp_path) == ["Faces", "accordion"]  # torchvision's order, no background
    assert Counter(r["label"] for r in parts["train"]) == {0: 27, 1: 27}
    assert Counter(r["label"] for r in parts["val"]) == {0: 3, 1: 3}
    assert Counter(r["label"] for r in parts["test"]) == {0: 3, 1: 5}
    _check_carved(parts)
    assert not any("BACKGROUND" in r["image"] for s in SPLITS for r in parts[s])
    assert all(Path(r["image"]).parent.name == ["Faces", "accordion"][r["label"]] for r in parts["test"])
    other = dataset_records("caltech101", tmp_path, "test", seed=4)
    assert {r["id"] for r in other} != {r["id"] for r in parts["test"]}  # the seed draws the split
    assert dataset_size("caltech101", tmp_path, seed=3) == 54


# --- DTD and UC Merced (class folders) ---------------------------------------------------------------------------


def test_dtd_uses_official_split_1(tmp_path):
    data = tmp_path / "dtd" / "dtd"
    classes = ["banded", "blotchy", "zigzagged"]
    for part, n in (("train", 4), ("val", 2), ("test", 3)):
        lines = []
        for cls in classes:
            for k in range(n):
                _image(data / "images" / cls / f"{cls}_{part}{k}.jpg")
                lines.append(f"{cls}/{cls}_{part}{k}.jpg")
        (data / "labels" / f"{part}1.txt").parent.mkdir(parents=True, exist_ok=True)
        (data / "labels" / f"{part}1.txt").write_text("\n".join(lines) + "\n")
    (data / "labels" / "train2.txt").write_text("banded/banded_val0.jpg\n")  # other partitions are ignored
    parts = _splits("dtd", tmp_path)
    assert [len(parts[s]) for s in SPLITS] == [12, 6, 9]
    assert all(f"_{s}" in r["id"] for s in SPLITS for r in parts[s])
    assert all(r["id"].split("/")[0] == classes[r["label"]] for s in SPLITS for r in parts[s])
    assert dataset_class_names("dtd", tmp_path) == classes


def test_ucmerced_gets_a_seeded_stratified_split(tmp_path):
    base = tmp_path / "UCMerced_LandUse" / "Images"
    classes = ["agricultural", "airplane", "beach"]
    for cls in classes:
        for k in range(10):
            _image(base / cls / f"{cls}{k:02d}.tif", value=k)
    parts = _splits("ucmerced", tmp_path)
    assert Counter(r["label"] for r in parts["test"]) == {0: 2, 1: 2, 2: 2}  # 20 % test
    assert sum(len(parts[s]) for s in SPLITS) == 30 and len(parts["val"]) == 3
    _check_carved(parts)
    assert dataset_class_names("ucmerced", tmp_path) == classes
    again = _splits("ucmerced", tmp_path)
    assert again == parts
    assert _splits("ucmerced", tmp_path, seed=5)["test"] != parts["test"]
    image = LoadRGBd("image")(parts["train"][0])["image"]
    assert image.shape == (3, 4, 4)


def test_flowers17_class_folders_split_like_the_official_proportions(tmp_path):
    for cls in ("bluebell", "daffodil"):
        for k in range(8):
            _image(tmp_path / "flowers17" / cls / f"image_{k:04d}.jpg")
    parts = _splits("flowers17", tmp_path)
    assert [len(parts[s]) for s in SPLITS] == [8, 4, 4]
    _check_carved(parts)
    assert dataset_class_names("flowers17", tmp_path) == ["bluebell", "daffodil"]


def test_aircraft_trains_on_trainval(tmp_path):
    data = tmp_path / "fgvc-aircraft-2013b" / "data"
    variants = ["707-320", "A320", "Cessna 172"]
    (data / "images").mkdir(parents=True)
    (data / "variants.txt").write_text("\n".join(variants) + "\n")
    n = 0
    for part, count in (("trainval", 5), ("test", 2)):
        lines = []
        for v in variants:
            for _ in range(count):
                n += 1
                _image(data / "images" / f"{n:07d}.jpg")
                lines.append(f"{n:07d} {v}")
        (data / f"images_variant_{part}.txt").write_text("\n".join(lines) + "\n")
    parts = _splits("aircraft", tmp_path)
    assert [len(parts[s]) for s in SPLITS] == [12, 3, 6]
    _check_carved(parts)
    assert Counter(r["label"] for r in parts["test"]) == {0: 2, 1: 2, 2: 2}
    assert dataset_class_names("aircraft", tmp_path) == variants  # "Cessna 172": names with spaces survive


def test_flowers102_uses_setid_mat(tmp_path, monkeypatch):
    from scipy.io import savemat
    from torchvision.datasets import Flowers102

    base = tmp_path / "flowers-102"
    labels = np.repeat([1, 2, 3], 4)  # image_00001..12, classes 1-3 (1-based in the release)
    for i in range(1, 13):
        _image(base / "jpg" / f"image_{i:05d}.jpg", value=i)
    savemat(base / "imagelabels.mat", {"labels": labels[None, :]})
    savemat(base / "setid.mat", {"trnid": np.array([[1, 5, 9]]), "valid": np.array([[2, 6, 10]]),
                                 "tstid": np.array([[3, 4, 7, 8, 11, 12]])})  # fmt: skip
    md5 = {
        k: hashlib.md5((base / f).read_bytes()).hexdigest()
        for k, (f, _) in Flowers102._file_dict.items()
        if k != "image"
    }
    monkeypatch.setattr(
        Flowers102, "_file_dict", {k: (f, md5.get(k, m)) for k, (f, m) in Flowers102._file_dict.items()}
    )
    parts = _splits("flowers102", tmp_path)
    assert [r["id"] for r in parts["train"]] == ["image_00001.jpg", "image_00005.jpg", "image_00009.jpg"]
    assert [r["label"] for r in parts["val"]] == [0, 1, 2] and len(parts["test"]) == 6
    assert dataset_class_names("flowers102", tmp_path) == ["flower_001", "flower_002", "flower_003"]


# --- POCUS and generic image folders -------------------------------------------------------------------------------


def test_pocus_delegates_to_the_pocus_reader(tmp_path):
    for fold in range(5):
        for cls, prefix in (("covid19", "Cov"), ("regular", "Reg")):
            for p in range(2):
                for t in range(2):
                    path = tmp_path / f"fold{fold}" / cls / f"{prefix}_f{fold}p{p}_v1_{t:03d}.png"
                    _image(path, value=40 * fold + t, size=8, mode="L")
    for split in SPLITS:
        assert dataset_records("pocus", tmp_path, split) == pocus_datalist(tmp_path, "pocus_frames", split, fold=0)
    test = dataset_records("pocus", tmp_path, "test")
    assert len(test) == 8 and all("/fold0/" in r["image"] for r in test)
    assert dataset_class_names("pocus", tmp_path) == ["covid19", "regular"]
    image = LoadRGBd("image")(test[0])["image"]
    assert image.shape == (3, 8, 8) and torch.equal(image[0], image[2])  # grey frames become 3 equal channels


def test_imagefolder_delegates_to_image_folder_split(tmp_path):
    for cls in ("a", "b"):
        for k in range(10):
            _image(tmp_path / cls / f"{k}.png", value=k)
    parts = _splits("imagefolder", tmp_path, seed=2)
    assert [len(parts[s]) for s in SPLITS] == [16, 2, 2]
    _check_carved(parts)
    assert dataset_size("imagefolder", tmp_path, seed=2) == 16


# --- LoadRGBd -------------------------------------------------------------------------------------------------------


def test_load_rgb_turns_grey_arrays_and_rgb_files_into_three_channels(tmp_path):
    grey = np.arange(12, dtype=np.uint8).reshape(3, 4) * 20
    out = LoadRGBd("image")({"image": grey})["image"]
    assert out.shape == (3, 3, 4) and out.dtype == torch.float32
    for c in range(3):
        np.testing.assert_allclose(out[c].numpy(), grey / 255.0, rtol=1e-6)

    rgb = np.zeros((5, 6, 3), np.uint8)
    rgb[..., 0], rgb[..., 1], rgb[..., 2] = 255, 128, 0
    Image.fromarray(rgb).save(tmp_path / "rgb.png")
    d = LoadRGBd("image")({"image": str(tmp_path / "rgb.png")})
    assert d["image"].shape == (3, 5, 6) and d["image_path"] == str(tmp_path / "rgb.png")
    np.testing.assert_allclose(d["image"][:, 0, 0].numpy(), [1.0, 128 / 255, 0.0], rtol=1e-6)
    assert 0.0 <= float(d["image"].min()) and float(d["image"].max()) <= 1.0

    rgba = np.dstack([rgb, np.full((5, 6), 7, np.uint8)])
    assert LoadRGBd("image")({"image": rgba})["image"].shape == (3, 5, 6)
    Image.fromarray(np.full((4, 4), 65535, np.uint16)).save(tmp_path / "grey16.png")
    deep = LoadRGBd("image")({"image": tmp_path / "grey16.png"})["image"]
    assert deep.shape == (3, 4, 4) and float(deep.min()) == 1.0  # 16-bit white stays white, not clipped


def test_load_rgb_errors_name_the_file(tmp_path):
    bad = tmp_path / "broken.jpg"
    bad.write_bytes(b"not an image")
    with pytest.raises(DatasetError, match="broken.jpg"):
        LoadRGBd("image")({"image": str(bad)})
    with pytest.raises(DatasetError, match="absent.png"):
        LoadRGBd("image")({"image": str(tmp_path / "absent.png")})
    with pytest.raises(DatasetError, match="uint8"):
        LoadRGBd("image")({"image": np.zeros((4, 4), np.float32)})
    with pytest.raises(DatasetError, match="shape"):
        LoadRGBd("image")({"image": np.zeros((3, 4, 4, 2), np.uint8)})


@pytest.mark.parametrize("name, classes, train, test", [("dtd", 10, 400, 100), ("caltech101", 30, 1073, 300),
                                                        ("ucmerced", 21, 840, 210)])  # fmt: skip
def test_real_pre_split_natural_subsets_read_by_their_own_format(need, name, classes, train, test):
    """The shared natural/ subsets ({root}/train/<class>, {root}/test/<class>): their own split, val carved from train,
    the same records as imagefolder gives, and files counted independently of the readers."""
    root = need(f"natural/{name}")
    parts = {split: dataset_records(name, root, split, seed=0) for split in ("train", "val", "test")}
    assert len(dataset_class_names(name, root)) == classes
    assert len(parts["train"]) + len(parts["val"]) == train == len(list((root / "train").glob("*/*.jpg")))
    assert len(parts["test"]) == test == len(list((root / "test").glob("*/*.jpg")))
    assert all("/test/" in r["image"] for r in parts["test"]) and all("/train/" in r["image"] for r in parts["val"])
    assert parts == {split: dataset_records("imagefolder", root, split, seed=0) for split in parts}


def test_release_layout_wins_over_a_pre_split_export(tmp_path):
    """A folder with both the release layout and train/test folders is read as the release (DTD's split files)."""
    for split in ("train", "test"):
        for cls in ("a", "b"):
            (tmp_path / split / cls).mkdir(parents=True)
            Image.new("RGB", (8, 8)).save(tmp_path / split / cls / "x.jpg")
    assert len(dataset_records("dtd", tmp_path, "test", seed=0)) == 2  # pre-split export only
    (tmp_path / "dtd" / "dtd").mkdir(parents=True)
    with pytest.raises(DatasetError, match="dtd"):  # the release folder is there but incomplete: its error, not a guess
        dataset_records("dtd", tmp_path, "test", seed=0)
