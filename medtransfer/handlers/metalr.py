"""Learning rates during training: MetaLR as an ordinary trainer handler, and the recorder of every group's LR.

``MetaLRHandler`` needs nothing from the trainer but its public attributes and MONAI's ``BACKWARD_COMPLETED`` event,
which fires between ``loss.backward()`` and the optimizer step: the gradients are there and the step has not used the
LRs yet. So AMP, events, metrics and every other handler run as in plain training, with no second training pass.
"""

from __future__ import annotations

import contextlib
import csv
from collections.abc import Callable, Sequence
from pathlib import Path

import torch
from ignite.engine import Engine, Events
from monai.engines.utils import IterationEvents

from medtransfer import distributed
from medtransfer import metalr as metalr_lib
from medtransfer.atomic import write_csv_atomic
from medtransfer.report import plot_lr_curves


def _all_finite(tensors: Sequence[torch.Tensor]) -> bool:
    """Whether every tensor is finite, with one device-to-host sync for all of them (not one per tensor)."""
    return not tensors or bool(torch.stack([torch.isfinite(t).all() for t in tensors]).all())


class MetaLRHandler:
    """Tunes layer-wise LRs with MetaLR inside MONAI's ``SupervisedTrainer``, from the gradients the trainer just made.

    On ``BACKWARD_COMPLETED`` (between the backward pass and the optimizer step) of a due iteration it draws the next
    batch of `meta_batches` (a resumable iterator such as :class:`medtransfer.metalr.CyclingBatches`) and calls
    :func:`medtransfer.metalr.metalr_step`; the trainer's own optimizer step then runs with the new LRs. With
    ``meta_source="train_next"`` there are no meta batches: :func:`medtransfer.metalr.next_batch_metalr_step` uses
    the gradients the trainer just made as the meta gradient of the previous step. With AMP the gradients are
    unscaled first (the scaler's step knows and will not unscale twice), the meta forward runs under the trainer's
    autocast, and a step the scaler will skip (non-finite gradients) gets no meta update and leaves no kept direction.
    Its state is MetaLR's plus the position in `meta_batches` (:class:`medtransfer.metalr.MetaLRState`, which bundles
    put in ``checkpoint_objects`` so the handler itself can stay inline in the handler list), so a resumed run draws
    the same batches. Under DDP every rank runs it on its shard of the meta batch and all end with the same LRs
    (:func:`~medtransfer.metalr.hypergradient_from_directions`).

    Args:
        metalr: the LRs' owner.
        meta_batches: the meta batches (None only for ``train_next``).
        meta_source: where they come from (``medtransfer.metalr.META_SOURCES``).
    """

    def __init__(
        self,
        metalr: metalr_lib.MetaLR,
        meta_batches: metalr_lib.CyclingBatches | None = None,
        meta_source: str = "heldout",
    ) -> None:
        if meta_source not in metalr_lib.META_SOURCES:
            raise ValueError(f"meta_source must be one of {metalr_lib.META_SOURCES}, got {meta_source!r}")
        self.train_next = meta_source == "train_next"
        if meta_batches is None and not self.train_next:
            raise ValueError(f"MetaLR with meta_source {meta_source!r} needs meta batches")
        self.metalr, self.meta_batches = metalr, meta_batches
        self.last_hypergradient: torch.Tensor | None = None

    def attach(self, engine: Engine) -> None:
        if not engine.has_event_handler(self, IterationEvents.BACKWARD_COMPLETED):
            engine.add_event_handler(Events.STARTED, self._refuse_accumulation)
            engine.add_event_handler(IterationEvents.BACKWARD_COMPLETED, self)

    @staticmethod
    def _refuse_accumulation(engine: Engine) -> None:
        # checked when the run starts: MONAI attaches train_handlers before the trainer sets accumulation_steps
        if getattr(engine, "accumulation_steps", 1) > 1:
            raise ValueError("MetaLR needs one optimizer step per iteration; set accumulation_steps to 1")

    def __call__(self, engine: Engine) -> None:
        metalr = self.metalr
        if self.train_next or metalr.is_due():
            scaler = engine.scaler if engine.amp else None
            if scaler is not None:
                scaler.unscale_(engine.optimizer)
            # with AMP an overflowing step is skipped by the scaler: skip its meta update too (without AMP a
            # non-finite gradient gives a non-finite hypergradient, which MetaLR.update ignores)
            will_step = scaler is None or _all_finite(
                [p.grad for group in metalr.groups for p in group.params if p.grad is not None]
            )
            if self.train_next:
                if will_step:
                    hyper = metalr_lib.next_batch_metalr_step(metalr, engine.state.epoch)
                    self.last_hypergradient = hyper if hyper is not None else self.last_hypergradient
                else:
                    metalr.drop_pending()
            elif will_step:
                batch = engine.prepare_batch(
                    next(self.meta_batches), engine.state.device, engine.non_blocking, **engine.to_kwargs
                )
                self.last_hypergradient = metalr_lib.metalr_step(
                    distributed.unwrap(engine.network),  # the bare module: no DDP reducer in the meta pass
                    lambda pred, target: engine.loss_function(pred, target).mean(),
                    (batch[0], batch[1]),
                    metalr,
                    engine.state.epoch,
                    forward_context=self._autocast(engine),
                    loss_scale=float(scaler.get_scale()) if scaler is not None else 1.0,
                )
        metalr.record()

    @staticmethod
    def _autocast(engine: Engine) -> Callable[[], contextlib.AbstractContextManager]:
        """The trainer's own autocast for the validation forward (none without AMP)."""
        if not engine.amp:
            return contextlib.nullcontext
        return lambda: torch.autocast("cuda", **engine.amp_kwargs)

    def state_dict(self) -> dict:
        """MetaLR's LRs, history and kept direction plus the position in the meta batches, for exact resume."""
        return metalr_lib.MetaLRState(self.metalr, self.meta_batches).state_dict()

    def load_state_dict(self, state: dict) -> None:
        metalr_lib.MetaLRState(self.metalr, self.meta_batches).load_state_dict(state)


