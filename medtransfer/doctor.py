"""Find, before training, every problem of a dataset that would stop or spoil a run (``medtransfer doctor``).

A run meets data problems one at a time, often inside a DataLoader worker or after an epoch, because the readers
stop at the first bad file. :func:`diagnose` reads the dataset through the same readers, split rule and split seed a
run uses (the formats of :mod:`medtransfer.data.registry` and the segmentation formats) and keeps going, so that one
table lists them all:

- the reader itself fails (its DatasetError message, once, naming the splits it stops);
- a file cannot be opened or decoded (images through the run's own loader, video clips up to their first frame);
- a class is empty in a split (error) or has a single image there (warning); a label is outside the classes;
- masks without their image (error), images without a mask (warning), masks of another size than their image (BUSI);
- the same content in two splits (error: test images seen in training inflate the test numbers) or twice in one
  split (warning).

The reader of a folder layout stops at the first bad file, so the layouts that can hold many (:data:`LAYOUT_CHECKS`:
BUSI, class folders, POCUS clips) are first walked file by file; a reader error about a file or folder that already
has a row is then left out. Segmentation readers compare the headers of every image/label pair (shape and affine) while they read, so such a
mismatch is the reader's row. ``error`` rows stop a run or make its test numbers meaningless; ``warning`` rows do not.
"""

from __future__ import annotations

import json
import os
import re
from collections import Counter, defaultdict
from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Any, TypeVar

import numpy as np

from medtransfer.atomic import write_csv_atomic, write_text_atomic
from medtransfer.data.busi import BUSI_CLASSES, IMAGE_EXTENSIONS, IMAGE_NAME, MASK_NAME

# the BUSI reader's own file-name rules, so that images and masks pair up exactly as read_busi pairs them
from medtransfer.data.content import array_key, dropped_copies, file_key
from medtransfer.data.imagefolder import FOLDER_SUFFIXES, folder_classes
from medtransfer.data.pocus import read_pocus_clips
from medtransfer.data.registry import Records, dataset_class_names, dataset_records, format_names
from medtransfer.data.segmentation import SEGMENTATION_FORMATS, segmentation_datalist
from medtransfer.data.splits import SPLIT_NAMES
from medtransfer.data.transforms import load_image
from medtransfer.errors import DatasetError

ERROR, WARNING = "error", "warning"
WHOLE_DATASET = "all"  # the split column of a problem that is not tied to one split

READER = "reader"
UNREADABLE = "unreadable file"
EMPTY_CLASS = "empty class"
LABEL_OUTSIDE = "label outside classes"
MASK_WITHOUT_IMAGE = "mask without image"
SHAPE_MISMATCH = "label/shape mismatch"
CROSS_SPLIT_DUPLICATE = "duplicate across splits"
SINGLE_IMAGE_CLASS = "single-image class"
IMAGE_WITHOUT_MASK = "image without mask"
DUPLICATE_IN_SPLIT = "duplicate within split"
COPY_LEFT_OUT = "copy of a held-out image"
# every check with its severity, in the order the table lists them: errors stop a run or make its test numbers
# meaningless, warnings do not
CHECKS = {
    READER: ERROR,
    UNREADABLE: ERROR,
    EMPTY_CLASS: ERROR,
    LABEL_OUTSIDE: ERROR,
    MASK_WITHOUT_IMAGE: ERROR,
    SHAPE_MISMATCH: ERROR,
    CROSS_SPLIT_DUPLICATE: ERROR,
    SINGLE_IMAGE_CLASS: WARNING,
    IMAGE_WITHOUT_MASK: WARNING,
    DUPLICATE_IN_SPLIT: WARNING,
    COPY_LEFT_OUT: WARNING,
}
COLUMNS = ("severity", "check", "split", "file or class", "detail", "fix")
DUPLICATES_NAMED = 5  # a duplicate row names at most this many other copies

T = TypeVar("T")


@dataclass(frozen=True)
class Problem:
    """One row of the doctor's table; ``path`` is the file or folder as the readers name it (empty for a class)."""

    severity: str
    check: str
    split: str
    where: str  # the file relative to the dataset folder, a record id, a class or a label
    detail: str
    fix: str
    path: str = ""

    def cells(self) -> list[str]:
        return [self.severity, self.check, self.split, self.where or "-", self.detail, self.fix or "-"]


