"""The step an optimizer is about to take, per unit learning rate, computed without taking it.

For every optimizer the bundles and strategies use, the coming update of a parameter θ in a group with learning rate
α is linear in α:

    θ' = θ − α·d,

where the *direction* d depends on the current gradient g and the optimizer's state (moments, momentum buffer, step
count), never on α. :func:`update_directions` computes d exactly as torch's own ``step()`` would, from the state
before that step, and leaves the state untouched:

* **SGD** (``torch.optim.SGD``): g ← g + λθ (weight decay); with momentum μ the buffer b' = g on the first step,
  else μ·b + (1 − τ)·g (dampening τ); d = g + μ·b' with Nesterov, else b' (d = g without momentum).
* **Adam** (coupled L2, ``torch.optim.Adam``): g ← g + λθ; m' = β₁m + (1 − β₁)g, v' = β₂v + (1 − β₂)g², t' = t + 1;
  d = m' / ((1 − β₁^t')·(√v̂ / √(1 − β₂^t') + ε)) with v̂ = v' (or max(v_max, v') with amsgrad).
* **AdamW** (``torch.optim.AdamW``, or ``Adam(decoupled_weight_decay=True)``): θ' = θ(1 − αλ) − α·(Adam's step),
  so d = λθ + (the Adam direction of the raw g).

``maximize`` negates g first, as torch does. Because d does not depend on α, the derivative of any loss L(θ − α∘d)
with respect to group j's LR is −⟨∇L(θ̂)_j, d_j⟩: this is what makes MetaLR's hypergradient the derivative of the
training that really happens (``medtransfer.metalr``). Another optimizer is a :class:`UnsupportedOptimizer` error
naming the supported ones: a wrong direction would silently tune LRs for a step that never happens.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

SUPPORTED = ("SGD", "Adam", "AdamW")


class UnsupportedOptimizer(TypeError):
    """MetaLR cannot know the step of this optimizer."""


def _kind(optimizer: torch.optim.Optimizer) -> str:
    if isinstance(optimizer, torch.optim.AdamW):
        return "adamw"
    if isinstance(optimizer, torch.optim.Adam):
        return "adam"
    if isinstance(optimizer, torch.optim.SGD):
        return "sgd"
    raise UnsupportedOptimizer(
        f"MetaLR computes the exact update direction of {', '.join(SUPPORTED)} (torch.optim), not of "
        f"{type(optimizer).__name__}; use one of them as the bundle's optimizer (optimizer#_target_)"
    )


def check_supported(optimizer: torch.optim.Optimizer) -> None:
    """Raise :class:`UnsupportedOptimizer` unless :func:`update_directions` knows `optimizer`'s step."""
    _kind(optimizer)


def _scalar(value) -> float:
    return float(value.item()) if isinstance(value, torch.Tensor) else float(value)


@torch.no_grad()
def update_directions(
    optimizer: torch.optim.Optimizer,
    params: Sequence[torch.Tensor],
    grads: Sequence[torch.Tensor | None] | None = None,
) -> list[torch.Tensor | None]:
    """d for each of `params`, such that the optimizer's coming ``step()`` is θ' = θ − lr·d (lr of θ's group).

    Args:
        optimizer: an SGD, Adam or AdamW optimizer holding `params`, in the state just before its step.
        params: the parameters whose directions are wanted.
        grads: their gradients (default: each parameter's ``.grad``); None for a parameter that takes no step.

    Returns:
        One tensor per parameter (None where the gradient is None), new memory; the optimizer's state is unchanged.
    """
    kind = _kind(optimizer)
    grads = [p.grad for p in params] if grads is None else list(grads)
    if len(grads) != len(params):
        raise ValueError(f"got {len(grads)} gradients for {len(params)} parameters")
    where = {id(p): group for group in optimizer.param_groups for p in group["params"]}
    result: list[torch.Tensor | None] = [None] * len(params)
    # batch the parameters by optimizer group, so each group's hyper-parameters apply to one foreach call
    batches: dict[int, list[int]] = {}
    for k, (p, g) in enumerate(zip(params, grads, strict=True)):
        if g is None:
            continue
        group = where.get(id(p))
        if group is None:
            raise ValueError("a parameter given to update_directions is not in the optimizer")
        batches.setdefault(id(group), []).append(k)
    groups = {id(group): group for group in optimizer.param_groups}
    for gid, members in batches.items():
        group = groups[gid]
        ps = [params[k] for k in members]
        gs = [grads[k] for k in members]
        if group.get("maximize", False):
            gs = torch._foreach_neg(gs)
        if kind == "sgd":
            directions = _sgd(optimizer, group, ps, gs)
        else:
            decoupled = kind == "adamw" or bool(group.get("decoupled_weight_decay", False))
            directions = _adam(optimizer, group, ps, gs, decoupled)
        for k, d in zip(members, directions, strict=True):
            result[k] = d
    return result


