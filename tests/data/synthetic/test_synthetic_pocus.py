"""The synthetic POCUS-like lung-ultrasound demo set: POCUS layout, patient groups, deterministic, cached, with a signal."""

from __future__ import annotations

import re
import time
from pathlib import Path

import numpy as np
import pytest
from scipy import ndimage

from medtransfer.data import ensure_synthetic_pocus, make_synthetic_pocus
from medtransfer.data.pocus import POCUS_CLASSES, clip_group, read_clip_frames, read_pocus_clips
from medtransfer.errors import DatasetError

SMALL = {"n_patients": (1, 1, 1), "clips_per_patient": 1, "n_frames": 4, "frame_size": 48}


@pytest.fixture(scope="module")
def default_set(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("synthetic") / "pocus_synthetic"
    make_synthetic_pocus(out)
    return out


@pytest.fixture(scope="module")
def decoded(default_set: Path) -> dict[str, list[np.ndarray]]:
    """Decoded frames of every default clip, by class."""
    clips: dict[str, list[np.ndarray]] = {name: [] for name in POCUS_CLASSES}
    for record in read_pocus_clips(default_set):
        clips[record["class_name"]].append(read_clip_frames(record["path"]))
    return clips


def test_reader_lists_every_clip_with_patient_groups(default_set: Path) -> None:
    records = read_pocus_clips(default_set)
    assert len(records) == 3 * 4 * 2
    assert all(r["probe"] == "convex" and r["kind"] == "video" for r in records)
    groups_by_class: dict[str, set[str]] = {}
    for r in records:
        prefix = {"covid19": "Cov", "pneumonia": "Pneu", "regular": "Reg"}[r["class_name"]]
        assert POCUS_CLASSES[r["label"]] == r["class_name"]
        match = re.fullmatch(rf"{prefix}_synthetic_pat(\d)_v[12]", r["clip"])
        assert match, r["clip"]
        assert r["group"] == clip_group(r["clip"]) == f"{prefix}_synthetic_pat{match.group(1)}"
        groups_by_class.setdefault(r["class_name"], set()).add(r["group"])
    assert {k: len(v) for k, v in groups_by_class.items()} == dict.fromkeys(POCUS_CLASSES, 4)
    all_groups = [g for gs in groups_by_class.values() for g in gs]
    assert len(all_groups) == len(set(all_groups)) == 12  # no group shared across classes
    assert all(sum(r["group"] == g for r in records) == 2 for g in all_groups)  # both clips of a patient
    # the other probe / still-image folders exist (the reader needs them) and are empty
    for sub in ("pocus_videos/linear", "pocus_images/convex", "pocus_images/linear"):
        assert (default_set / sub).is_dir() and not any((default_set / sub).iterdir()), sub
    assert len(read_pocus_clips(default_set, probe="all", include_images=True)) == len(records)
    with pytest.raises(DatasetError, match="no POCUS clip"):
        read_pocus_clips(default_set, probe="linear")
    readme = (default_set / "SYNTHETIC_README.txt").read_text()
    assert "SYNTHETIC" in readme and "NOT medical data" in readme


def test_clips_decode_to_fan_shaped_frames(decoded: dict[str, list[np.ndarray]]) -> None:
    for clips in decoded.values():
        for frames in clips:
            assert frames.shape == (12, 96, 96) and frames.dtype == np.uint8
            assert frames[:, :8, :8].max() < 20 and frames[:, :8, -8:].max() < 20  # outside the convex fan
            assert frames[:, 30:60, 40:56].mean() > 12  # inside it (dark consolidations included)


def test_lung_slides_under_a_still_chest_wall(decoded: dict[str, list[np.ndarray]]) -> None:
    """The lung below the pleura moves from frame to frame; the chest wall above it barely does."""
    for clips in decoded.values():
        for frames in clips:
            x = frames.astype(float)
            change = np.abs(x[1:] - x[0]).mean(axis=0)  # each frame against the first
            lung = change[40:86, 29:67].mean()
            wall = change[2:10, 38:58].mean()
            assert lung > 2.0 and lung > 3 * wall, (lung, wall)


def _bline_score(frame: np.ndarray) -> float:
    """Vertical streakiness deep in the lung: lateral spread of the vertically smoothed image, per unit brightness."""
    region = ndimage.uniform_filter1d(frame.astype(float), 9, axis=0)[38:86, 29:67]
    return float(region.std(axis=1).mean() / (region.mean() + 1))


def _subpleural_brightness(frame: np.ndarray) -> float:
    """Mean brightness just below the deepest possible pleural line, in the central columns."""
    return float(frame[35:54, 34:62].mean())


def _class_means(decoded: dict[str, list[np.ndarray]], statistic) -> dict[str, float]:
    return {name: float(np.mean([statistic(f) for clip in clips for f in clip])) for name, clips in decoded.items()}


def test_classes_differ_in_measurable_ways(decoded: dict[str, list[np.ndarray]]) -> None:
    """Cheap learnability proxies on decoded frames: B-lines make covid19 streaky, consolidation darkens pneumonia."""
    blines = _class_means(decoded, _bline_score)
    assert blines["covid19"] > 1.4 * blines["regular"], blines
    assert blines["covid19"] > 1.2 * blines["pneumonia"], blines
    dark = _class_means(decoded, _subpleural_brightness)
    assert dark["pneumonia"] < 0.8 * dark["regular"], dark
    assert dark["pneumonia"] < 0.8 * dark["covid19"], dark
    # not trivial: patients vary, so single clips of different classes overlap on at least one statistic
    per_clip = {
        name: [(np.mean([_bline_score(f) for f in c]), np.mean([_subpleural_brightness(f) for f in c])) for c in clips]
        for name, clips in decoded.items()
    }
    ranges = {name: np.ptp(np.array(v), axis=0) for name, v in per_clip.items()}
    assert all(r[0] > 0.05 and r[1] > 5 for r in ranges.values()), ranges


def _frames(root: Path, probe: str = "convex") -> dict[str, np.ndarray]:
    return {r["clip"]: read_clip_frames(r["path"]) for r in read_pocus_clips(root, probe=probe)}


def test_deterministic_per_seed(tmp_path: Path) -> None:
    a = _frames(make_synthetic_pocus(tmp_path / "a", **SMALL, seed=3))
    b = _frames(make_synthetic_pocus(tmp_path / "b", **SMALL, seed=3))
    c = _frames(make_synthetic_pocus(tmp_path / "c", **SMALL, seed=4))
    d = _frames(make_synthetic_pocus(tmp_path / "d", **{**SMALL, "n_patients": (2, 1, 1)}, seed=3))
    names = ["Cov_synthetic_pat1_v1", "Pneu_synthetic_pat1_v1", "Reg_synthetic_pat1_v1"]
    assert sorted(a) == sorted(b) == sorted(c) == names
    assert len(d) == 4
    for clip, frames in a.items():
        assert frames.shape == (4, 48, 48)
        assert np.array_equal(frames, b[clip])
        assert np.array_equal(frames, d[clip])  # a clip does not depend on the counts
        assert np.abs(frames.astype(int) - c[clip]).mean() > 5


def test_ensure_caches_and_regenerates(tmp_path: Path) -> None:
    out = tmp_path / "demo"
    assert ensure_synthetic_pocus(out, **SMALL, seed=1) == str(out)
    files = sorted(p for p in out.rglob("*") if p.is_file())
    assert len(files) == 3 + 2  # clips, README, marker
    mtimes = {p: p.stat().st_mtime_ns for p in files}
    ensure_synthetic_pocus(out, **SMALL, seed=1)
    assert {p: p.stat().st_mtime_ns for p in files} == mtimes, "regenerated a complete set"

    victim = out / "pocus_videos" / "convex" / "Pneu_synthetic_pat1_v1.mp4"
    victim.unlink()
    (out / "pocus_images" / "linear").rmdir()
    ensure_synthetic_pocus(out, **SMALL, seed=1)
    assert victim.is_file() and (out / "pocus_images" / "linear").is_dir()

    time.sleep(0.01)
    before = victim.stat().st_mtime_ns
    ensure_synthetic_pocus(out, **{**SMALL, "n_frames": 5}, seed=1)  # other parameters: regenerated
    assert victim.stat().st_mtime_ns != before
    assert read_clip_frames(victim).shape == (5, 48, 48)

    ensure_synthetic_pocus(out, **{**SMALL, "n_patients": (1, 1, 1), "clips_per_patient": 2}, seed=1)
    assert len(read_pocus_clips(out)) == 6
    ensure_synthetic_pocus(out, **SMALL, seed=1)  # smaller again: no stale clips left behind
    assert len(read_pocus_clips(out)) == 3


def test_linear_probe_gives_a_rectangular_view(tmp_path: Path) -> None:
    out = make_synthetic_pocus(tmp_path / "lin", **{**SMALL, "frame_size": 64}, probes=("convex", "linear"))
    linear, convex = _frames(out, "linear"), _frames(out, "convex")
    assert sorted(linear) == sorted(convex)
    groups = {clip_group(r["clip"]) for r in read_pocus_clips(out, probe="all")}
    assert len(groups) == 3  # a patient's convex and linear clips share one group
    for clip, frames in linear.items():
        assert frames.shape == (4, 64, 64)
        assert frames[:, :, :2].max() < 20 and frames[:, :, -2:].max() < 20  # black side bars
        assert frames[:, :6, 6:58].mean() > 20  # the top corners of a rectangle are inside the view
        assert convex[clip][:, :6, :6].max() < 20  # ... but outside a convex fan


def test_bad_parameters(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="n_patients"):
        make_synthetic_pocus(tmp_path, n_patients=(4, 4))
    with pytest.raises(ValueError, match="even"):
        make_synthetic_pocus(tmp_path, frame_size=65)
    with pytest.raises(ValueError, match="probes"):
        ensure_synthetic_pocus(tmp_path, probes=("sector",))
    assert not (tmp_path / "pocus_videos").exists()