def _plural(n: int, word: str) -> str:
    return f"{n} {word}{'' if n == 1 else 's'}"


@dataclass
class Diagnosis:
    """What :func:`diagnose` found: the records read per split (splits the reader failed on are absent) and the
    problems, errors first."""

    dataset_dir: str
    dataset_format: str
    split_seed: int
    records: dict[str, int]
    problems: list[Problem]

    @property
    def errors(self) -> int:
        return sum(p.severity == ERROR for p in self.problems)

    @property
    def warnings(self) -> int:
        return sum(p.severity == WARNING for p in self.problems)

    @property
    def exit_status(self) -> int:
        """1 when any problem would stop a run, else 0 (the command's exit status)."""
        return 1 if self.errors else 0

    def summary(self) -> str:
        return f"{_plural(self.errors, 'error')}, {_plural(self.warnings, 'warning')}"

    def report(self) -> str:
        """A line naming the data read, the table (Markdown), then the summary line."""
        from medtransfer.report import markdown_table  # imported here: the report module loads matplotlib

        sizes = ", ".join(f"{split} {n}" for split, n in self.records.items()) or "none"
        head = f"{self.dataset_dir} read as {self.dataset_format}, split seed {self.split_seed}; records: {sizes}"
        table = markdown_table(COLUMNS, [p.cells() for p in self.problems]) if self.problems else "no problems found"
        return f"{head}\n\n{table}\n\n{self.summary()}"

    def to_dict(self) -> dict[str, Any]:
        return {
            "dataset_dir": self.dataset_dir,
            "dataset_format": self.dataset_format,
            "split_seed": self.split_seed,
            "records": self.records,
            "errors": self.errors,
            "warnings": self.warnings,
            "problems": [asdict(p) for p in self.problems],
        }

    def save(self, json_path: str | os.PathLike | None = None, csv_path: str | os.PathLike | None = None) -> None:
        """Write the diagnosis as JSON (everything) and/or CSV (one line per problem), each only when asked for."""
        if json_path:
            write_text_atomic(json_path, json.dumps(self.to_dict(), indent=2) + "\n")
        if csv_path:
            names = [f.name for f in fields(Problem)]
            write_csv_atomic(csv_path, names, [[getattr(p, n) for n in names] for p in self.problems])


def _detail_and_fix(message: str) -> tuple[str, str]:
    """Split a DatasetError message at its last "; ": the readers' messages end with the fix."""
    detail, sep, fix = message.rpartition("; ")
    return (detail, fix) if sep else (message, "")


class _Examination:
    """One diagnosis in progress: the dataset, the rows found so far, and what each file gave when opened (each file
    is decoded and hashed once, however many checks look at it)."""

    def __init__(self, root: Path, progress: bool | None) -> None:
        self.root = root
        self.progress = progress
        self.problems: list[Problem] = []
        self._shapes: dict[str, tuple[int, ...] | None] = {}

    def add(self, check: str, split: str, where: str, detail: str, fix: str, path: str = "") -> None:
        self.problems.append(Problem(CHECKS[check], check, split, where, detail, fix, path))

    def shown(self, path: str | os.PathLike) -> str:
        """``path`` relative to the dataset folder where it lies inside it."""
        path = Path(path)
        for base in (self.root, self.root.absolute()):
            if path.is_relative_to(base) and path != base:
                return path.relative_to(base).as_posix()
        return str(path)

    def bar(self, items: Iterable[T], what: str) -> Iterable[T]:
        """``items`` with a progress bar (on stderr; by default only when it is a terminal)."""
        from tqdm.auto import tqdm

        disable = None if self.progress is None else not self.progress
        return tqdm(items, desc=f"doctor: {what}", unit="file", leave=False, disable=disable)

    def image_shape(self, path: str, split: str) -> tuple[int, ...] | None:
        """The (H, W) a run's loader decodes ``path`` to, or None after one "unreadable file" row."""
        if path not in self._shapes:
            try:
                self._shapes[path] = load_image(path, "grey").shape
            except DatasetError as exc:
                self._shapes[path] = None
                self.add(UNREADABLE, split, self.shown(path), *_detail_and_fix(str(exc)), path=path)
        return self._shapes[path]


