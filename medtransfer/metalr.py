"""MetaLR: online meta-learned, layer-wise learning rates (Chen et al., MICCAI 2023), with an exact, cheap hypergradient.

Each meta iteration takes a virtual step θ̂_j = θ_j − α_j·g_j with the training-batch gradient g, measures the loss of
θ̂ on a held-out validation batch and moves each layer group's LR α_j against ∂L_val/∂α_j. Because g does not depend
on α, the chain rule gives the hypergradient in closed form,

    ∂L_val(θ − α∘g)/∂α_j = −⟨∇_{θ̂_j} L_val(θ̂), g_j⟩,

so one validation forward/backward at θ̂ is all it costs: no second-order graph, no model copy. The virtual step is
applied to the model's own parameters in place and undone right after (exact up to float rounding), the BatchNorm
running statistics the validation forward would update are restored, and each parameter's validation gradient is
folded into its inner product the moment it is complete and then freed, so memory stays close to a plain step's.
"""

from __future__ import annotations

import contextlib
import logging
import math
from collections.abc import Callable, Iterator, Sequence

import torch
from torch import nn

from medtransfer import distributed
from medtransfer.layers import LayerGroup

logger = logging.getLogger(__name__)

Batch = tuple[torch.Tensor, torch.Tensor]
RULES = ("multiplicative", "additive", "normalized")


@contextlib.contextmanager
def preserved_buffers(model: nn.Module) -> Iterator[None]:
    """Restore every buffer (BatchNorm running stats, counters) on exit: meta forwards must not move them."""
    saved = [(b, b.detach().clone()) for b in model.buffers()]
    try:
        yield
    finally:
        with torch.no_grad():
            for buffer, value in saved:
                buffer.copy_(value)


def _group_tensors(groups: Sequence[LayerGroup], grads: Sequence[Sequence[torch.Tensor | None]]):
    """Per group, the (param, grad) pairs that have a gradient (frozen or unused parameters take no virtual step)."""
    return [
        [(p, g) for p, g in zip(group.params, group_grads, strict=True) if g is not None]
        for group, group_grads in zip(groups, grads, strict=True)
    ]


@torch.no_grad()
def _shift(pairs: list[list[tuple[torch.Tensor, torch.Tensor]]], lrs: Sequence[float], sign: float) -> None:
    """θ_j ← θ_j + sign·α_j·g_j for every group, with fused multi-tensor kernels."""
    for group_pairs, lr in zip(pairs, lrs, strict=True):
        if group_pairs and lr != 0:
            params, grads = zip(*group_pairs, strict=True)
            torch._foreach_add_(list(params), list(grads), alpha=sign * lr)


