"""read_busi on the real BUSI sample and on small fabricated folders that break one rule each."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from medtransfer.data import BUSI_CLASSES, read_busi
from medtransfer.errors import DatasetError


def _png(path: Path, size: tuple[int, int] = (12, 10), value: int = 128) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.full((size[1], size[0]), value, dtype=np.uint8)).save(path)


def _tree(root: Path, n: int = 2, classes: tuple[str, ...] = BUSI_CLASSES) -> Path:
    """A tiny valid BUSI layout: n images per class, each with one mask."""
    for name in classes:
        for i in range(1, n + 1):
            _png(root / name / f"{name} ({i}).png")
            _png(root / name / f"{name} ({i})_mask.png", value=0)
    return root


# --- real data -------------------------------------------------------------------------------


@pytest.mark.realdata
def test_real_busi_records(need) -> None:
    busi = need("busi")
    records = read_busi(busi, require_masks=True)
    assert len(records) == 30
    for label, name in enumerate(BUSI_CLASSES):
        of_class = [r for r in records if r["class_name"] == name]
        assert len(of_class) == 10
        assert [r["id"] for r in of_class] == [f"{name} ({i})" for i in range(1, 11)]  # numeric, not 1, 10, 2
        for r in of_class:
            assert r["label"] == label
            assert Path(r["image"]).parent.name == name
            assert Path(r["image"]).is_file()
            assert Path(r["image"]).name == f"{r['id']}.png"
            assert all(Path(m).is_file() for m in r["masks"])


@pytest.mark.realdata
def test_real_busi_two_masks_in_order(need) -> None:
    records = {r["id"]: r for r in read_busi(need("busi"))}
    masks = [Path(m).name for m in records["benign (4)"]["masks"]]
    assert masks == ["benign (4)_mask.png", "benign (4)_mask_1.png"]
    assert [Path(m).name for m in records["benign (3)"]["masks"]] == ["benign (3)_mask.png"]


@pytest.mark.realdata
def test_real_busi_class_subset_relabels(need) -> None:
    records = read_busi(need("busi"), classes=("normal", "malignant"), check_images=False)
    assert len(records) == 20
    assert {r["label"] for r in records if r["class_name"] == "normal"} == {0}
    assert {r["label"] for r in records if r["class_name"] == "malignant"} == {1}


# --- fabricated folders ----------------------------------------------------------------------


def test_fabricated_tree_sorting_masks_and_extensions(tmp_path: Path) -> None:
    root = _tree(tmp_path / "busi", n=2)
    folder = root / "benign"
    _png(folder / "benign (10).png")
    _png(folder / "benign (3).PNG")  # extensions are case-insensitive
    Image.fromarray(np.zeros((10, 12, 3), dtype=np.uint8)).save(folder / "benign (11).JPG", format="JPEG")
    for suffix in ("_mask_2", "_mask", "_mask_1"):
        _png(folder / f"benign (10){suffix}.png", value=255)
    (folder / "notes.txt").write_text("ignored")
    (folder / ".DS_Store").write_bytes(b"\0junk")
    records = read_busi(root)
    benign = [r for r in records if r["class_name"] == "benign"]
    assert [r["id"] for r in benign] == ["benign (1)", "benign (2)", "benign (3)", "benign (10)", "benign (11)"]
    ten = benign[3]
    assert [Path(m).name for m in ten["masks"]] == [
        "benign (10)_mask.png",
        "benign (10)_mask_1.png",
        "benign (10)_mask_2.png",
    ]
    assert benign[2]["masks"] == [] and benign[4]["masks"] == []
    assert [r["class_name"] for r in records] == sorted((r["class_name"] for r in records), key=BUSI_CLASSES.index)
    assert len(records) == 5 + 2 + 2


def test_root_missing_or_file(tmp_path: Path) -> None:
    with pytest.raises(DatasetError, match="nowhere"):
        read_busi(tmp_path / "nowhere")
    file = tmp_path / "afile.png"
    file.write_bytes(b"x")
    with pytest.raises(DatasetError, match="afile.png"):
        read_busi(file)


def test_missing_class_folder_lists_found(tmp_path: Path) -> None:
    root = _tree(tmp_path / "busi", classes=("benign", "Malignant", "normal"))
    with pytest.raises(DatasetError, match="malignant") as info:
        read_busi(root)
    assert "Malignant" in str(info.value)  # the folders that do exist are listed


def test_empty_class_folder(tmp_path: Path) -> None:
    root = _tree(tmp_path / "busi", classes=("benign", "malignant"))
    (root / "normal").mkdir()
    (root / "normal" / "readme.txt").write_text("no images here")
    with pytest.raises(DatasetError, match="normal") as info:
        read_busi(root)
    assert "no images" in str(info.value)


def test_orphan_mask(tmp_path: Path) -> None:
    root = _tree(tmp_path / "busi")
    _png(root / "malignant" / "malignant (7)_mask.png")
    with pytest.raises(DatasetError, match=r"malignant \(7\)_mask\.png") as info:
        read_busi(root)
    assert "orphan" in str(info.value)


def test_missing_mask_only_with_require_masks(tmp_path: Path) -> None:
    root = _tree(tmp_path / "busi")
    (root / "normal" / "normal (2)_mask.png").unlink()
    assert len(read_busi(root)) == 6
    with pytest.raises(DatasetError, match=r"normal \(2\)\.png"):
        read_busi(root, require_masks=True)


def test_corrupt_png(tmp_path: Path) -> None:
    root = _tree(tmp_path / "busi")
    (root / "benign" / "benign (2).png").write_bytes(b"this is not a png at all" * 10)
    with pytest.raises(DatasetError, match=r"benign \(2\)\.png") as info:
        read_busi(root)
    assert "re-export" in str(info.value)
    assert len(read_busi(root, check_images=False)) == 6  # the check can be skipped for a checked folder


@pytest.mark.realdata
def test_truncated_real_png(tmp_path: Path, need) -> None:
    root = _tree(tmp_path / "busi")
    data = (need("busi") / "benign" / "benign (1).png").read_bytes()
    (root / "benign" / "benign (1).png").write_bytes(data[: len(data) // 2])
    with pytest.raises(DatasetError, match=r"benign \(1\)\.png"):
        read_busi(root)


def test_corrupt_mask(tmp_path: Path) -> None:
    root = _tree(tmp_path / "busi")
    (root / "malignant" / "malignant (1)_mask.png").write_bytes(b"\x89PNG garbage")
    with pytest.raises(DatasetError, match=r"malignant \(1\)_mask\.png"):
        read_busi(root)


def test_mask_size_mismatch(tmp_path: Path) -> None:
    root = _tree(tmp_path / "busi")
    _png(root / "benign" / "benign (1)_mask_1.png", size=(11, 10))
    with pytest.raises(DatasetError, match=r"benign \(1\)_mask_1\.png") as info:
        read_busi(root)
    assert "mismatch" in str(info.value)


def test_duplicate_image_stem(tmp_path: Path) -> None:
    root = _tree(tmp_path / "busi")
    Image.fromarray(np.zeros((10, 12), dtype=np.uint8)).save(root / "normal" / "normal (1).bmp")
    with pytest.raises(DatasetError, match=r"normal \(1\)\.bmp"):
        read_busi(root)
