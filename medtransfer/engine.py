"""MONAI/Ignite glue: small handlers, one concern each, with the ``attach(engine)`` contract MONAI workflows use.

Bundles list these in their ``train#handlers`` / ``validate#handlers``; every file a handler writes lands in the run
directory and is written atomically, so an interrupted run never leaves a half-written result behind.
"""

from __future__ import annotations

import contextlib
import json
import logging
import math
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path

import numpy as np
import torch
from ignite.engine import Engine, Events
from ignite.metrics import Metric
from monai.data.utils import set_rnd
from monai.handlers import CheckpointLoader, CheckpointSaver
from monai.utils import set_determinism

from medtransfer.atomic import atomic_path, write_csv_atomic
from medtransfer.metrics import classification_report
from medtransfer.report import plot_confusion_matrix, plot_history, save_json
from medtransfer.runs import latest_checkpoint

logger = logging.getLogger(__name__)


def _as_rows(output) -> list[Mapping]:
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
        if not self._labels:
            raise RuntimeError("ClassificationMetric has no samples; is the validation set empty?")
        probs = np.stack(self._probs)
        names = [str(i) for i in range(probs.shape[1])]
        return float(classification_report(probs, np.asarray(self._labels), names)[self.metric])


def val_metrics(names: Sequence[str], exclude: str | None = None) -> dict[str, ClassificationMetric]:
    """``{"val_<name>": metric}`` for a SupervisedEvaluator's key/additional metrics (config keys cannot be computed)."""
    from monai.handlers import from_engine

    return {
        f"val_{n}": ClassificationMetric(n, output_transform=from_engine(["pred", "label"]))
        for n in names
        if n != exclude
    }


class ClassificationReport:
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

    def attach(self, engine: Engine) -> None:
        engine.add_event_handler(Events.EPOCH_STARTED, self._reset)
        engine.add_event_handler(Events.ITERATION_COMPLETED, self._collect)
        engine.add_event_handler(Events.EPOCH_COMPLETED, self._write)

    def _reset(self, engine: Engine) -> None:
        self.probs: list[np.ndarray] = []
        self.labels: list[int | None] = []
        self.sources: list[str] = []
        self.groups: list[str] = []

    def _collect(self, engine: Engine) -> None:
        outputs, batch = _as_rows(engine.state.output), _as_rows(engine.state.batch)
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


def read_history(run_dir: str | Path) -> dict | None:
    """A run's ``history.json`` (written by :class:`TrainingHistory`), or None when it has none yet."""
    path = Path(run_dir) / "history.json"
    return json.loads(path.read_text()) if path.is_file() else None


class TrainingHistory:
    """Per-epoch training loss and validation metrics as ``history.json``/``.csv``/``.png`` in the run directory.

    Attach it after the ValidationHandler so it sees this epoch's validation metrics. On resume it keeps the rows of
    the epochs already trained and drops any written after the checkpoint it resumed from.
    """

    def __init__(self, output_dir: str, evaluator: Engine | None = None, key_metric: str | None = None) -> None:
        self.output_dir = Path(output_dir)
        self.evaluator = evaluator
        self.key_metric = key_metric
        self.rows: list[dict] = []

    def attach(self, engine: Engine) -> None:
        engine.add_event_handler(Events.STARTED, self._restore)
        engine.add_event_handler(Events.EPOCH_STARTED, self._start_epoch)
        engine.add_event_handler(Events.ITERATION_COMPLETED, self._add_loss)
        engine.add_event_handler(Events.EPOCH_COMPLETED, self._end_epoch)

    def _restore(self, engine: Engine) -> None:
        recorded = read_history(self.output_dir)
        if engine.state.epoch > 0 and recorded is not None:
            self.rows = [r for r in recorded["epochs"] if r["epoch"] <= engine.state.epoch]

    def _start_epoch(self, engine: Engine) -> None:
        self._losses: list[float] = []
        # the learning rates this epoch trains with (schedulers step at epoch end, before this handler sees it)
        self._lrs = [g["lr"] for g in engine.optimizer.param_groups] if hasattr(engine, "optimizer") else None

    def _add_loss(self, engine: Engine) -> None:
        out = _as_rows(engine.state.output)[0]
        if "loss" in out:
            self._losses.append(float(torch.as_tensor(out["loss"]).detach()))

    def _end_epoch(self, engine: Engine) -> None:
        row: dict = {"epoch": engine.state.epoch, "train_loss": float(np.mean(self._losses)) if self._losses else None}
        row["lr"] = self._lrs
        if self.evaluator is not None and self.evaluator.state.epoch == engine.state.epoch:
            metrics = self.evaluator.state.metrics
            row.update(
                {k if k.startswith("val_") else f"val_{k}": float(v) for k, v in metrics.items() if _is_number(v)}
            )
        self.rows.append(row)
        self.save()

    def best(self) -> dict | None:
        """The row with the best key validation metric, the latest one on ties, as checkpoint selection sees it.

        Latest on ties because a small validation split saturates (AUC 1.0 from epoch 1): keeping the first such
        epoch would select an almost untrained model. Bundles set ``key_metric_greater_or_equal`` on their
        CheckpointSaver to match.
        """
        key = f"val_{self.key_metric}" if self.key_metric else None
        rows = [r for r in self.rows if key and r.get(key) is not None and not math.isnan(r[key])]
        return max(reversed(rows), key=lambda r: r[key]) if rows else None

    def save(self) -> None:
        self.output_dir.mkdir(parents=True, exist_ok=True)
        save_json(
            {"epochs": self.rows, "best": self.best(), "key_metric": self.key_metric}, self.output_dir / "history.json"
        )
        keys = list(dict.fromkeys(k for r in self.rows for k in r if k != "lr"))
        write_csv_atomic(self.output_dir / "history.csv", keys, ([r.get(k) for k in keys] for r in self.rows))
        plot_history([{k: v for k, v in r.items() if k != "lr"} for r in self.rows], self.output_dir / "history.png")


