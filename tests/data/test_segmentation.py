"""Segmentation readers (LiTS, MSD, datalist JSON), header checks, volume-level splits and label remapping."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch
from monai.data import MetaTensor
from monai.transforms import LoadImaged

from medtransfer.data import (
    LITS_LABEL_MAP,
    SEGMENTATION_FORMATS,
    RemapLabelsd,
    check_pair,
    make_synthetic_lits,
    num_segmentation_classes,
    read_datalist_json,
    read_lits,
    read_msd_liver,
    segmentation_datalist,
    segmentation_file_list,
)
from medtransfer.errors import DatasetError

SMALL = {"shape": (24, 24, 16), "spacing": (4.0, 4.0, 6.0)}


@pytest.fixture(scope="module")
def lits_source(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Seven small synthetic LiTS cases; tests copy what they need and never modify this folder."""
    return make_synthetic_lits(tmp_path_factory.mktemp("lits") / "source", n_volumes=7, **SMALL)


def _lits_copy(source: Path, dest: Path, numbers: list[int], names: dict[int, int] | None = None) -> Path:
    """Copy cases ``numbers`` of ``source`` into ``dest``, renumbered by ``names`` (old -> new) when given."""
    dest.mkdir(parents=True, exist_ok=True)
    for n in numbers:
        new = (names or {}).get(n, n)
        shutil.copy(source / f"volume-{n}.nii.gz", dest / f"volume-{new}.nii.gz")
        shutil.copy(source / f"segmentation-{n}.nii.gz", dest / f"segmentation-{new}.nii.gz")
    return dest


def _save_like(path: Path, array: np.ndarray, affine: np.ndarray) -> None:
    nib.save(nib.Nifti1Image(array, affine), str(path))


# --- LiTS ---------------------------------------------------------------------------------------------------------


def test_read_lits_sorted_numerically(lits_source: Path, tmp_path: Path) -> None:
    root = _lits_copy(lits_source, tmp_path / "lits", [0, 1, 2], {0: 0, 1: 2, 2: 10})
    (root / "test-volume-0.nii.gz").write_bytes(b"not read: LiTS test volumes have no segmentation")
    (root / "notes.txt").write_text("ignored")
    records = read_lits(root)
    assert [r["id"] for r in records] == ["volume-0", "volume-2", "volume-10"]  # not volume-10 before volume-2
    for r in records:
        assert set(r) == {"image", "label", "id"}
        assert Path(r["image"]).name == f"{r['id']}.nii.gz"
        assert Path(r["label"]).name == r["id"].replace("volume", "segmentation") + ".nii.gz"
        assert Path(r["image"]).parent == root


def test_read_lits_batches_in_sub_folders(lits_source: Path, tmp_path: Path) -> None:
    root = tmp_path / "LITS17"
    _lits_copy(lits_source, root / "Training Batch 1", [0, 1, 2])
    _lits_copy(lits_source, root / "Training Batch 2", [3, 4])
    _lits_copy(lits_source, root, [5])  # loose files at the top level count too
    (root / "__MACOSX").mkdir()
    (root / "__MACOSX" / "volume-9.nii.gz").write_bytes(b"resource fork")
    (root / "Training Batch 1" / "._volume-0.nii").write_bytes(b"resource fork")
    records = read_lits(root)
    assert [r["id"] for r in records] == [f"volume-{i}" for i in range(6)]
    assert Path(records[4]["image"]).parent.name == "Training Batch 2"
    assert Path(records[5]["label"]).parent == root


def test_read_lits_unpaired_files_are_named(lits_source: Path, tmp_path: Path) -> None:
    root = _lits_copy(lits_source, tmp_path / "a", [0, 1, 2, 3])
    (root / "segmentation-3.nii.gz").unlink()
    with pytest.raises(DatasetError, match=r"volume-3\.nii\.gz has no segmentation.*segmentation-3\.nii"):
        read_lits(root)
    root = _lits_copy(lits_source, tmp_path / "b", [0, 1, 2])
    (root / "volume-1.nii.gz").unlink()
    with pytest.raises(DatasetError, match=r"segmentation-1\.nii\.gz has no volume.*volume-1\.nii"):
        read_lits(root)


