"""Auto-RGN (Lee et al., "Surgical Fine-Tuning Improves Adaptation to Distribution Shifts", ICLR 2023): each tensor's
LR is scaled by its relative gradient norm, re-estimated every epoch.

    RGN(θ_t) = mean over n training batches of ‖g_t‖ / ‖θ_t‖,        lr_t = lr(epoch) · RGN(θ_t) / max_u RGN(θ_u)

Tensors whose gradients are large relative to their weights (in Lee et al., the layers the shift calls for) train
fastest; the others are nearly frozen. The reference code estimates RGN on 5 training batches at the start of every
epoch and then *rebuilds its Adam optimizer*, which resets Adam's moment estimates each epoch; here the optimizer is
built once, with one parameter group per tensor, and only the LRs change, so Adam's moments survive the epoch
boundary (a rebuilt optimizer restarts every tensor with a bias-corrected first step of size ≈ lr, whatever its
history). The reference also leaves BatchNorm parameters out of the optimizer (untrained); here they are tensors
like any other, and a tensor whose weights are all zero (a zero-initialised bias of the new head, where ‖θ‖ = 0
makes RGN undefined) trains at the full LR. Auto-RGN owns the LRs: lr(epoch) follows the bundle's cosine schedule, lr·(1 + cos(π(e−1)/E))/2.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from ignite.engine import Engine, Events
from torch import nn

from medtransfer.layers import LayerGroup
from medtransfer.metalr import preserved_buffers
from medtransfer.strategies.base import FineTuningStrategy

__all__ = ["AutoRGN", "AutoRGNHandler", "relative_gradient_norms", "rgn_lr_scales"]


def relative_gradient_norms(
    model: nn.Module, loss_fn, batches: Sequence[tuple[torch.Tensor, torch.Tensor]], params: Sequence[nn.Parameter]
) -> torch.Tensor:
    """Mean over `batches` of ‖∂L/∂θ_t‖ / ‖θ_t‖ for each tensor of `params` (buffers left as they were).

    A tensor that is all zeros (a zero-initialised bias) has no relative scale: its RGN is ``inf``.
    """
    totals = torch.zeros(len(params), dtype=torch.float64)
    with preserved_buffers(model):
        for inputs, targets in batches:
            grads = torch.autograd.grad(loss_fn(model(inputs), targets), list(params), allow_unused=True)
            for t, (p, g) in enumerate(zip(params, grads, strict=True)):
                if g is not None:
                    weight = float(p.detach().norm())
                    totals[t] += float(g.norm()) / weight if weight > 0 else math.inf
    return totals / max(len(batches), 1)


def rgn_lr_scales(rgn: torch.Tensor) -> torch.Tensor:
    """RGN / max finite RGN; an infinite RGN (all-zero weights) gets 1, and all ones when no RGN is positive."""
    finite = rgn[torch.isfinite(rgn)]
    top = float(finite.max()) if finite.numel() else 0.0
    scales = torch.ones_like(rgn) if top <= 0 else (rgn / top).clamp(max=1.0)
    return torch.where(torch.isfinite(rgn), scales, torch.ones_like(rgn))


def cosine_factor(epoch: int, epochs: int) -> float:
    """(1 + cos(π(e − 1)/E)) / 2 for 1-based epoch e: the LR factor torch's CosineAnnealingLR gives epoch e."""
    return 0.5 * (1 + math.cos(math.pi * (epoch - 1) / max(int(epochs), 1)))


class AutoRGN(FineTuningStrategy):
    """Every tensor trains in its own optimizer group; :class:`AutoRGNHandler` sets their LRs each epoch."""

    name = "auto_rgn"

    def __init__(self, n_batches: int = 5) -> None:
        super().__init__()
        self.n_batches = int(n_batches)
        self.scales: torch.Tensor | None = None

    def param_groups(
        self, model: nn.Module, groups: Sequence[LayerGroup], lr: float, weight_decay: float = 0.0
    ) -> list[dict]:
        result = [
            {"params": [p], "lr": float(lr), "name": g.name, "param_name": n, "weight_decay": weight_decay}
            for g in self.freeze(model, groups)
            for n, p in zip(g.param_names, g.params, strict=True)
            if p.requires_grad
        ]
        if not result:
            raise ValueError("auto_rgn: no trainable parameters")
        return result

    def settings(self) -> dict:
        return {"strategy": self.name, "auto_rgn_batches": self.n_batches}


class AutoRGNHandler:
    """At every epoch start: RGN on the next ``n_batches`` training batches, then every tensor's LR.

    `batches` is a resumable iterator of training batches (:class:`medtransfer.metalr.CyclingBatches` over the training
    dataset), independent of the trainer's loader, so estimating RGN does not shift the training order; bundles put it
    in ``checkpoint_objects`` so a resumed run draws the same batches. RGN is measured in train mode, as the reference
    does, with the BatchNorm buffers restored afterwards.
    """

    def __init__(self, strategy: AutoRGN, optimizer: torch.optim.Optimizer, lr: float, epochs: int, batches) -> None:
        self.strategy, self.optimizer, self.lr, self.epochs, self.batches = strategy, optimizer, lr, epochs, batches

    def attach(self, engine: Engine) -> None:
        engine.add_event_handler(Events.EPOCH_STARTED, self)

    def __call__(self, engine: Engine) -> None:
        drawn = [
            engine.prepare_batch(next(self.batches), engine.state.device, engine.non_blocking, **engine.to_kwargs)
            for _ in range(self.strategy.n_batches)
        ]
        params = [g["params"][0] for g in self.optimizer.param_groups]
        network, was_training = engine.network, engine.network.training
        network.train()
        try:
            rgn = relative_gradient_norms(
                network, lambda pred, y: engine.loss_function(pred, y).mean(), [(b[0], b[1]) for b in drawn], params
            )
        finally:
            network.train(was_training)
        scales = rgn_lr_scales(rgn)
        self.strategy.scales = scales
        factor = cosine_factor(engine.state.epoch, self.epochs)
        for group, scale in zip(self.optimizer.param_groups, scales.tolist(), strict=True):
            group["lr"] = self.lr * factor * scale