# --- layout checks: every file of a format's folders, which its reader meets one at a time -------------------------


def _busi_layout(exam: _Examination) -> None:
    """Masks without their image, images without a mask, unreadable files and masks of another size than their image
    in the BUSI class folders (read_busi stops at the first)."""
    root = exam.root.absolute()  # read_busi names files under the absolute root
    pairs: list[tuple[str, Path, list[Path]]] = []
    for class_name in BUSI_CLASSES:
        folder = root / class_name
        if not folder.is_dir():
            continue  # the reader's row names the missing folder
        images: dict[str, Path] = {}
        masks: dict[str, list[Path]] = defaultdict(list)
        for path in sorted(folder.iterdir()):
            if path.name.startswith(".") or not path.is_file():
                continue
            if match := MASK_NAME.match(path.name):
                masks[match.group("stem")].append(path)
            elif (match := IMAGE_NAME.match(path.name)) and match.group("ext").lower() in IMAGE_EXTENSIONS:
                images.setdefault(match.group("stem"), path)
        if not images:
            exam.add(
                EMPTY_CLASS,
                WHOLE_DATASET,
                class_name,
                f"{class_name}/ holds no images named like '{class_name} (1).png'",
                "add the class's images, or remove the class from the data",
                path=str(folder),
            )
        for stem, orphans in masks.items():
            for mask in orphans if stem not in images else []:
                exam.add(
                    MASK_WITHOUT_IMAGE,
                    WHOLE_DATASET,
                    exam.shown(mask),
                    f"no image {stem}.png beside it",
                    "add the image or remove the mask",
                    path=str(mask),
                )
        pairs += [(stem, image, masks.get(stem, [])) for stem, image in images.items()]
    for stem, image, image_masks in exam.bar(pairs, "BUSI images and masks"):
        shape = exam.image_shape(str(image), WHOLE_DATASET)
        if not image_masks:
            exam.add(
                IMAGE_WITHOUT_MASK,
                WHOLE_DATASET,
                exam.shown(image),
                f"no mask {stem}_mask.png beside it",
                "add its mask: classification runs without it, lesion segmentation cannot",
                path=str(image),
            )
        for mask in image_masks:
            mask_shape = exam.image_shape(str(mask), WHOLE_DATASET)
            if shape and mask_shape and mask_shape != shape:
                exam.add(
                    SHAPE_MISMATCH,
                    WHOLE_DATASET,
                    exam.shown(mask),
                    f"mask is {mask_shape[1]}x{mask_shape[0]} but its image {image.name} is {shape[1]}x{shape[0]}",
                    "re-export the mask at its image's size",
                    path=str(mask),
                )


def _class_folder_layout(exam: _Examination) -> None:
    """Empty class folders and unreadable files in every split folder of a class-folder set (read_image_folder stops
    at the first empty folder and never opens the images)."""
    try:
        classes = folder_classes(exam.root)
    except DatasetError:
        return  # the reader's row says what is missing
    parts = [p for p in SPLIT_NAMES if (exam.root / p).is_dir()] if (exam.root / "train").is_dir() else [""]
    files: list[tuple[str, Path]] = []
    for part in parts:
        split = part or WHOLE_DATASET
        for name in classes:
            folder = exam.root / part / name
            if not folder.is_dir():
                continue  # the reader's row names the missing folder
            found = sorted(p for p in folder.iterdir() if p.suffix.lower() in FOLDER_SUFFIXES)
            if not found:
                exam.add(
                    EMPTY_CLASS,
                    split,
                    name,
                    f"{exam.shown(folder)}/ holds no images ({', '.join(FOLDER_SUFFIXES)})",
                    "add images of the class, or remove the class folder from every split",
                    path=str(folder),
                )
            files += [(split, p) for p in found]
    for split, path in exam.bar(files, "class folders"):
        exam.image_shape(str(path), split)