def test_read_lits_duplicates_empty_and_missing(lits_source: Path, tmp_path: Path) -> None:
    root = _lits_copy(lits_source, tmp_path / "dup", [0, 1])
    _lits_copy(lits_source, root / "batch", [1])
    with pytest.raises(DatasetError, match=r"two volume files for case 1: .*volume-1\.nii\.gz and .*volume-1\.nii\.gz"):
        read_lits(root)
    empty = tmp_path / "empty"
    empty.mkdir()
    (empty / "scan.nii.gz").write_bytes(b"")
    with pytest.raises(DatasetError, match=rf"no LiTS files in {empty}.*volume-N\.nii\[\.gz\].*segmentation-N"):
        read_lits(empty)
    with pytest.raises(DatasetError, match="not found"):
        read_lits(tmp_path / "nowhere")


def test_read_lits_checks_every_pair(lits_source: Path, tmp_path: Path) -> None:
    root = _lits_copy(lits_source, tmp_path / "lits", [0, 1, 2])
    seg = nib.load(str(root / "segmentation-2.nii.gz"))
    _save_like(root / "segmentation-2.nii.gz", np.asarray(seg.dataobj)[:, :, :10], seg.affine)  # cropped label
    with pytest.raises(DatasetError, match=r"segmentation-2\.nii\.gz has shape \(24, 24, 10\).*volume-2\.nii\.gz"):
        read_lits(root)


# --- MSD ----------------------------------------------------------------------------------------------------------


def _msd_layout(source: Path, task: Path, numbers: dict[int, int]) -> Path:
    """Task03_Liver layout from synthetic cases (source number -> MSD number), with the tarball's ``._`` junk."""
    for folder in ("imagesTr", "labelsTr", "imagesTs"):
        (task / folder).mkdir(parents=True)
    for n, m in numbers.items():
        shutil.copy(source / f"volume-{n}.nii.gz", task / "imagesTr" / f"liver_{m}.nii.gz")
        shutil.copy(source / f"segmentation-{n}.nii.gz", task / "labelsTr" / f"liver_{m}.nii.gz")
        (task / "imagesTr" / f"._liver_{m}.nii.gz").write_bytes(b"\x00\x05\x16\x07 AppleDouble junk")
        (task / "labelsTr" / f"._liver_{m}.nii.gz").write_bytes(b"\x00\x05\x16\x07 AppleDouble junk")
    shutil.copy(source / "volume-0.nii.gz", task / "imagesTs" / "liver_200.nii.gz")  # no label: not read
    (task / "._imagesTr").write_bytes(b"junk")
    return task


def test_read_msd_liver(lits_source: Path, tmp_path: Path) -> None:
    task = _msd_layout(lits_source, tmp_path / "Task03_Liver", {0: 0, 3: 3, 4: 10, 5: 21})
    records = read_msd_liver(task)
    assert [r["id"] for r in records] == ["liver_0", "liver_3", "liver_10", "liver_21"]  # numeric order
    assert all(
        Path(r["image"]).parent.name == "imagesTr" and Path(r["label"]).parent.name == "labelsTr" for r in records
    )
    assert all(Path(r["image"]).name == Path(r["label"]).name for r in records)
    assert read_msd_liver(tmp_path) == records  # the folder that holds Task03_Liver/ works too


def test_read_msd_liver_errors(lits_source: Path, tmp_path: Path) -> None:
    task = _msd_layout(lits_source, tmp_path / "Task03_Liver", {0: 0, 1: 1})
    (task / "labelsTr" / "liver_1.nii.gz").unlink()  # its ._ twin is still there and must not count
    with pytest.raises(DatasetError, match=r"imagesTr/liver_1\.nii\.gz has no segmentation.*labelsTr/liver_1"):
        read_msd_liver(task)
    with pytest.raises(DatasetError, match=r"imagesTr not found"):
        read_msd_liver(tmp_path / "elsewhere")
    empty = tmp_path / "empty"
    (empty / "imagesTr").mkdir(parents=True)
    (empty / "labelsTr").mkdir()
    (empty / "imagesTr" / "._liver_0.nii.gz").write_bytes(b"junk")
    with pytest.raises(DatasetError, match=r"no MSD liver files.*liver_N\.nii\.gz"):
        read_msd_liver(empty)


# --- header checks, real files --------------------------------------------------------------------------------------


