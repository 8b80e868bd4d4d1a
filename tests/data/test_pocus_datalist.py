"""POCUS frame datalists: clip-grouped folds from videos and from pre-extracted frame folders."""

from __future__ import annotations

from collections import defaultdict
from pathlib import Path

import numpy as np
import pytest

from medtransfer.data.imagefolder import save_grey_image
from medtransfer.data.pocus import read_pocus_clips
from medtransfer.data.pocus_datalist import (
    extract_pocus_frames,
    frame_clip,
    pocus_class_names,
    pocus_clip_datalist,
    pocus_datalist,
    read_frame_folders,
)
from medtransfer.errors import DatasetError

FAST = {"fps": 3.0, "max_frames": 4, "image_size": 32}


@pytest.fixture(scope="module")
def real_pocus(need) -> Path:
    return need("pocus")


@pytest.fixture(scope="module")
def real_folds(real_pocus):
    """{fold: {split: records}} for the real convex clips, 5 folds."""
    return {
        f: {s: pocus_datalist(real_pocus, split=s, fold=f, num_folds=5, **FAST) for s in ("train", "val", "test")}
        for f in range(5)
    }


@pytest.mark.parametrize(
    ("stem", "clip"),
    [("Cov_pat1_v2_017", "Cov_pat1_v2"), ("Reg_pat1Image_132943_000", "Reg_pat1Image_132943"),
     ("Reg_a-frame12", "Reg_a"), ("Cov_still", "Cov_still")],
)  # fmt: skip
def test_frame_clip(stem, clip):
    assert frame_clip(stem) == clip


@pytest.mark.realdata
def test_real_class_names(real_pocus):
    # the CC-BY subset has no pneumonia clips: the head follows the data
    assert pocus_class_names(real_pocus) == ["covid19", "regular"]


@pytest.mark.realdata
def test_real_folds_never_split_a_clip_or_patient(real_pocus, real_folds):
    clips = read_pocus_clips(real_pocus)
    all_clips = {c["clip"] for c in clips}
    tested = []
    for f, parts in real_folds.items():
        by_split = {s: {r["clip"] for r in recs} for s, recs in parts.items()}
        groups = {s: {r["group"] for r in recs} for s, recs in parts.items()}
        assert by_split["train"] and by_split["val"] and by_split["test"], f
        for a, b in (("train", "val"), ("train", "test"), ("val", "test")):
            assert not by_split[a] & by_split[b], (f, a, b)
            assert not groups[a] & groups[b], (f, a, b)  # no patient in two parts either
        assert by_split["train"] | by_split["val"] | by_split["test"] == all_clips
        tested += sorted(by_split["test"])
    assert sorted(tested) == sorted(all_clips)  # every clip is tested exactly once over the folds


@pytest.mark.realdata
def test_real_frames_sampled_and_labelled(real_pocus, real_folds):
    classes = pocus_class_names(real_pocus)
    label_of = {c["clip"]: classes.index(c["class_name"]) for c in read_pocus_clips(real_pocus)}
    per_clip = defaultdict(list)
    for recs in real_folds[0].values():
        for r in recs:
            per_clip[r["clip"]].append(r)
            assert r["label"] == label_of[r["clip"]]
            assert r["image"].shape == (32, 32) and r["image"].dtype == np.uint8
    assert all(1 <= len(v) <= FAST["max_frames"] for v in per_clip.values())
    ids = [r["id"] for recs in real_folds[0].values() for r in recs]
    assert len(ids) == len(set(ids))


