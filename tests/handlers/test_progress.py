"""RunProgress: a bar on a terminal, one plain line per epoch when the log goes to a file."""

from __future__ import annotations

import io

import torch
from ignite.engine import Engine

from medtransfer.handlers import RunProgress
from medtransfer.handlers.progress import batch_loss


def _trainer() -> Engine:
    def step(engine, batch):
        # like a decollated MONAI trainer output: a list of dicts, each carrying the batch loss
        return [{"loss": torch.tensor(float(batch))}, {"loss": torch.tensor(float(batch))}]

    return Engine(step)


class _Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_non_terminal_stream_gets_one_line_per_epoch_and_no_carriage_returns():
    stream = io.StringIO()
    engine = _trainer()
    RunProgress(persist=False, stream=stream).attach(engine)
    engine.run([1.0, 2.0, 3.0, 4.0], max_epochs=3)
    text = stream.getvalue()
    assert "\r" not in text
    lines = text.splitlines()
    assert len(lines) == 3
    assert lines[0].startswith("epoch 1/3: mean train loss 2.5000 over 4 iterations, ")
    assert lines[2].startswith("epoch 3/3:") and lines[2].endswith(" s")


def test_terminal_stream_gets_ignites_bar():
    stream = _Terminal()
    engine = _trainer()
    RunProgress(stream=stream, ncols=60).attach(engine)  # ProgressBar kwargs pass through
    engine.run([1.0, 2.0], max_epochs=1)
    assert "\r" in stream.getvalue() and "loss" in stream.getvalue()
    assert "epoch 1/1" not in stream.getvalue()


def test_batch_loss_reads_monai_outputs():
    assert batch_loss({"loss": torch.tensor(0.5)}) == 0.5
    assert batch_loss([{"loss": 0.25}]) == 0.25
    assert batch_loss({"pred": 1}) is None and batch_loss(float("nan")) is None
