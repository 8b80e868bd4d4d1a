"""POCUS lung-ultrasound clips (convex/linear probe videos and still images) with patient groups.

Layout (the ``data/`` folder of the public POCUS repository, github.com/jannisborn/covid19_ultrasound, as it is)::

    root/dataset_metadata.csv                                    (optional: the dataset's own per-file table)
    root/pocus_videos/{Convex,Linear}/<name>.{mov,mp4,mpeg,avi,gif}
    root/pocus_images/{Convex,Linear}/<name>.{jpg,jpeg,png,bmp}

Folder names are matched without regard to case (``Convex`` or ``convex``). Only files directly in a probe folder are
read (sub-folders such as ``label_uncertain/`` are not).

A file's class is, in this order:

1. its row's ``Label`` in ``root/dataset_metadata.csv`` (row found by ``Filename`` = the file name, any case, with or
   without extension, surrounding and repeated spaces ignored; a name listed for both probes takes the row of its
   probe folder). Labels map as :data:`METADATA_LABELS`: ``COVID-19`` -> covid19, ``Bacterial pneumonia`` ->
   pneumonia, ``regular`` -> regular, ``Viral pneumonia`` -> viral (any case);
2. for a file the table does not list (or with no table), its name prefix before the first ``_`` or ``-``, any case
   (:data:`PREFIXES`: ``Cov``, ``Pneu``, ``Reg``, ``Vir``).

The table wins because it is the dataset's own labelling and names many files no prefix rule reads. ``viral`` is a
known class that is left out unless asked for; a file neither rule labels is an error naming it (or, with
``unknown_files="skip"``, left out with one warning).
"""

from __future__ import annotations

import csv
import logging
import re
from collections import defaultdict
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from medtransfer.data.imagefolder import natural_key
from medtransfer.errors import DatasetError

logger = logging.getLogger(__name__)

POCUS_CLASSES = ("covid19", "pneumonia", "regular")
PREFIXES = {"Cov": "covid19", "Pneu": "pneumonia", "Reg": "regular", "Vir": "viral"}
METADATA_FILE = "dataset_metadata.csv"
METADATA_LABELS = {
    "COVID-19": "covid19",
    "Bacterial pneumonia": "pneumonia",
    "regular": "regular",
    "Viral pneumonia": "viral",
}
"""``Label`` values of the dataset's metadata table -> class names (matched without regard to case or spacing)."""
METADATA_COLUMNS = {"name": "Filename", "label": "Label", "probe": "Probe", "patient": "Patient ID / Name"}
"""The table's columns read (header matched without regard to case); ``Probe`` and the patient id may be absent."""
PROBES = ("convex", "linear")
UNKNOWN_FILES_POLICIES = ("error", "skip")
VIDEO_EXTENSIONS = (".mov", ".mp4", ".mpeg", ".mpg", ".avi", ".gif")
IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp")

_PREFIX_RE = re.compile(r"^([^_-]+)")
_GROUP_RULES = (
    re.compile(r"^(?P<g>.+?)_?Image_\d+$"),  # Reg_pat1Image_132943 -> Reg_pat1
    re.compile(r"^(?P<g>.+)_(?:v|mov)\d+$"),  # ..._sonographic_v3 / ..._alines_mov1
    re.compile(r"^(?P<g>.*\D)\d+$"),  # Pneu_prospective_file3 -> Pneu_prospective_file
)
_LISTED_NAMES = 10  # unknown files named in an error; a warning names fewer
_WARNED_NAMES = 5
_warned: set[str] = set()  # a bundle lists the folder for its classes and each split: say it once per process


