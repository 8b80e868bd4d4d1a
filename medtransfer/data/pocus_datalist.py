"""POCUS frame datalists for a fold: clips (or pre-extracted frames) -> train / val / test frame records.

Two on-disk formats of :mod:`medtransfer.data.registry` (:data:`FORMATS`), read by :func:`pocus_datalist`:

- ``pocus_videos``: the public POCUS layout (the repository's ``data/`` folder as it is: ``pocus_videos/{Convex,
  Linear}/*.mp4``, classes from its ``dataset_metadata.csv`` or the file-name prefix, read by
  :func:`medtransfer.data.pocus.read_pocus_clips`). Clips are assigned to ``num_folds`` class-balanced folds
  by patient/series group (:func:`medtransfer.data.folds.train_val_test_folds`), then decoded to frames, so
  no clip, and no patient, is ever in two folds.
- ``pocus_frames``: frames already extracted, ``root/<part>/<class>/<clip>_<frame>.png``. ``<part>`` is either
  ``train``/``val``/``test`` (a fixed split) or one folder per fold (e.g. the five folds of the POCOVID-Net /
  USCL frame set; any names, taken in natural order). The test fold is the folder ``fold``; validation is
  carved from the other folds by clip group.

Every record is ``{"image": path or uint8 HxW array, "label": int, "id": "<clip>_<frame>", "clip", "group"}``;
``clip`` lets evaluation aggregate frame predictions per clip.
"""

from __future__ import annotations

import functools
import re
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from medtransfer.data.folds import grouped_stratified_kfold, grouped_validation_split, train_val_test_folds
from medtransfer.data.imagefolder import IMAGE_SUFFIXES, natural_key, save_grey_image
from medtransfer.data.pocus import (
    IMAGE_EXTENSIONS,
    POCUS_CLASSES,
    VIDEO_EXTENSIONS,
    clip_group,
    read_clip_frames,
    read_pocus_clips,
)
from medtransfer.data.registry import DatasetFormat, Records, dataset_class_names, dataset_records
from medtransfer.data.splits import SPLIT_NAMES
from medtransfer.errors import DatasetError

_FRAME_RE = re.compile(r"^(?P<clip>.+?)[_-](?:frame)?(?P<frame>\d+)$")


def _class_order(names: set[str]) -> list[str]:
    """Known POCUS classes first in their canonical order, then any others alphabetically."""
    known = [c for c in POCUS_CLASSES if c in names]
    return known + sorted(names - set(known))


def frame_clip(stem: str) -> str:
    """The clip a frame file belongs to: ``Cov_pat1_v2_017`` -> ``Cov_pat1_v2``; a stem without a frame number is
    its own clip (a still image)."""
    match = _FRAME_RE.match(stem)
    return match.group("clip") if match else stem


@functools.lru_cache(maxsize=8192)
def _decoded(path: str, mtime_ns: int, fps: float | None, max_frames: int | None, size: int) -> np.ndarray:
    frames = read_clip_frames(path, max_frames=max_frames, size=size, fps=fps)
    frames.setflags(write=False)  # shared between calls: nobody may change it in place
    return frames


def _clip_frames(path: str | Path, fps: float | None, max_frames: int | None, size: int | None) -> np.ndarray:
    """Decoded, resized frames of a clip, cached per process when resized (small) so that the train, val and test
    lists of every fold of a cross-validation decode each clip once."""
    if size is None or not Path(path).is_file():  # full-size frames are too big to keep; a missing file: its error
        return read_clip_frames(path, max_frames=max_frames, size=size, fps=fps)
    return _decoded(str(path), Path(path).stat().st_mtime_ns, fps, max_frames, size)


def _frame_parts(root: Path) -> list[Path]:
    if not root.is_dir():
        raise DatasetError(
            f"POCUS frame folder {root} does not exist; expected <part>/<class>/<clip>_<frame>.png with <part> "
            "train/val/test or one folder per fold"
        )
    parts = sorted(
        (p for p in root.iterdir() if p.is_dir() and not p.name.startswith(".")), key=lambda p: natural_key(p.name)
    )
    if not parts:
        raise DatasetError(f"{root} holds no split or fold folders; expected <part>/<class>/<clip>_<frame>.png")
    return parts


