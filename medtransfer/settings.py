"""Settings and data checked before the first training step: unknown keys, out-of-range numbers, empty splits.

A misspelled override (``--epcohs 1``) that MONAI silently adds as a new key, a zero batch size that fails deep in
the data loader, an empty validation split that ends a run "successfully" without a model: each costs a researcher
a run, or worse a wrong table. These checks turn them into one message naming the setting (or the file, split and
class) and the fix, before anything is written.
"""

from __future__ import annotations

import difflib
import json
import logging
import math
import numbers
import re
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
    "early_stop_patience": (1, True, "validations without improvement before training stops"),
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


def drop_last_batch_of_one(n_images: int, batch_size: int, batch_norm: bool) -> bool:
    """Whether the training loader drops its last batch: only when it would hold one image and the network has
    BatchNorm, which cannot normalise a single image (``Expected more than 1 value per channel``).

    Batches are shuffled, so a different image sits out each epoch and none is lost for the run; the decision is
    logged and recorded in the run's settings (``drop_last``). Under data-parallel training each process loads
    ceil(n / processes) images.

    Args:
        n_images: the training split's size.
        batch_size: images per batch (per process).
        batch_norm: whether the network normalises with batch statistics.
    """
    from medtransfer.distributed import world_size

    per_process = -(-int(n_images) // world_size())
    drop = bool(batch_norm) and int(batch_size) > 1 and per_process % int(batch_size) == 1
    if drop:
        logger.warning(
            f"the training split's last batch would hold 1 of {per_process} images (--batch_size {batch_size}), which "
            "BatchNorm cannot normalise: it is dropped each epoch (a different image each time, as batches are "
            "shuffled), recorded as drop_last in run_info.json"
        )
    return drop


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


BUNDLE_CONFIGS = ("train.json", "evaluate.json", "inference.json", "multi_gpu_train.json")
_REFERENCE = re.compile(r"[@%]([A-Za-z_][\w]*(?:#[\w]+)*)")


def read_config_file(path: str | Path) -> Any:
    """A JSON config file's content; a syntax error names the file, line and column and says what to fix."""
    path = Path(path)
    if path.suffix.lower() not in (".json", ""):
        return None  # YAML and the like: MONAI reads and reports them
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as err:
        raise SettingsError(f"cannot read the config file {path}: {err.strerror or err}; check the path") from None
    except UnicodeDecodeError:
        raise SettingsError(f"{path} is not a UTF-8 text file: a config file must be JSON text") from None
    try:
        return json.loads(text)
    except json.JSONDecodeError as err:
        line = text.splitlines()[err.lineno - 1] if 0 < err.lineno <= len(text.splitlines()) else ""
        raise SettingsError(
            f"{path}, line {err.lineno}, column {err.colno}: {err.msg} (the line reads {line.strip()[:80]!r}); fix "
            "the JSON there (a missing comma or quote, a trailing comma, or a comment, which JSON does not allow)"
        ) from None


def referenced_ids(node: Any) -> set[str]:
    """Every id that a config's values reference (``@key``, ``@key#sub``, ``%key``), with each of its parents."""
    found: set[str] = set()
    if isinstance(node, str):
        for match in _REFERENCE.finditer(node):
            parts = match.group(1).split("#")
            found.update("#".join(parts[: i + 1]) for i in range(len(parts)))
    elif isinstance(node, Mapping):
        for value in node.values():
            found |= referenced_ids(value)
    elif isinstance(node, list):
        for value in node:
            found |= referenced_ids(value)
    return found


def check_override_keys(
    config_files: Sequence[str | Path],
    overrides: Iterable[str],
    ignore: Iterable[str] = (),
    fragments: Sequence[str | Path] | None = None,
) -> None:
    """Refuse an override, or a fragment's key, that names no setting of the merged config, listing the closest ones.

    MONAI would add an unknown key to the config and go on with the default, so ``--epcohs 1`` trains for the
    default number of epochs. A new key inside an existing component (``train#trainer#epoch_length``) is an
    argument for it and passes (its constructor refuses a wrong one). `ignore` are arguments that are not config
    settings (``run_id``, ``tracking``, ...). Every file is read first, so a JSON syntax error names its file, line and
    column.

    `fragments` (default: every file that is not one of a bundle's own configs) are checked like the command line: a
    key is either an id of the configs before it, a ``+`` addition, or an id some config references (``@key``), such
    as the fragment's own settings; anything else, e.g. a misspelled ``metalr_hyper_lrr``, would be silently ignored.
    """
    from monai.bundle import ConfigParser

    contents = {str(f): read_config_file(f) for f in config_files}
    if fragments is None:
        fragments = [f for f in config_files[1:] if Path(f).name not in BUNDLE_CONFIGS]
    fragment_names = {str(f) for f in fragments}
    parser = ConfigParser()
    parser.read_config([str(f) for f in config_files if str(f) not in fragment_names])
    base = parser.get()
    base_keys = known_keys(base)
    used = set().union(*(referenced_ids(c) for c in contents.values()))
    for fragment in fragments:
        content = contents[str(fragment)]
        if not isinstance(content, Mapping):
            if content is not None:
                raise SettingsError(f"{fragment} is not a strategy fragment: it must hold a JSON object of settings")
            continue
        for key in content:
            parent = key.rpartition("#")[0]
            if key.startswith("+") or key in base_keys or key in used:
                continue
            if parent in base_keys and isinstance(_get(base, parent), Mapping):
                continue  # a new argument of a component the bundle has
            _refuse_unknown(key, base_keys | set(content), f"in the fragment {fragment}", config_files[0])
    parser.read_config([str(f) for f in config_files])
    known = known_keys(parser.get())
    skipped = set(ignore)
    for key in overrides:
        parent = key.rpartition("#")[0]
        if key in skipped or key in known or parent in known and isinstance(parser.get(parent), Mapping):
            continue  # a setting, or a new argument of an existing component (``train#trainer#epoch_length``)
        _refuse_unknown(f"--{key}", known, "", config_files[0])


def _get(config: Mapping, key: str) -> Any:
    node: Any = config
    for part in key.split("#"):
        node = node[int(part)] if isinstance(node, list) else node[part]
    return node


def _refuse_unknown(key: str, known: set[str], where: str, config_file: str | Path) -> None:
    bare = key.removeprefix("--")
    top_level = sorted(k for k in known if "#" not in k and k != bare)
    close = difflib.get_close_matches(bare, top_level, n=3, cutoff=0.6)
    dashes = "--" if key.startswith("--") else ""
    hint = f"did you mean {', '.join(dashes + c for c in close)}?" if close else "it is not a setting of this bundle."
    what = f"unknown setting {key}{' ' + where if where else ''}"
    raise SettingsError(
        f"{what}: {hint} The settings are listed at the top of {Path(config_file).name} ({Path(config_file).parent}); "
        "a new key would be ignored and the default used"
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