def _is_number(v) -> bool:
    return isinstance(v, (int, float)) or (isinstance(v, torch.Tensor) and v.numel() == 1)


class EpochSeed:
    """Re-seeds every RNG (torch, numpy, random, MONAI transforms) from (seed, epoch) when an epoch starts.

    Why: shuffling and augmentation then depend only on the seed and the epoch number, so a run resumed from an
    epoch checkpoint continues exactly as the uninterrupted run would have.
    """

    def __init__(self, seed: int, dataset=None) -> None:
        self.seed = int(seed)
        self.dataset = dataset

    def attach(self, engine: Engine) -> None:
        engine.add_event_handler(Events.EPOCH_STARTED, self)

    def __call__(self, engine: Engine) -> None:
        seed = self.seed * 100_003 + engine.state.epoch
        set_determinism(seed=seed)
        if self.dataset is not None:
            set_rnd(self.dataset, seed)


class StopOnNonFiniteLoss:
    """Stops training with a clear error when the loss becomes NaN or infinite, naming the last good checkpoint."""

    def __init__(self, output_dir: str | None = None) -> None:
        self.output_dir = output_dir

    def attach(self, engine: Engine) -> None:
        engine.add_event_handler(Events.ITERATION_COMPLETED, self)

    def __call__(self, engine: Engine) -> None:
        loss = float(torch.as_tensor(_as_rows(engine.state.output)[0]["loss"]).detach())
        if not math.isfinite(loss):
            last = latest_checkpoint(self.output_dir) if self.output_dir else None
            raise FloatingPointError(
                f"training loss became {loss} at epoch {engine.state.epoch}, iteration {engine.state.iteration}. "
                "Lower the learning rate (--lr), check the inputs for NaN/inf values, or disable AMP; "
                + (
                    f"the last good checkpoint is {last} (continue from it with --resume true)."
                    if last
                    else "no checkpoint was written yet."
                )
            )


class SaveInitialWeights:
    """Saves the network as it is before the first training step as ``init.pt`` in the run directory.

    Layer-wise transferability compares weights with where training started: for pre-training that is the random
    initialisation θr, for fine-tuning it is θB0 (the pre-trained body with its freshly initialised head). Written
    atomically and only once, so a resumed run keeps the true starting point.
    """

    def __init__(
        self, output_dir: str, model: torch.nn.Module, enabled: bool = True, filename: str = "init.pt"
    ) -> None:
        self.output_dir, self.model, self.enabled, self.filename = Path(output_dir), model, enabled, filename

    def attach(self, engine: Engine) -> None:
        if self.enabled:
            engine.add_event_handler(Events.STARTED, self._save)

    def _save(self, engine: Engine) -> None:
        path = self.output_dir / self.filename
        if path.exists():
            return
        with atomic_path(path) as tmp:
            torch.save({k: v.detach().cpu().clone() for k, v in self.model.state_dict().items()}, tmp)