def read_frame_folders(root: str | Path) -> list[dict[str, Any]]:
    """Every frame of a pre-extracted layout as ``{"image", "clip", "group", "class_name", "part"}``, sorted.

    An empty class folder is an error (it usually means a failed extraction), naming the folder.
    """
    records: list[dict[str, Any]] = []
    for part in _frame_parts(Path(root)):
        class_dirs = sorted(p for p in part.iterdir() if p.is_dir() and not p.name.startswith("."))
        if not class_dirs:
            raise DatasetError(f"{part} holds no class folders; expected {part}/<class>/<clip>_<frame>.png")
        for class_dir in class_dirs:
            files = sorted(p for p in class_dir.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)
            if not files:
                raise DatasetError(
                    f"class folder {class_dir} holds no frames ({', '.join(IMAGE_SUFFIXES)}); re-extract or remove it"
                )
            for path in files:
                clip = frame_clip(path.stem)
                records.append(
                    {
                        "image": str(path),
                        "clip": clip,
                        "group": clip_group(clip),
                        "class_name": class_dir.name,
                        "part": part.name,
                    }
                )
    return records


def pocus_class_names(
    dataset_dir: str | Path, dataset_format: str = "pocus_videos", probe: str = "convex", **clip_options: Any
) -> list[str]:
    """Classes present in the data, canonical order (covid19, pneumonia, regular, then others).

    The head and the report follow the data rather than assuming three classes (a subset may lack pneumonia
    clips); pass ``classes`` explicitly to fix them. ``clip_options`` are those of :func:`pocus_datalist`
    (``include_images``, ``unknown_files``, ``extra_classes``), so the classes are counted over the clips trained on.
    """
    return dataset_class_names(dataset_format, dataset_dir, probe=probe, **clip_options)


def _present_classes(records: Sequence[dict[str, Any]], dataset_dir: str | Path) -> list[str]:
    names = {r["class_name"] for r in records}
    if len(names) < 2:
        raise DatasetError(f"{dataset_dir} holds only the class(es) {sorted(names)}; classification needs two or more")
    return _class_order(names)


def _read_clips(
    root: str | Path, classes: Sequence[str] | None, **clip_options: Any
) -> tuple[list[dict[str, Any]], list[str]]:
    """The clips of ``classes`` (default: every known class present) labelled in that order, with the classes;
    the folder is listed once. ``clip_options`` go to :func:`~medtransfer.data.pocus.read_pocus_clips`."""
    if classes is not None:
        return read_pocus_clips(root, classes=classes, **clip_options), list(classes)
    clips = read_pocus_clips(root, **clip_options)
    present = _present_classes(clips, root)
    return [c | {"label": present.index(c["class_name"])} for c in clips], present


def _frames_from_folders(
    all_records: list[dict[str, Any]],
    root: Path,
    split: str,
    fold: int,
    num_folds: int,
    seed: int,
    classes: Sequence[str],
    val_fraction: float,
) -> list[dict[str, Any]]:
    parts = list(dict.fromkeys(r["part"] for r in all_records))  # every part holds frames, in folder order
    records = [r | {"label": list(classes).index(r["class_name"])} for r in all_records if r["class_name"] in classes]
    if set(parts) <= set(SPLIT_NAMES):
        if "train" not in parts or "test" not in parts:
            raise DatasetError(f"{root} has split folders {parts}; a fixed split needs at least train/ and test/")
        if split == "test" or "val" in parts:
            return [r for r in records if r["part"] == split]
        pool = [i for i, r in enumerate(records) if r["part"] == "train"]
    else:
        if len(parts) != num_folds:
            raise DatasetError(
                f"{root} has {len(parts)} fold folders {parts} but num_folds={num_folds}; set --num_folds {len(parts)}"
            )
        if not 0 <= fold < num_folds:
            raise DatasetError(f"fold must be in [0, {num_folds}), got {fold}")
        if split == "test":
            return [r for r in records if r["part"] == parts[fold]]
        pool = [i for i, r in enumerate(records) if r["part"] != parts[fold]]
    labels = [r["label"] for r in records]
    groups = [r["group"] for r in records]
    train, val = grouped_validation_split(labels, groups, pool, val_fraction=val_fraction, seed=seed + 1)
    return [records[i] for i in (train if split == "train" else val)]


