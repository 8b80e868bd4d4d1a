"""Which image mode a run uses: the ``image_mode`` setting (``auto``, ``grey``, ``rgb``) resolved once per data set.

``auto`` keeps colour when the source has it: an RGB MedMNIST ``.npz`` (DermaMNIST, PathMNIST, ...) or a folder of
colour fundus/dermoscopy photographs is loaded as RGB, a grey set (BreastMNIST, BUSI, chest X-rays) as grey. The
classification bundles resolve it from the training datalist (``image_mode_used``, recorded in ``run_info.json``),
and evaluation and inference take the trained run's mode from there (:func:`trained_image_mode`), so a network is
never fed other images than it was trained on.
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Hashable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from medtransfer.data.transforms import LOAD_MODES, load_image
from medtransfer.errors import DatasetError, RunDirectoryError

logger = logging.getLogger(__name__)

IMAGE_MODES = ("auto", *LOAD_MODES)
# An RGB-encoded image counts as colour when more than COLOUR_FRACTION of its pixels have channels further apart
# than COLOUR_LEVELS (of 255). Identical channels (BUSI's RGB PNGs), JPEG chroma noise on grey and coloured
# annotations on a grey scan (BUSI's yellow calipers: 3 % of the pixels, POCUS figure labels: 7 %) stay grey; a
# fundus photograph inside its black border (skimage's retina: 77 %), dermoscopy or H&E histology is colour.
COLOUR_LEVELS = 8
COLOUR_FRACTION = 0.2
RECORDS_CHECKED = 16  # how many records, evenly spread over the list, auto looks at


def check_image_mode(mode: str) -> str:
    """``mode`` itself when it is one of :data:`IMAGE_MODES`, else a DatasetError naming the setting."""
    if mode not in IMAGE_MODES:
        raise DatasetError(f"image_mode must be one of {', '.join(IMAGE_MODES)}, got {mode!r} (set --image_mode)")
    return mode


def has_colour(value: Any, key: Hashable = "image") -> bool:
    """Whether one image (file path or uint8 array) carries colour: more than :data:`COLOUR_FRACTION` of its pixels
    have channels more than :data:`COLOUR_LEVELS` apart; grey-valued RGB (equal channels) has none."""
    rgb = load_image(value, "rgb", key)
    spread = rgb.max(axis=-1) - rgb.min(axis=-1)
    return float((spread > (COLOUR_LEVELS + 0.5) / 255.0).mean()) > COLOUR_FRACTION


def _checked(records: Sequence[Mapping[Hashable, Any]], n: int) -> list[Mapping[Hashable, Any]]:
    if len(records) <= n:
        return list(records)
    return [records[int(i)] for i in np.unique(np.linspace(0, len(records) - 1, n).round())]


def _describe(records: Sequence[Mapping[Hashable, Any]], key: Hashable) -> str:
    """The data's folder when the records are files, else what they are (for the log line)."""
    paths = [str(r[key]) for r in records if isinstance(r.get(key), (str, os.PathLike))]
    if paths and len(paths) == len(records):
        return os.path.commonpath([os.path.dirname(os.path.abspath(p)) for p in paths])
    return f"the {len(records)} in-memory images"


def resolve_image_mode(
    mode: str, records: Sequence[Mapping[Hashable, Any]], source: str | os.PathLike | None = None, key: str = "image"
) -> str:
    """``grey`` or ``rgb`` for the data in ``records`` (``{"image": path or uint8 array, ...}``).

    ``grey`` and ``rgb`` pass through; ``auto`` is ``rgb`` when any of a few records spread over the list
    (:data:`RECORDS_CHECKED`) has colour (:func:`has_colour`: an (H,W,3) MedMNIST array or an RGB/RGBA/palette file
    whose channels differ), else ``grey``. Logs one line saying which mode and why; ``source`` (the dataset folder or
    file) names the data in it. Anything but auto/grey/rgb is a DatasetError naming the setting.
    """
    check_image_mode(mode)
    if mode != "auto":
        logger.info(f"image mode: {mode} (set by image_mode)")
        return mode
    where = str(source) if source is not None else _describe(records, key)
    for record in _checked(records, RECORDS_CHECKED):
        if key not in record:
            raise DatasetError(f"a record of {where} has no {key!r} entry (keys {sorted(map(str, record))})")
        if has_colour(record[key], key):
            logger.info(f"image mode: rgb (auto: {where} has colour)")
            return "rgb"
    logger.info(f"image mode: grey (auto: {where} has no colour)")
    return "grey"


def trained_image_mode(run_dir: str | os.PathLike, image_mode: str = "auto", legacy: str = "grey") -> str:
    """The mode a training run used (``image_mode_used`` in its ``run_info.json``), for evaluation and inference.

    Inference reads another folder than training did: resolving ``auto`` there could feed an RGB-trained network
    grey images (or the reverse), so the run's own mode is used. An explicit ``image_mode`` other than the run's is a
    RunDirectoryError. A run from before ``image_mode`` existed records none: ``image_mode`` is used when it is set,
    else ``legacy`` (``grey``, what the classification bundles always fed), with a warning.
    """
    check_image_mode(image_mode)
    if legacy not in LOAD_MODES:
        raise DatasetError(f"legacy image mode must be one of {', '.join(LOAD_MODES)}, got {legacy!r}")
    path = Path(run_dir) / "run_info.json"
    settings = json.loads(path.read_text()).get("settings", {}) if path.is_file() else {}
    used = settings.get("image_mode_used")
    if used in LOAD_MODES:
        if image_mode not in ("auto", used):
            raise RunDirectoryError(
                f"{run_dir} was trained with image_mode {used}; --image_mode {image_mode} would feed it other images "
                f"than it learnt from. Drop --image_mode or pass --image_mode {used}"
            )
        logger.info(f"image mode: {used} (as run {run_dir} was trained)")
        return used
    used = legacy if image_mode == "auto" else image_mode
    logger.warning(
        f"{path} records no image_mode_used (a run from before image_mode): using {used}; "
        "pass --image_mode grey or rgb if it was trained otherwise"
    )
    return used