@pytest.mark.realdata
def test_check_pair_on_the_real_files(need) -> None:
    folder = need("liver_ct")
    ct, ct_sm, seg = folder / "example_ct.nii.gz", folder / "example_ct_sm.nii.gz", folder / "example_seg.nii.gz"
    # the shipped segmentation is the one of the 30-slice crop, so that is the matching pair
    assert nib.load(str(seg)).shape == nib.load(str(ct_sm)).shape == (122, 101, 30)
    assert nib.load(str(ct)).shape == (122, 101, 112)
    check_pair(ct_sm, seg)
    with pytest.raises(DatasetError) as info:
        check_pair(ct, seg)
    message = str(info.value)
    assert str(ct) in message and str(seg) in message
    assert "(122, 101, 30)" in message and "(122, 101, 112)" in message and "does not belong" in message


def test_check_pair_affines(lits_source: Path, tmp_path: Path) -> None:
    image = lits_source / "volume-0.nii.gz"
    seg = nib.load(str(lits_source / "segmentation-0.nii.gz"))
    data = np.asarray(seg.dataobj)
    for name, shift, ok in (("tiny.nii.gz", 1e-5, True), ("moved.nii.gz", 2.0, False), ("flipped.nii.gz", None, False)):
        affine = seg.affine.copy()
        if shift is None:
            affine[0, 0] = -affine[0, 0]  # stored with the other x orientation
        else:
            affine[2, 3] += shift
        _save_like(tmp_path / name, data, affine)
        if ok:
            check_pair(image, tmp_path / name)
        else:
            with pytest.raises(DatasetError, match=rf"{tmp_path / name} and image {image} .*affines that differ"):
                check_pair(image, tmp_path / name)
    (tmp_path / "broken.nii.gz").write_bytes(b"not a nifti")
    with pytest.raises(DatasetError, match=r"cannot read the NIfTI header of .*broken\.nii\.gz"):
        check_pair(image, tmp_path / "broken.nii.gz")
    with pytest.raises(DatasetError, match=r"missing\.nii\.gz not found"):
        check_pair(tmp_path / "missing.nii.gz", image)


# --- datalist JSON ------------------------------------------------------------------------------------------------


@pytest.mark.realdata
def test_read_datalist_json_with_the_real_files(need, tmp_path: Path) -> None:
    folder = need("liver_ct")
    ct_sm, seg = folder / "example_ct_sm.nii.gz", folder / "example_seg.nii.gz"
    lists = tmp_path / "lists"
    lists.mkdir()
    rel = {p.name: os.path.relpath(p, lists) for p in (ct_sm, seg, folder / "example_ct.nii.gz")}
    pair = {"image": rel["example_ct_sm.nii.gz"], "label": rel["example_seg.nii.gz"]}
    path = lists / "datalist.json"
    path.write_text(json.dumps({"training": [pair], "validation": [pair], "test": [rel["example_ct.nii.gz"]]}))

    train = read_datalist_json(path, "train")
    assert len(train) == 1 and train[0]["id"] == "example_ct_sm"
    assert Path(train[0]["image"]).samefile(ct_sm) and Path(train[0]["label"]).samefile(seg)
    assert read_datalist_json(path, "val") == train
    test = read_datalist_json(path, "test")
    assert len(test) == 1 and "label" not in test[0] and Path(test[0]["image"]).samefile(folder / "example_ct.nii.gz")
    assert segmentation_datalist(lists, "datalist", "train") == train  # a folder holding datalist.json

    path.write_text(json.dumps({"training": [pair], "test": [rel["example_ct.nii.gz"]]}))
    with pytest.raises(DatasetError, match=r'datalist .*datalist\.json has no "validation" list .*training'):
        read_datalist_json(path, "val")
    bad = {"image": rel["example_ct.nii.gz"], "label": rel["example_seg.nii.gz"]}  # 112 slices vs a 30-slice label
    path.write_text(json.dumps({"training": [bad]}))
    with pytest.raises(DatasetError, match=r"example_seg\.nii\.gz has shape .*example_ct\.nii\.gz"):
        read_datalist_json(path, "train")