def hypergradient_from_grads(
    model: nn.Module,
    loss_fn: Callable[[torch.Tensor, torch.Tensor], torch.Tensor],
    val_batch: Batch,
    lrs: torch.Tensor | Sequence[float],
    groups: Sequence[LayerGroup],
    grads: Sequence[Sequence[torch.Tensor | None]],
    forward_context: Callable[[], contextlib.AbstractContextManager] = contextlib.nullcontext,
    loss_scale: float = 1.0,
    normalize: bool = False,
) -> torch.Tensor:
    """∂L_val/∂α_j for every group, given the training gradients `grads` (per group, aligned with `group.params`).

    With `normalize` each entry is divided by ‖h_j‖·‖g_j‖ (h = ∇_{θ̂}L_val): −cos(h_j, g_j), free of the gradients'
    scale (0 for a group whose h or g is zero).

    This is the piece a trainer calls between its backward pass and its optimizer step, reusing the gradients it
    already has. `forward_context` wraps the validation forward (e.g. autocast) and `loss_scale` scales the validation
    loss before backward (an AMP grad scaler's scale), divided out again in the result.

    Under data-parallel training (several processes, :mod:`medtransfer.distributed`) `grads` are the all-reduced
    training gradients, the same on every rank, and `val_batch` is this rank's shard of one global validation batch.
    The global validation loss is Σ_r (n_r/N)·L_r over the shards, so its gradient is the n_r/N-weighted sum of the
    shards' gradients and, ⟨h, g⟩ being linear in h, the hypergradient is the weighted sum of the shards'
    hypergradients: one all-reduce of a vector of one number per group. The normalised rule needs ‖h‖ of the global
    h, so there each validation gradient is all-reduced before use. Either way the result is then broadcast from
    rank 0, so every rank moves its LRs by the very same bits. Pass `model` unwrapped (not the DDP wrapper).
    """
    lr_values = [float(a) for a in (lrs.tolist() if isinstance(lrs, torch.Tensor) else lrs)]
    if len(lr_values) != len(groups):
        raise ValueError(f"got {len(lr_values)} learning rates for {len(groups)} layer groups")
    pairs = _group_tensors(groups, grads)
    params = [p for group_pairs in pairs for p, _ in group_pairs]
    if not params:  # nothing trainable took a gradient: no LR can change the validation loss
        return torch.zeros(len(groups), dtype=torch.float64)
    inputs, targets = val_batch
    share = _batch_share(len(targets), params[0].device)  # n_r / N; None in a single process
    train_grads = [g for group_pairs in pairs for _, g in group_pairs]
    owner = [j for j, group_pairs in enumerate(pairs) for _ in group_pairs]
    dots = torch.zeros(len(params), dtype=torch.float64, device=params[0].device)  # stays on device: no syncs
    val_sq = torch.zeros_like(dots)

    def consume(k: int):
        # ⟨h, g⟩ for one parameter as soon as its validation gradient h is complete; then h is dropped, so the
        # validation backward never holds a second full set of gradients
        def hook(param: torch.Tensor) -> None:
            h = param.grad.reshape(-1)
            if share is not None and normalize:  # the global h: Σ_r (n_r/N)·h_r
                h = distributed.all_reduce_sum_(h * share.to(h.dtype))
            dots[k] = torch.dot(h, train_grads[k].reshape(-1)).double()
            if normalize:
                val_sq[k] = torch.dot(h, h).double()
            param.grad = None

        return hook

    held = [p.grad for p in params]  # whatever .grad held (the trainer's g) is put back afterwards
    with preserved_buffers(model):
        _shift(pairs, lr_values, -1.0)  # θ̂ = θ − α∘g, in place
        handles = [p.register_post_accumulate_grad_hook(consume(k)) for k, p in enumerate(params)]
        try:
            for p in params:
                p.grad = None
            with forward_context():
                val_loss = loss_fn(model(inputs), targets)
            (val_loss * loss_scale).backward(inputs=params)
        finally:
            for handle in handles:
                handle.remove()
            for p, grad in zip(params, held, strict=True):
                p.grad = grad
            _shift(pairs, lr_values, +1.0)  # back to θ
    index = torch.tensor(owner, dtype=torch.long, device=dots.device)
    hyper = torch.zeros(len(groups), dtype=torch.float64, device=dots.device).index_add_(0, index, dots)
    if normalize:  # the loss scale cancels in the cosine
        train_sq = torch.stack([torch.dot(g.reshape(-1), g.reshape(-1)).double() for g in train_grads])
        norms = torch.zeros_like(hyper).index_add_(0, index, val_sq).sqrt()
        norms *= torch.zeros_like(hyper).index_add_(0, index, train_sq).sqrt()
        result = torch.where(norms > 0, -hyper / norms.clamp_min(1e-300), torch.zeros_like(hyper))
    else:
        if share is not None:  # Σ_r (n_r/N)·⟨h_r, g⟩ = ⟨h, g⟩
            hyper = distributed.all_reduce_sum_(hyper * share)
        result = -hyper / loss_scale
    if share is not None:  # the same bits on every rank, whatever order the reduction summed in
        distributed.broadcast_(result)
    return result.cpu()


def _batch_share(size: int, device: torch.device) -> torch.Tensor | None:
    """This rank's share n_r / N of the global validation batch under data-parallel training, else None."""
    if not distributed.is_distributed():
        return None
    sizes = distributed.all_reduce_sum_(torch.tensor([float(size)], dtype=torch.float64, device=device))
    return torch.tensor(size, dtype=torch.float64, device=device) / sizes[0]


