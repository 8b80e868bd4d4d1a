"""The synthetic Kermany-like chest X-ray demo set: Kermany layout, deterministic, cached, and with a real signal."""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from medtransfer.data import KERMANY_CLASSES, ensure_synthetic_kermany, make_synthetic_kermany
from medtransfer.data.imagefolder import folder_classes, image_folder_split
from medtransfer.data.synthetic.kermany import synthetic_cxr_image


@pytest.fixture(scope="module")
def default_set(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("synthetic") / "kermany_synthetic"
    make_synthetic_kermany(out)
    return out


def test_image_folder_reads_every_split(default_set: Path) -> None:
    assert folder_classes(default_set) == list(KERMANY_CLASSES) == ["NORMAL", "PNEUMONIA"]
    ids = set()
    for split, n in zip(("train", "val", "test"), (40, 8, 12), strict=True):
        records = image_folder_split(default_set, split)
        assert [sum(r["label"] == k for r in records) for k in (0, 1)] == [n, n], split
        ids |= {r["id"] for r in records}
        for r in records:
            name = Path(r["image"]).name
            if r["label"] == 0:
                assert re.fullmatch(r"IM-\d{4}-0001\.jpeg", name), name
            else:
                assert re.fullmatch(r"person\d+_(bacteria|virus)_\d+\.jpeg", name), name
    assert len(ids) == 2 * (40 + 8 + 12)  # file names are unique across splits
    image = Image.open(image_folder_split(default_set, "test")[0]["image"])
    assert image.format == "JPEG" and image.mode == "L" and image.size == (128, 128)
    readme = (default_set / "SYNTHETIC_README.txt").read_text()
    assert "SYNTHETIC" in readme and "NOT medical data" in readme


def test_deterministic_per_seed(tmp_path: Path) -> None:
    a = make_synthetic_kermany(tmp_path / "a", n_per_class=(3, 1, 2), image_size=48, seed=5)
    b = make_synthetic_kermany(tmp_path / "b", n_per_class=(3, 1, 2), image_size=48, seed=5)
    c = make_synthetic_kermany(tmp_path / "c", n_per_class=(3, 1, 2), image_size=48, seed=6)
    d = make_synthetic_kermany(tmp_path / "d", n_per_class=(2, 1, 1), image_size=48, seed=5)
    files = sorted(p.relative_to(a) for p in a.rglob("*.jpeg"))
    assert len(files) == 2 * (3 + 1 + 2)
    assert files == sorted(p.relative_to(b) for p in b.rglob("*.jpeg"))
    for rel in files:
        assert (a / rel).read_bytes() == (b / rel).read_bytes()
        if (d / rel).is_file():  # case i does not depend on the counts
            assert (a / rel).read_bytes() == (d / rel).read_bytes()
    assert len(list(d.rglob("*.jpeg"))) == 2 * (2 + 1 + 1)
    shared = [rel for rel in files if (c / rel).is_file()]  # NORMAL names always match; PNEUMONIA ones may not
    assert len(shared) >= 3 + 1 + 2
    assert all((a / rel).read_bytes() != (c / rel).read_bytes() for rel in shared)


def test_ensure_caches_and_repairs(tmp_path: Path) -> None:
    out = tmp_path / "demo"
    kwargs = {"n_per_class": (2, 1, 1), "image_size": 48, "seed": 1}
    assert ensure_synthetic_kermany(out, **kwargs) == str(out)
    files = sorted(p for p in out.rglob("*") if p.is_file())
    mtimes = {p: p.stat().st_mtime_ns for p in files}
    ensure_synthetic_kermany(out, **kwargs)
    assert {p: p.stat().st_mtime_ns for p in files} == mtimes, "regenerated a complete set"

    victim = next((out / "val" / "PNEUMONIA").glob("*.jpeg"))
    victim.unlink()
    ensure_synthetic_kermany(out, **kwargs)
    assert victim.is_file()
    assert len(image_folder_split(out, "val")) == 2

    ensure_synthetic_kermany(out, n_per_class=(1, 1, 1), image_size=48, seed=1)  # other parameters: no stale cases
    assert len(image_folder_split(out, "train")) == 2


def test_bad_parameters(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="n_per_class"):
        make_synthetic_kermany(tmp_path, n_per_class=(4, 0, 2))
    with pytest.raises(ValueError, match="image_size"):
        ensure_synthetic_kermany(tmp_path, image_size=16)


def _lung_brightness(image: np.ndarray, lungs: np.ndarray) -> float:
    """Mean lung-field brightness, on a scale from the darkest lung (5th pct) to the brightest tissue (99th pct)."""
    image = image.astype(float)
    lo, hi = np.percentile(image[lungs], 5), np.percentile(image, 99)
    return float(np.clip((image[lungs] - lo) / (hi - lo), 0, None).mean())


@pytest.mark.parametrize("kind", ["bacteria", "virus"])
def test_pneumonia_lungs_hold_more_bright_mass(kind: str) -> None:
    """Cheap learnability proxy: consolidation makes the lung fields brighter on average than clear lungs."""
    normal = [_lung_brightness(*synthetic_cxr_image("NORMAL", 64, np.random.default_rng([7, i]))) for i in range(16)]
    sick = [
        _lung_brightness(*synthetic_cxr_image("PNEUMONIA", 64, np.random.default_rng([7, i]), kind)) for i in range(16)
    ]
    assert np.mean(sick) > np.mean(normal) + 0.015, (np.mean(normal), np.mean(sick))
