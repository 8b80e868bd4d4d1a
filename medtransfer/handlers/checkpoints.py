"""Training state: seeding, initial weights, per-epoch history, epoch checkpoints and exact resume, the NaN guard.

Everything a run needs to be stopped and continued as if it never was: every file lands in the run directory and is
written atomically, so an interrupted run never leaves a half-written result behind.
"""

from __future__ import annotations

import json
import logging
import math
from pathlib import Path

import numpy as np
import torch
from ignite.engine import Engine, Events
from monai.data.utils import set_rnd
from monai.handlers import CheckpointLoader
from monai.utils import set_determinism

from medtransfer import distributed
from medtransfer.atomic import save_torch_atomic, write_csv_atomic
from medtransfer.errors import RunDirectoryError
from medtransfer.handlers.reports import as_rows
from medtransfer.report import plot_history, save_json
from medtransfer.runs import checkpoint_epoch, epoch_checkpoints, latest_checkpoint
from medtransfer.settings import as_flag

logger = logging.getLogger(__name__)


def read_history(run_dir: str | Path) -> dict | None:
    """A run's ``history.json`` (written by :class:`TrainingHistory`), or None when it has none yet."""
    path = Path(run_dir) / "history.json"
    return json.loads(path.read_text()) if path.is_file() else None


class TrainingHistory:
    """Per-epoch training loss and validation metrics as ``history.json``/``.csv``/``.png`` in the run directory.

    Attach it after the ValidationHandler so it sees this epoch's validation metrics. On resume it keeps the rows of
    the epochs already trained and drops any written after the checkpoint it resumed from.
    """

    writes_files = True  # rank 0 only under data-parallel training (medtransfer.distributed.handlers_for_this_rank)

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
        out = as_rows(engine.state.output)[0]
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
        """The row with the best key validation metric (:func:`best_row`)."""
        return best_row(self.rows, self.key_metric)

    def save(self) -> None:
        self.output_dir.mkdir(parents=True, exist_ok=True)
        save_json(
            {"epochs": self.rows, "best": self.best(), "key_metric": self.key_metric}, self.output_dir / "history.json"
        )
        keys = list(dict.fromkeys(k for r in self.rows for k in r if k != "lr"))
        write_csv_atomic(self.output_dir / "history.csv", keys, ([r.get(k) for k in keys] for r in self.rows))
        plot_history([{k: v for k, v in r.items() if k != "lr"} for r in self.rows], self.output_dir / "history.png")


def best_row(rows: list[dict], key_metric: str | None) -> dict | None:
    """The row with the best key validation metric, the latest one on ties, as checkpoint selection sees it.

    Latest on ties because a small validation split saturates (AUC 1.0 from epoch 1): keeping the first such epoch
    would select an almost untrained model. :class:`BestModelSaver` (``greater_or_equal``) selects the same way.
    """
    key = f"val_{key_metric}" if key_metric else None
    rows = [r for r in rows if key and r.get(key) is not None and not math.isnan(r[key])]
    return max(reversed(rows), key=lambda r: r[key]) if rows else None


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
        seed = distributed.rank_seed(self.seed * 100_003, engine.state.epoch)
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
        loss = float(torch.as_tensor(as_rows(engine.state.output)[0]["loss"]).detach())
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

    writes_files = True

    def __init__(
        self, output_dir: str, model: torch.nn.Module, enabled: bool = True, filename: str = "init.pt"
    ) -> None:
        self.output_dir, self.model, self.filename = Path(output_dir), model, filename
        self.enabled = as_flag(enabled, "save_init")

    def attach(self, engine: Engine) -> None:
        if self.enabled:
            engine.add_event_handler(Events.STARTED, self._save)

    def _save(self, engine: Engine) -> None:
        path = self.output_dir / self.filename
        if path.exists():
            return
        save_torch_atomic({k: v.detach().cpu().clone() for k, v in self.model.state_dict().items()}, path)


def checkpoint_state(objects: dict) -> dict:
    """What ignite's ``Checkpoint`` saves for these objects: their ``state_dict()``s by name, or the bare state of a
    single object (so ``model.pt`` loads into a network directly and MONAI's ``CheckpointLoader`` reads both)."""
    states = {name: distributed.unwrap(obj).state_dict() for name, obj in objects.items()}
    return next(iter(states.values())) if len(states) == 1 else states


