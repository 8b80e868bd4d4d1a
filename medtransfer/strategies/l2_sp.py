"""L2-SP (Li, Grandvalet & Davoine, ICML 2018): pull the weights towards the pre-trained starting point, not to zero.

    Ω(w) = α/2 · ‖w_S − w_S⁰‖²  +  β/2 · ‖w_S̄‖²

with S the pre-trained parameters (every layer group but the head), w⁰ their starting values and S̄ the new head,
which has no starting point worth keeping and gets plain L2. Plain weight decay pulls pre-trained features towards
zero, i.e. away from what made them useful; L2-SP keeps them near w⁰. Li et al. choose α and β on a validation grid
(0.001 … 1); the defaults here are α = β = 0.01. The fragment sets the optimizer's own weight decay to 0, since
AdamW's decoupled decay would pull to zero again.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from medtransfer.layers import LayerGroup
from medtransfer.strategies.base import FineTuningStrategy, LossFn

__all__ = ["L2SP", "L2SPLoss"]


class L2SPLoss:
    """``loss(pred, target) + Ω(w)``, with w⁰ taken from the model when this is built (the pre-trained start)."""

    def __init__(
        self, loss: LossFn, model: nn.Module, groups: Sequence[LayerGroup], alpha: float = 0.01, beta: float = 0.01
    ) -> None:
        self.loss, self.alpha, self.beta = loss, float(alpha), float(beta)
        # frozen tensors stay at w⁰ and add nothing, so every tensor is listed whatever is frozen when this is built
        self.pretrained = [p for g in groups[:-1] for p in g.params]
        self.start = [p.detach().clone() for p in self.pretrained]
        self.head = list(groups[-1].params)

    def penalty(self) -> torch.Tensor:
        """Ω(w) at the current weights (differentiable)."""
        zero = torch.zeros((), device=(self.pretrained or self.head)[0].device)
        towards_start = sum(((p - p0) ** 2).sum() for p, p0 in zip(self.pretrained, self.start, strict=True))
        head = sum((p**2).sum() for p in self.head)
        return zero + 0.5 * self.alpha * towards_start + 0.5 * self.beta * head

    def __call__(self, pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        return self.loss(pred, target) + self.penalty()


class L2SP(FineTuningStrategy):
    """Every group trains; the loss adds α/2‖w_S − w_S⁰‖² + β/2‖w_head‖²."""

    name = "l2_sp"

    def __init__(self, alpha: float = 0.01, beta: float = 0.01) -> None:
        super().__init__()
        self.alpha, self.beta = float(alpha), float(beta)

    def training_loss(self, loss: LossFn, model: nn.Module, groups: Sequence[LayerGroup]) -> LossFn:
        return L2SPLoss(loss, model, groups, self.alpha, self.beta)

    def settings(self) -> dict:
        return {"strategy": self.name, "l2_sp_alpha": self.alpha, "l2_sp_beta": self.beta}
