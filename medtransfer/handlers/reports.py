"""Evaluation reports and validation metrics: what an evaluator saw, as metrics, CSV/JSON files and figures.

Classification (probabilities per sample, optionally averaged per clip) and segmentation (Dice per case on the input's
own grid) share the row helpers: MONAI hands handlers decollated output, one dict per sample.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path

import numpy as np
import torch
from ignite.engine import Engine, Events
from ignite.metrics import Metric
from monai.handlers import MeanDice, from_engine

from medtransfer import distributed
from medtransfer.atomic import write_csv_atomic, write_text_atomic
from medtransfer.metrics import classification_report, mean_std
from medtransfer.report import markdown_table, plot_confusion_matrix, save_json
from medtransfer.segmentation import dice_per_label

logger = logging.getLogger(__name__)


def as_rows(output) -> list[Mapping]:
    """Engine output or batch as a list of per-sample dicts (MONAI decollates them by default)."""
    return list(output) if isinstance(output, (list, tuple)) else [output]


def _probabilities(pred) -> np.ndarray:
    """One sample's class probabilities as a flat float numpy vector."""
    return torch.as_tensor(pred).detach().float().cpu().reshape(-1).numpy()


def _label_index(label) -> int:
    """A class index from an int, a 0-d tensor or a one-hot vector."""
    t = torch.as_tensor(label)
    return int(t.argmax()) if t.numel() > 1 else int(t.reshape(()))


def _group_mean(groups: Sequence[str], probs: np.ndarray, labels: Sequence[int | None]):
    """Per group (first-seen order): its name, the mean of its samples' probabilities, and its label.

    A group whose samples disagree on the label is a data error (a clip has one diagnosis).
    """
    order: dict[str, list[int]] = {}
    for i, g in enumerate(groups):
        order.setdefault(g, []).append(i)
    names, means, group_labels = [], [], []
    for g, idx in order.items():
        found = {labels[i] for i in idx}
        if len(found) > 1:
            raise ValueError(f"group {g!r} has samples with different labels {sorted(map(str, found))}")
        names.append(g)
        means.append(probs[idx].mean(axis=0))
        group_labels.append(found.pop())
    return names, np.stack(means), group_labels


class ClassificationMetric(Metric):
    """An Ignite metric over softmax outputs computed by `medtransfer.metrics` (one definition of AUC everywhere).

    Use as a MONAI ``key_val_metric`` with ``output_transform=monai.handlers.from_engine(['pred', 'label'])``.
    """

    NAMES = ("auc", "accuracy", "macro_f1")

    def __init__(self, metric: str = "auc", output_transform: Callable = lambda x: x, device="cpu") -> None:
        if metric not in self.NAMES:
            raise ValueError(f"metric must be one of {self.NAMES}, got {metric!r}")
        self.metric = metric
        super().__init__(output_transform=output_transform, device=device)

    def reset(self) -> None:
        self._probs: list[np.ndarray] = []
        self._labels: list[int] = []

    def update(self, output) -> None:
        preds, labels = output
        for p, y in zip(preds, labels, strict=True):
            self._probs.append(_probabilities(p))
            self._labels.append(_label_index(y))

    def compute(self) -> float:
        # under data-parallel validation each rank holds its shard: the metric is over all of them, on every rank
        shards = distributed.gather_objects((self._probs, self._labels))
        all_probs = [p for probs, _ in shards for p in probs]
        labels = [y for _, shard_labels in shards for y in shard_labels]
        if not labels:
            raise RuntimeError("ClassificationMetric has no samples; is the validation set empty?")
        probs = np.stack(all_probs)
        names = [str(i) for i in range(probs.shape[1])]
        return float(classification_report(probs, np.asarray(labels), names)[self.metric])


def val_metrics(names: Sequence[str], exclude: str | None = None) -> dict[str, ClassificationMetric]:
    """``{"val_<name>": metric}`` for a SupervisedEvaluator's key/additional metrics (config keys cannot be computed)."""
    return {
        f"val_{n}": ClassificationMetric(n, output_transform=from_engine(["pred", "label"]))
        for n in names
        if n != exclude
    }


class _EpochReport:
    """What the reports share: start empty when the evaluator's epoch starts, collect every iteration's samples, and
    write the files when the epoch ends (an evaluator runs one epoch over the whole set)."""

    writes_files = True

    def attach(self, engine: Engine) -> None:
        engine.add_event_handler(Events.EPOCH_STARTED, self._reset)
        engine.add_event_handler(Events.ITERATION_COMPLETED, self._collect)
        engine.add_event_handler(Events.EPOCH_COMPLETED, self._write)

    def _reset(self, engine: Engine) -> None:
        raise NotImplementedError

    def _collect(self, engine: Engine) -> None:
        raise NotImplementedError

    def _write(self, engine: Engine) -> object:
        raise NotImplementedError


