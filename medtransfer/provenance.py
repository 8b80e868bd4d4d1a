"""What produced a result file, so a second evaluation with other settings cannot silently replace the first.

Evaluation and inference write ``{prefix}_metrics.json`` / ``{prefix}_predictions.csv`` into the run folder. Each
now records what produced it (``produced_by``: the workflow, the data it scored — image count and content fingerprint —
the checkpoint, and every setting that changes the numbers: architecture, input size, image mode, normalisation,
AMP), in the metrics file and beside the predictions (``{prefix}_produced_by.json``). Before a workflow starts,
:func:`claim_result` compares what it would produce with what the folder holds: the same settings may write again
(the numbers are the same); other settings are refused, naming the setting and both values, unless
``--overwrite true``, which moves the earlier files into ``replaced/<time>/`` first. :func:`check_comparable` lets
``summarize`` average only runs scored on the same data with the same settings.
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from medtransfer.errors import SettingsError

logger = logging.getLogger(__name__)

PRODUCED_BY = "produced_by"
REPLACED = "replaced"
# settings that name the data, as opposed to how it was processed (summarize compares both; the message says which)
DATA_SETTINGS = ("dataset_dir", "input_dir", "dataset_format", "split", "split_seed", "fold", "num_folds")


def _setting(key: str, value: Any) -> Any:
    """A setting as recorded and compared: paths resolved as the split guard resolves them, JSON-able."""
    from medtransfer.guards import resolved_setting

    if key.endswith("_dir"):
        return resolved_setting("dataset_dir", value)
    if isinstance(value, (tuple, list)):
        return [_setting(key, v) for v in value]
    if isinstance(value, (str, int, float, bool)) or value is None:
        return value
    return str(value)


def produced_by(workflow: str, records: Sequence[Mapping], checkpoint: str | os.PathLike, **settings: Any) -> dict:
    """What a workflow's result is made of: its records (count and content fingerprint), checkpoint and settings.

    Args:
        workflow: ``evaluate`` or ``inference``.
        records: the datalist scored (the split guard's fingerprint: ids, labels and file sizes or pixel hashes).
        checkpoint: the model file scored; its size and modification time tell a retrained model apart.
        settings: every setting that changes the numbers (``image_size=64``, ``norm_mean=[...]``, ...).
    """
    from medtransfer.guards import fingerprint

    path = Path(checkpoint)
    stat = path.stat() if path.is_file() else None
    return {
        "workflow": workflow,
        "data": {"images": len(records), "fingerprint": fingerprint(records)},
        "checkpoint": {
            "file": str(path.resolve()) if stat else str(path),
            "bytes": stat.st_size if stat else None,
            "modified_ns": stat.st_mtime_ns if stat else None,
        },
        "settings": {key: _setting(key, value) for key, value in sorted(settings.items())},
    }


def _differences(old: Mapping, new: Mapping) -> list[tuple[str, Any, Any]]:
    found = []
    for key in sorted(set(old.get("settings", {})) | set(new.get("settings", {}))):
        before, after = old.get("settings", {}).get(key), new.get("settings", {}).get(key)
        if before != after:
            found.append((f"--{key}", before, after))
    if old.get("data") != new.get("data"):
        before, after = old.get("data") or {}, new.get("data") or {}
        found.append(("the scored images", f"{before.get('images')} ({str(before.get('fingerprint'))[:12]})",
                      f"{after.get('images')} ({str(after.get('fingerprint'))[:12]})"))  # fmt: skip
    if old.get("checkpoint") != new.get("checkpoint"):
        found.append(("the checkpoint", _checkpoint_text(old), _checkpoint_text(new)))
    return found


def _checkpoint_text(record: Mapping) -> str:
    checkpoint = record.get("checkpoint") or {}
    return f"{checkpoint.get('file')} ({checkpoint.get('bytes')} bytes, modified_ns {checkpoint.get('modified_ns')})"


def result_files(output_dir: str | os.PathLike, prefix: str) -> list[Path]:
    """The result files a report with `prefix` wrote (those that exist; its ``produced_by`` record last)."""
    folder = Path(output_dir)
    names = [f"{prefix}{suffix}" for suffix in ("_metrics.json", "_predictions.csv", "_confusion_matrix.png")]
    grouped = [p.name for p in folder.glob(f"{prefix}_*_metrics.json")] if folder.is_dir() else []
    for name in grouped:  # group-level reports (``test_clip_metrics.json``)
        base = name.removesuffix("_metrics.json")
        names += [f"{base}_metrics.json", f"{base}_predictions.csv", f"{base}_confusion_matrix.png"]
    found = [folder / n for n in dict.fromkeys(names) if (folder / n).is_file()]
    masks = folder / f"{prefix}_masks"  # segmentation inference writes one mask file per volume there
    if masks.is_dir() and any(masks.iterdir()):
        found.append(masks)
    record = folder / f"{prefix}_{PRODUCED_BY}.json"
    return found + [record] if found and record.is_file() else found


def recorded(output_dir: str | os.PathLike, prefix: str) -> dict | None:
    """What produced the `prefix` result in `output_dir`: its ``produced_by`` record, ``{}`` for a result written
    before results recorded it, None when there is no result."""
    folder = Path(output_dir)
    if not result_files(folder, prefix):
        return None  # a record without a result: the workflow that wrote it did not finish
    for name in (f"{prefix}_{PRODUCED_BY}.json", f"{prefix}_metrics.json"):
        path = folder / name
        if path.is_file():
            try:
                content = json.loads(path.read_text())
            except (OSError, ValueError):
                return {}
            record = content if name.endswith(f"{PRODUCED_BY}.json") else content.get(PRODUCED_BY)
            if record is not None:
                return record
    return {}


def claim_result(output_dir: str | os.PathLike, prefix: str, produced: Mapping, overwrite: Any = False) -> dict:
    """Check, before a workflow runs, that writing its `prefix` result replaces nothing made otherwise.

    A result of the same settings, data and checkpoint may be written again; another one is refused naming what
    differs, unless `overwrite`, which first moves the earlier files to ``replaced/<time>/`` in the run folder.
    Returns `produced`, for the report to record.

    Args:
        output_dir: the run folder.
        prefix: the report's prefix (``test``, ``inference``).
        produced: what this workflow would produce (:func:`produced_by`).
        overwrite: replace a different earlier result (``--overwrite true``).
    """
    from medtransfer.runs import timestamp
    from medtransfer.settings import as_flag

    earlier = recorded(output_dir, prefix)
    differences = (
        []
        if earlier is None
        else _differences(earlier, produced)
        if earlier
        else [("its settings", "not recorded (an older result)", "")]
    )
    if not differences:
        _write_record(output_dir, prefix, produced)
        return dict(produced)
    files = result_files(output_dir, prefix)
    if not as_flag(overwrite, "overwrite"):
        described = "; ".join(f"{key}: {old!r} before, {new!r} now" if new != "" else f"{key}: {old}"
                              for key, old, new in differences[:4])  # fmt: skip
        raise SettingsError(
            f"{files[0]} holds a result made otherwise ({described}). Run with the settings it was made with, or pass "
            f"--overwrite true to replace it (the earlier files are kept in {Path(output_dir) / REPLACED}/<time>/)"
        )
    aside = Path(output_dir) / REPLACED / timestamp()
    while aside.exists():
        aside = aside.with_name(aside.name + "_")
    aside.mkdir(parents=True)
    for file in files:
        file.rename(aside / file.name)
    logger.warning(f"--overwrite true: the earlier {prefix} result of {output_dir} is kept in {aside}")
    _write_record(output_dir, prefix, produced)
    return dict(produced)


def _write_record(output_dir: str | os.PathLike, prefix: str, produced: Mapping) -> None:
    from medtransfer.atomic import write_text_atomic

    write_text_atomic(Path(output_dir) / f"{prefix}_{PRODUCED_BY}.json", json.dumps(produced, indent=1) + "\n")


def check_inference_input(
    run_dir: str | os.PathLike, input_dir: str | os.PathLike, demo_dir: str | os.PathLike
) -> None:
    """Refuse inference on the bundle's synthetic demo images for a run trained on other data.

    Without ``--input_dir`` inference reads the bundle's default dataset, which is the demo set; for a run trained
    on real data that would predict synthetic images and replace nothing useful with noise.

    Args:
        run_dir: the trained run (its ``run_info.json`` names the data it was trained on).
        input_dir: the folder inference would read.
        demo_dir: the bundle's demo data folder.
    """
    info = Path(run_dir) / "run_info.json"
    if not info.is_file():
        return
    trained_on = json.loads(info.read_text()).get("settings", {}).get("dataset_dir")
    demo, source = Path(_setting("demo_dir", demo_dir)), Path(_setting("input_dir", input_dir))
    if trained_on is None or not source.is_relative_to(demo):
        return
    if Path(_setting("dataset_dir", trained_on)).is_relative_to(demo):
        return  # a demo run predicting demo images
    raise SettingsError(
        f"inference would read the synthetic demo images in {source}, but run {run_dir} was trained on {trained_on}; "
        "pass --input_dir FOLDER with the images to predict"
    )


def check_comparable(results: Sequence[tuple[str, Mapping]]) -> None:
    """Refuse to average results (run name, metrics file content) scored on other data or with other settings.

    Results written before ``produced_by`` existed are compared on the data keys their reports carried
    (``dataset_dir``, ``dataset_format``, ``split``, ``split_seed``). The folds of one cross-validation differ in
    ``fold`` and so in the images scored, and that is what their mean is for: they pass.
    """
    if len(results) < 2:
        return
    full = all(content.get(PRODUCED_BY) for _, content in results)

    def signature(content: Mapping) -> dict:
        record = content.get(PRODUCED_BY)
        if full:
            return {**record.get("settings", {}), "scored images": record.get("data", {}).get("fingerprint")}
        source = record.get("settings", {}) if record else content
        return {key: _setting(key, source.get(key)) for key in DATA_SETTINGS if key in source}

    first_name, first = results[0][0], signature(results[0][1])
    for name, content in results[1:]:
        other = signature(content)
        differing = [key for key in sorted(set(first) | set(other)) if first.get(key) != other.get(key)]
        if not differing or "fold" in differing and set(differing) <= {"fold", "scored images"}:
            continue
        key = differing[0]
        kind = "data" if key in DATA_SETTINGS or key == "scored images" else "settings"
        raise SettingsError(
            f"{first_name} and {name} were scored with different {kind} ({key}: {first.get(key)!r} against "
            f"{other.get(key)!r}), so their mean would mix two experiments; summarize the runs of one setting at a "
            "time"
        )