def layer_hypergradient(
    model: nn.Module,
    loss_fn: Callable[[torch.Tensor, torch.Tensor], torch.Tensor],
    train_batch: Batch,
    val_batch: Batch,
    lrs: torch.Tensor | Sequence[float],
    groups: Sequence[LayerGroup],
) -> torch.Tensor:
    """d/dα_j of the validation loss after the virtual step θ̂ = θ − α∘g, one entry per layer group.

    g is the training-batch gradient at θ. Costs one training and one validation forward/backward; the model's
    parameters, `.grad` fields and buffers are as they were when it returns. `groups` is what
    `medtransfer.layers.layer_groups(model)` returns.
    """
    with preserved_buffers(model):
        inputs, targets = train_batch
        train_loss = loss_fn(model(inputs), targets)
        flat = [p for group in groups for p in group.params]
        trainable = [p for p in flat if p.requires_grad]
        found = dict(
            zip(map(id, trainable), torch.autograd.grad(train_loss, trainable, allow_unused=True), strict=True)
        )
    grads = [[found.get(id(p)) for p in group.params] for group in groups]
    return hypergradient_from_grads(model, loss_fn, val_batch, lrs, groups, grads)


def metalr_step(
    model: nn.Module,
    loss_fn: Callable[[torch.Tensor, torch.Tensor], torch.Tensor],
    val_batch: Batch,
    metalr: MetaLR,
    epoch: int,
    forward_context: Callable[[], contextlib.AbstractContextManager] = contextlib.nullcontext,
    loss_scale: float = 1.0,
) -> torch.Tensor:
    """One meta update between a training backward pass and its optimizer step; returns the hypergradient.

    Reads the training gradients the backward pass left on the parameters of `metalr.groups` (unscaled: with AMP call
    ``scaler.unscale_`` first), computes ∂L_val/∂α on `val_batch` (already on the model's device) and moves the LRs,
    so the optimizer step that follows uses them. `epoch` (1-based) decides pinning; `forward_context` and
    `loss_scale` are as in :func:`hypergradient_from_grads`. The trainer's handler and the benchmark both call this,
    so what is measured is what trains. Profiler labels: ``hypergradient``, ``metalr_update``.
    """
    with torch.profiler.record_function("hypergradient"):
        grads = [[p.grad for p in group.params] for group in metalr.groups]
        hyper = hypergradient_from_grads(
            model, loss_fn, val_batch, metalr.lrs, metalr.groups, grads, forward_context, loss_scale,
            normalize=metalr.rule == "normalized",
        )
    with torch.profiler.record_function("metalr_update"):
        metalr.update(hyper, epoch)
    return hyper