class EpochCheckpoint:
    """Saves `save_dict` plus the trainer's own state (epoch, iteration) as ``checkpoint_epoch=N.pt`` every epoch.

    The trainer joins at attach time, so configs need not reference the trainer from its own handler list (a circular
    reference). ignite's DiskSaver writes to a temporary file and renames it: a crash never leaves a torn checkpoint.
    """

    def __init__(self, output_dir: str, save_dict: dict, n_saved: int = 1, interval: int = 1) -> None:
        self.output_dir, self.save_dict, self.n_saved, self.interval = output_dir, save_dict, n_saved, interval

    def attach(self, engine: Engine) -> None:
        from ignite.handlers import Checkpoint, DiskSaver

        checkpoint = Checkpoint(
            {**self.save_dict, "trainer": engine},
            DiskSaver(self.output_dir, require_empty=False, atomic=True),
            filename_pattern="checkpoint_epoch={global_step}.{ext}",
            n_saved=self.n_saved,
            global_step_transform=lambda e, _: e.state.epoch,
        )
        engine.add_event_handler(Events.EPOCH_COMPLETED(every=self.interval), checkpoint)


class ResumeFromRun:
    """Restores model, optimizer, trainer and best-model tracking from the newest epoch checkpoint of a run.

    Attach it first in the trainer's handlers (the trainer itself is added to `load_dict` at attach time). A disabled
    instance does nothing, so bundles can always list it and switch it with ``--resume true``.
    """

    def __init__(
        self,
        run_dir: str,
        load_dict: dict,
        enabled: bool = False,
        best_saver: CheckpointSaver | None = None,
        best_file: str = "model.pt",
    ) -> None:
        self.run_dir, self.load_dict, self.enabled = run_dir, load_dict, enabled
        self.best_saver, self.best_file = best_saver, best_file

    def attach(self, engine: Engine) -> None:
        if not self.enabled:
            return
        path = latest_checkpoint(self.run_dir)
        if path is None:
            raise FileNotFoundError(f"--resume true but {self.run_dir} holds no checkpoint_epoch=N.pt to resume from")
        logger.info(f"resuming from {path}")
        CheckpointLoader(load_path=path, load_dict={**self.load_dict, "trainer": engine}, map_location="cpu").attach(
            engine
        )
        recorded = read_history(self.run_dir)
        if self.best_saver is not None and recorded is not None:
            best, key = recorded.get("best"), recorded.get("key_metric")
            if best and key and self.best_saver._key_metric_checkpoint is not None:
                # the best model on disk keeps its place: a worse epoch after resuming must not replace it
                self.best_saver.load_state_dict({"_saved": [(best[f"val_{key}"], self.best_file)]})


def _all_finite(tensors: Sequence[torch.Tensor]) -> bool:
    """Whether every tensor is finite, with one device-to-host sync for all of them (not one per tensor)."""
    return not tensors or bool(torch.stack([torch.isfinite(t).all() for t in tensors]).all())


