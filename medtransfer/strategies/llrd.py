"""Layer-wise LR decay (LLRD): the head trains at the full LR, each group below it at `decay` times the one above.

lr_i = lr · decay^(L − i) for layer groups i = 0 … L (L = the head), so the groups nearest the input, whose
general features transfer best, move least (Howard & Ruder, ACL 2018, "discriminative fine-tuning"; Clark et al.,
ICLR 2020; BEiT/MAE fine-tuning, where 0.65-0.75 is usual). As timm's ``param_groups_weight_decay`` does, biases and
other 1-D tensors (norm scales and shifts) get no weight decay. Both optimizer groups of a layer group carry its name.
The bundle's schedule then scales every group's LR alike.
"""

from __future__ import annotations

from collections.abc import Sequence

from torch import nn

from medtransfer.layers import LayerGroup
from medtransfer.strategies.base import FineTuningStrategy

__all__ = ["LayerwiseLRDecay", "decayed_lrs"]


def decayed_lrs(n_groups: int, lr: float, decay: float) -> list[float]:
    """lr · decay^(L − i) for i = 0 … L, L = n_groups − 1."""
    return [lr * decay ** (n_groups - 1 - i) for i in range(n_groups)]


def _no_decay(name: str, param: nn.Parameter) -> bool:
    return param.ndim <= 1 or name.endswith(".bias")


class LayerwiseLRDecay(FineTuningStrategy):
    """Every group trains, at ``lr · decay^(L − i)``; no weight decay on biases and 1-D tensors."""

    name = "llrd"

    def __init__(self, decay: float = 0.75) -> None:
        super().__init__()
        if not 0 < decay <= 1:
            raise ValueError(f"llrd: decay must be in (0, 1], got {decay}")
        self.decay = float(decay)

    def param_groups(
        self, model: nn.Module, groups: Sequence[LayerGroup], lr: float, weight_decay: float = 0.0
    ) -> list[dict]:
        result = []
        for group, rate in zip(groups, decayed_lrs(len(groups), lr, self.decay), strict=True):
            named = [(n, p) for n, p in zip(group.param_names, group.params, strict=True) if p.requires_grad]
            for no_decay in (False, True):
                params = [p for n, p in named if _no_decay(n, p) == no_decay]
                if params:
                    decay = 0.0 if no_decay else weight_decay
                    result.append({"params": params, "lr": rate, "name": group.name, "weight_decay": decay})
        if not result:
            raise ValueError("llrd: no trainable parameters")
        return result

    def settings(self) -> dict:
        return {"strategy": self.name, "llrd_decay": self.decay}
