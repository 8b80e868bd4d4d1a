"""Settings and data checked before the first training step: unknown keys, out-of-range numbers, empty splits.

A misspelled override (``--epcohs 1``) that MONAI silently adds as a new key, a zero batch size that fails deep in
the data loader, an empty validation split that ends a run "successfully" without a model: each costs a researcher
a run, or worse a wrong table. These checks turn them into one message naming the setting (or the file, split and
class) and the fix, before anything is written.
"""

from __future__ import annotations

import difflib
import logging
import math
import numbers
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

from medtransfer.errors import DatasetError, SettingsError

logger = logging.getLogger(__name__)

# setting -> (smallest allowed value, whether it must be a whole number, what it means); None means "not set"
RANGES: dict[str, tuple[float, bool, str]] = {
    "epochs": (1, True, "training epochs"),
    "batch_size": (1, True, "images per batch"),
    "image_size": (8, True, "the side of the network input in pixels"),
    "val_interval": (1, True, "epochs between validations"),
    "keep_checkpoints": (1, True, "epoch checkpoints kept"),
    "num_workers": (0, True, "data-loading worker processes"),
    "num_folds": (2, True, "cross-validation folds"),
    "fold": (0, True, "the cross-validation fold"),
    "lr": (0, False, "the learning rate"),
    "weight_decay": (0, False, "the weight decay"),
    "max_train": (1, True, "the number of training images kept"),
}
_POSITIVE = {"lr"}  # zero is out of range too
# switches: `--resume true` reaches a bundle as the string "true" (python-fire reads only True/False as booleans)
FLAGS = (
    "resume", "allow_changed_split", "amp", "channels_last", "save_init", "include_images", "augment_on_device",
    "metalr_bounds_relative", "t_informed_bounds_relative",
)  # fmt: skip
_TRUE, _FALSE = ("true", "yes", "1", "on"), ("false", "no", "0", "off")
_FRACTIONS = {"val_fraction"}  # strictly between 0 and 1


def check_settings(settings: Mapping[str, Any], **more: Any) -> None:
    """Range-check the numeric settings a run uses (its ``run_settings`` plus `more`), naming the first bad one."""
    values = {**settings, **more}
    for key in FLAGS:
        if key in values:
            as_flag(values[key], key)
    for key, value in values.items():
        if value is None or key in FLAGS or isinstance(value, str) and key not in RANGES and key not in _FRACTIONS:
            continue
        if key in _FRACTIONS:
            if not _is_real(value) or not 0 < value < 1:
                raise SettingsError(f"--{key} {value!r} is out of range: it must be a number between 0 and 1")
        elif key in RANGES:
            low, whole, meaning = RANGES[key]
            kind = "a whole number" if whole else "a number"
            ok = _is_real(value) and (not whole or float(value).is_integer()) and value >= low
            ok = ok and (key not in _POSITIVE or value > 0)
            if not ok:
                bound = f"> {low}" if key in _POSITIVE else f">= {low}"
                raise SettingsError(f"--{key} {value!r} is out of range: {meaning} must be {kind} {bound}")
    interval, epochs = values.get("val_interval"), values.get("epochs")
    if _is_real(interval) and _is_real(epochs) and interval > epochs:
        raise SettingsError(
            f"--val_interval {interval} is out of range: with --epochs {epochs} no validation would run, so no best "
            f"model would be selected; use a --val_interval of at most {epochs}"
        )
    fold, folds = values.get("fold"), values.get("num_folds")
    if _is_real(fold) and _is_real(folds) and fold >= folds:
        raise SettingsError(f"--fold {fold} is out of range: with --num_folds {folds} the folds are 0..{folds - 1}")


AMP_DTYPES = {"float16": "float16", "fp16": "float16", "bfloat16": "bfloat16", "bf16": "bfloat16"}


def amp_kwargs(dtype: str = "float16") -> dict:
    """``torch.autocast`` arguments for the bundles' trainer and evaluators when ``--amp true``.

    ``float16`` (MONAI's default) trains with the trainer's grad scaler against underflow; ``bfloat16`` has float32's
    range, so on GPUs that have it (Ampere and newer) it needs no loss scaling to be safe (MONAI's scaler still runs,
    a no-op in effect) and is the faster, steadier choice there.
    """
    import torch

    name = AMP_DTYPES.get(str(dtype).strip().lower())
    if name is None:
        raise SettingsError(f"--amp_dtype {dtype!r} is not an AMP type: pass --amp_dtype bfloat16 or --amp_dtype float16")
    return {"dtype": getattr(torch, name)}


