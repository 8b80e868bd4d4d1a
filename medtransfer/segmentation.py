"""Segmentation pieces the LiTS bundle composes: 3D or 2D-slice patches, inferers, Dice metrics and the case report.

One setting, ``spatial_dims``, switches the whole pipeline between a 3D U-Net on 3D patches and a 2D U-Net trained on
axial slices (for machines without a GPU): the crops keep a depth of 1 and are squeezed, and inference runs the 2D
network slice by slice over the volume (MONAI's ``SliceInferer``), so both write masks on the input's grid.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from ignite.engine import Engine, Events
from monai.handlers import MeanDice
from monai.inferers import Inferer, SliceInferer, SlidingWindowInferer
from monai.transforms import SqueezeDimd

from medtransfer.atomic import write_csv_atomic, write_text_atomic
from medtransfer.engine import _as_rows
from medtransfer.report import markdown_table, save_json

logger = logging.getLogger(__name__)


def _check_dims(spatial_dims: int) -> None:
    if spatial_dims not in (2, 3):
        raise ValueError(f"spatial_dims must be 2 (slice mode) or 3, got {spatial_dims}")


def crop_size(spatial_dims: int, patch_size: Sequence[int], slice_size: Sequence[int]) -> list[int]:
    """Size of the random training crops taken from a (C, H, W, D) volume: the 3D patch, or one axial slice."""
    _check_dims(spatial_dims)
    return [int(s) for s in patch_size] if spatial_dims == 3 else [int(slice_size[0]), int(slice_size[1]), 1]


def slice_squeeze(spatial_dims: int, keys: Sequence[str] = ("image", "label")) -> list:
    """Transforms that turn a depth-1 crop into a 2D sample in slice mode; nothing in 3D."""
    _check_dims(spatial_dims)
    return [SqueezeDimd(keys=list(keys), dim=-1)] if spatial_dims == 2 else []


def make_inferer(
    spatial_dims: int,
    patch_size: Sequence[int],
    slice_size: Sequence[int],
    sw_batch_size: int = 4,
    overlap: float = 0.25,
) -> Inferer:
    """Whole-volume inference: sliding 3D windows, or the 2D network over every axial slice with 2D windows."""
    _check_dims(spatial_dims)
    if spatial_dims == 3:
        return SlidingWindowInferer(roi_size=list(patch_size), sw_batch_size=sw_batch_size, overlap=overlap)
    return SliceInferer(
        roi_size=list(slice_size), spatial_dim=2, sw_batch_size=sw_batch_size, overlap=overlap, progress=False
    )


def _pred_label(output):
    """Output transform: ``(preds, labels)`` lists from decollated engine output."""
    rows = _as_rows(output)
    return [r["pred"] for r in rows], [r["label"] for r in rows]


class _Channel:
    """Output transform picking one class channel of one-hot ``pred``/``label`` (picklable, unlike a lambda)."""

    def __init__(self, index: int) -> None:
        self.index = index

    def __call__(self, output):
        rows = _as_rows(output)
        k = self.index
        return [r["pred"][k : k + 1] for r in rows], [r["label"][k : k + 1] for r in rows]


def val_dice_metrics(
    label_names: Sequence[str], only: str | None = None, exclude: str | None = None
) -> dict[str, MeanDice]:
    """``{"val_mean_dice": MeanDice, "val_dice_<label>": MeanDice, ...}`` over one-hot outputs, for an evaluator.

    ``mean_dice`` averages the foreground labels; per-label numbers matter for LiTS, where the liver Dice is high
    early and the tumour Dice separates methods. ``only`` keeps one name (the key metric), ``exclude`` drops one.
    """
    metrics: dict[str, MeanDice] = {"mean_dice": MeanDice(include_background=False, output_transform=_pred_label)}
    for k, name in enumerate(label_names):
        if k > 0:
            metrics[f"dice_{name}"] = MeanDice(include_background=True, output_transform=_Channel(k))
    if only is not None and only not in metrics:
        raise ValueError(f"unknown segmentation metric {only!r}; choose one of {sorted(metrics)}")
    return {f"val_{n}": m for n, m in metrics.items() if n != exclude and (only is None or n == only)}


def dice_per_label(pred: np.ndarray, truth: np.ndarray, num_classes: int) -> list[float]:
    """Dice of labels ``1..num_classes-1`` between two label maps of equal shape; NaN where both are empty
    (nothing to find and nothing found says nothing about the model, so it is left out of means)."""
    pred, truth = np.asarray(pred), np.asarray(truth)
    if pred.shape != truth.shape:
        raise ValueError(f"prediction {pred.shape} and ground truth {truth.shape} differ in shape")
    out = []
    for k in range(1, num_classes):
        p, t = pred == k, truth == k
        denom = int(p.sum()) + int(t.sum())
        out.append(float("nan") if denom == 0 else 2.0 * int((p & t).sum()) / denom)
    return out


class SegmentationReport:
    """Per-case Dice of each label on the input's own grid, written as ``{prefix}_cases.csv`` and
    ``{prefix}_metrics.json`` (mean ± std over cases per label) when the evaluator completes.

    Expects each output row to hold ``pred`` as a label map (after ``Invertd`` and ``AsDiscreted(argmax)``) and the
    batch to hold ``label_key``, the ground truth as read from disk (before resampling), so the numbers describe the
    masks a user gets, not the resampled grid the network saw.
    """

    def __init__(
        self,
        output_dir: str,
        label_names: Sequence[str],
        prefix: str = "test",
        label_key: str = "ground_truth",
        extra: dict | None = None,
    ) -> None:
        self.output_dir, self.label_names = Path(output_dir), list(label_names)
        self.prefix, self.label_key, self.extra = prefix, label_key, dict(extra or {})

    def attach(self, engine: Engine) -> None:
        engine.add_event_handler(Events.EPOCH_STARTED, self._reset)
        engine.add_event_handler(Events.ITERATION_COMPLETED, self._collect)
        engine.add_event_handler(Events.EPOCH_COMPLETED, self._write)

    def _reset(self, engine: Engine) -> None:
        self.rows: list[tuple[str, list[float]]] = []

    def _collect(self, engine: Engine) -> None:
        outputs, batch = _as_rows(engine.state.output), _as_rows(engine.state.batch)
        for out, item in zip(outputs, batch, strict=True):
            pred = torch.as_tensor(out["pred"]).detach().cpu().numpy()
            truth = torch.as_tensor(item[self.label_key]).detach().cpu().numpy()
            pred, truth = pred.reshape(pred.shape[-3:]), truth.reshape(truth.shape[-3:])
            case = str(item.get("id", len(self.rows)))
            self.rows.append((case, dice_per_label(pred, truth, len(self.label_names))))

    def _write(self, engine: Engine) -> dict:
        from medtransfer.metrics import mean_std

        names = self.label_names[1:]
        write_csv_atomic(
            self.output_dir / f"{self.prefix}_cases.csv",
            ["case", *[f"dice_{n}" for n in names]],
            ([case, *[f"{d:.6f}" for d in dice]] for case, dice in self.rows),
        )
        per_label = {}
        for j, name in enumerate(names):
            values = [d[j] for _, d in self.rows if math.isfinite(d[j])]
            mean, std = mean_std(values) if values else (float("nan"), float("nan"))
            per_label[name] = {"mean": mean, "std": std, "n_cases": len(values)}
        finite = [per_label[n]["mean"] for n in names if math.isfinite(per_label[n]["mean"])]
        report = {
            "n_cases": len(self.rows),
            "mean_dice": float(np.mean(finite)) if finite else float("nan"),
            "dice": per_label,
            "cases": {case: dict(zip(names, dice, strict=True)) for case, dice in self.rows},
            **self.extra,
        }
        save_json(report, self.output_dir / f"{self.prefix}_metrics.json")
        table = markdown_table(
            ["label", "Dice mean", "std", "cases"],
            [[n, per_label[n]["mean"], per_label[n]["std"], per_label[n]["n_cases"]] for n in names],
        )
        write_text_atomic(self.output_dir / f"{self.prefix}_metrics.md", table + "\n")
        logger.info(f"{self.prefix}: {len(self.rows)} case(s), mean Dice {report['mean_dice']:.4f}\n{table}")
        self.report = report
        return report
