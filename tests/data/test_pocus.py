"""POCUS clip listing, patient grouping and PyAV frame decoding (real data where available)."""

from __future__ import annotations

import logging
from pathlib import Path

import av
import numpy as np
import pytest

from medtransfer.data.pocus import POCUS_CLASSES, clip_group, read_clip_frames, read_pocus_clips
from medtransfer.errors import DatasetError


def _write_video(path: Path, n_frames: int = 6, size: int = 32) -> Path:
    """A tiny MPEG-4 clip whose frames get brighter over time."""
    with av.open(str(path), mode="w") as container:
        stream = container.add_stream("mpeg4", rate=10)
        stream.width = stream.height = size
        stream.pix_fmt = "yuv420p"
        for t in range(n_frames):
            img = np.full((size, size, 3), 20 + 30 * t, dtype=np.uint8)
            img[: size // 2, : size // 2] = 255
            for packet in stream.encode(av.VideoFrame.from_ndarray(img, format="rgb24")):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
    return path


def _tmp_pocus(tmp_path: Path, names: dict[str, list[str]]) -> Path:
    root = tmp_path / "pocus"
    for probe in ("convex", "linear"):
        (root / "pocus_videos" / probe).mkdir(parents=True)
        (root / "pocus_images" / probe).mkdir(parents=True)
        for name in names.get(probe, []):
            _write_video(root / "pocus_videos" / probe / name)
    return root


@pytest.mark.parametrize(
    ("stem", "group"),
    [
        ("Reg_pat1Image_132943", "Reg_pat1"),
        ("Cov_convex_volpecelli_sonographic_v3", "Cov_convex_volpecelli_sonographic"),
        ("Reg_recommendations_alines_mov1", "Reg_recommendations_alines"),
        ("Pneu_prospective_file3", "Pneu_prospective_file"),
        ("Reg_Image_182340", "Reg_Image_182340"),
        ("Reg_Image_182106_crop", "Reg_Image_182106_crop"),
    ],
)
def test_clip_group_rule(stem, group):
    assert clip_group(stem) == group


@pytest.mark.realdata
def test_real_convex_clips_and_groups(need):
    root = need("pocus")
    clips = read_pocus_clips(root, probe="convex")
    assert {c["class_name"] for c in clips} == {"covid19", "regular"}
    assert all(c["kind"] == "video" and c["probe"] == "convex" for c in clips)
    assert all(POCUS_CLASSES[c["label"]] == c["class_name"] for c in clips)
    pat1 = [c for c in clips if c["clip"].startswith("Reg_pat1Image_")]
    assert len(pat1) >= 2 and {c["group"] for c in pat1} == {"Reg_pat1"}
    volpe = [c for c in clips if "volpecelli_sonographic" in c["clip"]]
    assert len(volpe) >= 2 and {c["group"] for c in volpe} == {"Cov_convex_volpecelli_sonographic"}

    linear = read_pocus_clips(root, probe="linear")
    both = read_pocus_clips(root, probe="all")
    assert {c["probe"] for c in linear} == {"linear"}
    assert {c["path"] for c in linear}.isdisjoint(c["path"] for c in clips)
    assert len(both) == len(clips) + len(linear)
    with_images = read_pocus_clips(root, probe="convex", include_images=True)
    assert any(c["kind"] == "image" for c in with_images)


@pytest.mark.realdata
def test_real_clip_decodes(need):
    root = need("pocus")
    clip = min(read_pocus_clips(root, probe="convex"), key=lambda c: Path(c["path"]).stat().st_size)
    frames = read_clip_frames(clip["path"], max_frames=4, size=64)
    assert frames.shape == (4, 64, 64) and frames.dtype == np.uint8
    assert frames.std() > 0


@pytest.mark.realdata
def test_truncated_real_clip_raises(need, tmp_path):
    root = need("pocus")
    clip = min(read_pocus_clips(root, probe="convex"), key=lambda c: Path(c["path"]).stat().st_size)
    bad = tmp_path / ("truncated" + Path(clip["path"]).suffix)
    bad.write_bytes(Path(clip["path"]).read_bytes()[:2048])
    with pytest.raises(DatasetError, match="truncated") as info:
        read_clip_frames(bad)
    assert str(bad) in str(info.value) and "re-encode" in str(info.value)


def test_synthetic_clip_sampling(tmp_path):
    path = _write_video(tmp_path / "Reg_x.mp4", n_frames=6)
    full = read_clip_frames(path)
    assert full.shape == (6, 32, 32) and full.dtype == np.uint8
    assert read_clip_frames(path, every=2).shape[0] == 3
    spread = read_clip_frames(path, max_frames=2)  # evenly spaced: first and last frame
    assert np.array_equal(spread[0], full[0]) and np.array_equal(spread[1], full[-1])


def test_still_image_is_one_frame(tmp_path):
    from PIL import Image

    path = tmp_path / "Cov_still.png"
    Image.fromarray(np.arange(40 * 30, dtype=np.uint8).reshape(40, 30) % 251).convert("RGB").save(path)
    frames = read_clip_frames(path, size=16)
    assert frames.shape == (1, 16, 16) and frames.dtype == np.uint8


def test_unknown_prefix_error_vir_ignored_and_extra_classes(tmp_path, caplog):
    root = _tmp_pocus(tmp_path, {"convex": ["Cov_a_v1.mp4", "Reg_b.mp4", "Vir_c.mp4", "Zzz-d.mp4"]})
    with pytest.raises(DatasetError, match=r"Zzz-d\.mp4.*unknown='skip'") as err:
        read_pocus_clips(root)
    assert "Vir_c" not in str(err.value)  # Vir is a known class, left out by default, not an error
    with caplog.at_level(logging.WARNING, logger="medtransfer.data.pocus"):
        clips = read_pocus_clips(root, unknown="skip")
    assert sorted(c["clip"] for c in clips) == ["Cov_a_v1", "Reg_b"]
    assert "Zzz-d.mp4" in caplog.text and "Vir_c.mp4" not in caplog.text

    classes = (*POCUS_CLASSES, "viral")
    clips = read_pocus_clips(root, classes=classes, unknown="skip")
    vir = [c for c in clips if c["clip"] == "Vir_c"]
    assert len(vir) == 1 and vir[0]["class_name"] == "viral" and vir[0]["label"] == 3
    clips = read_pocus_clips(root, classes=(*POCUS_CLASSES, "zed"), extra_classes={"Zzz": "zed"})
    zed = [c for c in clips if c["clip"] == "Zzz-d"]
    assert len(zed) == 1 and zed[0]["label"] == 3


def test_missing_folder_and_no_clips(tmp_path):
    with pytest.raises(DatasetError, match="not found"):
        read_pocus_clips(tmp_path / "nowhere")
    root = _tmp_pocus(tmp_path, {"convex": ["Reg_b.mp4"]})
    with pytest.raises(DatasetError, match="no POCUS clip"):
        read_pocus_clips(root, classes=("covid19",))
    with pytest.raises(DatasetError, match="no POCUS clip"):
        read_pocus_clips(root, probe="linear")


def test_zero_frame_or_missing_clip(tmp_path):
    with pytest.raises(DatasetError, match="not found"):
        read_clip_frames(tmp_path / "missing.mp4")
    empty = tmp_path / "Reg_empty.mp4"
    with av.open(str(empty), mode="w") as container:
        stream = container.add_stream("mpeg4", rate=10)
        stream.width = stream.height = 16
    with pytest.raises(DatasetError, match="Reg_empty.mp4"):
        read_clip_frames(empty)