def _sgd(optimizer, group: dict, ps: list[torch.Tensor], gs: list[torch.Tensor]) -> list[torch.Tensor]:
    weight_decay, momentum = _scalar(group["weight_decay"]), _scalar(group["momentum"])
    dampening, nesterov = _scalar(group["dampening"]), bool(group["nesterov"])
    gs = torch._foreach_add(gs, ps, alpha=weight_decay) if weight_decay != 0 else [g.clone() for g in gs]
    if momentum == 0:
        return gs
    out = []
    for p, g in zip(ps, gs, strict=True):
        buf = optimizer.state.get(p, {}).get("momentum_buffer")
        new_buf = g.clone() if buf is None else buf.mul(momentum).add_(g, alpha=1 - dampening)
        out.append(g.add_(new_buf, alpha=momentum) if nesterov else new_buf)
    return out


def _adam(optimizer, group: dict, ps, gs, decoupled: bool) -> list[torch.Tensor]:
    beta1, beta2 = (_scalar(b) for b in group["betas"])
    eps, weight_decay, amsgrad = _scalar(group["eps"]), _scalar(group["weight_decay"]), bool(group["amsgrad"])
    if weight_decay != 0 and not decoupled:
        gs = torch._foreach_add(gs, ps, alpha=weight_decay)
    # parameters at the same step count share their bias corrections: compute per step count
    by_step: dict[float, list[int]] = {}
    for i, p in enumerate(ps):
        by_step.setdefault(_scalar(optimizer.state.get(p, {}).get("step", 0.0)), []).append(i)
    out: list[torch.Tensor | None] = [None] * len(ps)
    for step, idx in by_step.items():
        states = [optimizer.state.get(ps[i], {}) for i in idx]
        g = [gs[i] for i in idx]
        m = [s["exp_avg"] if "exp_avg" in s else torch.zeros_like(x) for s, x in zip(states, g, strict=True)]
        v = [s["exp_avg_sq"] if "exp_avg_sq" in s else torch.zeros_like(x) for s, x in zip(states, g, strict=True)]
        t = step + 1
        bias_correction1, bias_correction2 = 1 - beta1**t, 1 - beta2**t
        # torch: d = m' / (c₁·(√v' / √c₂ + ε)); here with the constants folded in, so each element is touched by
        # seven passes instead of nine: d = m' / (√(v'·c₁²/c₂) + c₁ε), v'·c₁²/c₂ = (β₂v + (1 − β₂)g²)·c₁²/c₂
        fold = bias_correction1**2 / bias_correction2
        m_new = torch._foreach_lerp(m, g, 1 - beta1)  # exactly torch's exp_avg.lerp_(grad, 1 - beta1)
        if amsgrad:
            v_new = torch._foreach_mul(v, beta2)
            torch._foreach_addcmul_(v_new, g, g, value=1 - beta2)
            v_max = [
                s["max_exp_avg_sq"] if "max_exp_avg_sq" in s else torch.zeros_like(x)
                for s, x in zip(states, g, strict=True)
            ]
            torch._foreach_maximum_(v_new, v_max)
            torch._foreach_mul_(v_new, fold)
        else:
            v_new = torch._foreach_mul(v, beta2 * fold)
            torch._foreach_addcmul_(v_new, g, g, value=(1 - beta2) * fold)
        denom = v_new  # reused in place
        torch._foreach_sqrt_(denom)
        torch._foreach_add_(denom, eps * bias_correction1)
        torch._foreach_div_(m_new, denom)
        del denom, v_new
        if weight_decay != 0 and decoupled:
            torch._foreach_add_(m_new, [ps[i] for i in idx], alpha=weight_decay)
        for i, d in zip(idx, m_new, strict=True):
            out[i] = d
    return out  # type: ignore[return-value]


