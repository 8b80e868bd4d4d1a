"""Training progress that stays readable wherever it goes: ignite's bar on a terminal, one line per epoch otherwise.

A tqdm bar redraws itself with carriage returns; redirected to a file (``medtransfer cv ... > cv.log 2>&1``, a batch
job's log) every redraw becomes a fragment of text, several per iteration. When the stream is not a terminal,
:class:`RunProgress` writes one plain line at the end of each epoch instead::

    epoch 3/15: mean train loss 0.4123 over 12 iterations, 2.6 s
"""

from __future__ import annotations

import math
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from typing import IO, Any

from ignite.engine import Engine, Events
from ignite.handlers import ProgressBar

__all__ = ["ErrorsReportedOnce", "RunProgress", "batch_loss"]


class ErrorsReportedOnce:
    """Let an error leave the engine without MONAI's ``StatsHandler`` logging it with its traceback first.

    Each ``StatsHandler`` (the trainer's and its validator's) logs an exception it sees with the whole traceback and
    re-raises it, so an error during validation printed two tracebacks before the one line ``medtransfer run`` (and,
    under ``python -m monai.bundle run``, :func:`medtransfer.launch.install_error_hook`) ends with. Ignite stops at
    the first ``EXCEPTION_RAISED`` handler that raises: attached before the others, this one re-raises at once, and
    the command's own report is the only one (with the traceback under ``--traceback``, or for an unexpected error).
    """

    def attach(self, engine: Engine) -> None:
        engine.add_event_handler(Events.EXCEPTION_RAISED, self._raise)

    @staticmethod
    def _raise(engine: Engine, error: BaseException) -> None:
        raise error


def batch_loss(output: Any) -> float | None:
    """The loss of one iteration from a MONAI trainer's output (a dict, or a decollated list of dicts), or None."""
    if isinstance(output, Sequence) and not isinstance(output, (str, bytes)) and output:
        output = output[0]
    if isinstance(output, Mapping):
        output = output.get("loss")
    if output is None:
        return None
    try:
        value = float(output.detach()) if hasattr(output, "detach") else float(output)
    except (TypeError, ValueError):
        return None
    return value if math.isfinite(value) else None


def _is_terminal(stream: IO[str]) -> bool:
    try:
        return bool(stream.isatty())
    except (AttributeError, ValueError):  # no isatty, or a closed stream
        return False


class RunProgress:
    """Progress of a training engine: ignite's ``ProgressBar`` when ``stream`` is a terminal, else one line per epoch.

    Args:
        persist: keep the bar of finished epochs on screen (terminal only), as ``ProgressBar(persist=...)``.
        stream: where to write; default ``sys.stderr`` as it is when the handler attaches (where tqdm writes).
        bar: force the bar (True) or the epoch lines (False); default: the bar exactly when ``stream`` is a terminal.
        output_transform: maps ``engine.state.output`` to the loss (default :func:`batch_loss`).
        bar_kwargs: further ``ProgressBar`` arguments (``bar_format``, ``desc``, ``ncols``, ...), used on a terminal.

    Bundles list it in ``train#handlers``: ``{"_target_": "medtransfer.handlers.RunProgress", "persist": false}``.
    """

    writes_files = True  # one progress display, rank 0's, under data-parallel training

    def __init__(
        self,
        persist: bool = False,
        stream: IO[str] | None = None,
        bar: bool | None = None,
        output_transform: Callable[[Any], float | None] = batch_loss,
        **bar_kwargs: Any,
    ) -> None:
        self.persist = persist
        self.stream = stream
        self.bar = bar
        self.output_transform = output_transform
        self.bar_kwargs = bar_kwargs
        self._losses: list[float] = []
        self._iterations = 0
        self._started = 0.0

    def attach(self, engine: Engine) -> None:
        stream = self.stream if self.stream is not None else sys.stderr
        self.stream = stream
        if self.bar if self.bar is not None else _is_terminal(stream):
            kwargs = {"file": stream, **self.bar_kwargs}
            ProgressBar(persist=self.persist, **kwargs).attach(engine, output_transform=self._bar_postfix)
            return
        engine.add_event_handler(Events.EPOCH_STARTED, self._start_epoch)
        engine.add_event_handler(Events.ITERATION_COMPLETED, self._add_iteration)
        engine.add_event_handler(Events.EPOCH_COMPLETED, self._end_epoch)

    def _bar_postfix(self, output: Any) -> dict[str, float]:
        loss = self.output_transform(output)
        return {} if loss is None else {"loss": loss}

    def _start_epoch(self, engine: Engine) -> None:
        self._losses, self._iterations, self._started = [], 0, time.perf_counter()

    def _add_iteration(self, engine: Engine) -> None:
        self._iterations += 1
        loss = self.output_transform(engine.state.output)
        if loss is not None:
            self._losses.append(loss)

    def _end_epoch(self, engine: Engine) -> None:
        seconds = time.perf_counter() - self._started
        state = engine.state
        loss = f"{sum(self._losses) / len(self._losses):.4f}" if self._losses else "n/a"
        total = f"/{state.max_epochs}" if state.max_epochs else ""
        self.stream.write(
            f"epoch {state.epoch}{total}: mean train loss {loss} over {self._iterations} iterations, {seconds:.1f} s\n"
        )
        self.stream.flush()
