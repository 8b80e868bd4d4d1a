"""Discriminative LRs: MetaLR's initial per-group LRs held fixed, the control that isolates what meta-learning adds.

Every body layer group (all but the last) trains at ``backbone_scale`` times the bundle's LR, the head (the last
group, new for the target's classes) at the LR itself::

    α_j = s · lr   for body groups j = 0 … L − 1,      α_L = lr   for the head,      s = backbone_scale (0.1)

These are exactly the LRs MetaLR starts from (Chen et al., MICCAI 2023, "MetaLR: Meta-tuning of Learning Rates for
Transfer Learning in Medical Imaging": every backbone group at 0.1× the head's LR, ``metalr_backbone_scale`` in
:mod:`medtransfer.metalr`). MetaLR then moves them with the validation hypergradient; this strategy never does, so a
run of it against a MetaLR run with the same ``backbone_scale`` differs only by the meta-learning. The idea of one
LR per layer group is Howard & Ruder's discriminative fine-tuning (ACL 2018, ULMFiT); ``llrd`` is its geometric
form. Weight decay is the bundle's, on every group.

The bundle's schedule still applies (``discriminative_schedule``: ``cosine``, the bundles' own cosine annealing over
the epochs, or ``constant``, MetaLR's setting). A torch scheduler scales each optimizer group from its own initial
LR, so under the cosine every group's LR is multiplied by the same factor and the ratios s : 1 hold throughout.
MetaLR clamps its initial LRs to its bounds (1e-6 … 1e-2); with a bundle LR inside them (the bundles use 1e-3) the
two starts are the same.
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Sequence

import torch
from torch import nn

from medtransfer.errors import StrategyError
from medtransfer.layers import LayerGroup
from medtransfer.strategies.base import FineTuningStrategy

__all__ = ["SCHEDULES", "DiscriminativeLR", "schedule"]

SCHEDULES = ("cosine", "constant")


class DiscriminativeLR(FineTuningStrategy):
    """Every group trains; body groups at ``backbone_scale · lr``, the head at ``lr``, all with the bundle's decay.

    Args:
        backbone_scale: s, the body groups' LR as a fraction of the head's (MetaLR's ``backbone_scale``); > 0.

    Raises:
        StrategyError: ``backbone_scale`` is not a finite number > 0.
    """

    name = "discriminative"

    def __init__(self, backbone_scale: float = 0.1) -> None:
        super().__init__()
        if (
            isinstance(backbone_scale, bool)
            or not isinstance(backbone_scale, numbers.Real)
            or not 0 < backbone_scale < math.inf
        ):
            raise StrategyError(
                f"discriminative: backbone_scale must be a finite number > 0 (the body groups' LR as a fraction of the "
                f"head's; MetaLR's default is 0.1), got {backbone_scale!r}"
            )
        self.backbone_scale = float(backbone_scale)

    def param_groups(
        self, model: nn.Module, groups: Sequence[LayerGroup], lr: float, weight_decay: float = 0.0
    ) -> list[dict]:
        """One optimizer group per layer group, tagged with its name: body groups at ``s·lr``, the head at ``lr``.

        Args:
            model: the network the groups split.
            groups: its layer groups, input to output; the last is the head.
            lr: the head's LR (the bundle's ``lr``).
            weight_decay: every group's weight decay (the bundle's).
        """
        result = super().param_groups(model, groups, lr, weight_decay)
        head = groups[-1].name
        for group in result:
            group["lr"] = float(lr) if group["name"] == head else self.backbone_scale * float(lr)
        return result

    def settings(self) -> dict:
        return {"strategy": self.name, "discriminative_backbone_scale": self.backbone_scale}


def schedule(optimizer: torch.optim.Optimizer, name: str, epochs: int) -> torch.optim.lr_scheduler.LRScheduler:
    """The fragment's ``lr_scheduler``, stepped once per epoch by the bundle's ``LrScheduleHandler``.

    Args:
        optimizer: the bundle's optimizer.
        name: ``"cosine"``: the bundles' own ``CosineAnnealingLR(optimizer, T_max=epochs)``; ``"constant"``: every
            group keeps its initial LR (``ConstantLR`` with factor 1, as the MetaLR fragments use).
        epochs: the run's epochs (the cosine's period).

    Raises:
        StrategyError: ``name`` is neither.
    """
    if name == "cosine":
        return torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=epochs)
    if name == "constant":
        return torch.optim.lr_scheduler.ConstantLR(optimizer, factor=1.0, total_iters=0)
    raise StrategyError(f"discriminative: --discriminative_schedule {name!r} is unknown; use one of {list(SCHEDULES)}")