@pytest.mark.realdata
def test_extracted_frame_folds_match_video_folds(real_pocus, tmp_path):
    out = extract_pocus_frames(real_pocus, tmp_path / "frames", num_folds=5, max_frames=2, image_size=32)
    with pytest.raises(DatasetError, match="already exists"):
        extract_pocus_frames(real_pocus, out)
    for f in (0, 3):
        from_frames = pocus_datalist(out, "pocus_frames", split="test", fold=f, num_folds=5)
        from_videos = pocus_datalist(real_pocus, split="test", fold=f, num_folds=5, **FAST)
        assert {r["clip"] for r in from_frames} == {r["clip"] for r in from_videos}
        assert all(Path(r["image"]).parent.parent.name == f"fold{f}" for r in from_frames)
        train = pocus_datalist(out, "pocus_frames", split="train", fold=f, num_folds=5)
        val = pocus_datalist(out, "pocus_frames", split="val", fold=f, num_folds=5)
        assert val and not {r["group"] for r in train} & {r["group"] for r in val}
        assert not {r["clip"] for r in train + val} & {r["clip"] for r in from_frames}
    with pytest.raises(DatasetError, match="--num_folds 5"):
        pocus_datalist(out, "pocus_frames", split="train", fold=0, num_folds=4)


def _frame_tree(root: Path, layout: dict[str, dict[str, list[str]]]) -> Path:
    """Frame folders of 3 frames per clip; each frame's first pixels count the frames written, so no two files are
    copies (copies would be kept on one side of a split, or left out of training)."""
    written = 0
    for part, classes in layout.items():
        for cls, clips in classes.items():
            (root / part / cls).mkdir(parents=True, exist_ok=True)
            for clip in clips:
                for t in range(3):
                    frame = np.full((8, 8), 10 * t, np.uint8)
                    written += 1
                    frame[0, :2] = divmod(written, 256)
                    save_grey_image(frame, root / part / cls / f"{clip}_{t:03d}.png")
    return root


def test_fixed_split_folders(tmp_path):
    train = {"covid19": [f"Cov_p{i}_v1" for i in range(4)], "regular": [f"Reg_p{i}_v1" for i in range(4)]}
    test = {"covid19": ["Cov_q_v1"], "regular": ["Reg_q_v1"]}
    root = _frame_tree(tmp_path / "f", {"train": train, "test": test})
    assert pocus_class_names(root, "pocus_frames") == ["covid19", "regular"]
    tr = pocus_datalist(root, "pocus_frames", split="train", val_fraction=0.25)
    va = pocus_datalist(root, "pocus_frames", split="val", val_fraction=0.25)
    te = pocus_datalist(root, "pocus_frames", split="test")
    assert {r["clip"] for r in te} == {"Cov_q_v1", "Reg_q_v1"}
    assert {r["label"] for r in va} == {0, 1}  # validation sees both classes
    assert not {r["clip"] for r in tr} & {r["clip"] for r in va}
    assert len(tr) + len(va) == 8 * 3
    assert all(r["label"] == (0 if r["clip"].startswith("Cov") else 1) for r in tr + va + te)


def test_frame_layout_errors(tmp_path):
    with pytest.raises(DatasetError, match="does not exist"):
        read_frame_folders(tmp_path / "none")
    root = _frame_tree(tmp_path / "f", {"train": {"covid19": ["Cov_a"], "regular": ["Reg_a"]}})
    (root / "train" / "pneumonia").mkdir()
    with pytest.raises(DatasetError, match=r"train/pneumonia holds no frames"):
        read_frame_folders(root)
    (root / "train" / "pneumonia").rmdir()
    with pytest.raises(DatasetError, match="train/ and test/"):
        pocus_datalist(root, "pocus_frames", split="train")


def test_clip_datalist_for_inference(tmp_path):
    root = _frame_tree(tmp_path / "f", {"x": {"y": ["Cov_a"]}})
    records = pocus_clip_datalist(root, image_size=16)
    assert [r["clip"] for r in records] == [f"x/y/Cov_a_{t:03d}.png" for t in range(3)]
    assert all(r["image"].shape == (16, 16) and "label" not in r for r in records)
    with pytest.raises(DatasetError, match="does not exist"):
        pocus_clip_datalist(tmp_path / "none")