class ClassificationReport(_EpochReport):
    """Collects per-sample class probabilities from an evaluator and writes the report when it completes.

    Writes ``{prefix}_predictions.csv`` (source file, one probability column per class, prediction, label if known);
    when labels are present also ``{prefix}_metrics.json`` (accuracy, AUC, macro-F1, per-class precision/recall,
    confusion matrix, plus `extra` such as the seed) and ``{prefix}_confusion_matrix.png``. Used by evaluation (with
    labels) and by inference (without).

    With ``group_key`` (e.g. ``"clip"`` for video frames) it also writes the same report one level up,
    ``{prefix}_{group_key}_predictions.csv`` / ``_metrics.json`` / ``_confusion_matrix.png``: each group's
    prediction is the mean of its samples' probabilities, the clinically meaningful unit for a video.
    """

    def __init__(
        self,
        output_dir: str,
        class_names: Sequence[str],
        prefix: str = "test",
        image_key: str = "image",
        extra: dict | None = None,
        group_key: str | None = None,
    ) -> None:
        self.output_dir = Path(output_dir)
        self.class_names = list(class_names)
        self.prefix = prefix
        self.image_key = image_key
        self.extra = dict(extra or {})
        self.group_key = group_key

    def _reset(self, engine: Engine) -> None:
        self.probs: list[np.ndarray] = []
        self.labels: list[int | None] = []
        self.sources: list[str] = []
        self.groups: list[str] = []

    def _collect(self, engine: Engine) -> None:
        outputs, batch = as_rows(engine.state.output), as_rows(engine.state.batch)
        for out, item in zip(outputs, batch, strict=True):
            self.probs.append(_probabilities(out["pred"]))
            label = out.get("label", item.get("label"))
            self.labels.append(None if label is None else _label_index(label))
            self.sources.append(str(item.get(f"{self.image_key}_path", item.get("id", len(self.sources)))))
            if self.group_key is not None:
                if self.group_key not in item:
                    raise KeyError(f"ClassificationReport(group_key={self.group_key!r}): the data has no such key")
                self.groups.append(str(item[self.group_key]))

    def _write(self, engine: Engine) -> None:
        self.output_dir.mkdir(parents=True, exist_ok=True)
        probs = np.stack(self.probs)
        if probs.shape[1] != len(self.class_names):
            raise ValueError(
                f"the network gives {probs.shape[1]} outputs but there are {len(self.class_names)} classes"
            )
        self.report = self._write_level(self.prefix, self.sources, probs, self.labels)
        if self.group_key is not None:
            names, group_probs, group_labels = _group_mean(self.groups, probs, self.labels)
            self.group_report = self._write_level(f"{self.prefix}_{self.group_key}", names, group_probs, group_labels)

    def _write_level(self, prefix: str, sources: list[str], probs: np.ndarray, labels: list) -> dict | None:
        """Predictions CSV, and with labels the metrics JSON and confusion-matrix PNG, of one level."""
        has_labels = all(label is not None for label in labels)
        write_csv_atomic(
            self.output_dir / f"{prefix}_predictions.csv",
            ["source", *[f"p_{c}" for c in self.class_names], "predicted", *(["label"] if has_labels else [])],
            (
                [src, *[f"{v:.6f}" for v in p], self.class_names[int(p.argmax())]]
                + ([self.class_names[y]] if has_labels else [])
                for src, p, y in zip(sources, probs, labels, strict=True)
            ),
        )
        if not has_labels:
            logger.info(f"wrote {len(sources)} predictions to {self.output_dir / f'{prefix}_predictions.csv'}")
            return None
        report = classification_report(probs, np.asarray(labels), self.class_names)
        report.update(self.extra)
        save_json(report, self.output_dir / f"{prefix}_metrics.json")
        plot_confusion_matrix(
            np.asarray(report["confusion_matrix"]),
            self.class_names,
            self.output_dir / f"{prefix}_confusion_matrix.png",
            title=f"{prefix}: accuracy {report['accuracy']:.3f}, AUC {report['auc']:.3f} (n={report['n']})",
        )
        logger.info(
            f"{prefix}: n={report['n']} accuracy={report['accuracy']:.4f} auc={report['auc']:.4f} "
            f"macro_f1={report['macro_f1']:.4f} -> {self.output_dir}"
        )
        return report


def _pred_label(output):
    """Output transform: ``(preds, labels)`` lists from decollated engine output."""
    rows = as_rows(output)
    return [r["pred"] for r in rows], [r["label"] for r in rows]


class _Channel:
    """Output transform picking one class channel of one-hot ``pred``/``label`` (picklable, unlike a lambda)."""

    def __init__(self, index: int) -> None:
        self.index = index

    def __call__(self, output):
        rows = as_rows(output)
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


class SegmentationReport(_EpochReport):
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

    def _reset(self, engine: Engine) -> None:
        self.rows: list[tuple[str, list[float]]] = []

    def _collect(self, engine: Engine) -> None:
        outputs, batch = as_rows(engine.state.output), as_rows(engine.state.batch)
        for out, item in zip(outputs, batch, strict=True):
            pred = torch.as_tensor(out["pred"]).detach().cpu().numpy()
            truth = torch.as_tensor(item[self.label_key]).detach().cpu().numpy()
            pred, truth = pred.reshape(pred.shape[-3:]), truth.reshape(truth.shape[-3:])
            case = str(item.get("id", len(self.rows)))
            self.rows.append((case, dice_per_label(pred, truth, len(self.label_names))))

    def _write(self, engine: Engine) -> dict:
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
