"""What an image *is*, apart from its name: the content key the split guard, the splitters and `doctor` share.

Two records with the same key are the same image (the same file bytes, or for in-memory images such as MedMNIST's
the same pixels, shape and type), whatever their file names. Splits the toolkit makes keep such copies on one side
(:func:`group_copies`); a dataset's own official split that already holds copies across its splits has them dropped
from the training/validation side, the test split left intact (:func:`drop_copies`), what was dropped recorded in the
run's ``split.json`` (:func:`dropped_copies`) and said once.
"""

from __future__ import annotations

import hashlib
import logging
import os
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

logger = logging.getLogger(__name__)

# (dataset folder resolved, split) -> ids of the copies dropped from that split, for split.json
_DROPPED: dict[tuple[str, str], list[str]] = {}


# (real path, size, modification time) -> key: each file is read once per process, however many splits ask
_FILE_KEYS: dict[tuple[str, int, int], str] = {}


def file_key(path: str | os.PathLike) -> str:
    """The content key of a file: a 128-bit BLAKE2b digest of its bytes."""
    stat = os.stat(path)
    cached = (os.path.realpath(path), stat.st_size, stat.st_mtime_ns)
    if cached in _FILE_KEYS:
        return _FILE_KEYS[cached]
    digest = hashlib.blake2b(digest_size=16)
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    _FILE_KEYS[cached] = digest.hexdigest()
    return _FILE_KEYS[cached]


def array_key(array: np.ndarray) -> str:
    """The content key of an in-memory image: its shape, type and pixels."""
    digest = hashlib.blake2b(f"{array.shape} {array.dtype.str}".encode(), digest_size=16)
    digest.update(np.ascontiguousarray(array).tobytes())
    return digest.hexdigest()


def content_key(record: Mapping[str, Any]) -> str | None:
    """The content key of a record's image (None where the image is neither a readable file nor an array)."""
    image = record.get("image")
    if isinstance(image, (str, os.PathLike)):
        try:
            return file_key(image)
        except OSError:
            return None  # the reader and `doctor` report unreadable files
    if hasattr(image, "tobytes"):
        return array_key(np.asarray(image))
    return None


def record_name(record: Mapping[str, Any]) -> str:
    return str(record.get("id", record.get("image")))


def group_copies(records: Sequence[Mapping[str, Any]]) -> list[list[int]]:
    """Indices of `records` grouped by content, in first-seen order: one group per distinct image."""
    groups: dict[str, list[int]] = {}
    for i, record in enumerate(records):
        key = content_key(record)
        groups.setdefault(key if key is not None else f"unkeyed-{i}", []).append(i)
    return list(groups.values())


def split_keeping_copies_together(records: Sequence[dict], split, *args: Any, **kwargs: Any) -> dict[str, list]:
    """``split(records, *args, **kwargs)`` (a ``{"train", "val", "test"} -> records`` splitter) with identical images
    on one side: the first copy of each image is split, and every other copy follows it. Without copies the split is
    exactly the splitter's own."""
    groups = group_copies(records)
    if all(len(g) == 1 for g in groups):
        return split(records, *args, **kwargs)
    firsts = [records[g[0]] for g in groups]
    parts = split(firsts, *args, **kwargs)
    follows = {id(records[g[0]]): [records[i] for i in g[1:]] for g in groups}
    moved = sum(len(g) - 1 for g in groups)
    logger.warning(
        f"{moved} images are copies of others (same content under another name); each stays with its original"
    )
    return {name: [r for first in part for r in (first, *follows[id(first)])] for name, part in parts.items()}


def drop_copies(
    records: list[dict], held_out: Mapping[str, Sequence[Mapping[str, Any]]], dataset_dir: Any, split: str
) -> list:
    """`records` without those whose content is in a held-out split (an official split's copies across splits).

    The drop is recorded for ``split.json`` (:func:`dropped_copies`) and logged once per dataset and split.

    Args:
        records: the training or validation records.
        held_out: the splits they must not share an image with, by name (test; for training also val).
        dataset_dir: the dataset, for the record and the message.
        split: the name of `records`' split.
    """
    taken: dict[str, str] = {}
    for name, others in held_out.items():
        for record in others:
            if (key := content_key(record)) is not None:
                taken.setdefault(key, name)
    kept, dropped, held_in = [], [], set()
    for record in records:
        key = content_key(record)
        if key in taken:
            dropped.append(record)
            held_in.add(taken[key])
        else:
            kept.append(record)
    where = (os.path.realpath(str(dataset_dir)), split)
    names = [record_name(r) for r in dropped]
    if dropped and _DROPPED.get(where) != names:
        splits = " and ".join(sorted(held_in))
        logger.warning(
            f"{dataset_dir}: {len(dropped)} {split} images are copies of {splits} images (the same content under "
            f"another name, in the dataset's own split), e.g. {names[0]}; they are left out of {split} so the run "
            f"never {'trains' if split == 'train' else 'selects'} on an image it is tested on (recorded in split.json)"
        )
    _DROPPED[where] = names
    return kept


def dropped_copies(dataset_dir: Any) -> dict[str, list[str]]:
    """The copies :func:`drop_copies` left out of each split of `dataset_dir` in this process (split -> ids)."""
    folder = os.path.realpath(str(dataset_dir))
    return {split: names for (where, split), names in _DROPPED.items() if where == folder and names}
