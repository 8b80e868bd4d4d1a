"""LP-FT (Kumar et al., ICLR 2022): linear probe first, then fine-tune everything from the probed head.

Fine-tuning with a randomly initialised head sends large, noisy gradients into the pre-trained features and distorts
them; training the head first (the linear probe) and only then unfreezing the backbone keeps the features closer to
the pre-trained ones and, in the paper, improves out-of-distribution accuracy. Kumar et al. probe to convergence with
logistic regression, then fine-tune with a small LR. Here the probe is the first ``probe_epochs`` epochs of the same
run (backbone and its BatchNorm statistics frozen), and the remaining epochs fine-tune every group; the optimizer
holds every parameter from the start (frozen ones get no gradient, so AdamW leaves them and their state alone) and the
bundle's LR schedule runs over the whole run.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence

from ignite.engine import Engine, Events
from torch import nn

from medtransfer import layers
from medtransfer.layers import LayerGroup
from medtransfer.strategies.base import FineTuningStrategy

__all__ = ["LinearProbeThenFineTune", "UnfreezeBackbone"]

logger = logging.getLogger(__name__)


class LinearProbeThenFineTune(FineTuningStrategy):
    """Head only for ``probe_epochs`` epochs, then every group."""

    name = "lp_ft"

    def __init__(self, probe_epochs: int = 5) -> None:
        super().__init__()
        if int(probe_epochs) != probe_epochs or probe_epochs < 0:
            raise ValueError(f"lp_ft: probe_epochs must be a whole number >= 0, got {probe_epochs!r}")
        self.probe_epochs = int(probe_epochs)

    def trainable(self, groups: Sequence[LayerGroup]) -> list[str]:
        return [g.name for g in groups] if self.probe_epochs == 0 else [groups[-1].name]

    def param_groups(
        self, model: nn.Module, groups: Sequence[LayerGroup], lr: float, weight_decay: float = 0.0
    ) -> list[dict]:
        # every group is in the optimizer before freezing, so unfreezing later needs no new optimizer
        result = layers.param_groups(groups, lr, weight_decay=weight_decay)
        self.freeze(model, groups)
        return result

    def unfreeze(self) -> None:
        if self.frozen is not None and self.frozen.params:
            self.frozen.release()
            logger.info(f"lp_ft: linear probe done after {self.probe_epochs} epochs; fine-tuning every group now")

    def settings(self) -> dict:
        return {"strategy": self.name, "lp_ft_probe_epochs": self.probe_epochs}


class UnfreezeBackbone:
    """At the start of epoch ``probe_epochs + 1`` (also when a resumed run starts past it), unfreeze the backbone."""

    def __init__(self, strategy: LinearProbeThenFineTune) -> None:
        self.strategy = strategy

    def attach(self, engine: Engine) -> None:
        engine.add_event_handler(Events.EPOCH_STARTED, self)

    def __call__(self, engine: Engine) -> None:
        if engine.state.epoch > self.strategy.probe_epochs:
            self.strategy.unfreeze()
