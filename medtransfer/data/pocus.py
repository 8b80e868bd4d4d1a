"""POCUS lung-ultrasound clips (convex/linear probe videos and still images) with patient groups.

Layout (as in the public POCUS data set)::

    root/pocus_videos/{convex,linear}/<Prefix>_<rest>.{mov,mp4,mpeg,avi,gif}
    root/pocus_images/{convex,linear}/<Prefix>_<rest>.{jpg,jpeg,png,bmp}

Only files directly in a probe folder are read (sub-folders such as ``label_uncertain/`` are not).
The class comes from the file-name prefix before the first ``_`` or ``-`` (see ``PREFIXES``). ``Vir`` (other viral
pneumonia) is a known class that is left out unless asked for; an unknown prefix is an error naming the file.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from medtransfer.errors import DatasetError

logger = logging.getLogger(__name__)

POCUS_CLASSES = ("covid19", "pneumonia", "regular")
PREFIXES = {"Cov": "covid19", "Pneu": "pneumonia", "Reg": "regular", "Vir": "viral"}
PROBES = ("convex", "linear")
VIDEO_EXTENSIONS = (".mov", ".mp4", ".mpeg", ".mpg", ".avi", ".gif")
IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp")

_PREFIX_RE = re.compile(r"^([^_-]+)")
_GROUP_RULES = (
    re.compile(r"^(?P<g>.+?)_?Image_\d+$"),  # Reg_pat1Image_132943 -> Reg_pat1
    re.compile(r"^(?P<g>.+)_(?:v|mov)\d+$"),  # ..._sonographic_v3 / ..._alines_mov1
    re.compile(r"^(?P<g>.*\D)\d+$"),  # Pneu_prospective_file3 -> Pneu_prospective_file
)


def clip_prefix(stem: str) -> str:
    """The class prefix of a file stem: the text before the first ``_`` or ``-``."""
    match = _PREFIX_RE.match(stem)
    return match.group(1) if match else ""


def clip_group(stem: str) -> str:
    """Patient/series id of a clip stem, so that clips of one patient or video series share it.

    Rule: the first of these that applies strips a trailing clip counter
    1. ``<g>Image_NNNN`` or ``<g>_Image_NNNN`` (``Reg_pat1Image_132943`` -> ``Reg_pat1``);
    2. ``<g>_vN`` or ``<g>_movN`` (``Cov_convex_volpecelli_sonographic_v2`` -> ``Cov_convex_volpecelli_sonographic``);
    3. trailing digits (``Pneu_prospective_file3`` -> ``Pneu_prospective_file``);
    then trailing ``_``/``-`` are dropped. When no rule applies, or what is left is only the class
    prefix (``Reg_Image_182340`` would leave ``Reg``), the group is the clip stem itself.
    """
    for rule in _GROUP_RULES:
        match = rule.match(stem)
        if match:
            group = match.group("g").rstrip("_-")
            if group and group != clip_prefix(stem):
                return group
            return stem
    return stem


def read_pocus_clips(
    root: str | Path,
    probe: str = "convex",
    classes: Sequence[str] = POCUS_CLASSES,
    extra_classes: Mapping[str, str] | None = None,
    include_images: bool = False,
    unknown: str = "error",
) -> list[dict[str, Any]]:
    """List POCUS clips as records ``{"path", "clip", "group", "label", "class_name", "probe", "kind"}``.

    ``probe`` is ``"convex"``, ``"linear"`` or ``"all"``. ``label`` indexes ``classes``; ``group`` is
    :func:`clip_group` of the stem; ``kind`` is ``"video"`` (``pocus_videos/``) or ``"image"``
    (``pocus_images/``, only with ``include_images=True``). ``extra_classes`` maps further prefixes to
    class names (add the class to ``classes`` too; ``viral`` for ``Vir`` is built in). Files of a class not in
    ``classes`` are skipped. A file whose prefix is unknown raises :class:`DatasetError` naming it
    (``unknown="error"``), because a typo such as ``cov_`` would otherwise drop a patient silently; with
    ``unknown="skip"`` such files are skipped with a warning.
    Records are sorted by path, so the order is stable.
    """
    root = Path(root)
    if unknown not in ("error", "skip"):
        raise ValueError(f"unknown must be 'error' or 'skip', got {unknown!r}")
    if probe not in (*PROBES, "all"):
        raise DatasetError(f"probe must be one of {PROBES + ('all',)}, got {probe!r}")
    classes = tuple(classes)
    prefixes = {**PREFIXES, **dict(extra_classes or {})}
    probes = PROBES if probe == "all" else (probe,)
    kinds = [("video", "pocus_videos", VIDEO_EXTENSIONS)]
    if include_images:
        kinds.append(("image", "pocus_images", IMAGE_EXTENSIONS))

    records: list[dict[str, Any]] = []
    unknown_files: list[str] = []
    for kind, sub, extensions in kinds:
        for pr in probes:
            folder = root / sub / pr
            if not folder.is_dir():
                raise DatasetError(
                    f"POCUS folder {folder} not found; point root at the folder holding "
                    f"pocus_videos/ and pocus_images/ (each with convex/ and linear/)"
                )
            for path in sorted(folder.iterdir()):
                if not path.is_file() or path.suffix.lower() not in extensions:
                    continue
                class_name = prefixes.get(clip_prefix(path.stem))
                if class_name is None:
                    unknown_files.append(str(path))
                    continue
                if class_name not in classes:
                    continue
                records.append(
                    {
                        "path": str(path),
                        "clip": path.stem,
                        "group": clip_group(path.stem),
                        "label": classes.index(class_name),
                        "class_name": class_name,
                        "probe": pr,
                        "kind": kind,
                    }
                )
    if unknown_files and unknown == "error":
        raise DatasetError(
            f"{len(unknown_files)} POCUS file(s) under {root} have an unknown class prefix: "
            f"{', '.join(unknown_files)}. Known prefixes: {sorted(prefixes)}. Rename them (e.g. Cov_..., Reg_...), "
            "map the prefix with extra_classes, or pass unknown='skip' to leave them out"
        )
    if unknown_files:
        logger.warning(
            "skipped %d POCUS file(s) with an unknown class prefix (map them with extra_classes): %s",
            len(unknown_files),
            ", ".join(unknown_files),
        )
    if not records:
        raise DatasetError(
            f"no POCUS clip of classes {classes} found under {root} (probe={probe!r}); check root, "
            f"probe, and that file names start with one of {sorted(prefixes)} followed by '_' or '-'"
        )
    return records


def _resize(frames: np.ndarray, size: int | None) -> np.ndarray:
    if size is None:
        return frames
    return np.stack([np.asarray(Image.fromarray(f).resize((size, size), Image.BILINEAR)) for f in frames])


def read_clip_frames(
    path: str | Path,
    every: int = 1,
    max_frames: int | None = None,
    size: int | None = None,
    fps: float | None = None,
) -> np.ndarray:
    """Decode a clip to grey frames, shape ``(T, H, W)`` uint8 (a still image gives ``T == 1``).

    Frames are first thinned to every ``every``-th one, or, when ``fps`` is given, to about ``fps`` frames
    per second of video (every ``round(video rate / fps)``-th frame, so clips recorded at different rates
    give comparable samples, as POCOVID-Net's 3 Hz sampling); if ``max_frames`` is given and more remain,
    ``max_frames`` of them are taken evenly spaced over the whole clip (first and last included), so a
    short budget still covers the clip rather than only its start. ``size`` resizes each frame to
    ``(size, size)`` (bilinear). A missing, corrupt, truncated or frameless file raises
    :class:`DatasetError` naming it.
    """
    path = Path(path)
    if every < 1 or (max_frames is not None and max_frames < 1) or (fps is not None and fps <= 0):
        raise DatasetError(
            f"every and max_frames must be >= 1 and fps > 0, got every={every}, max_frames={max_frames}, fps={fps}"
        )
    if not path.is_file():
        raise DatasetError(f"clip {path} not found; check the path or re-list the clips")
    if path.suffix.lower() in IMAGE_EXTENSIONS:
        try:
            with Image.open(path) as img:
                frames = np.asarray(img.convert("L"))[None]
        except Exception as exc:  # PIL raises many types for bad files
            raise DatasetError(f"cannot read image {path} ({exc}); re-save it as PNG/JPEG or remove it") from exc
        return _resize(frames, size)

    import av  # local import: only video decoding needs PyAV

    frames_list: list[np.ndarray] = []
    try:
        with av.open(str(path)) as container:
            if not container.streams.video:
                raise DatasetError(f"{path} has no video stream; re-encode it (e.g. to H.264 MP4) or remove it")
            stream = container.streams.video[0]
            if fps is not None and stream.average_rate:
                every = max(1, round(float(stream.average_rate) / fps))
            for i, frame in enumerate(container.decode(stream)):
                if i % every == 0:
                    frames_list.append(frame.to_ndarray(format="gray"))
    except DatasetError:
        raise
    except Exception as exc:  # av.error.* and decoder failures
        raise DatasetError(
            f"cannot decode clip {path} ({type(exc).__name__}: {exc}); the file is corrupt or truncated: "
            "re-encode it (e.g. ffmpeg -i in -c:v libx264 out.mp4) or remove it"
        ) from exc
    if not frames_list:
        raise DatasetError(f"clip {path} decoded to zero frames; re-encode it or remove it")
    if max_frames is not None and len(frames_list) > max_frames:
        keep = np.unique(np.linspace(0, len(frames_list) - 1, max_frames).round().astype(int))
        frames_list = [frames_list[j] for j in keep]
    return _resize(np.stack(frames_list).astype(np.uint8), size)
