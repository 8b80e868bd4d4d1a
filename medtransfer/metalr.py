"""MetaLR: online meta-learned, layer-wise learning rates (Chen et al., MICCAI 2023), tuning the step that happens.

Every layer group j trains with its own LR α_j, and the optimizer's coming step is θ' = θ − α∘d, where d is the update
direction per unit LR the optimizer will really take (AdamW's m̂/(√v̂ + ε) + λθ, SGD's momentum buffer, ...,
:mod:`medtransfer.step_direction`). d does not depend on α, so the derivative of a meta loss after that step is, by
the chain rule and in closed form,

    ∂L_meta(θ − α∘d)/∂α_j = −⟨∇_{θ̂_j} L_meta(θ̂), d_j⟩,       θ̂ = θ − α∘d,

and one meta forward/backward at θ̂ is all it costs: no second-order graph, no model copy. Each LR then moves against
its hypergradient and the real step follows with the new LRs. Were the raw gradient g used in place of d (as the
published code does, with AdamW stepping), the result would be the derivative of a step that never happens.

Where the meta batch comes from (``meta_source``, set by the strategy fragments through the bundle keys
``meta_source``/``meta_fraction``):

* ``heldout`` (default): a fixed, un-augmented slice of the training split (``meta_fraction``, grouped as validation is),
  never trained on, never used to select the checkpoint.
* ``train``: a batch of the training split, un-augmented, from its own seeded permutation.
* ``validation``: the validation split, which also selects the checkpoint: such a run is flagged "selected on meta
  data", its validation score is biased upward.
* ``train_next`` (hypergradient descent, Baydin et al., ICLR 2018): no extra pass. The next training batch's gradient
  g_{t+1}, which the trainer's own backward computes, gives the hypergradient of the step just taken,
  ∂L_{t+1}(θ_t − α∘d_t)/∂α_j = −⟨g_{t+1,j}, d_{t,j}⟩; the new LRs apply from the next step (a one-step lag). d_t is
  kept between iterations (one parameter-sized buffer, saved in the checkpoint) and dropped after a step the AMP
  scaler skipped.
* ``first_train_batch``: the published code's meta batch, the first training batch (dataset order, un-augmented),
  always the same.

The ``published`` variant reproduces the reference code (Schuture/MetaLR): its virtual step is θ + α·g with the raw
gradient (direction −g, so the hypergradient is +⟨∇L_meta(θ̂), g⟩), whatever the optimizer does.

Scale: d is a unit-LR step, so ⟨h_j, d_j⟩ sums over every element of group j and grows with the group's size (for
Adam, |d| ≈ 1 per element). The ``multiplicative`` and ``additive`` rules step by η times that sum, so large groups
move their LRs faster and η must be tuned for the network (the bounds cap the damage); the ``normalized`` rule uses
−cos(h_j, d_j) ∈ [−1, 1], free of the size, so η bounds each update's relative change to e^{±η}.

The virtual step is applied to the model's own parameters in place and undone right after (exact up to float
rounding), the buffers a meta forward would move (BatchNorm statistics) are restored, and each parameter's meta
gradient is folded into its inner product the moment it is complete and then freed.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Callable, Iterator, Sequence

import torch
from torch import nn

from medtransfer import distributed
from medtransfer.layers import LayerGroup
from medtransfer.settings import as_flag
from medtransfer.step_direction import (
    can_recover_last_direction,
    check_supported,
    last_step_dots,
    update_directions,
)

logger = logging.getLogger(__name__)

Batch = tuple[torch.Tensor, torch.Tensor]
RULES = ("multiplicative", "additive", "normalized")
VARIANTS = ("corrected", "published")
META_SOURCES = ("heldout", "train", "validation", "train_next", "first_train_batch")


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


Directions = Sequence[Sequence[torch.Tensor | None]]


def _group_tensors(groups: Sequence[LayerGroup], tensors: Directions):
    """Per group, the (param, tensor) pairs that have a tensor (frozen or unused parameters take no virtual step)."""
    return [
        [(p, t) for p, t in zip(group.params, group_tensors, strict=True) if t is not None]
        for group, group_tensors in zip(groups, tensors, strict=True)
    ]


@torch.no_grad()
def _shift(pairs: list[list[tuple[torch.Tensor, torch.Tensor]]], lrs: Sequence[float], sign: float) -> None:
    """θ_j ← θ_j + sign·α_j·d_j for every group, with fused multi-tensor kernels."""
    for group_pairs, lr in zip(pairs, lrs, strict=True):
        if group_pairs and lr != 0:
            params, directions = zip(*group_pairs, strict=True)
            torch._foreach_add_(list(params), list(directions), alpha=sign * lr)


def hypergradient_from_directions(
    model: nn.Module,
    loss_fn: Callable[[torch.Tensor, torch.Tensor], torch.Tensor],
    meta_batch: Batch,
    lrs: torch.Tensor | Sequence[float],
    groups: Sequence[LayerGroup],
    directions: Directions,
    forward_context: Callable[[], contextlib.AbstractContextManager] = contextlib.nullcontext,
    loss_scale: float = 1.0,
    normalize: bool = False,
) -> torch.Tensor:
    """∂L_meta(θ − α∘d)/∂α_j = −⟨∇_{θ̂_j} L_meta(θ̂), d_j⟩ for every group j, from the update directions d.

    `directions` are per group, aligned with ``group.params`` (None for a parameter that takes no step): what
    :meth:`MetaLR.directions` returns (the optimizer's own step per unit LR; −g for the published variant; the raw
    gradient g for plain SGD without momentum or weight decay). With `normalize` each entry is −cos(h_j, d_j)
    (h = ∇_{θ̂}L_meta), free of the scale (0 for a group whose h or d is zero).

    A trainer calls this between its backward pass and its optimizer step. `forward_context` wraps the meta forward
    (e.g. autocast) and `loss_scale` scales the meta loss before backward (an AMP grad scaler's scale), divided out
    again in the result.

    Under data-parallel training (several processes, :mod:`medtransfer.distributed`) the directions come from the
    all-reduced training gradients, the same on every rank, and `meta_batch` is this rank's shard of one global meta
    batch. The global meta loss is Σ_r (n_r/N)·L_r over the shards, so, ⟨h, d⟩ being linear in h, the hypergradient is
    the n_r/N-weighted sum of the shards' hypergradients: one all-reduce of one number per group. The normalised rule
    needs ‖h‖ of the global h, so there each meta gradient is all-reduced before use. The result is then broadcast
    from rank 0, so every rank moves its LRs by the very same bits. Pass `model` unwrapped (not the DDP wrapper).
    """
    lr_values = [float(a) for a in (lrs.tolist() if isinstance(lrs, torch.Tensor) else lrs)]
    if len(lr_values) != len(groups):
        raise ValueError(f"got {len(lr_values)} learning rates for {len(groups)} layer groups")
    pairs = _group_tensors(groups, directions)
    params = [p for group_pairs in pairs for p, _ in group_pairs]
    if not params:  # nothing trainable takes a step: no LR can change the meta loss
        return torch.zeros(len(groups), dtype=torch.float64)
    inputs, targets = meta_batch
    share = _batch_share(len(targets), params[0].device)  # n_r / N; None in a single process
    steps = [d for group_pairs in pairs for _, d in group_pairs]
    owner = [j for j, group_pairs in enumerate(pairs) for _ in group_pairs]
    dots: list[torch.Tensor | None] = [None] * len(params)  # 0-d tensors on the device: no syncs
    meta_sq: list[torch.Tensor | None] = [None] * len(params)

    def consume(k: int):
        # ⟨h, d⟩ for one parameter as soon as its meta gradient h is complete; then h is dropped, so the meta
        # backward never holds a second full set of gradients
        def hook(param: torch.Tensor) -> None:
            h = param.grad.reshape(-1)
            if share is not None and normalize:  # the global h: Σ_r (n_r/N)·h_r
                h = distributed.all_reduce_sum_(h * share.to(h.dtype))
            dots[k] = torch.dot(h, steps[k].reshape(-1).to(h.dtype))
            if normalize:
                meta_sq[k] = torch.dot(h, h)
            param.grad = None

        return hook

    held = [p.grad for p in params]  # whatever .grad held (the trainer's g) is put back afterwards
    with preserved_buffers(model):
        _shift(pairs, lr_values, -1.0)  # θ̂ = θ − α∘d, in place
        handles = [p.register_post_accumulate_grad_hook(consume(k)) for k, p in enumerate(params)]
        try:
            for p in params:
                p.grad = None
            with forward_context():
                meta_loss = loss_fn(model(inputs), targets)
            (meta_loss * loss_scale).backward(inputs=params)
        finally:
            for handle in handles:
                handle.remove()
            for p, grad in zip(params, held, strict=True):
                p.grad = grad
            _shift(pairs, lr_values, +1.0)  # back to θ
    zero = torch.zeros((), dtype=torch.float64, device=params[0].device)
    dot_values = torch.stack([zero if v is None else v.double() for v in dots])
    index = torch.tensor(owner, dtype=torch.long, device=dot_values.device)
    hyper = _group_sums(dot_values, index, len(groups))
    if normalize:  # the loss scale cancels in the cosine
        meta_values = torch.stack([zero if v is None else v.double() for v in meta_sq])
        step_sq = torch.stack([torch.dot(d.reshape(-1), d.reshape(-1)).double() for d in steps])
        result = _negative_cosine(hyper, index, meta_values, step_sq)
    else:
        if share is not None:  # Σ_r (n_r/N)·⟨h_r, d⟩ = ⟨h, d⟩
            hyper = distributed.all_reduce_sum_(hyper * share)
        result = -hyper / loss_scale
    if share is not None:  # the same bits on every rank, whatever order the reduction summed in
        distributed.broadcast_(result)
    return result.cpu()


def _group_sums(values: torch.Tensor, index: torch.Tensor, n_groups: int) -> torch.Tensor:
    """Per-tensor values summed per layer group (`index`: each tensor's group), float64 on the values' device."""
    return torch.zeros(n_groups, dtype=torch.float64, device=values.device).index_add_(0, index, values)


def _negative_cosine(dots: torch.Tensor, index: torch.Tensor, a_sq: torch.Tensor, b_sq: torch.Tensor) -> torch.Tensor:
    """−⟨a_j, b_j⟩/(‖a_j‖‖b_j‖) per group from per-tensor squared norms (0 where a norm is 0)."""
    norms = _group_sums(a_sq, index, len(dots)).sqrt() * _group_sums(b_sq, index, len(dots)).sqrt()
    return torch.where(norms > 0, -dots / norms.clamp_min(1e-300), torch.zeros_like(dots))


def next_batch_hypergradient(
    groups: Sequence[LayerGroup], grads: Directions, directions: Directions, normalize: bool = False
) -> torch.Tensor:
    """−⟨g_{t+1,j}, d_{t,j}⟩ per group: ∂L_{t+1}(θ_t − α∘d_t)/∂α_j from the next batch's gradient (``train_next``).

    `grads` are the gradients the trainer's backward left at θ_{t+1} (all-reduced under DDP, so the same on every
    rank), `directions` the update directions of step t; both per group, aligned with ``group.params``. With
    `normalize`, −cos(g_j, d_j). No forward or backward pass.
    """
    owner, dots, g_sq, d_sq = [], [], [], []
    for j, (group, group_grads, group_dirs) in enumerate(zip(groups, grads, directions, strict=True)):
        for _param, g, d in zip(group.params, group_grads, group_dirs, strict=True):
            if g is None or d is None:
                continue
            g, d = g.reshape(-1), d.reshape(-1).to(g.dtype)
            owner.append(j)
            dots.append(torch.dot(g, d).double())
            if normalize:
                g_sq.append(torch.dot(g, g).double())
                d_sq.append(torch.dot(d, d).double())
    if not dots:
        return torch.zeros(len(groups), dtype=torch.float64)
    values = torch.stack(dots)
    index = torch.tensor(owner, dtype=torch.long, device=values.device)
    hyper = _group_sums(values, index, len(groups))
    result = _negative_cosine(hyper, index, torch.stack(g_sq), torch.stack(d_sq)) if normalize else -hyper
    if distributed.is_distributed():
        distributed.broadcast_(result)
    return result.cpu()


def _batch_share(size: int, device: torch.device) -> torch.Tensor | None:
    """This rank's share n_r / N of the global meta batch under data-parallel training, else None."""
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
    """d/dα_j of the meta loss after the plain-SGD virtual step θ̂ = θ − α∘g, one entry per layer group.

    g is the training-batch gradient at θ: this is the hypergradient of plain SGD (no momentum, no weight decay),
    whose direction is g itself; :meth:`MetaLR.directions` gives the direction of any other supported optimizer.
    Costs one training and one meta forward/backward; the model's parameters, `.grad` fields and buffers are as
    they were when it returns. `groups` is what `medtransfer.layers.layer_groups(model)` returns.
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
    return hypergradient_from_directions(model, loss_fn, val_batch, lrs, groups, grads)


def _training_grads(metalr: MetaLR) -> list[list[torch.Tensor | None]]:
    return [[p.grad for p in group.params] for group in metalr.groups]


def metalr_step(
    model: nn.Module,
    loss_fn: Callable[[torch.Tensor, torch.Tensor], torch.Tensor],
    meta_batch: Batch,
    metalr: MetaLR,
    epoch: int,
    forward_context: Callable[[], contextlib.AbstractContextManager] = contextlib.nullcontext,
    loss_scale: float = 1.0,
) -> torch.Tensor:
    """One meta update between a training backward pass and its optimizer step; returns the hypergradient.

    Reads the training gradients the backward pass left on the parameters of `metalr.groups` (unscaled: with AMP call
    ``scaler.unscale_`` first), turns them into the optimizer's update directions (:meth:`MetaLR.directions`),
    computes ∂L_meta/∂α on `meta_batch` (already on the model's device) and moves the LRs, so the optimizer step that
    follows uses them. `epoch` (1-based) decides pinning; `forward_context` and `loss_scale` are as in
    :func:`hypergradient_from_directions`. The trainer's handler and the benchmark both call this, so what is measured
    is what trains. Profiler labels: ``update_direction``, ``hypergradient``, ``metalr_update``.
    """
    with torch.profiler.record_function("update_direction"):
        directions = metalr.directions(_training_grads(metalr))
    with torch.profiler.record_function("hypergradient"):
        hyper = hypergradient_from_directions(
            model,
            loss_fn,
            meta_batch,
            metalr.lrs,
            metalr.groups,
            directions,
            forward_context,
            loss_scale,
            normalize=metalr.rule == "normalized",
        )
    del directions
    with torch.profiler.record_function("metalr_update"):
        metalr.update(hyper, epoch)
    return hyper


def next_batch_metalr_step(metalr: MetaLR, epoch: int) -> torch.Tensor | None:
    """The ``train_next`` meta update, between a training backward pass and its optimizer step.

    If the previous step is known and this iteration is due, the LRs move along −⟨g_t, d_{t−1}⟩ (the gradients on the
    parameters now); then the step about to be taken is remembered for the next iteration (only when that one is
    due). For Adam, AdamW and SGD with momentum, d_{t−1} is read back from the state the optimizer's step left
    (:func:`~medtransfer.step_direction.last_step_dots`): only the LRs that step used are kept, no direction
    buffer. Otherwise (plain or Nesterov SGD, the published variant, the normalized rule, which needs ‖d‖) the
    direction itself is kept, one float per parameter. Returns the hypergradient, or None when no update happened.
    Call :meth:`MetaLR.drop_pending` instead when the optimizer will skip this step (AMP overflow). The handler and
    the benchmark both call this. Profiler labels: ``hypergradient``, ``metalr_update``, ``update_direction``.
    """
    grads = _training_grads(metalr)
    hyper = None
    if metalr.pending is not None and metalr.is_due():
        with torch.profiler.record_function("hypergradient"):
            hyper = _previous_step_hypergradient(metalr, grads)
        with torch.profiler.record_function("metalr_update"):
            metalr.update(hyper, epoch)
    metalr.pending = None
    if (metalr.iterations + 1) % metalr.meta_interval == 0:
        with torch.profiler.record_function("update_direction"):
            lrs = metalr.lrs
            directions = None if metalr.reads_back_directions else metalr.directions(grads)
            metalr.pending = {"lrs": lrs, "directions": directions}
    return hyper


def _previous_step_hypergradient(metalr: MetaLR, grads: Directions) -> torch.Tensor:
    pending = metalr.pending
    if pending["directions"] is not None:
        return next_batch_hypergradient(
            metalr.groups, grads, pending["directions"], normalize=metalr.rule == "normalized"
        )
    params = [p for group in metalr.groups for p in group.params]
    flat_grads = [g for group_grads in grads for g in group_grads]
    owner = [j for j, group in enumerate(metalr.groups) for _ in group.params]
    lrs = [float(pending["lrs"][j]) for j in owner]
    dots = last_step_dots(metalr.optimizer, params, flat_grads, lrs)
    kept = [(j, d) for j, d in zip(owner, dots, strict=True) if d is not None]
    hyper = torch.zeros(len(metalr.groups), dtype=torch.float64)
    if kept:
        index = torch.tensor([j for j, _ in kept], dtype=torch.long, device=kept[0][1].device)
        values = torch.stack([d for _, d in kept])
        hyper = _group_sums(values, index, len(metalr.groups))
    result = -hyper
    if distributed.is_distributed():
        distributed.broadcast_(result)
    return result.cpu()


class MetaLR:
    """Owns the per-group learning rates of a torch optimizer and moves them along the meta hypergradient.

    The optimizer's param groups must be the layer groups, in order (``medtransfer.layers.param_groups``). MetaLR
    writes ``group["lr"]`` and reads the optimizer's state to know the step it will take (SGD, Adam, AdamW:
    :mod:`medtransfer.step_direction`; another optimizer is refused unless `variant` is ``"published"``).

    Args:
        optimizer: the optimizer whose LRs MetaLR owns.
        groups: the layer groups matching the optimizer's param groups.
        base_lr: the head's initial LR; backbone groups start at ``backbone_scale * base_lr`` (as published)
            unless `init_lrs` gives every group's initial LR.
        hyper_lr: η, the step size on the LRs.
        rule: ``"multiplicative"`` (published code: α ← α(1 − η·∂L/∂α)), ``"additive"`` (paper: α ← α − η·∂L/∂α),
            or ``"normalized"``, this toolkit's scale-free variant: α_j ← α_j·exp(η·cos(h_j, d_j)) with h the
            meta gradient at θ̂. The first two step by a sum over the group's elements, which grows with its size
            (see the module docstring); the cosine is in [−1, 1] whatever the scale.
        bounds: LRs are clamped to this interval after every update.
        bounds_relative: read `bounds` as multiples of each group's initial LR (e.g. ``(0.01, 10)``).
        init_lrs: every group's initial LR (overrides `base_lr`/`backbone_scale`).
        backbone_scale: the body's initial LR as a fraction of the head's.
        pinned: names of groups whose LR stays at its initial value during the first `pin_epochs` epochs
            (default: the head, the last group, for 5 epochs, as published).
        pin_epochs: how long the pinned groups stay put.
        meta_interval: update the LRs every k-th iteration; the other iterations cost what plain training costs.
        variant: ``"corrected"`` (the optimizer's real step direction) or ``"published"`` (the reference code's
            virtual step θ + α·g with the raw gradient).
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
        variant: str = "corrected",
        bounds_relative: bool = False,
    ) -> None:
        if rule not in RULES:
            raise ValueError(f"rule must be one of {RULES}, got {rule!r}")
        if variant not in VARIANTS:
            raise ValueError(f"variant must be one of {VARIANTS}, got {variant!r}")
        if meta_interval < 1:
            raise ValueError(f"meta_interval must be >= 1, got {meta_interval}")
        if not 0 < float(bounds[0]) <= float(bounds[1]):
            raise ValueError(f"bounds must be 0 < low <= high, got {list(bounds)}")
        if variant == "corrected":
            check_supported(optimizer)
        names = [g.get("name") for g in optimizer.param_groups]
        expected = [g.name for g in groups]
        if names != expected:
            raise ValueError(
                "the optimizer's param groups must be the layer groups in order, built with "
                f"medtransfer.layers.param_groups(groups, lr); got {names} for groups {expected} "
                "(param_groups leaves out fully frozen groups: pass MetaLR only the groups that train)"
            )
        self.optimizer, self.groups, self.variant = optimizer, list(groups), variant
        self.hyper_lr, self.rule = float(hyper_lr), rule
        self.pin_epochs, self.meta_interval = int(pin_epochs), int(meta_interval)
        if init_lrs is None:
            base = float(base_lr if base_lr is not None else optimizer.param_groups[-1]["lr"])
            init_lrs = [backbone_scale * base] * (len(groups) - 1) + [base]
        if len(init_lrs) != len(groups):
            raise ValueError(f"init_lrs has {len(init_lrs)} values for {len(groups)} groups")
        low, high = float(bounds[0]), float(bounds[1])
        self.bounds, self.bounds_relative = (low, high), as_flag(bounds_relative, "metalr_bounds_relative")
        if self.bounds_relative:
            self.low = torch.tensor([low * float(a) for a in init_lrs], dtype=torch.float64)
            self.high = torch.tensor([high * float(a) for a in init_lrs], dtype=torch.float64)
        else:
            self.low = torch.full((len(groups),), low, dtype=torch.float64)
            self.high = torch.full((len(groups),), high, dtype=torch.float64)
            if any(not low <= a <= high for a in init_lrs):
                logger.warning(f"MetaLR: initial LRs {list(init_lrs)} lie outside bounds {self.bounds}; clamped")
        self.init_lrs = torch.tensor([float(a) for a in init_lrs], dtype=torch.float64).clamp(self.low, self.high)
        self.init_lrs = self.init_lrs.tolist()
        pinned = [groups[-1].name] if pinned is None else list(pinned)
        unknown = set(pinned) - set(expected)
        if unknown:
            raise ValueError(f"pinned groups {sorted(unknown)} are not layer groups ({expected})")
        self.pinned_index = [expected.index(n) for n in pinned]
        self.set_lrs(self.init_lrs)
        self.iterations = 0  # iterations observed (meta updates happen on every meta_interval-th)
        self.updates = 0
        self.history: list[list[float]] = []  # LRs used by the real step of every observed iteration
        # train_next: the last step's LRs, and its directions where the optimizer's state cannot give them back
        self.pending: dict | None = None
        self.reads_back_directions = (
            variant == "corrected" and rule != "normalized" and can_recover_last_direction(optimizer)
        )

    @property
    def lrs(self) -> torch.Tensor:
        """Current per-group LRs, as the optimizer holds them."""
        return torch.tensor([g["lr"] for g in self.optimizer.param_groups], dtype=torch.float64)

    def set_lrs(self, lrs: Sequence[float]) -> None:
        for group, lr in zip(self.optimizer.param_groups, lrs, strict=True):
            group["lr"] = float(lr)

    def directions(self, grads: Directions) -> list[list[torch.Tensor | None]]:
        """The update direction d per unit LR of the coming step, per group, aligned with ``group.params``.

        ``corrected``: the optimizer's own step from its state and `grads` (:func:`~medtransfer.step_direction.
        update_directions`, state untouched); ``published``: −g, the reference code's virtual step θ + α·g.
        """
        flat_params = [p for group in self.groups for p in group.params]
        flat_grads = [g for group_grads in grads for g in group_grads]
        if self.variant == "published":
            flat = [None if g is None else -g for g in flat_grads]
        else:
            flat = update_directions(self.optimizer, flat_params, flat_grads)
        result, start = [], 0
        for group in self.groups:
            result.append(flat[start : start + len(group.params)])
            start += len(group.params)
        return result

    def drop_pending(self) -> None:
        """Forget the kept direction (``train_next``): the step it described did not happen."""
        self.pending = None

    def is_due(self) -> bool:
        """Whether the coming iteration updates the LRs (counted from 0: the first iteration always does)."""
        return self.iterations % self.meta_interval == 0

    def update(self, hypergrad: torch.Tensor, epoch: int) -> torch.Tensor:
        """Move the LRs against `hypergrad` (∂L_meta/∂α, one per group); `epoch` is 1-based, for pinning."""
        hypergrad = hypergrad.to(torch.float64).cpu()
        if not torch.isfinite(hypergrad).all():
            logger.warning(f"MetaLR: non-finite hypergradient {hypergrad.tolist()}; LRs left unchanged")
            return self.lrs
        lrs = self.lrs
        if self.rule == "multiplicative":
            new = lrs * (1 - self.hyper_lr * hypergrad)
        elif self.rule == "normalized":  # hypergrad is −cos(h, d) here (metalr_step asks for it normalised)
            new = lrs * torch.exp(-self.hyper_lr * hypergrad)
        else:
            new = lrs - self.hyper_lr * hypergrad
        new = new.clamp(self.low, self.high)
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
        """Counters, LR history and the kept direction as tensors and numbers (loads with ``weights_only=True``)."""
        state = {
            "lrs": self.lrs,
            "iterations": self.iterations,
            "updates": self.updates,
            "history": torch.tensor(self.history, dtype=torch.float64).reshape(-1, len(self.groups)),
        }
        if self.pending is not None:
            directions = self.pending["directions"]
            state["pending_lrs"] = self.pending["lrs"].clone()
            if directions is not None:
                state["pending_directions"] = [
                    [None if d is None else d.detach().clone() for d in g] for g in directions
                ]
        return state

    def load_state_dict(self, state: dict) -> None:
        lrs = state["lrs"]
        if len(lrs) != len(self.groups):
            raise ValueError(f"MetaLR state has {len(lrs)} LRs but there are {len(self.groups)} layer groups")
        self.set_lrs(lrs.tolist())
        self.iterations, self.updates = int(state["iterations"]), int(state["updates"])
        self.history = state["history"].tolist()
        self.pending = None
        if "pending_lrs" in state:
            directions = state.get("pending_directions")
            if directions is not None:
                directions = [
                    [None if d is None else d.to(p.device, p.dtype) for p, d in zip(group.params, dirs, strict=True)]
                    for group, dirs in zip(self.groups, directions, strict=True)
                ]
            self.pending = {"lrs": state["pending_lrs"].to(torch.float64), "directions": directions}


