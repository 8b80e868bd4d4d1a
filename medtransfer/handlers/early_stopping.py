"""Early stopping on the validation metric, exact under resume: the patience counter is rebuilt from ``history.json``.

A run stops when `patience` validations in a row have not improved on the best key metric (strictly: a tie does not
count as progress, so a saturated AUC of 1.0 stops too). The stop is recorded in ``history.json``
(``"early_stopped": {"epoch", "patience", "best_epoch"}``), and such a run counts as finished: ``compare`` and
:func:`medtransfer.runs.training_finished` skip its training, and ``--resume true`` rebuilds the counter from the
history's validation rows and ends at once. The selected checkpoint is the best epoch's ``model.pt``, as without it.
"""

from __future__ import annotations

import math
from pathlib import Path

from ignite.engine import Engine, Events

from medtransfer.handlers.checkpoints import read_history
from medtransfer.report import save_json

__all__ = ["EarlyStopping", "patience_spent"]


def patience_spent(values: list[float]) -> tuple[int, int]:
    """``(validations without improvement since the best, index of the best)`` for a sequence of key-metric values
    (NaN values count as no improvement)."""
    best, best_index, waited = -math.inf, -1, 0
    for index, value in enumerate(values):
        if value is not None and not math.isnan(value) and value > best:
            best, best_index, waited = value, index, 0
        else:
            waited += 1
    return waited, best_index


class EarlyStopping:
    """Stop training after `patience` validations without a better key metric (None: never).

    Args:
        patience: validations without improvement that end the run (``--early_stop_patience``); None switches it off.
        output_dir: the run folder (its ``history.json``).
        evaluator: the validation evaluator, whose key metric is read after each validation.
        key_metric: the key metric's name (``auc``), as in ``history.json`` (``val_auc``).
    """

    def __init__(self, patience: int | None, output_dir: str, evaluator: Engine, key_metric: str) -> None:
        if patience is not None and (int(patience) != patience or patience < 1):
            from medtransfer.errors import SettingsError

            raise SettingsError(f"--early_stop_patience {patience!r} must be a whole number >= 1 (or null: off)")
        self.patience = None if patience is None else int(patience)
        self.output_dir, self.evaluator, self.key_metric = Path(output_dir), evaluator, key_metric
        self.values: list[float] = []
        self.epochs: list[int] = []

    def attach(self, engine: Engine) -> None:
        if self.patience is None:
            return
        engine.add_event_handler(Events.STARTED, self._restore)
        engine.add_event_handler(Events.EPOCH_COMPLETED, self._check)

    def _restore(self, engine: Engine) -> None:
        """On resume: the validations recorded up to the checkpoint's epoch; a run that had stopped stops again."""
        history = read_history(self.output_dir) or {"epochs": []}
        key = f"val_{self.key_metric}"
        rows = [r for r in history["epochs"] if r["epoch"] <= engine.state.epoch and key in r]
        self.values, self.epochs = [r[key] for r in rows], [r["epoch"] for r in rows]
        if engine.state.epoch > 0 and patience_spent(self.values)[0] >= self.patience:
            engine.terminate()

    def _check(self, engine: Engine) -> None:
        if self.evaluator.state.epoch != engine.state.epoch:
            return  # no validation this epoch (--val_interval)
        metrics = self.evaluator.state.metrics
        value = metrics.get(f"val_{self.key_metric}", metrics.get(self.key_metric))
        self.values.append(math.nan if value is None else float(value))
        self.epochs.append(engine.state.epoch)
        waited, best = patience_spent(self.values)
        if waited >= self.patience and engine.state.epoch < engine.state.max_epochs:
            self._record(engine.state.epoch, self.epochs[best] if best >= 0 else None)
            engine.terminate()

    def _record(self, epoch: int, best_epoch: int | None) -> None:
        from medtransfer.distributed import rank

        if rank() != 0:
            return
        history = read_history(self.output_dir)
        if history is None:
            return
        history["early_stopped"] = {"epoch": epoch, "patience": self.patience, "best_epoch": best_epoch}
        save_json(history, self.output_dir / "history.json")
