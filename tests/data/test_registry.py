"""The one dataset-format registry: every bundle's formats are in it, unknown names and options are refused by name,
and the classification, natural-image and POCUS entry points all resolve through it."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import numpy as np
import pytest
from conftest import REPO

from medtransfer.data import busi, make_synthetic_busi, medmnist, natural, pocus_datalist, registry
from medtransfer.data.classification import class_names, classification_datalist
from medtransfer.data.imagefolder import save_grey_image
from medtransfer.data.registry import (
    DatasetFormat,
    dataset_class_names,
    dataset_records,
    format_names,
    get_format,
    register,
)
from medtransfer.errors import DatasetError

# the bundles whose datalists and classes come from the registry, and the formats their docs offer besides the default
REGISTRY_BUNDLES = {
    "busi_classification": {"busi", "medmnist", "imagefolder"},
    "chestxray_classification": {"imagefolder", "medmnist"},
    "pocus_classification": {"pocus_videos", "pocus_frames"},
    "natural_transferability": set(natural.NATURAL_FORMATS) | {"busi", "medmnist"},
}


@pytest.fixture(scope="module")
def busi_root(tmp_path_factory) -> Path:
    return make_synthetic_busi(tmp_path_factory.mktemp("registry") / "busi", n_per_class=4, image_size=32)


@pytest.fixture(scope="module")
def frames_root(tmp_path_factory) -> Path:
    """Pre-extracted POCUS frames in five fold folders, two clips of two classes per fold."""
    root = tmp_path_factory.mktemp("registry") / "frames"
    for fold in range(5):
        for cls, prefix in (("covid19", "Cov"), ("regular", "Reg")):
            for p in range(2):
                folder = root / f"fold{fold}" / cls
                folder.mkdir(parents=True, exist_ok=True)
                for t in range(2):
                    save_grey_image(
                        np.full((8, 8), 20 * fold + t, np.uint8), folder / f"{prefix}_f{fold}p{p}_v1_{t:03d}.png"
                    )
    return root


@pytest.mark.parametrize("bundle", sorted(REGISTRY_BUNDLES))
def test_every_format_the_bundles_use_is_registered(bundle):
    configs = REPO / "bundles" / bundle / "configs"
    train = json.loads((configs / "train.json").read_text())
    used = {train["dataset_format"]} | REGISTRY_BUNDLES[bundle]
    assert used <= set(format_names()), used - set(format_names())
    expressions = [v for f in ("train.json", "evaluate.json") for v in _strings(json.loads((configs / f).read_text()))]
    assert not any("dataset_name" in e or "transfer_records" in e for e in expressions)  # one setting name, one seam


def _strings(config) -> list[str]:
    if isinstance(config, dict):
        return [s for v in config.values() for s in _strings(v)]
    if isinstance(config, list):
        return [s for v in config for s in _strings(v)]
    return [config] if isinstance(config, str) else []


def test_the_builtin_formats_are_the_readers_own_declarations():
    declared = [*busi.FORMATS, *medmnist.FORMATS, *natural.FORMATS, *pocus_datalist.FORMATS]
    assert sorted(f.name for f in declared) == format_names()  # each name once, nothing else
    assert all(get_format(f.name) is f for f in declared)
    assert all(isinstance(f, DatasetFormat) and f.split_rule and "\n" not in f.split_rule for f in declared)
    assert all(f.source and "{root}" in f.layout and f.layout.format(root="R").startswith("R") for f in declared)


@pytest.mark.parametrize(
    "call",
    [
        lambda root: get_format("imagenet"),
        lambda root: dataset_records("imagenet", root, "train"),
        lambda root: dataset_class_names("imagenet", root),
        lambda root: classification_datalist(root, "imagenet", "train"),
        lambda root: class_names("imagenet", root),
        lambda root: pocus_datalist.pocus_datalist(root, "imagenet", "test", fold=0),
        lambda root: pocus_datalist.pocus_class_names(root, "imagenet"),
    ],
)
def test_an_unknown_format_names_the_known_ones(tmp_path, call):
    with pytest.raises(DatasetError) as info:
        call(tmp_path)
    message = str(info.value)
    assert message.startswith("unknown dataset format 'imagenet'; choose one of "), message
    assert all(name in message for name in format_names())
    assert list(tmp_path.iterdir()) == []


def test_classification_natural_and_pocus_entry_points_resolve_through_the_registry(busi_root, frames_root):
    for split in ("train", "val", "test"):
        assert classification_datalist(busi_root, "busi", split, seed=2) == dataset_records("busi", busi_root, split, 2)
        frames = pocus_datalist.pocus_datalist(frames_root, "pocus_frames", split, fold=1)
        assert frames == dataset_records("pocus_frames", frames_root, split, fold=1)
        assert dataset_records("pocus", frames_root, split) == dataset_records("pocus_frames", frames_root, split)
    assert class_names("busi", busi_root) == dataset_class_names("busi", busi_root) == list(busi.BUSI_CLASSES)
    assert pocus_datalist.pocus_class_names(frames_root, "pocus_frames") == ["covid19", "regular"]
    assert dataset_class_names("pocus", frames_root) == ["covid19", "regular"]
    # a class-folder set is one format whichever entry point reads it (BUSI's layout has class folders too)
    folders = {s: classification_datalist(busi_root, "imagefolder", s) for s in ("train", "val", "test")}
    assert folders == {s: dataset_records("imagefolder", busi_root, s) for s in folders}
    assert class_names("imagefolder", busi_root) == sorted(busi.BUSI_CLASSES)


def test_options_splits_and_max_train_are_checked_by_name(busi_root, frames_root):
    with pytest.raises(DatasetError, match=r"'busi' takes no option fold, probe \(its options: none\)"):
        dataset_records("busi", busi_root, "train", fold=0, probe="x")
    with pytest.raises(DatasetError, match=r"'pocus_frames' takes no option folds \(its options: fold, num_folds"):
        pocus_datalist.pocus_datalist(frames_root, "pocus_frames", "train", folds=5)
    with pytest.raises(DatasetError, match="split must be one of train, val, test, trainval"):
        dataset_records("busi", busi_root, "validation")
    with pytest.raises(DatasetError, match="max_train must be >= 1"):
        dataset_records("busi", busi_root, "train", max_train=0)
    train = dataset_records("busi", busi_root, "train")
    subset = dataset_records("busi", busi_root, "train", max_train=3)
    assert len(subset) == 3 and {r["label"] for r in subset} == {0, 1, 2} and subset[0] in train
    assert dataset_records("busi", busi_root, "val", max_train=1) == dataset_records("busi", busi_root, "val")
    assert registry.dataset_size("busi", busi_root, max_train=3) == 3


def test_register_adds_a_format_and_refuses_a_taken_name(monkeypatch, tmp_path):
    format_names()  # the built-in formats are loaded; the test's own format goes into a copy of the table
    monkeypatch.setattr(registry, "_FORMATS", dict(registry._FORMATS))
    toy = DatasetFormat(
        name="toy",
        layout="{root}/anything",
        source="made up here",
        split_rule="one record per split",
        records=lambda root, split, seed, *, scale=1: [{"image": str(root), "label": scale, "id": f"{split}-{seed}"}],
        classes=lambda root: ["only"],
    )
    assert register(toy) is toy and "toy" in format_names()
    assert dataset_records("toy", tmp_path, "test", seed=4, scale=2) == [
        {"image": str(tmp_path), "label": 2, "id": "test-4"}
    ]
    assert classification_datalist(tmp_path, "toy", "val") == [{"image": str(tmp_path), "label": 1, "id": "val-0"}]
    assert dataset_class_names("toy", tmp_path) == ["only"]
    with pytest.raises(ValueError, match="'busi' is already registered"):
        register(dataclasses.replace(toy, name="busi"))
