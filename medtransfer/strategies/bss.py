"""Batch Spectral Shrinkage (Chen, Wang, Fu, Long & Wang, NeurIPS 2019): shrink the smallest singular values of the
batch's feature matrix.

    L = L_task + η · Σ_{i=1..k} σ²_{−i}(F)

F is the b × d matrix of the batch's features (the head's input), σ_{−i} its i-th smallest singular value. Chen et al.
find that the small singular directions of fine-tuned features are the ones that do not transfer (negative transfer)
and that penalising them suffices; defaults as published, k = 1 and η = 0.001. For a segmentation head the feature
maps are averaged over space first, so F is again one row per image.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from medtransfer.layers import LayerGroup
from medtransfer.strategies.base import FineTuningStrategy, LossFn, head_module

__all__ = ["BSS", "BSSLoss", "spectral_shrinkage"]


def spectral_shrinkage(features: torch.Tensor, k: int = 1) -> torch.Tensor:
    """Σ of the k smallest squared singular values of ``features`` (b × d; extra dims are averaged away)."""
    if features.ndim > 2:
        features = features.flatten(2).mean(-1)
    singular = torch.linalg.svdvals(features.float())  # descending
    k = min(int(k), singular.numel())
    return (singular[singular.numel() - k :] ** 2).sum()


class BSSLoss:
    """``loss(pred, target) + η · spectral_shrinkage(F, k)``, F captured at the head's input by a forward pre-hook."""

    def __init__(self, loss: LossFn, model: nn.Module, groups: Sequence[LayerGroup], eta: float = 0.001, k: int = 1):
        self.loss, self.eta, self.k = loss, float(eta), int(k)
        self.features: torch.Tensor | None = None
        self._handle = head_module(model, groups).register_forward_pre_hook(self._capture)

    def _capture(self, _module: nn.Module, args: tuple) -> None:
        if torch.is_grad_enabled():  # the training forward; evaluation runs without grad and is not penalised
            self.features = args[0]

    def __call__(self, pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        if self.features is None:
            raise RuntimeError("BSS: no features were captured; the loss must follow a training forward pass")
        features, self.features = self.features, None
        return self.loss(pred, target) + self.eta * spectral_shrinkage(features, self.k)


class BSS(FineTuningStrategy):
    """Every group trains; the loss adds η times the k smallest squared singular values of the batch's features."""

    name = "bss"

    def __init__(self, eta: float = 0.001, k: int = 1) -> None:
        super().__init__()
        self.eta, self.k = float(eta), int(k)

    def training_loss(self, loss: LossFn, model: nn.Module, groups: Sequence[LayerGroup]) -> LossFn:
        return BSSLoss(loss, model, groups, self.eta, self.k)

    def settings(self) -> dict:
        return {"strategy": self.name, "bss_eta": self.eta, "bss_k": self.k}