def _first_frame_problem(path: str) -> str | None:
    """Why PyAV cannot decode the first frame of a clip, or None when it can (cheap: one frame, not the clip)."""
    import av  # local import: only clips need PyAV

    try:
        with av.open(path) as container:
            if not container.streams.video:
                return "it has no video stream"
            next(container.decode(container.streams.video[0]))
    except StopIteration:
        return "it decodes to zero frames"
    except Exception as exc:  # av.error.* and decoder failures
        return f"{type(exc).__name__}: {exc}"
    return None


def _clip_layout(exam: _Examination) -> None:
    """Every clip a run decodes (the reader's default probe and classes), opened up to its first frame."""
    try:
        clips = read_pocus_clips(exam.root)
    except DatasetError:
        return  # a frame layout, or a listing problem: the reader's row says which
    for clip in exam.bar(clips, "clips"):
        problem = _first_frame_problem(clip["path"])
        if problem:
            exam.add(
                UNREADABLE,
                WHOLE_DATASET,
                exam.shown(clip["path"]),
                f"cannot decode the clip: {problem}",
                "re-encode it (e.g. ffmpeg -i in -c:v libx264 out.mp4) or remove it",
                path=clip["path"],
            )


LAYOUT_CHECKS: dict[str, Callable[[_Examination], None]] = {
    "busi": _busi_layout,
    "imagefolder": _class_folder_layout,
    "pocus_videos": _clip_layout,
    "pocus": _clip_layout,
}


# --- the run's own reading: reader failures, files, classes, duplicates --------------------------------------------


def _read_split(root: Path, dataset_format: str, split: str, seed: int) -> Records:
    if dataset_format in SEGMENTATION_FORMATS:
        return segmentation_datalist(root, dataset_format, split, seed=seed)
    return dataset_records(dataset_format, root, split, seed=seed)


def _names(message: str, path: str) -> bool:
    """Whether ``message`` names ``path`` itself (not a longer path that starts with it)."""
    return re.search(re.escape(path) + r"(?![\w/.\-])", message) is not None


def _reader_rows(exam: _Examination, failures: dict[str, list[str]]) -> None:
    """One row per distinct reader error, naming the splits it stops; an error about a file or folder that already
    has an error row says nothing new (the reader met that problem first) and is left out."""
    named = [
        text for p in exam.problems if p.severity == ERROR and p.path for text in {p.path, str(Path(p.path).absolute())}
    ]
    for message, where in failures.items():
        if any(_names(message, text) for text in named):
            continue
        whole = WHOLE_DATASET in where or set(where) == set(SPLIT_NAMES)
        exam.add(READER, WHOLE_DATASET if whole else ", ".join(where), "", *_detail_and_fix(message))


def _record_rows(exam: _Examination, splits: dict[str, Records], segmentation: bool) -> None:
    """Decode every image with the run's loader (segmentation: the reader has read each header pair) and find records
    of the same content: copies in two splits leak test data into training, copies in one split weigh an image twice."""
    holders: dict[str, list[tuple[str, str]]] = defaultdict(list)  # content digest -> (split, where) of each copy
    records = [(split, r) for split, part in splits.items() for r in part]
    for split, record in exam.bar(records, "records"):
        image = record["image"]
        if isinstance(image, (str, os.PathLike)):
            path = str(image)
            if not segmentation and exam.image_shape(path, split) is None:
                continue
            digest, where = file_key(path), exam.shown(path)
        else:
            where = str(record.get("id", "?"))
            try:
                load_image(image, "grey", where)
            except DatasetError as exc:
                exam.add(UNREADABLE, split, where, *_detail_and_fix(str(exc)))
                continue
            digest = array_key(image)
        holders[digest].append((split, where))
    _duplicate_rows(exam, [copies for copies in holders.values() if len(copies) > 1])


def _left_out_rows(exam: _Examination, root: Path) -> None:
    """The copies a run leaves out of training/validation because the dataset's own test (or val) split holds them."""
    for split, names in dropped_copies(root).items():
        for name in names:
            exam.add(
                COPY_LEFT_OUT,
                split,
                exam.shown(name),
                f"the same content as an image of a later split (the dataset's own split); a run leaves it out of {split}",
                "nothing to do: the test split is kept whole (delete the copy to silence this row)",
                path=name,
            )