class MetaLR:
    """Owns the per-group learning rates of a torch optimizer and moves them along the validation hypergradient.

    The optimizer's param groups must be the layer groups, in order (``medtransfer.layers.param_groups``), so it
    works with any torch optimizer (SGD, SGD+momentum, Adam, AdamW, ...): MetaLR only writes ``group["lr"]``.

    Args:
        optimizer: the optimizer whose LRs MetaLR owns.
        groups: the layer groups matching the optimizer's param groups.
        base_lr: the head's initial LR; backbone groups start at ``backbone_scale * base_lr`` (as published)
            unless `init_lrs` gives every group's initial LR.
        hyper_lr: η, the step size on the LRs.
        rule: ``"multiplicative"`` (published code: α ← α(1 − η·∂L/∂α)), ``"additive"`` (paper: α ← α − η·∂L/∂α),
            or ``"normalized"``, this toolkit's scale-free variant: α_j ← α_j·exp(η·cos(h_j, g_j)) with h the
            validation gradient at θ̂. The published rules step by a product of two gradient norms, which on a
            fresh head drives the first groups' LRs from bound to bound within a few iterations; the cosine is in
            [−1, 1] whatever the scale, so η bounds each step's relative change to e^{±η}.
        bounds: LRs are clamped to this interval after every update.
        pinned: names of groups whose LR stays at its initial value during the first `pin_epochs` epochs
            (default: the head, the last group, for 5 epochs, as published).
        meta_interval: update the LRs every k-th iteration; the other iterations cost what plain training costs.
    """

    def __init__(
        self,
        optimizer: torch.optim.Optimizer,
        groups: Sequence[LayerGroup],
        base_lr: float | None = None,
        hyper_lr: float = 0.1,
        rule: str = "multiplicative",
        bounds: tuple[float, float] = (1e-6, 1e-2),
        init_lrs: Sequence[float] | None = None,
        backbone_scale: float = 0.1,
        pinned: Sequence[str] | None = None,
        pin_epochs: int = 5,
        meta_interval: int = 1,
    ) -> None:
        if rule not in RULES:
            raise ValueError(f"rule must be one of {RULES}, got {rule!r}")
        if meta_interval < 1:
            raise ValueError(f"meta_interval must be >= 1, got {meta_interval}")
        names = [g.get("name") for g in optimizer.param_groups]
        expected = [g.name for g in groups]
        if names != expected:
            raise ValueError(
                "the optimizer's param groups must be the layer groups in order, built with "
                f"medtransfer.layers.param_groups(groups, lr); got {names} for groups {expected} "
                "(param_groups leaves out fully frozen groups: pass MetaLR only the groups that train)"
            )
        self.optimizer, self.groups = optimizer, list(groups)
        self.hyper_lr, self.rule, self.bounds = float(hyper_lr), rule, (float(bounds[0]), float(bounds[1]))
        self.pin_epochs, self.meta_interval = int(pin_epochs), int(meta_interval)
        if init_lrs is None:
            base = float(base_lr if base_lr is not None else optimizer.param_groups[-1]["lr"])
            init_lrs = [backbone_scale * base] * (len(groups) - 1) + [base]
        if len(init_lrs) != len(groups):
            raise ValueError(f"init_lrs has {len(init_lrs)} values for {len(groups)} groups")
        low, high = self.bounds
        if any(not low <= a <= high for a in init_lrs):
            logger.warning(f"MetaLR: initial LRs {list(init_lrs)} lie outside bounds {self.bounds}; clamped")
        self.init_lrs = [min(max(float(a), low), high) for a in init_lrs]
        pinned = [groups[-1].name] if pinned is None else list(pinned)
        unknown = set(pinned) - set(expected)
        if unknown:
            raise ValueError(f"pinned groups {sorted(unknown)} are not layer groups ({expected})")
        self.pinned_index = [expected.index(n) for n in pinned]
        self.set_lrs(self.init_lrs)
        self.iterations = 0  # iterations observed (meta updates happen on every meta_interval-th)
        self.updates = 0
        self.history: list[list[float]] = []  # LRs used by the real step of every observed iteration

    @property
    def lrs(self) -> torch.Tensor:
        """Current per-group LRs, as the optimizer holds them."""
        return torch.tensor([g["lr"] for g in self.optimizer.param_groups], dtype=torch.float64)

    def set_lrs(self, lrs: Sequence[float]) -> None:
        for group, lr in zip(self.optimizer.param_groups, lrs, strict=True):
            group["lr"] = float(lr)

    def is_due(self) -> bool:
        """Whether the coming iteration updates the LRs (counted from 0: the first iteration always does)."""
        return self.iterations % self.meta_interval == 0

    def update(self, hypergrad: torch.Tensor, epoch: int) -> torch.Tensor:
        """Move the LRs against `hypergrad` (∂L_val/∂α, one per group); `epoch` is 1-based, for pinning."""
        hypergrad = hypergrad.to(torch.float64).cpu()
        if not torch.isfinite(hypergrad).all():
            logger.warning(f"MetaLR: non-finite hypergradient {hypergrad.tolist()}; LRs left unchanged")
            return self.lrs
        lrs = self.lrs
        if self.rule == "multiplicative":
            new = lrs * (1 - self.hyper_lr * hypergrad)
        elif self.rule == "normalized":  # hypergrad is −cos(h, g) here (metalr_step asks for it normalised)
            new = lrs * torch.exp(-self.hyper_lr * hypergrad)
        else:
            new = lrs - self.hyper_lr * hypergrad
        new = new.clamp(*self.bounds)
        if epoch <= self.pin_epochs:
            for j in self.pinned_index:
                new[j] = self.init_lrs[j]
        self.set_lrs(new.tolist())
        self.updates += 1
        return new

    def record(self) -> None:
        """Close an iteration: keep the LRs its real step used (the curve the paper plots)."""
        self.history.append([g["lr"] for g in self.optimizer.param_groups])
        self.iterations += 1

    def state_dict(self) -> dict:
        """Counters and LR history as tensors and numbers (loads with ``weights_only=True``)."""
        return {
            "lrs": self.lrs,
            "iterations": self.iterations,
            "updates": self.updates,
            "history": torch.tensor(self.history, dtype=torch.float64).reshape(-1, len(self.groups)),
        }

    def load_state_dict(self, state: dict) -> None:
        lrs = state["lrs"]
        if len(lrs) != len(self.groups):
            raise ValueError(f"MetaLR state has {len(lrs)} LRs but there are {len(self.groups)} layer groups")
        self.set_lrs(lrs.tolist())
        self.iterations, self.updates = int(state["iterations"]), int(state["updates"])
        self.history = state["history"].tolist()