class EpochCheckpoint:
    """Saves `save_dict` plus the trainer's own state (epoch, iteration) as ``checkpoint_epoch=N.pt`` every epoch.

    Crash-safe replacement: the new checkpoint is written to a temporary file, flushed and renamed into place, and
    only then are checkpoints beyond the newest `n_saved` deleted (counted on disk, so a resumed run honours
    `n_saved` too). At every instant a complete earlier checkpoint exists. The trainer joins at attach time, so
    configs need not reference the trainer from its own handler list (a circular reference).
    """

    def __init__(self, output_dir: str, save_dict: dict, n_saved: int = 1, interval: int = 1) -> None:
        self.output_dir, self.save_dict, self.n_saved, self.interval = Path(output_dir), save_dict, n_saved, interval

    def attach(self, engine: Engine) -> None:
        engine.add_event_handler(Events.EPOCH_COMPLETED(every=self.interval), self)

    def __call__(self, engine: Engine) -> None:
        if not distributed.is_main_process():
            return
        previous = latest_checkpoint(self.output_dir)
        path = self.output_dir / f"checkpoint_epoch={engine.state.epoch}.pt"
        save_torch_atomic(checkpoint_state({**self.save_dict, "trainer": engine}), path, previous=previous)
        for _, old in epoch_checkpoints(self.output_dir)[: -self.n_saved]:
            old.unlink(missing_ok=True)


class BestModelSaver:
    """Keeps the network of the best validation epoch as ``model.pt``, replaced crash-safely (write, fsync, rename).

    Attach it to the evaluator: after each validation it compares the key metric with the best so far and saves on
    an improvement, or on a tie with `greater_or_equal` (a saturated score keeps the latest, most trained model).
    NaN scores never count. The file is never deleted first, so a kill or a full disk leaves the previous best
    complete; :class:`ResumeFromRun` restores ``best_score`` from the history on disk.
    """

    def __init__(
        self,
        save_dir: str,
        save_dict: dict,
        filename: str = "model.pt",
        greater_or_equal: bool = True,
        metric_name: str | None = None,
    ) -> None:
        self.path = Path(save_dir) / filename
        self.save_dict, self.greater_or_equal, self.metric_name = save_dict, greater_or_equal, metric_name
        self.best_score: float | None = None

    def attach(self, engine: Engine) -> None:
        engine.add_event_handler(Events.EPOCH_COMPLETED, self)

    def __call__(self, engine: Engine) -> None:
        name = self.metric_name or engine.state.key_metric_name
        score = float(engine.state.metrics[name])
        if math.isnan(score) or not self._improves(score):
            return
        if distributed.is_main_process():
            previous = self.path if self.path.is_file() else None
            save_torch_atomic(checkpoint_state(self.save_dict), self.path, previous=previous)
        self.best_score = score

    def _improves(self, score: float) -> bool:
        if self.best_score is None:
            return True
        return score >= self.best_score if self.greater_or_equal else score > self.best_score


class ResumeFromRun:
    """Restores model, optimizer, trainer and best-model tracking from the newest complete epoch checkpoint of a run.

    Attach it first in the trainer's handlers (the trainer itself is added to `load_dict` at attach time). A disabled
    instance does nothing, so bundles can always list it and switch it with ``--resume true``. The best-model
    bookkeeping is rebuilt from what is on disk: the best score among the history rows up to the resumed epoch, when
    the best model file exists (else the next validation writes one).
    """

    def __init__(
        self,
        run_dir: str,
        load_dict: dict,
        enabled: bool = False,
        best_saver: BestModelSaver | None = None,
    ) -> None:
        self.run_dir, self.load_dict, self.best_saver = run_dir, load_dict, best_saver
        self.enabled = as_flag(enabled, "resume")

    def attach(self, engine: Engine) -> None:
        if not self.enabled:
            return
        path = latest_checkpoint(self.run_dir)
        if path is None:
            raise RunDirectoryError(
                f"--resume true but {self.run_dir} holds no complete checkpoint_epoch=N.pt to resume from"
            )
        logger.info(f"resuming from {path}")
        CheckpointLoader(load_path=path, load_dict={**self.load_dict, "trainer": engine}, map_location="cpu").attach(
            engine
        )
        if self.best_saver is not None:
            self.best_saver.best_score = resumed_best_score(self.run_dir, checkpoint_epoch(self.run_dir))
            if self.best_saver.best_score is None:
                logger.info(f"{self.run_dir}: no best model on disk yet; the next validation writes one")


def resumed_best_score(run_dir: str | Path, epoch: int, best_file: str = "model.pt") -> float | None:
    """The best validation score up to `epoch` from ``history.json``, or None when the best model file is missing.

    Rows after `epoch` (written before a crash, for epochs that will be trained again) do not count.
    """
    recorded = read_history(run_dir)
    if recorded is None or not (Path(run_dir) / best_file).is_file():
        return None
    best = best_row([r for r in recorded["epochs"] if r["epoch"] <= epoch], recorded.get("key_metric"))
    return None if best is None else float(best[f"val_{recorded['key_metric']}"])
