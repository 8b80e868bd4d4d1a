"""The split guard: a run records once which images define its splits; resuming and evaluating must see the same.

Testing on training images is the one mistake that silently inflates every number a paper reports. So a training
run writes ``split.json`` into its folder: the split-defining settings (the dataset folder resolved to a real path,
format, split seed, fold, classes, ...) and a content fingerprint of the training and validation records (their ids,
labels and file sizes). ``--resume`` refuses any change to them, and evaluation refuses a changed setting and any
test image that the run trained or selected on, naming the setting and both values. ``allow_changed_split`` lets a
deliberate change through (an external test set, a moved dataset); it is recorded in ``split.json`` and in the report.
"""

from __future__ import annotations

import datetime as _dt
import hashlib
import json
import logging
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from medtransfer.atomic import write_text_atomic
from medtransfer.errors import SettingsError
from medtransfer.settings import as_flag

logger = logging.getLogger(__name__)

SPLIT_FILE = "split.json"
_FIT_SPLITS = ("train", "val", "meta")  # the splits a run trains, tunes its LRs or selects its model on
LEAKED = "test images the run trained or selected on"
_FIX = (
    "pass the value the run was trained with, or --allow_changed_split true if the change is deliberate "
    "(it is recorded in split.json and in the report)"
)


def resolved_setting(key: str, value: Any) -> Any:
    """A split setting as compared: paths resolved (a trailing slash or a relative path names the same folder)."""
    if key.endswith("dataset_dir") and value is not None:
        return os.path.realpath(os.path.expanduser(str(value)))
    if isinstance(value, tuple):
        return list(value)
    return value


def record_identity(record: Mapping[str, Any]) -> str:
    """What names one image of a split: its id, else its file path."""
    return str(record.get("id", record.get("image")))


def _record_line(record: Mapping[str, Any]) -> str:
    image = record.get("image")
    size = ""
    if isinstance(image, (str, os.PathLike)):
        try:
            size = str(os.path.getsize(image))
        except OSError:
            size = "missing"
    elif hasattr(image, "tobytes"):  # an in-memory image (MedMNIST): its pixels are its content
        size = hashlib.sha256(image.tobytes()).hexdigest()[:16]
    return f"{record_identity(record)}\t{record.get('label')}\t{size}"


def fingerprint(records: Sequence[Mapping[str, Any]]) -> str:
    """A content fingerprint of one split: sha256 over its sorted (id, label, file size or pixel hash) lines."""
    digest = hashlib.sha256()
    for line in sorted(_record_line(r) for r in records):
        digest.update(line.encode() + b"\n")
    return digest.hexdigest()


def _short_hash(identity: str) -> str:
    return hashlib.sha1(identity.encode()).hexdigest()[:16]


def _content(records: Sequence[Mapping[str, Any]]) -> dict[str, str]:
    """Short content key -> the image's name, for every record whose image has a key."""
    from medtransfer.data.content import content_key

    found = {}
    for record in records:
        key = content_key(record)
        if key is not None:
            found.setdefault(key[:20], record_identity(record))
    return found


def split_record(settings: Mapping[str, Any], datalists: Mapping[str, Sequence[Mapping]], classes: Sequence) -> dict:
    """What ``split.json`` holds for these settings and the train/val/meta records: settings, fingerprints, and the
    names and content keys of every image the run fits on (so evaluation can refuse a test image it saw under any
    name), and the copies of held-out images the dataset's own split held, which the readers left out."""
    from medtransfer.data.content import dropped_copies

    fit = [r for split in _FIT_SPLITS for r in datalists.get(split, ())]
    dropped = dropped_copies(settings["dataset_dir"]) if settings.get("dataset_dir") is not None else {}
    return {
        "settings": {k: resolved_setting(k, v) for k, v in settings.items()},
        "classes": [str(c) for c in classes],
        "fingerprints": {split: fingerprint(records) for split, records in datalists.items()},
        "sizes": {split: len(records) for split, records in datalists.items()},
        "fit_images": sorted({_short_hash(record_identity(r)) for r in fit}),
        "fit_content": dict(sorted(_content(fit).items())),
        **({"copies_left_out": dropped} if dropped else {}),
    }