def _warn_once(message: str) -> None:
    if message not in _warned:
        _warned.add(message)
        logger.warning(message)


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
    then trailing ``_``, ``-`` and spaces are dropped (``Cov-Butterfly-COVID Lung 2`` -> ``Cov-Butterfly-COVID Lung``,
    as the table's file names have spaces). When no rule applies, or what is left is only the class
    prefix (``Reg_Image_182340`` would leave ``Reg``), the group is the clip stem itself.
    """
    for rule in _GROUP_RULES:
        match = rule.match(stem)
        if match:
            group = match.group("g").rstrip("_- ")
            if group and group != clip_prefix(stem):
                return group
            return stem
    return stem


def _fold_text(text: str) -> str:
    """Text as compared: lower case, surrounding spaces dropped, inner runs of spaces made one."""
    return " ".join(text.split()).lower()


def metadata_key(name: str) -> str:
    """The key a file and its metadata row share: ``" Cov_a Lung 2.MP4 "`` and ``"cov_a lung 2"`` give the same."""
    key = _fold_text(name)
    for extension in VIDEO_EXTENSIONS + IMAGE_EXTENSIONS:
        if key.endswith(extension):
            return key[: -len(extension)].rstrip()
    return key


@dataclass(frozen=True)
class MetadataRow:
    """One row of the metadata table, as far as the reader uses it."""

    label: str  # as written in the table
    probe: str  # lower case; "" when the table has no Probe column
    patient: str  # "" when not given


def read_pocus_metadata(root: str | Path) -> dict[str, list[MetadataRow]]:
    """Rows of ``root/dataset_metadata.csv`` by :func:`metadata_key` of their ``Filename``; ``{}`` without the file.

    A name may have several rows (the public table lists a few files twice, once per probe). A table without a
    ``Filename`` or ``Label`` column is a :class:`DatasetError` naming it.
    """
    path = Path(root) / METADATA_FILE
    if not path.is_file():
        return {}
    try:
        with path.open(newline="", encoding="utf-8-sig") as handle:
            reader = csv.DictReader(handle)
            columns = {_fold_text(c): c for c in reader.fieldnames or [] if c}
            found = {role: columns.get(_fold_text(header)) for role, header in METADATA_COLUMNS.items()}
            if found["name"] is None or found["label"] is None:
                raise DatasetError(
                    f"{path} has no {METADATA_COLUMNS['name']!r} and {METADATA_COLUMNS['label']!r} columns (its "
                    f"header: {', '.join(reader.fieldnames or [])}); restore the dataset's own table or remove it to "
                    "take classes from the file-name prefixes"
                )
            table: dict[str, list[MetadataRow]] = defaultdict(list)
            for row in reader:
                name = row.get(found["name"]) or ""
                if not name.strip():
                    continue
                table[metadata_key(name)].append(
                    MetadataRow(
                        label=(row.get(found["label"]) or "").strip(),
                        probe=_fold_text(row.get(found["probe"]) or "") if found["probe"] else "",
                        patient=(row.get(found["patient"]) or "").strip() if found["patient"] else "",
                    )
                )
    except (OSError, UnicodeDecodeError, csv.Error) as exc:
        raise DatasetError(f"cannot read {path} ({exc}); restore the dataset's own table or remove it") from exc
    return dict(table)


def _class_lookup(extra_classes: Mapping[str, str] | None) -> dict[str, str]:
    """Prefixes and metadata labels (folded) -> class names; ``extra_classes`` adds to or overrides them."""
    known = {**PREFIXES, **METADATA_LABELS, **dict(extra_classes or {})}
    return {_fold_text(key): class_name for key, class_name in known.items()}


def _file_class(
    stem: str, probe: str, metadata: Mapping[str, list[MetadataRow]], lookup: Mapping[str, str]
) -> tuple[str | None, list[str], str]:
    """``(class name or None, patient ids, why it has no class)`` of one file: its metadata row first, else its
    prefix."""
    rows = metadata.get(metadata_key(stem), [])
    rows = [r for r in rows if r.probe == probe] or rows  # a name listed once per probe: its own probe's row
    if rows:
        class_names = {lookup.get(_fold_text(r.label)) for r in rows}
        if len(class_names) == 1 and None not in class_names:
            return class_names.pop(), sorted({r.patient for r in rows if r.patient}), ""
        labels = sorted({r.label for r in rows})
        if len(labels) == 1:
            return None, [], f"{METADATA_FILE} label {labels[0]!r} is not a known class"
        return None, [], f"its {METADATA_FILE} rows disagree: labels {', '.join(map(repr, labels))}"
    prefix = clip_prefix(stem)
    if _fold_text(prefix) in lookup:
        return lookup[_fold_text(prefix)], [], ""
    reason = f"not in {METADATA_FILE}, and " if metadata else ""
    return None, [], f"{reason}prefix {prefix!r} is not a known one"


def _join_groups(clips: Sequence[str], patients: Sequence[Sequence[str]]) -> list[str]:
    """The group of each clip: clips sharing a :func:`clip_group` or a metadata patient id, directly or through
    others, form one group, so no patient and no video series is ever split over train and test.

    A group holding patient ids is named ``patient:<ids joined by +>``; one without is its clip group, as with no
    metadata at all.
    """
    parent: dict[tuple[str, str], tuple[str, str]] = {}

    def root_of(key: tuple[str, str]) -> tuple[str, str]:
        parent.setdefault(key, key)
        while parent[key] != key:
            parent[key] = parent[parent[key]]
            key = parent[key]
        return key

    keys = [
        [("clip", clip_group(clip))] + [("patient", p) for p in ids] for clip, ids in zip(clips, patients, strict=True)
    ]
    for clip_keys in keys:
        for other in clip_keys[1:]:
            parent[root_of(other)] = root_of(clip_keys[0])
    patient_ids: dict[tuple[str, str], set[str]] = defaultdict(set)
    for clip_keys in keys:
        patient_ids[root_of(clip_keys[0])].update(p for kind, p in clip_keys if kind == "patient")
    names = []
    for clip_keys in keys:
        ids = patient_ids[root_of(clip_keys[0])]
        names.append("patient:" + "+".join(sorted(ids, key=natural_key)) if ids else clip_keys[0][1])
    return names


def _probe_folders(parent: Path, probe: str) -> list[Path]:
    """The sub-folders of ``parent`` named ``probe`` in any case (``Convex``, ``convex``), sorted."""
    if not parent.is_dir():
        return []
    return sorted(p for p in parent.iterdir() if p.is_dir() and p.name.lower() == probe)


def _unknown_files_error(
    root: Path, unlabelled: Sequence[tuple[Path, str]], extra_classes: Mapping[str, str] | None
) -> DatasetError:
    """The error naming the files with no known class (the first few), what is known, and the ways out."""
    listed = "; ".join(f"{path} ({why})" for path, why in unlabelled[:_LISTED_NAMES])
    more = f"; and {len(unlabelled) - _LISTED_NAMES} more" if len(unlabelled) > _LISTED_NAMES else ""
    extra = f"; extra_classes: {', '.join(extra_classes)}" if extra_classes else ""
    return DatasetError(
        f"{len(unlabelled)} POCUS file(s) under {root} have no known class: {listed}{more}. A file's class is its "
        f"row's Label in {root / METADATA_FILE}, else its name prefix (known, any case: labels "
        f"{', '.join(METADATA_LABELS)}; prefixes {', '.join(PREFIXES)}{extra}). Add the file to the table, rename "
        "it, map its prefix or label with extra_classes (bundle: --extra_classes \"{'Prefix': 'viral'}\"), or leave "
        "such files out with unknown_files='skip' (bundle: --unknown_files skip)"
    )


def read_pocus_clips(
    root: str | Path,
    probe: str = "convex",
    classes: Sequence[str] = POCUS_CLASSES,
    extra_classes: Mapping[str, str] | None = None,
    include_images: bool = False,
    unknown_files: str = "error",
) -> list[dict[str, Any]]:
    """List POCUS clips as records ``{"path", "clip", "group", "label", "class_name", "probe", "kind"}``.

    ``probe`` is ``"convex"``, ``"linear"`` or ``"all"``. ``label`` indexes ``classes``; the class is taken from
    the metadata table, else the prefix (module docstring). ``group`` joins clips of one patient (the table's
    ``Patient ID / Name``) or one series (:func:`clip_group`), see :func:`_join_groups`. ``kind`` is ``"video"``
    (``pocus_videos/``) or ``"image"`` (``pocus_images/``, only with ``include_images=True``). ``extra_classes``
    maps further prefixes or metadata labels (any case) to class names (add the class to ``classes`` too; ``viral``
    is built in). Files of a class not in ``classes`` are skipped. A file with no known class raises
    :class:`DatasetError` naming it (``unknown_files="error"``), because a typo such as ``Cvo_`` would otherwise drop
    a patient silently; with ``unknown_files="skip"`` such files are left out with one warning.
    Records are in folder order, each folder sorted by name, so the order is stable.
    """
    root = Path(root)
    if unknown_files not in UNKNOWN_FILES_POLICIES:
        raise DatasetError(f"unknown_files must be one of {', '.join(UNKNOWN_FILES_POLICIES)}, got {unknown_files!r}")
    probe = str(probe).lower()
    if probe not in (*PROBES, "all"):
        raise DatasetError(f"probe must be one of {', '.join(PROBES)}, all; got {probe!r}")
    classes = tuple(classes)
    lookup = _class_lookup(extra_classes)
    metadata = read_pocus_metadata(root)
    probes = PROBES if probe == "all" else (probe,)
    kinds = [("video", "pocus_videos", VIDEO_EXTENSIONS)]
    if include_images:
        kinds.append(("image", "pocus_images", IMAGE_EXTENSIONS))

    records: list[dict[str, Any]] = []
    patients: list[list[str]] = []
    unlabelled: list[tuple[Path, str]] = []  # (file, why it has no class)
    for kind, sub, extensions in kinds:
        for pr in probes:
            folders = [f for parent in _probe_folders(root, sub) for f in _probe_folders(parent, pr)]
            if not folders:
                raise DatasetError(
                    f"POCUS folder {root / sub / pr} not found (in any case); point root at the folder holding "
                    f"pocus_videos/ and pocus_images/ (each with convex/ and linear/), the repository's data/"
                )
            for path in (p for folder in folders for p in sorted(folder.iterdir())):
                if not path.is_file() or path.suffix.lower() not in extensions:
                    continue
                class_name, patient_ids, why = _file_class(path.stem, pr, metadata, lookup)
                if class_name is None:
                    unlabelled.append((path, why))
                    continue
                if class_name not in classes:
                    continue
                records.append(
                    {
                        "path": str(path),
                        "clip": path.stem,
                        "label": classes.index(class_name),
                        "class_name": class_name,
                        "probe": pr,
                        "kind": kind,
                    }
                )
                patients.append(patient_ids)
    if unlabelled and unknown_files == "error":
        raise _unknown_files_error(root, unlabelled, extra_classes)
    if unlabelled:
        examples = "; ".join(f"{path.name} ({why})" for path, why in unlabelled[:_WARNED_NAMES])
        _warn_once(
            f"left out {len(unlabelled)} POCUS file(s) under {root} with no known class (unknown_files='skip'), "
            f"e.g. {examples}"
        )
    if not records:
        raise DatasetError(
            f"no POCUS clip of classes {classes} found under {root} (probe={probe!r}); check root, probe, and "
            f"that {METADATA_FILE} labels the files or their names start with one of {sorted(PREFIXES)} "
            "followed by '_' or '-'"
        )
    for record, group in zip(records, _join_groups([r["clip"] for r in records], patients), strict=True):
        record["group"] = group
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