class CyclingBatches:
    """Endless, reshuffled batches from a held-out dataset, resumable at the exact batch.

    Every pass over the dataset uses a new permutation drawn from (seed, pass), so the meta batches are neither the
    same first batch every time nor dependent on any global RNG; `state_dict` records the position.

    Under data-parallel training `batch_size` is per process, as the training loader's is: the global batch is the
    next ``world_size·batch_size`` indices of the permutation and rank r takes every world_size-th of them from the
    r-th, exactly how ``DistributedSampler`` shards the training batches. So W processes see together the batches one
    process with ``batch_size·W`` would see (a last chunk shorter than W borrows from the permutation's start, so no
    rank is ever empty). `rank` and `world_size` default to the process group's.
    """

    def __init__(
        self,
        dataset,
        batch_size: int,
        seed: int = 0,
        collate_fn: Callable | None = None,
        rank: int | None = None,
        world_size: int | None = None,
    ) -> None:
        from monai.data import list_data_collate

        self.rank = distributed.rank() if rank is None else int(rank)
        self.world_size = distributed.world_size() if world_size is None else int(world_size)
        if not 0 <= self.rank < self.world_size:
            raise ValueError(f"rank {self.rank} is not in 0..{self.world_size - 1}")
        if len(dataset) == 0:
            raise ValueError("the MetaLR validation dataset is empty; it needs a held-out (validation) split")
        if len(dataset) < self.world_size:
            raise ValueError(
                f"the MetaLR validation dataset has {len(dataset)} items, fewer than the {self.world_size} processes; "
                "it needs a held-out (validation) split with at least one item per process"
            )
        if int(batch_size) < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        self.dataset, self.seed = dataset, int(seed)
        self.batch_size = min(int(batch_size) * self.world_size, len(dataset))  # the global batch
        self.collate_fn = collate_fn or list_data_collate
        self.drawn = 0

    def _order(self, epoch: int) -> list[int]:
        generator = torch.Generator().manual_seed(self.seed * 1_000_003 + epoch)
        return torch.randperm(len(self.dataset), generator=generator).tolist()

    def batches_per_pass(self) -> int:
        return math.ceil(len(self.dataset) / self.batch_size)

    def next_indices(self) -> list[int]:
        """This process's dataset indices of the next batch (and move on)."""
        epoch, position = divmod(self.drawn, self.batches_per_pass())
        order = self._order(epoch)
        chunk = order[position * self.batch_size : (position + 1) * self.batch_size]
        if len(chunk) < self.world_size:
            chunk += order[: self.world_size - len(chunk)]
        self.drawn += 1
        return chunk[self.rank :: self.world_size]

    def __next__(self):
        return self.collate_fn([self.dataset[i] for i in self.next_indices()])

    def __iter__(self) -> CyclingBatches:
        return self

    def state_dict(self) -> dict:
        return {"drawn": self.drawn}

    def load_state_dict(self, state: dict) -> None:
        self.drawn = int(state["drawn"])


class MetaLRState:
    """What a checkpoint needs for an exact MetaLR resume: the LRs, counters and history, and the position in the
    validation batches (``{"metalr": ..., "val_batches": ...}``)."""

    def __init__(self, metalr: MetaLR, val_batches: CyclingBatches) -> None:
        self.metalr, self.val_batches = metalr, val_batches

    def state_dict(self) -> dict:
        return {"metalr": self.metalr.state_dict(), "val_batches": self.val_batches.state_dict()}

    def load_state_dict(self, state: dict) -> None:
        self.metalr.load_state_dict(state["metalr"])
        self.val_batches.load_state_dict(state["val_batches"])
