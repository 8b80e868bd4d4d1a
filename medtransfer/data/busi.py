"""Read the BUSI breast-ultrasound layout: ``CLASS/NAME (i).png`` with masks ``NAME (i)_mask[_k].png``.

Problems are reported up front, naming the file, because a bad image otherwise surfaces as an opaque
error deep inside a DataLoader worker halfway through an epoch.
"""

from __future__ import annotations

import os
import re
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from PIL import Image

from medtransfer.data.imagefolder import IMAGE_SUFFIXES as IMAGE_EXTENSIONS
from medtransfer.data.registry import DatasetFormat
from medtransfer.data.splits import split_records
from medtransfer.errors import DatasetError

BUSI_CLASSES = ("benign", "malignant", "normal")
BUSI_FRACTIONS = (0.7, 0.15, 0.15)  # train/val/test: BUSI ships without a split

# "benign (4).png" -> stem "benign (4)", index 4. Checked after the mask pattern, so masks never match.
IMAGE_NAME = re.compile(r"^(?P<stem>.+ \((?P<index>\d+)\))(?P<ext>\.[A-Za-z]+)$")
# "benign (4)_mask.png" -> stem "benign (4)", k None; "benign (4)_mask_1.png" -> k 1.
MASK_NAME = re.compile(r"^(?P<stem>.+)_mask(?:_(?P<k>\d+))?\.png$", re.IGNORECASE)


def _image_size(path: Path, what: str) -> tuple[int, int]:
    """Open and verify ``path`` with PIL, returning (width, height); DatasetError names the file if it fails."""
    try:
        with Image.open(path) as im:
            size = im.size
            im.verify()  # checks chunk CRCs / structure without decoding all pixels: cheap but catches corruption
    except Exception as exc:  # PIL raises many types (UnidentifiedImageError, OSError, SyntaxError, ...)
        raise DatasetError(f"cannot read {what} {path}: {exc}; re-export it as PNG or remove it") from exc
    return size


def _scan_class(folder: Path) -> tuple[dict[str, tuple[int, Path]], dict[str, list[Path]]]:
    """Return {stem: (index, image path)} and {stem: [mask paths in _mask, _mask_1, ... order]} for one folder."""
    images: dict[str, tuple[int, Path]] = {}
    masks: dict[str, list[tuple[int, Path]]] = {}
    for entry in os.scandir(folder):
        name = entry.name
        if name.startswith(".") or not entry.is_file():
            continue
        m = MASK_NAME.match(name)
        if m:
            k = -1 if m.group("k") is None else int(m.group("k"))
            masks.setdefault(m.group("stem"), []).append((k, Path(entry.path)))
            continue
        m = IMAGE_NAME.match(name)
        if m and m.group("ext").lower() in IMAGE_EXTENSIONS:
            stem = m.group("stem")
            if stem in images:
                raise DatasetError(
                    f"{folder} holds two images for {stem!r}: {images[stem][1].name} and {name}; keep only one"
                )
            images[stem] = (int(m.group("index")), Path(entry.path))
    for stem, found in masks.items():
        if stem not in images:
            raise DatasetError(
                f"orphan mask {found[0][1]}: no image {stem}.png in {folder}; add the image or remove the mask"
            )
    ordered = {stem: [p for _, p in sorted(found)] for stem, found in masks.items()}
    return images, ordered


def read_busi(
    root: str | os.PathLike[str],
    classes: Sequence[str] = BUSI_CLASSES,
    require_masks: bool = False,
    check_images: bool = True,
) -> list[dict[str, Any]]:
    """List a BUSI-layout folder as records ``{"image", "label", "class_name", "masks", "id"}``.

    Records are sorted by class (in ``classes`` order) then by the numeric index ``i`` so that
    ``benign (10)`` follows ``benign (9)`` and splits are reproducible. ``label`` indexes ``classes``.
    With ``check_images`` every image and mask is opened and verified and each mask's size compared
    with its image's (a mismatched mask is a label error, not a resize job); turn it off only for
    a folder already checked, since it costs one header read per file.
    """
    root_path = Path(root)
    if not root_path.exists():
        raise DatasetError(f"BUSI folder {root_path} not found; pass the folder that holds {', '.join(classes)}/")
    if not root_path.is_dir():
        raise DatasetError(
            f"BUSI root {root_path} is a file, not a folder; pass the folder that holds the class folders"
        )
    classes = tuple(classes)
    if not classes or len(set(classes)) != len(classes):
        raise DatasetError(f"classes must be non-empty and distinct, got {classes!r}")
    root_path = root_path.absolute()

    records: list[dict[str, Any]] = []
    for label, class_name in enumerate(classes):
        folder = root_path / class_name
        if not folder.is_dir():
            found = sorted(p.name for p in root_path.iterdir() if p.is_dir() and not p.name.startswith("."))
            raise DatasetError(
                f"class folder {folder} not found (folders in {root_path}: {found or 'none'}); "
                f"create it or pass classes= matching the folders"
            )
        images, masks = _scan_class(folder)
        if not images:
            raise DatasetError(
                f"class folder {folder} has no images named like '{class_name} (1).png'; "
                "add images or drop the class from classes="
            )
        for stem, (_, image_path) in sorted(images.items(), key=lambda item: (item[1][0], item[0])):
            mask_paths = masks.get(stem, [])
            if require_masks and not mask_paths:
                raise DatasetError(
                    f"image {image_path} has no mask {stem}_mask.png; add the mask or use require_masks=False"
                )
            if check_images:
                size = _image_size(image_path, "image")
                for mask_path in mask_paths:
                    mask_size = _image_size(mask_path, "mask")
                    if mask_size != size:
                        raise DatasetError(
                            f"label/mask mismatch: mask {mask_path} is {mask_size[0]}x{mask_size[1]} but image "
                            f"{image_path.name} is {size[0]}x{size[1]}; re-export the mask at the image's size"
                        )
            records.append(
                {
                    "image": str(image_path),
                    "label": label,
                    "class_name": class_name,
                    "masks": [str(p) for p in mask_paths],
                    "id": stem,
                }
            )
    return records


def _busi_split(root: Path, split: str, seed: int) -> list[dict[str, Any]]:
    """A seeded stratified split: the same seed in training and evaluation gives the same test images."""
    records = split_records(read_busi(root), BUSI_FRACTIONS, seed)[split]
    return [{k: r[k] for k in ("image", "label", "id")} for r in records]


FORMATS = (
    DatasetFormat(
        "busi",
        "{root}/{{benign,malignant,normal}}/<class> (i).png with <class> (i)_mask.png",
        "https://scholar.cu.edu.eg/?q=afahmy/pages/dataset (Dataset_BUSI_with_GT)",
        "no official split: seeded stratified 70/15/15 train/val/test (BUSI_FRACTIONS)",
        _busi_split,
        lambda root: list(BUSI_CLASSES),
    ),
)