def _frame_records(
    root: Path, split: str, seed: int, fold: int, num_folds: int, classes: Sequence[str] | None, val_fraction: float
) -> Records:
    frames = read_frame_folders(root)
    classes = list(classes) if classes is not None else _present_classes(frames, root)
    records = _frames_from_folders(frames, root, split, fold, num_folds, seed, classes, val_fraction)
    return [{k: r[k] for k in ("image", "label", "clip", "group")} | {"id": Path(r["image"]).stem} for r in records]


def _video_records(
    root: Path,
    split: str,
    seed: int,
    fold: int,
    num_folds: int,
    classes: Sequence[str] | None,
    val_fraction: float,
    fps: float | None,
    max_frames: int | None,
    image_size: int | None,
    **clip_options: Any,
) -> Records:
    clips, classes = _read_clips(root, classes, **clip_options)
    parts = train_val_test_folds(
        [c["label"] for c in clips], [c["group"] for c in clips], k=num_folds, test_fold=fold, seed=seed,
        val_fraction=val_fraction,
    )  # fmt: skip
    out: Records = []
    for i in parts[split]:
        clip = clips[i]
        for t, frame in enumerate(_clip_frames(clip["path"], fps, max_frames, image_size)):
            out.append(
                {"image": frame, "label": clip["label"], "id": f"{clip['clip']}_{t:03d}", "clip": clip["clip"],
                 "group": clip["group"]}
            )  # fmt: skip
    return out


def _split_reader(extracted: bool) -> Callable[..., Records]:
    """The records function of ``pocus_frames`` (``extracted``) or ``pocus_videos``, with one set of options so that
    the same bundle settings serve both; frames are read as extracted, so the clip listing and decoding options
    (``probe``, ``include_images``, ``unknown_files``, ``extra_classes``, ``fps``, ``max_frames``, ``image_size``)
    do not apply to them."""

    def records(
        root: Path,
        split: str,
        seed: int,
        *,
        fold: int = 0,
        num_folds: int = 5,
        classes: Sequence[str] | None = None,
        val_fraction: float = 0.15,
        probe: str = "convex",
        include_images: bool = False,
        unknown_files: str = "error",
        extra_classes: Mapping[str, str] | None = None,
        fps: float | None = 3.0,
        max_frames: int | None = 30,
        image_size: int | None = 64,
    ) -> Records:
        if extracted:
            return _frame_records(root, split, seed, fold, num_folds, classes, val_fraction)
        return _video_records(
            root, split, seed, fold, num_folds, classes, val_fraction, fps, max_frames, image_size,
            probe=probe, include_images=include_images, unknown_files=unknown_files, extra_classes=extra_classes,
        )  # fmt: skip

    return records


def _class_reader(extracted: bool) -> Callable[..., list[str]]:
    """The class-names function of ``pocus_frames`` (``extracted``: the class folders) or ``pocus_videos`` (the
    classes of the clips listed with the same options as :func:`_split_reader`'s)."""

    def classes(
        root: Path,
        *,
        probe: str = "convex",
        include_images: bool = False,
        unknown_files: str = "error",
        extra_classes: Mapping[str, str] | None = None,
    ) -> list[str]:
        if extracted:
            return _present_classes(read_frame_folders(root), root)
        return _read_clips(
            root, None, probe=probe, include_images=include_images, unknown_files=unknown_files,
            extra_classes=extra_classes,
        )[1]  # fmt: skip

    return classes


def pocus_datalist(
    dataset_dir: str | Path, dataset_format: str = "pocus_videos", split: str = "train", seed: int = 0, **options: Any
) -> Records:
    """Frame records of ``split`` ("train", "val" or "test") for test fold ``fold`` of ``num_folds``.

    Options (keywords): ``fold`` (0), ``num_folds`` (5), ``classes`` (default: those present), ``val_fraction``
    (0.15) and, for ``pocus_videos``, ``probe`` ("convex", "linear" or "all"), ``include_images`` (False: also the
    still images of ``pocus_images/``), ``unknown_files`` ("error" or "skip": files with no known class),
    ``extra_classes`` (further prefixes or metadata labels -> class names; see
    :func:`~medtransfer.data.pocus.read_pocus_clips`), ``fps`` (3.0), ``max_frames`` (30), ``image_size`` (64).
    Videos are sampled at ``fps`` frames per second (3, as POCOVID-Net), at most ``max_frames`` per clip spread over
    the whole clip, and resized to ``image_size`` squared while decoding so that caching all frames stays small.
    The same ``seed`` and ``fold`` in training and evaluation give the same test clips, which training never sees.
    """
    return dataset_records(dataset_format, dataset_dir, split, seed=seed, **options)