def _changes(recorded: dict, current: dict) -> list[tuple[str, Any, Any]]:
    """The (setting, recorded value, current value) that differ; fingerprints only where both sides have them."""
    found = []
    for key in sorted(set(recorded["settings"]) | set(current["settings"])):
        old, new = recorded["settings"].get(key), current["settings"].get(key)
        if old != new:
            found.append((key, old, new))
    if recorded.get("classes") != current.get("classes"):
        found.append(("classes", recorded.get("classes"), current.get("classes")))
    for split, value in current.get("fingerprints", {}).items():
        old = recorded.get("fingerprints", {}).get(split)
        if old is not None and old != value:
            old_n, new_n = recorded["sizes"].get(split), current["sizes"].get(split)
            found.append(
                (f"{split} images", f"{old_n} files (fingerprint {old[:12]})", f"{new_n} files ({value[:12]})")
            )
    return found


def guard_split(
    run_dir: str | Path,
    settings: Mapping[str, Any],
    classes: Sequence,
    datalists: Mapping[str, Sequence[Mapping]] | None = None,
    test: Sequence[Mapping] | None = None,
    resume: bool = False,
    allow_changed: bool = False,
) -> list[dict]:
    """Record the run's splits (a new training run) or check them (``resume``, or an evaluation passing `test`).

    `datalists` are the train/val records a training run uses; an evaluation passes the records it tests on as
    `test`, which must not share an image with what the run trained or selected on. Returns the changes that
    `allow_changed` let through (empty when nothing changed), for the report.
    """
    resume, allow_changed = as_flag(resume, "resume"), as_flag(allow_changed, "allow_changed_split")
    path = Path(run_dir) / SPLIT_FILE
    current = split_record(settings, datalists or {}, classes)
    if not path.is_file():
        if test is None and not resume:
            write_text_atomic(path, json.dumps(current, indent=1) + "\n")
        else:
            logger.warning(f"{run_dir} has no {SPLIT_FILE} (trained by an older medtransfer): its split is not checked")
        return []
    recorded = json.loads(path.read_text())
    purpose = "evaluating" if test is not None else "resuming"
    changes = _changes(recorded, current)
    if test is not None and not changes:
        fit = set(recorded.get("fit_images", []))
        leaked = [record_identity(r) for r in test if _short_hash(record_identity(r)) in fit]
        fit_content = recorded.get("fit_content", {})
        by_content = _content(test) if fit_content else {}
        copies = [(name, fit_content[key]) for key, name in by_content.items() if key in fit_content]
        if leaked:
            changes.append((LEAKED, 0, f"{len(leaked)} of {len(test)}, e.g. {leaked[0]}"))
        elif copies:
            pairs = "; ".join(f"{test_name} = {fit_name}" for test_name, fit_name in copies[:5])
            more = f" and {len(copies) - 5} more" if len(copies) > 5 else ""
            changes.append((LEAKED, 0, f"{len(copies)} of {len(test)} by content, under other names ({pairs}{more})"))
    if not changes:
        return []
    described = "; ".join(
        f"{LEAKED}: {new}" if key == LEAKED else f"{key}: trained with {old!r}, now {new!r}"
        for key, old, new in changes
    )
    if not allow_changed:
        raise SettingsError(f"{purpose} {run_dir} with another split than it was trained on ({described}). {_FIX}")
    logger.warning(f"{purpose} {run_dir} with a changed split, allowed by allow_changed_split: {described}")
    allowed = [{"setting": k, "trained": old, "now": new} for k, old, new in changes]
    when = _dt.datetime.now().isoformat(timespec="seconds")
    recorded.setdefault("allowed_changes", []).append({"when": when, "purpose": purpose, "changes": allowed})
    write_text_atomic(path, json.dumps(recorded, indent=1, default=str) + "\n")
    return allowed