class CyclingBatches:
    """Endless, reshuffled, full-size batches from a dataset, resumable at the exact batch.

    The batches are consecutive chunks of one endless stream of permutations, a new one per pass drawn from
    (seed, pass): no batch is short (the last chunk of a pass continues into the next pass's permutation), none is
    the same first batch every time, and none depends on any global RNG; `state_dict` records the position. A
    dataset smaller than a batch gives batches of the whole dataset.

    Under data-parallel training `batch_size` is per process, as the training loader's is: the global batch is the
    next ``world_size·batch_size`` indices of the stream and rank r takes every world_size-th of them from the r-th,
    exactly how ``DistributedSampler`` shards the training batches. So W processes see together the batches one
    process with ``batch_size·W`` would see. `rank` and `world_size` default to the process group's.
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
            raise ValueError("the MetaLR meta dataset is empty; it needs held-out data (see metalr_meta_source)")
        if len(dataset) < self.world_size:
            raise ValueError(
                f"the MetaLR meta dataset has {len(dataset)} items, fewer than the {self.world_size} processes; "
                "it needs at least one item per process"
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

    def next_indices(self) -> list[int]:
        """This process's dataset indices of the next batch (and move on)."""
        n = len(self.dataset)
        start = self.drawn * self.batch_size
        chunk: list[int] = []
        while len(chunk) < self.batch_size:
            epoch, position = divmod(start + len(chunk), n)
            chunk += self._order(epoch)[position : position + self.batch_size - len(chunk)]
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