class LRRecorder:
    """Every layer group's LR at every iteration: TensorBoard scalars, ``lr_history.csv`` and ``lr_curves.png``.

    It reads the optimizer's parameter groups after each step, so it records plain schedules, MetaLR's learned LRs
    (MetaLR writes its LRs into the same groups) and every strategy's layout alike (:meth:`effective_lrs`). On resume
    it reads back the rows of the iterations already trained from ``lr_history.csv`` (as TrainingHistory does with
    ``history.json``), so the files cover the whole run
    and it needs no place in the checkpoint (nor a reference in the handler list, which MONAI's property check
    cannot read); they are rewritten atomically at each epoch end.
    """

    writes_files = True

    def __init__(self, output_dir: str, optimizer: torch.optim.Optimizer, groups: Sequence, tensorboard: bool = True):
        self.output_dir, self.optimizer, self.groups = Path(output_dir), optimizer, groups
        self.tensorboard = tensorboard
        self.history: list[list[float]] = []
        self._writer = None
        # which optimizer group holds each tensor: fixed once the optimizer exists, so looked up once, not per step
        where = {id(p): j for j, g in enumerate(optimizer.param_groups) for p in g["params"]}
        self._layout = [[(p, p.numel(), where[id(p)]) for p in group.params if id(p) in where] for group in groups]

    def effective_lrs(self) -> list[float]:
        """Each layer group's LR: the size-weighted mean over its trainable tensors, 0 for a frozen group.

        Strategies may give a layer group several optimizer groups (LLRD splits off the tensors without weight
        decay, Auto-RGN has one per tensor), so the LR is read per tensor, not per optimizer group.
        """
        lr = [float(g["lr"]) for g in self.optimizer.param_groups]
        result = []
        for tensors in self._layout:
            moving = [(n, lr[j]) for p, n, j in tensors if p.requires_grad]
            size = sum(n for n, _ in moving)
            if len({lr for _, lr in moving}) == 1:
                result.append(moving[0][1])  # one LR for the whole group (exact, no rounding of a mean)
            else:
                result.append(sum(n * lr for n, lr in moving) / size if size else 0.0)
        return result

    def attach(self, engine: Engine) -> None:
        engine.add_event_handler(Events.STARTED, self._restore)
        engine.add_event_handler(Events.ITERATION_COMPLETED, self._record)
        engine.add_event_handler(Events.EPOCH_COMPLETED, self.save)
        engine.add_event_handler(Events.COMPLETED, self._close)

    def _restore(self, engine: Engine) -> None:
        path = self.output_dir / "lr_history.csv"
        if engine.state.iteration > 0 and path.is_file():
            with open(path, newline="") as f:
                rows = list(csv.reader(f))[1:]
            self.history = [[float(v) for v in row[1:]] for row in rows if int(row[0]) <= engine.state.iteration]

    def _record(self, engine: Engine) -> None:
        lrs = self.effective_lrs()
        self.history.append(lrs)
        if not self.tensorboard:
            return
        if self._writer is None:
            from torch.utils.tensorboard import SummaryWriter

            self._writer = SummaryWriter(log_dir=str(self.output_dir / "tensorboard"))
        for group, lr in zip(self.groups, lrs, strict=True):
            self._writer.add_scalar(f"lr/{group.label}", lr, engine.state.iteration)

    def save(self, engine: Engine | None = None) -> None:
        self.output_dir.mkdir(parents=True, exist_ok=True)
        write_csv_atomic(
            self.output_dir / "lr_history.csv",
            ["iteration", *(g.name for g in self.groups)],
            ([i, *(f"{v:.8g}" for v in row)] for i, row in enumerate(self.history, start=1)),
        )
        if self.history:
            plot_lr_curves(self.history, [g.label for g in self.groups], self.output_dir / "lr_curves.png")

    def _close(self, engine: Engine) -> None:
        if self._writer is not None:
            self._writer.close()
            self._writer = None