class MetaLRIteration:
    """``iteration_update`` for MONAI's SupervisedTrainer that tunes layer-wise LRs with MetaLR.

    It runs the trainer's own iteration (the pattern of MONAI deepgrow's ``Interaction``), so AMP, events, metrics and
    handlers work unchanged. Between the trainer's backward pass and its optimizer step (``BACKWARD_COMPLETED``) it
    computes the hypergradient from the gradients the trainer just made and one held-out validation batch, then lets
    the real step run with the new LRs: no second training forward/backward.
    """

    def __init__(self, metalr, val_batches) -> None:
        self.metalr, self.val_batches = metalr, val_batches
        self._hooked: set[int] = set()
        self.last_hypergradient: torch.Tensor | None = None

    def __call__(self, engine: Engine, batchdata):
        if id(engine) not in self._hooked:
            if getattr(engine, "accumulation_steps", 1) > 1:
                raise ValueError("MetaLR needs one optimizer step per iteration; set accumulation_steps to 1")
            from monai.engines.utils import IterationEvents

            engine.add_event_handler(IterationEvents.BACKWARD_COMPLETED, self._meta_update)
            self._hooked.add(id(engine))
        return engine._iteration(engine, batchdata)

    def _meta_update(self, engine: Engine) -> None:
        from medtransfer.metalr import hypergradient_from_grads

        metalr = self.metalr
        if metalr.is_due():
            scaler = engine.scaler if engine.amp else None
            if scaler is not None:
                scaler.unscale_(engine.optimizer)  # the step that follows knows, and will not unscale twice
            grads = [[p.grad for p in group.params] for group in metalr.groups]
            # with AMP an overflowing step is skipped by the scaler: skip its meta update too (without AMP a
            # non-finite gradient gives a non-finite hypergradient, which MetaLR.update ignores)
            finite = scaler is None or _all_finite([g for gs in grads for g in gs if g is not None])
            if finite:
                batch = engine.prepare_batch(next(self.val_batches), engine.state.device, engine.non_blocking)
                context = (
                    (lambda: torch.autocast("cuda", **engine.amp_kwargs)) if engine.amp else contextlib.nullcontext
                )
                self.last_hypergradient = hypergradient_from_grads(
                    engine.network,
                    lambda pred, target: engine.loss_function(pred, target).mean(),
                    (batch[0], batch[1]),
                    metalr.lrs,
                    metalr.groups,
                    grads,
                    forward_context=context,
                    loss_scale=float(scaler.get_scale()) if scaler is not None else 1.0,
                )
                metalr.update(self.last_hypergradient, engine.state.epoch)
        metalr.record()

    def state_dict(self) -> dict:
        """MetaLR's LRs and history plus the position in the validation batches, for exact resume."""
        return {"metalr": self.metalr.state_dict(), "val_batches": self.val_batches.state_dict()}

    def load_state_dict(self, state: dict) -> None:
        self.metalr.load_state_dict(state["metalr"])
        self.val_batches.load_state_dict(state["val_batches"])


class LRRecorder:
    """Every layer group's LR at every iteration: TensorBoard scalars, ``lr_history.csv`` and ``lr_curves.png``.

    It reads the optimizer's parameter groups after each step, so it records plain schedules and MetaLR's learned
    LRs alike (MetaLR writes its LRs into the same groups). Its history is part of the checkpoint
    (``state_dict``), so after a resume the files still cover the whole run; they are rewritten atomically at each
    epoch end.
    """

    def __init__(self, output_dir: str, optimizer: torch.optim.Optimizer, groups: Sequence, tensorboard: bool = True):
        self.output_dir, self.optimizer, self.groups, self.tensorboard = Path(output_dir), optimizer, groups, tensorboard
        if len(optimizer.param_groups) != len(groups):
            raise ValueError(
                f"LRRecorder: the optimizer has {len(optimizer.param_groups)} parameter groups but there are "
                f"{len(groups)} layer groups; build the optimizer with medtransfer.layers.param_groups"
            )
        self.history: list[list[float]] = []
        self._writer = None

    def attach(self, engine: Engine) -> None:
        engine.add_event_handler(Events.ITERATION_COMPLETED, self._record)
        engine.add_event_handler(Events.EPOCH_COMPLETED, self.save)
        engine.add_event_handler(Events.COMPLETED, self._close)

    def _record(self, engine: Engine) -> None:
        lrs = [float(g["lr"]) for g in self.optimizer.param_groups]
        self.history.append(lrs)
        if not self.tensorboard:
            return
        if self._writer is None:
            from torch.utils.tensorboard import SummaryWriter

            self._writer = SummaryWriter(log_dir=str(self.output_dir / "tensorboard"))
        for group, lr in zip(self.groups, lrs, strict=True):
            self._writer.add_scalar(f"lr/{group.label}", lr, engine.state.iteration)

    def save(self, engine: Engine | None = None) -> None:
        from medtransfer.report import plot_lr_curves

        self.output_dir.mkdir(parents=True, exist_ok=True)
        write_csv_atomic(
            self.output_dir / "lr_history.csv",
            ["iteration", *(g.name for g in self.groups)],
            ([i, *(f"{v:.8g}" for v in row)] for i, row in enumerate(self.history, start=1)),
        )
        if self.history:
            plot_lr_curves(self.history, [g.label for g in self.groups], self.output_dir / "lr_curves.png")

    def state_dict(self) -> dict:
        return {"history": torch.tensor(self.history, dtype=torch.float64)}

    def load_state_dict(self, state: dict) -> None:
        self.history = [list(map(float, row)) for row in torch.as_tensor(state["history"]).tolist()]

    def _close(self, engine: Engine) -> None:
        if self._writer is not None:
            self._writer.close()
            self._writer = None