class FixedBatch(CyclingBatches):
    """The same batch every time: the dataset's first ``batch_size`` items in order (the published code's meta batch,
    its first training batch, as its meta loader was re-created every call). Sharded across processes as
    :class:`CyclingBatches` is."""

    def next_indices(self) -> list[int]:
        self.drawn += 1
        return list(range(self.batch_size))[self.rank :: self.world_size]


def meta_batches(source: str, dataset, batch_size: int, seed: int = 0) -> CyclingBatches | None:
    """The meta batches a ``metalr_meta_source`` draws (None for ``train_next``, which needs none).

    Args:
        source: one of ``META_SOURCES``.
        dataset: the bundle's ``meta_dataset`` (the held-out slice, the un-augmented training split or the
            validation split, as the bundle's ``meta_source`` chose).
        batch_size: per process, as the training loader's.
        seed: the run's seed (the meta stream is offset from it, so it differs from the training shuffle).
    """
    if source not in META_SOURCES:
        raise ValueError(f"metalr_meta_source must be one of {', '.join(META_SOURCES)}, got {source!r}")
    if source == "train_next":
        return None
    if source == "first_train_batch":
        return FixedBatch(dataset, batch_size)
    return CyclingBatches(dataset, batch_size, seed=int(seed) + 7919)


class MetaLRState:
    """What a checkpoint needs for an exact MetaLR resume: the LRs, counters, history and kept direction, and the
    position in the meta batches (``{"metalr": ..., "val_batches": ...}``; no batches for ``train_next``)."""

    def __init__(self, metalr: MetaLR, val_batches: CyclingBatches | None) -> None:
        self.metalr, self.val_batches = metalr, val_batches

    def state_dict(self) -> dict:
        batches = self.val_batches.state_dict() if self.val_batches is not None else {}
        return {"metalr": self.metalr.state_dict(), "val_batches": batches}

    def load_state_dict(self, state: dict) -> None:
        self.metalr.load_state_dict(state["metalr"])
        if self.val_batches is not None:
            self.val_batches.load_state_dict(state["val_batches"])