def test_read_datalist_json_errors(lits_source: Path, tmp_path: Path) -> None:
    path = tmp_path / "list.json"
    with pytest.raises(DatasetError, match=r"list\.json not found"):
        read_datalist_json(path, "train")
    path.write_text("{not json")
    with pytest.raises(DatasetError, match=r"cannot read datalist JSON .*list\.json"):
        read_datalist_json(path, "train")
    path.write_text(json.dumps({"training": [{"image": "missing.nii.gz", "label": "missing_seg.nii.gz"}]}))
    with pytest.raises(DatasetError, match=rf"image {tmp_path / 'missing.nii.gz'} .*not found"):
        read_datalist_json(path, "train")
    path.write_text(json.dumps({"training": [{"image": str(lits_source / "volume-0.nii.gz")}], "validation": []}))
    with pytest.raises(DatasetError, match=r'has no "label"'):
        read_datalist_json(path, "train")
    with pytest.raises(DatasetError, match=r'"validation" .* is empty'):
        read_datalist_json(path, "val")
    with pytest.raises(DatasetError, match="split must be one of"):
        read_datalist_json(path, "holdout")


# --- volume-level splits --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("fmt", ["lits", "msd"])
def test_split_by_volume(fmt: str, lits_source: Path, tmp_path: Path) -> None:
    root = (
        lits_source if fmt == "lits" else _msd_layout(lits_source, tmp_path / "Task03_Liver", {i: i for i in range(7)})
    )
    everything = {r["id"] for r in (read_lits(root) if fmt == "lits" else read_msd_liver(root))}
    assert len(everything) == 7
    splits = {s: segmentation_datalist(root, fmt, s, seed=3) for s in ("train", "val", "test")}
    ids = {s: [r["id"] for r in records] for s, records in splits.items()}
    assert [len(v) for v in ids.values()] == [5, 1, 1]  # 70/15/15 of 7 volumes
    assert set(ids["train"]) | set(ids["val"]) | set(ids["test"]) == everything
    assert sum(len(v) for v in ids.values()) == len(everything)  # disjoint
    assert all(set(r) == {"image", "label", "id"} for r in splits["train"])
    assert {s: [r["id"] for r in segmentation_datalist(root, fmt, s, seed=3)] for s in ids} == ids  # deterministic
    others = [[r["id"] for r in segmentation_datalist(root, fmt, "val", seed=s)] for s in range(4, 10)]
    assert any(o != ids["val"] for o in others)  # the seed matters
    two = segmentation_datalist(root, fmt, "test", seed=3, fractions=(0.5, 0.5, 0.0))
    assert two == []


def test_split_needs_enough_volumes(lits_source: Path, tmp_path: Path) -> None:
    root = _lits_copy(lits_source, tmp_path / "two", [0, 1])
    with pytest.raises(DatasetError, match=r"holds 2 volume\(s\).*at least 3.*--dataset_format datalist"):
        segmentation_datalist(root, "lits", "train")
    assert len(segmentation_datalist(root, "lits", "val", fractions=(0.5, 0.5, 0.0))) == 1
    with pytest.raises(DatasetError, match="dataset_format must be one of lits, msd, datalist"):
        segmentation_datalist(root, "nifti", "train")
    with pytest.raises(DatasetError, match="split must be one of train, val, test"):
        segmentation_datalist(root, "lits", "training")
    assert SEGMENTATION_FORMATS == ("lits", "msd", "datalist")


# --- inference file lists -----------------------------------------------------------------------------------------


def test_segmentation_file_list(lits_source: Path, tmp_path: Path) -> None:
    root = tmp_path / "scans"
    (root / "b").mkdir(parents=True)
    shutil.copy(lits_source / "volume-0.nii.gz", root / "case10.nii.gz")
    shutil.copy(lits_source / "volume-1.nii.gz", root / "case2.nii.gz")
    nib.save(nib.load(str(lits_source / "volume-2.nii.gz")), str(root / "b" / "plain.nii"))
    (root / "._case2.nii.gz").write_bytes(b"junk")
    (root / "notes.txt").write_text("ignored")
    records = segmentation_file_list(root)
    assert [r["id"] for r in records] == ["plain", "case2", "case10"]
    assert all(set(r) == {"image", "id"} and Path(r["image"]).is_file() for r in records)
    assert segmentation_file_list(root / "case2.nii.gz") == [{"image": str(root / "case2.nii.gz"), "id": "case2"}]

    shutil.copy(lits_source / "volume-3.nii.gz", root / "b" / "case2.nii.gz")
    with pytest.raises(DatasetError, match="have the same name") as info:
        segmentation_file_list(root)
    assert str(root / "case2.nii.gz") in str(info.value) and str(root / "b" / "case2.nii.gz") in str(info.value)
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(DatasetError, match=rf"no \.nii or \.nii\.gz files under {empty}"):
        segmentation_file_list(empty)
    with pytest.raises(DatasetError, match="not a NIfTI file"):
        segmentation_file_list(root / "notes.txt")
    with pytest.raises(DatasetError, match="not found"):
        segmentation_file_list(tmp_path / "nowhere")