def _duplicate_rows(exam: _Examination, groups: list[list[tuple[str, str]]]) -> None:
    """One row per group of records with the same content (``(split, where)`` of each copy, in reading order)."""
    for copies in groups:
        (split, first), others = copies[0], copies[1:]
        named = ", ".join(f"{where} ({s})" for s, where in others[:DUPLICATES_NAMED])
        more = f" and {len(others) - DUPLICATES_NAMED} more" if len(others) > DUPLICATES_NAMED else ""
        in_splits = [s for s in SPLIT_NAMES if s in {c for c, _ in copies}]
        if len(in_splits) > 1:
            exam.add(
                CROSS_SPLIT_DUPLICATE,
                ", ".join(in_splits),
                first,
                f"the same content as {named}{more}",
                "keep one copy, in one split: a run would validate or test on images it trained on",
            )
        else:
            exam.add(
                DUPLICATE_IN_SPLIT,
                split,
                first,
                f"the same content as {named}{more}",
                "keep one copy: the copies weigh that image more than the others",
            )


def _is_class_index(label: Any, n_classes: int) -> bool:
    return isinstance(label, (int, np.integer)) and not isinstance(label, bool) and 0 <= label < n_classes


def _class_rows(exam: _Examination, splits: dict[str, Records], classes: list[str]) -> None:
    """Labels outside the classes, and classes a split has no image or one image of."""
    n = len(classes)
    for split, records in splits.items():
        counts = Counter(r["label"] for r in records)
        for label, count in counts.items():
            if not _is_class_index(label, n):
                exam.add(
                    LABEL_OUTSIDE,
                    split,
                    f"label {label!r}",
                    f"{_plural(count, 'record')} labelled {label!r}; the {n} classes are 0..{n - 1} "
                    f"({', '.join(classes)})",
                    "relabel them, or add the missing class",
                )
        for index, name in enumerate(classes):
            count = counts.get(index, 0)
            if count == 0:
                exam.add(
                    EMPTY_CLASS,
                    split,
                    name,
                    f"no {split} image of class {name!r}",
                    "add images of the class, or drop it: a run can neither learn nor score a class it never sees",
                )
            elif count == 1:
                exam.add(
                    SINGLE_IMAGE_CLASS,
                    split,
                    name,
                    f"one {split} image of class {name!r}",
                    "add images of the class: its metrics swing on a single image",
                )


def diagnose(
    dataset_dir: str | os.PathLike, dataset_format: str, split_seed: int = 0, progress: bool | None = None
) -> Diagnosis:
    """Every problem a training run with ``split_seed`` would meet in the data, errors first (see the module).

    ``dataset_format`` is a registered format (:func:`~medtransfer.data.registry.format_names`) or a segmentation
    format (lits, msd, datalist), read with the format's default options as a run reads it; an unknown name is a
    DatasetError. ``progress`` shows progress bars on stderr (None: only when it is a terminal).
    """
    known = [*format_names(), *SEGMENTATION_FORMATS]
    if dataset_format not in known:
        raise DatasetError(f"unknown dataset format {dataset_format!r}; choose one of {', '.join(known)}")
    segmentation = dataset_format in SEGMENTATION_FORMATS
    root = Path(dataset_dir)
    exam = _Examination(root, progress)
    LAYOUT_CHECKS.get(dataset_format, lambda _: None)(exam)

    failures: dict[str, list[str]] = defaultdict(list)  # reader message -> where it stopped (splits, or all)
    classes = None
    if not segmentation:
        try:
            classes = dataset_class_names(dataset_format, root)
        except DatasetError as exc:
            failures[str(exc)].append(WHOLE_DATASET)
    splits: dict[str, Records] = {}
    for split in SPLIT_NAMES:
        try:
            splits[split] = _read_split(root, dataset_format, split, split_seed)
        except DatasetError as exc:
            failures[str(exc)].append(split)
    _reader_rows(exam, failures)
    _left_out_rows(exam, root)
    _record_rows(exam, splits, segmentation)
    if classes is not None:
        _class_rows(exam, splits, classes)

    problems = sorted(exam.problems, key=lambda p: list(CHECKS).index(p.check))  # stable: in found order per check
    sizes = {split: len(records) for split, records in splits.items()}
    return Diagnosis(str(dataset_dir), dataset_format, split_seed, sizes, problems)