def as_flag(value: Any, name: str = "switch") -> bool:
    """A switch's value as a bool: True/False, or "true"/"false" (also yes/no, on/off, 1/0) in any case.

    Anything else is an error rather than Python's truthiness, under which the string "false" would mean on.
    """
    if isinstance(value, bool):
        return value
    if isinstance(value, (int, float)) and value in (0, 1):
        return bool(value)
    if isinstance(value, str) and value.strip().lower() in _TRUE + _FALSE:
        return value.strip().lower() in _TRUE
    raise SettingsError(f"--{name} {value!r} is not a switch: pass --{name} true or --{name} false")


def _is_real(value: Any) -> bool:
    return isinstance(value, numbers.Real) and not isinstance(value, bool) and math.isfinite(value)


def known_keys(config: Mapping[str, Any]) -> set[str]:
    """Every id an override may set: the top-level keys and the nested ``a#b`` paths of a merged config."""
    keys: set[str] = set()

    def walk(node: Any, prefix: str) -> None:
        items = node.items() if isinstance(node, Mapping) else enumerate(node) if isinstance(node, list) else ()
        for key, value in items:
            path = f"{prefix}#{key}" if prefix else str(key)
            keys.add(path)
            walk(value, path)

    walk(config, "")
    return keys


def check_override_keys(
    config_files: Sequence[str | Path], overrides: Iterable[str], ignore: Iterable[str] = ()
) -> None:
    """Refuse an override that names no setting of the merged config, listing the closest valid ones.

    MONAI would add an unknown key to the config and go on with the default, so ``--epcohs 1`` trains for the
    default number of epochs. A new key inside an existing component (``train#trainer#epoch_length``) is an
    argument for it and passes (its constructor refuses a wrong one). `ignore` are arguments that are not config
    settings (``run_id``, ``tracking``, ...).
    """
    from monai.bundle import ConfigParser

    parser = ConfigParser()
    parser.read_config([str(f) for f in config_files])
    known = known_keys(parser.get())
    skipped = set(ignore)
    for key in overrides:
        parent = key.rpartition("#")[0]
        if key in skipped or key in known or parent in known and isinstance(parser.get(parent), Mapping):
            continue  # a setting, or a new argument of an existing component (``train#trainer#epoch_length``)
        top_level = sorted(k for k in known if "#" not in k)
        close = difflib.get_close_matches(key, top_level, n=3, cutoff=0.6)
        hint = f"did you mean {', '.join('--' + c for c in close)}?" if close else "it is not a setting of this bundle"
        raise SettingsError(
            f"unknown setting --{key}: {hint} The settings are listed at the top of {Path(config_files[0]).name} "
            f"({Path(config_files[0]).parent}); a new key would be ignored and the default used"
        )


def check_datalists(datalists: Mapping[str, Sequence[Mapping]], classes: Sequence, dataset_dir: Any = None) -> None:
    """Every split has images, and every label names one of the classes (the file and class named when not).

    A class missing from the training split is only warned about (small folds can lack a rare class in validation,
    and a study may train on a subset on purpose).
    """
    where = f" of {dataset_dir}" if dataset_dir is not None else ""
    names = [str(c) for c in classes]
    for split, records in datalists.items():
        if len(records) == 0:
            raise DatasetError(
                f"the {split} split{where} is empty: no image would be {'trained' if split == 'train' else 'scored'} "
                "on. Check --dataset_dir and --dataset_format (run `medtransfer doctor DATASET_DIR --format F`), or "
                "the split settings (split_seed, fold, val_fraction)"
            )
        for record in records:
            label = record.get("label")
            if not _is_real(label):
                continue  # segmentation masks (files) and multi-label targets are checked by their readers
            if not 0 <= int(label) < len(names):
                raise DatasetError(
                    f"{record.get('image', record.get('id'))} in the {split} split{where} has label {int(label)}, "
                    f"but there are {len(names)} classes ({', '.join(names)}); fix its label or the classes setting"
                )
    counts = Counter(int(r["label"]) for r in datalists.get("train", ()) if _is_real(r.get("label")))
    missing = [names[i] for i in range(len(names)) if counts and counts[i] == 0]
    if missing:
        logger.warning(f"the train split{where} has no image of class {', '.join(missing)}")