def pocus_clip_datalist(
    input_dir: str | Path, fps: float | None = 3.0, max_frames: int | None = 30, image_size: int | None = 64
) -> list[dict[str, Any]]:
    """Unlabelled frame records of every clip or still image under ``input_dir`` (or one file), for inference.

    Frames are sampled as in training; ``clip`` (the path relative to ``input_dir``) lets the report average them
    into one prediction per clip.
    """
    root = Path(input_dir)
    suffixes = VIDEO_EXTENSIONS + IMAGE_EXTENSIONS
    if root.is_file():
        files, base = [root], root.parent
    elif root.is_dir():
        files, base = sorted(p for p in root.rglob("*") if p.is_file() and p.suffix.lower() in suffixes), root
    else:
        raise DatasetError(f"input {root} does not exist; pass --input_dir with the clips to classify")
    if not files:
        raise DatasetError(f"no clips or images ({', '.join(suffixes)}) found under {root}")
    out: list[dict[str, Any]] = []
    for path in files:
        clip = str(path.relative_to(base))
        for t, frame in enumerate(read_clip_frames(path, max_frames=max_frames, size=image_size, fps=fps)):
            out.append({"image": frame, "id": f"{clip}#{t:03d}", "clip": clip})
    return out


def extract_pocus_frames(
    dataset_dir: str | Path,
    out_dir: str | Path,
    num_folds: int = 5,
    seed: int = 0,
    probe: str = "convex",
    classes: Sequence[str] | None = None,
    fps: float | None = 3.0,
    max_frames: int | None = 30,
    image_size: int | None = None,
    **clip_options: Any,
) -> Path:
    """Write the clips of a POCUS video layout as ``out/fold<i>/<class>/<clip>_<frame>.png`` (patient-grouped folds).

    Decoding once and training from PNGs is faster for long studies and gives a frame set others can reuse; the
    result is read back with ``dataset_format="pocus_frames"``. ``out_dir`` must not exist yet (nothing is
    overwritten). ``clip_options`` (``include_images``, ``unknown_files``, ``extra_classes``) select the clips as in
    :func:`pocus_datalist`.
    """
    out = Path(out_dir)
    if out.exists():
        raise DatasetError(f"{out} already exists; choose a new folder for the extracted frames or delete it")
    clips, _ = _read_clips(dataset_dir, classes, probe=probe, **clip_options)
    folds = grouped_stratified_kfold([c["label"] for c in clips], [c["group"] for c in clips], k=num_folds, seed=seed)
    for f, members in enumerate(folds):
        for i in members:
            clip = clips[i]
            folder = out / f"fold{f}" / clip["class_name"]
            folder.mkdir(parents=True, exist_ok=True)
            frames = read_clip_frames(clip["path"], max_frames=max_frames, size=image_size, fps=fps)
            for t, frame in enumerate(frames):
                save_grey_image(frame, folder / f"{clip['clip']}_{t:03d}.png")
    return out


FORMATS = (
    DatasetFormat(
        "pocus_videos",
        "{root}/pocus_videos/{{convex,linear}}/*.mp4 (any case: Convex/) and {root}/pocus_images/{{convex,linear}}/; "
        "class from {root}/dataset_metadata.csv (Filename, Label), else the prefix <Cov|Pneu|Reg|Vir>_ (any case)",
        "https://github.com/jannisborn/covid19_ultrasound (data/pocus_videos, data/pocus_images)",
        "num_folds (5) class-balanced folds by patient group, fold (0) as test, val by patient group from the others",
        _split_reader(extracted=False),
        _class_reader(extracted=False),
    ),
    DatasetFormat(
        "pocus_frames",
        "{root}/<part>/<class>/<clip>_<frame>.png, <part> train/val/test or one folder per fold",
        "medtransfer pocus-frames (the patient-grouped folds of a pocus_videos layout, as PNG frames)",
        "train/val/test folders as given (val by clip group from train/ when absent), or one folder per fold: "
        "fold (0) as test, val by clip group from the others",
        _split_reader(extracted=True),
        _class_reader(extracted=True),
    ),
)
