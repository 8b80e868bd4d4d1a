"""What every fine-tuning strategy is: a choice of trainable layer groups, their optimizer groups, and a training loss.

A bundle builds its optimizer from ``strategy.param_groups(network, layer_groups, lr, weight_decay)`` and trains with
``strategy.training_loss(loss, network, layer_groups)``; a strategy fragment (``configs/strategies/<name>.json``)
replaces the bundle's ``finetune`` object and may add handlers. So a strategy changes what moves and how, never
the network, the data or the bundle's other handlers. The last layer group is the task head (new, randomly
initialised for the target's classes), which every strategy trains.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
from torch import nn

from medtransfer import layers
from medtransfer.errors import StrategyError
from medtransfer.layers import LayerGroup
from medtransfer.strategies.freezing import FrozenGroups, freeze_groups

__all__ = ["FineTuningStrategy", "LossFn", "head_module"]

LossFn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


class FineTuningStrategy:
    """Full fine-tuning: every group trains with the bundle's LR and weight decay. Subclasses override the hooks."""

    name = "full"

    def __init__(self) -> None:
        self.frozen: FrozenGroups | None = None

    def trainable(self, groups: Sequence[LayerGroup]) -> list[str]:
        """Names of the groups that train (all of them, here)."""
        return [g.name for g in groups]

    def freeze(self, model: nn.Module, groups: Sequence[LayerGroup]) -> list[LayerGroup]:
        """Freeze what :meth:`trainable` leaves out (weights and norm statistics); return the groups that train."""
        names = self.trainable(groups)
        unknown = set(names) - {g.name for g in groups}
        if unknown:
            raise StrategyError(
                f"{self.name}: no layer groups named {sorted(unknown)}; the groups are {[g.name for g in groups]}"
            )
        self.frozen = freeze_groups(model, groups, [g.name for g in groups if g.name not in names])
        return [g for g in groups if g.name in names]

    def param_groups(
        self, model: nn.Module, groups: Sequence[LayerGroup], lr: float, weight_decay: float = 0.0
    ) -> list[dict]:
        """torch.optim parameter groups of the trainable layer groups (one per group, tagged with its name)."""
        return layers.param_groups(self.freeze(model, groups), lr, weight_decay=weight_decay)

    def training_loss(self, loss: LossFn, model: nn.Module, groups: Sequence[LayerGroup]) -> LossFn:
        """The loss the trainer minimises (the task loss here; regularising strategies add their penalty)."""
        return loss

    def settings(self) -> dict:
        """The strategy's hyper-parameters, for ``run_info.json``."""
        return {"strategy": self.name}


def head_module(model: nn.Module, groups: Sequence[LayerGroup]) -> nn.Module:
    """The module holding the head's last parameter (the final Linear or conv): its input is the feature vector."""
    last = groups[-1].param_names[-1]
    return model.get_submodule(last.rpartition(".")[0])