# --- label remapping ----------------------------------------------------------------------------------------------


@pytest.mark.realdata
def test_remap_real_organ_labels(need) -> None:
    seg_path = need("liver_ct") / "example_seg.nii.gz"
    raw = np.asarray(nib.load(str(seg_path)).dataobj)
    expected_liver = int((raw == 5).sum())
    assert expected_liver > 1000 and len(np.unique(raw)) > 10  # a multi-organ map with a real liver in it

    data = LoadImaged("label", ensure_channel_first=True)({"label": str(seg_path)})
    out = RemapLabelsd("label", {"5": 1}, unmapped="background")(data)["label"]
    assert isinstance(out, MetaTensor) and out.dtype == data["label"].dtype and out.shape == (1, 122, 101, 30)
    assert int((out == 1).sum()) == expected_liver
    assert set(torch.unique(out).tolist()) == {0.0, 1.0}
    assert torch.equal(out.affine, data["label"].affine)
    assert out.meta["filename_or_obj"] == str(seg_path)
    assert torch.equal(data["label"].as_tensor(), torch.from_numpy(raw.astype(np.float32))[None])  # input untouched

    with pytest.raises(DatasetError) as info:
        RemapLabelsd("label")(data)  # LiTS default {1: 1, 2: 2} on a 42-organ map
    message = str(info.value)
    assert str(seg_path) in message and "3, 4, 5" in message
    assert "--label_map" in message and "--unmapped_labels background" in message


def test_remap_keeps_type_and_handles_json_keys() -> None:
    label = np.array([[[0, 1, 2, 7]]], dtype=np.uint8)
    out = RemapLabelsd("label", {"1": "1", 2: 2, "7": 2})({"label": label, "other": 1})
    assert isinstance(out["label"], np.ndarray) and out["label"].dtype == np.uint8
    assert out["label"].tolist() == [[[0, 1, 2, 2]]] and out["other"] == 1

    tensor = torch.tensor([0.0, 1.0, 2.0, 3.0])
    dropped = RemapLabelsd("label", LITS_LABEL_MAP, unmapped="background")({"label": tensor})["label"]
    assert type(dropped) is torch.Tensor and dropped.tolist() == [0.0, 1.0, 2.0, 0.0]
    merged = RemapLabelsd("label", {1: 1, 2: 1})({"label": tensor[:3]})["label"]  # tumour merged into liver
    assert merged.tolist() == [0.0, 1.0, 1.0]

    meta = MetaTensor(torch.tensor([0.0, 1.5, 2.0]), meta={"filename_or_obj": "/data/odd_seg.nii.gz"})
    with pytest.raises(DatasetError, match=r"label file /data/odd_seg\.nii\.gz holds label value\(s\) 1\.5 "):
        RemapLabelsd("label")({"label": meta})
    with pytest.raises(DatasetError, match=r"label 'label' \(no file name"):
        RemapLabelsd("label")({"label": torch.tensor([0, 4])})
    negative = RemapLabelsd("label", {-1: 1}, unmapped="background")({"label": torch.tensor([-1, 0, 3])})["label"]
    assert negative.tolist() == [1, 0, 0]  # the general (non-bincount) path

    with pytest.raises(DatasetError, match="unmapped must be one of error, background"):
        RemapLabelsd("label", unmapped="ignore")
    with pytest.raises(DatasetError, match="label_map entry 'liver'"):
        RemapLabelsd("label", {"liver": 1})


def test_num_segmentation_classes() -> None:
    assert num_segmentation_classes(LITS_LABEL_MAP) == 3
    assert num_segmentation_classes({"5": 1}) == 2
    assert num_segmentation_classes({"1": "1", "2": "1"}) == 2
    assert num_segmentation_classes({5: 1, 6: 3}) == 4
    with pytest.raises(DatasetError, match="non-empty"):
        num_segmentation_classes({})
    with pytest.raises(DatasetError, match="negative"):
        num_segmentation_classes({1: -1})