def can_recover_last_direction(optimizer: torch.optim.Optimizer) -> bool:
    """Whether the direction of the step just taken can be read back from the optimizer's state (no stored copy).

    Adam and AdamW keep the moments the step used; SGD with momentum (not Nesterov) keeps the step itself as its
    momentum buffer. Plain SGD and Nesterov's step also need the gradient, which is gone after the step.
    """
    kind = _kind(optimizer)
    if kind != "sgd":
        return True
    return all(_scalar(g["momentum"]) != 0 and not g["nesterov"] for g in optimizer.param_groups)


@torch.no_grad()
def last_step_dots(
    optimizer: torch.optim.Optimizer,
    params: Sequence[torch.Tensor],
    grads: Sequence[torch.Tensor | None],
    lrs_used: Sequence[float],
) -> list[torch.Tensor | None]:
    """⟨g_k, d_k⟩ per parameter, where d is the direction of the step the optimizer has just taken (θ' = θ − α·d).

    Read back from the state that step left (:func:`can_recover_last_direction` must hold), so nothing is stored
    between steps: for Adam(W) d = a + λθ_before with a = m/((1 − β₁^t)(√v̂/√(1 − β₂^t) + ε)) from the moments after
    the step, and θ_before = (θ + α·a)/(1 − αλ), which gives ⟨g, d⟩ = (⟨g, a⟩ + λ⟨g, θ⟩)/(1 − αλ) (decoupled decay;
    coupled L2 is inside m and v: ⟨g, d⟩ = ⟨g, a⟩); for SGD with momentum d is the momentum buffer.

    Args:
        optimizer: the optimizer, right after its step (and before the next one).
        params: the parameters; their current values are θ after the step.
        grads: the gradients to dot with (None: no entry).
        lrs_used: per parameter, the LR that step used (α).

    Returns:
        0-d float64 tensors (None where the gradient or the optimizer state is missing: no step was taken).
    """
    kind = _kind(optimizer)
    where = {id(p): group for group in optimizer.param_groups for p in group["params"]}
    out: list[torch.Tensor | None] = []
    for p, g, lr in zip(params, grads, lrs_used, strict=True):
        state = optimizer.state.get(p, {})
        group = where[id(p)]
        if g is None or not state:
            out.append(None)
            continue
        if kind == "sgd":  # (with maximize the state was built from −g, as d is: no sign to add)
            out.append(torch.dot(g.reshape(-1), state["momentum_buffer"].reshape(-1)).double())
            continue
        beta1, beta2 = (_scalar(b) for b in group["betas"])
        eps, weight_decay = _scalar(group["eps"]), _scalar(group["weight_decay"])
        step = _scalar(state["step"])
        bias_correction1, bias_correction2 = 1 - beta1**step, 1 - beta2**step
        v = state["max_exp_avg_sq"] if group["amsgrad"] else state["exp_avg_sq"]
        denom = torch.mul(v, bias_correction1**2 / bias_correction2).sqrt_().add_(eps * bias_correction1)
        adam = torch.div(state["exp_avg"], denom, out=denom)  # a = m / denom, in the same memory
        dot = torch.dot(g.reshape(-1), adam.reshape(-1)).double()
        decoupled = kind == "adamw" or bool(group.get("decoupled_weight_decay", False))
        if decoupled and weight_decay != 0:
            dot = (dot + weight_decay * torch.dot(g.reshape(-1), p.detach().reshape(-1)).double()) / (
                1 - float(lr) * weight_decay
            )
        out.append(dot)
    return out
