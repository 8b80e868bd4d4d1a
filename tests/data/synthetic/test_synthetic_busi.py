"""The synthetic BUSI-like demo set: same layout as BUSI, deterministic, cached, and with a real signal."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from medtransfer.data import BUSI_CLASSES, ensure_synthetic_busi, make_synthetic_busi, read_busi


def _arr(path: str | Path) -> np.ndarray:
    return np.asarray(Image.open(path))


@pytest.fixture(scope="module")
def default_set(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("synthetic") / "busi_synthetic"
    make_synthetic_busi(out)
    return out


def test_reader_reads_it_back(default_set: Path) -> None:
    records = read_busi(default_set, require_masks=True)
    assert len(records) == 24 * 3
    assert [sum(r["label"] == k for r in records) for k in range(3)] == [24, 24, 24]
    image = Image.open(records[0]["image"])
    assert image.mode == "L" and image.size == (128, 128)
    readme = (default_set / "SYNTHETIC_README.txt").read_text()
    assert "SYNTHETIC" in readme and "NOT medical data" in readme


def test_masks_per_class(default_set: Path) -> None:
    for r in read_busi(default_set, require_masks=True):
        mask = _arr(r["masks"][0])
        assert set(np.unique(mask)) <= {0, 255}
        if r["class_name"] == "normal":
            assert mask.max() == 0
        else:
            assert (mask > 0).mean() > 0.01


def test_lesions_are_darker_and_shapes_differ(default_set: Path) -> None:
    """Cheap learnability proxy: lesions are hypoechoic, malignant ones taller relative to width than benign."""
    aspect: dict[str, list[float]] = {"benign": [], "malignant": []}
    for r in read_busi(default_set, require_masks=True, check_images=False):
        if r["class_name"] == "normal":
            continue
        image, mask = _arr(r["image"]).astype(float), _arr(r["masks"][0]) > 0
        assert image[mask].mean() < image[~mask].mean() - 20, r["id"]
        rows, cols = np.flatnonzero(mask.any(1)), np.flatnonzero(mask.any(0))
        aspect[r["class_name"]].append((rows[-1] - rows[0] + 1) / (cols[-1] - cols[0] + 1))
    assert max(aspect["benign"]) < 1.0 < np.mean(aspect["malignant"])
    assert np.mean(aspect["malignant"]) > np.mean(aspect["benign"]) + 0.3


def test_deterministic_per_seed(tmp_path: Path) -> None:
    a = make_synthetic_busi(tmp_path / "a", n_per_class=3, image_size=64, seed=5)
    b = make_synthetic_busi(tmp_path / "b", n_per_class=3, image_size=64, seed=5)
    c = make_synthetic_busi(tmp_path / "c", n_per_class=3, image_size=64, seed=6)
    d = make_synthetic_busi(tmp_path / "d", n_per_class=2, image_size=64, seed=5)
    for name in BUSI_CLASSES:
        for i in (1, 2):
            rel = f"{name}/{name} ({i}).png"
            assert (a / rel).read_bytes() == (b / rel).read_bytes()
            assert (a / rel).read_bytes() == (d / rel).read_bytes()  # case i does not depend on n_per_class
            assert (a / rel).read_bytes() != (c / rel).read_bytes()


def test_ensure_caches_and_repairs(tmp_path: Path) -> None:
    out = tmp_path / "demo"
    kwargs = {"n_per_class": 2, "image_size": 48, "seed": 1}
    assert ensure_synthetic_busi(out, **kwargs) == str(out)
    files = sorted(p for p in out.rglob("*") if p.is_file())
    mtimes = {p: p.stat().st_mtime_ns for p in files}
    ensure_synthetic_busi(out, **kwargs)
    assert {p: p.stat().st_mtime_ns for p in files} == mtimes, "regenerated a complete set"

    victim = out / "malignant" / "malignant (2)_mask.png"
    victim.unlink()
    ensure_synthetic_busi(out, **kwargs)
    assert victim.is_file()
    assert len(read_busi(out, require_masks=True)) == 6

    ensure_synthetic_busi(out, n_per_class=1, image_size=48, seed=1)  # other parameters: rebuilt, no stale cases
    assert len(read_busi(out, require_masks=True)) == 3
