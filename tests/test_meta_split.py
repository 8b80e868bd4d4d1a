"""MetaLR's meta data is apart from model selection and reporting, and every meta batch is full-size.

On the real BreastMNIST release (official train/val/test split) the bundle's held-out meta slice shares no image with
the training, validation or test split; ``max_train`` caps the training split class-stratified before the slice is
carved; POCUS-like records with patient groups keep every patient on one side.
"""

from __future__ import annotations

from collections import Counter

import pytest
from monai.bundle import ConfigParser

from medtransfer.bundling import strategy_path
from medtransfer.data.classification import classification_datalist
from medtransfer.data.content import content_key
from medtransfer.data.heldout import cap_training, fit_and_meta, meta_records
from medtransfer.errors import DatasetError

BUSI = strategy_path("metalr").parents[2] / "bundles" / "busi_classification" / "configs"


def _parser(**overrides) -> ConfigParser:
    parser = ConfigParser()
    parser.read_config([str(BUSI / "train.json"), str(strategy_path("metalr"))])
    parser.update({"device": "$torch.device('cpu')", **overrides})
    return parser


def _ids(records) -> set[str]:
    return {r["id"] for r in records}


@pytest.mark.parametrize("max_train", [None, 300])
def test_heldout_meta_slice_is_disjoint_from_train_val_and_test_on_breastmnist(need, max_train):
    npz = need("medmnist/breastmnist.npz")
    parser = _parser(dataset_format="medmnist", dataset_dir=str(npz), batch_size=64, image_size=28, max_train=max_train)
    train, val = parser.get_parsed_content("train#datalist"), parser.get_parsed_content("validate#datalist")
    meta = parser.get_parsed_content("meta_datalist")
    test = classification_datalist(npz, "medmnist", "test")
    assert len(meta) >= 64  # at least one full meta batch
    # the 546 official training images less train-115, a pixel copy of test-76 (left out of training)
    assert len(train) + len(meta) == (545 if max_train is None else max_train)
    for other in (train, val, test):
        assert not _ids(meta) & _ids(other)
        assert not {content_key(r) for r in meta} & {content_key(r) for r in other}  # nor under another name
    assert set(Counter(r["label"] for r in meta)) == {0, 1}  # both classes in the slice (stratified)
    batches = parser.get_parsed_content("metalr_meta_batches")
    sizes = [len(next(batches)["label"]) for _ in range(5)]  # 5 x 64 > the slice: wraps around, never short
    assert sizes == [64] * 5


def test_meta_sources_pick_their_records():
    records = [{"id": str(i), "label": i % 2, "image": "x"} for i in range(40)]
    fit = fit_and_meta(records, meta_source="heldout", meta_fraction=0.25, min_meta=4, seed=1)
    assert len(fit["meta"]) == 10 and len(fit["train"]) == 30 and not _ids(fit["meta"]) & _ids(fit["train"])
    val = [{"id": "v", "label": 0}]
    assert meta_records("heldout", fit, val, 4) == fit["meta"]
    assert meta_records("validation", fit, val, 4) == val
    assert meta_records("first_train_batch", fit, val, 4) == fit["train"][:4]
    assert meta_records("train_next", fit, val, 4) == []
    plain = fit_and_meta(records, meta_source="validation", seed=1)
    assert plain == {"train": records, "meta": []}  # nothing carved for a strategy without held-out meta data
    grown = fit_and_meta(records, meta_source="heldout", meta_fraction=0.05, min_meta=8, seed=1)
    assert len(grown["meta"]) == 8  # raised to one batch
    with pytest.raises(DatasetError, match="too few"):
        fit_and_meta(records[:8], meta_source="heldout", min_meta=8)


def test_meta_slice_keeps_patient_groups_whole():
    records = [{"id": f"{g}_{k}", "label": g % 3, "group": f"patient{g}"} for g in range(12) for k in range(5)]
    fit = fit_and_meta(records, meta_source="heldout", meta_fraction=0.2, min_meta=10, seed=0)
    meta_groups, train_groups = {r["group"] for r in fit["meta"]}, {r["group"] for r in fit["train"]}
    assert meta_groups and not meta_groups & train_groups
    assert len(fit["meta"]) >= 10


def test_max_train_is_class_stratified_and_seeded():
    records = [{"id": str(i), "label": int(i < 90)} for i in range(300)]  # 90 of class 1, 210 of class 0
    capped = cap_training(records, 100, seed=3)
    assert len(capped) == 100 and Counter(r["label"] for r in capped) == {1: 30, 0: 70}
    assert capped == cap_training(records, 100, seed=3) != cap_training(records, 100, seed=4)
    assert cap_training(records, 1000, seed=3) == records


def test_runs_tuned_on_the_selection_data_are_flagged(tmp_path):
    import json

    from medtransfer.runs import selected_on_meta_data

    for source, flagged in (("validation", True), ("heldout", False), ("train_next", False)):
        run = tmp_path / source
        run.mkdir()
        (run / "run_info.json").write_text(json.dumps({"settings": {"metalr_meta_source": source}}))
        assert selected_on_meta_data(run) is flagged
    (tmp_path / "plain").mkdir()
    assert selected_on_meta_data(tmp_path / "plain") is False


def test_meta_slice_of_whole_groups_grows_to_a_full_batch():
    """Groups of 7 frames: a 10 % target (6 frames) cannot hold a batch of 8 without taking two groups."""
    records = [{"id": f"{g}_{k}", "label": g % 2, "group": f"clip{g}"} for g in range(8) for k in range(7)]
    fit = fit_and_meta(records, meta_source="heldout", meta_fraction=0.1, min_meta=8, seed=2)
    assert len(fit["meta"]) >= 8 and len(fit["meta"]) % 7 == 0
    assert not {r["group"] for r in fit["meta"]} & {r["group"] for r in fit["train"]}
