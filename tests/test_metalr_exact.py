"""MetaLR's hypergradient is the derivative of the training that really happens.

The reference here is independent of the implementation: a central finite difference of the *real* optimizer step.
The model and optimizer are copied, one layer group's LR is moved by ±ε, the copy's ``optimizer.step()`` runs, and the
meta loss is measured after it. For SGD (plain; momentum + Nesterov + weight decay; dampening + maximize), Adam,
AdamW (with and without amsgrad) and Adam with decoupled weight decay, at the first step and after several, the
toolkit's hypergradient must equal it to a relative 1e-5, in float64. The same for ``train_next`` (the next training
batch's loss after the step) and for the published variant (whose virtual step θ + α·g is differentiated as such).
"""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

from medtransfer.layers import layer_groups, param_groups
from medtransfer.metalr import MetaLR, metalr_step, next_batch_metalr_step
from medtransfer.step_direction import UnsupportedOptimizer, update_directions

OPTIMIZERS = {
    "sgd": lambda pg: torch.optim.SGD(pg),
    "sgd-momentum-nesterov-wd": lambda pg: torch.optim.SGD(pg, momentum=0.9, nesterov=True, weight_decay=0.05),
    "sgd-dampening-maximize": lambda pg: torch.optim.SGD(pg, momentum=0.8, dampening=0.3, maximize=True),
    "adam-l2": lambda pg: torch.optim.Adam(pg, weight_decay=0.05),
    "adamw": lambda pg: torch.optim.AdamW(pg, weight_decay=0.1),
    "adamw-amsgrad": lambda pg: torch.optim.AdamW(pg, weight_decay=0.1, amsgrad=True),
    "adam-decoupled": lambda pg: torch.optim.Adam(pg, weight_decay=0.1, decoupled_weight_decay=True),
}
LRS = [0.02, 0.01, 0.05]  # one per layer group: the two hidden layers and the head


def model_and_data(seed: int = 0):
    torch.manual_seed(seed)
    model = nn.Sequential(nn.Linear(5, 8), nn.Tanh(), nn.Linear(8, 6), nn.Tanh(), nn.Linear(6, 3)).double()
    gen = torch.Generator().manual_seed(seed + 1)
    batches = [
        (torch.randn(16, 5, generator=gen, dtype=torch.float64), torch.randint(0, 3, (16,), generator=gen))
        for _ in range(8)
    ]
    return model, batches


def build(model: nn.Module, factory, lrs=LRS):
    groups = layer_groups(model)
    optimizer = factory(param_groups(groups, 0.01))
    for group, lr in zip(optimizer.param_groups, lrs, strict=True):
        group["lr"] = lr
    return groups, optimizer


def train_steps(model, optimizer, batches) -> None:
    """Real steps with varying LRs, so the moments and buffers are not a first step's."""
    for k, (x, y) in enumerate(batches):
        for group in optimizer.param_groups:
            group["lr"] *= 1.1 if k % 2 else 0.9
        optimizer.zero_grad()
        nn.functional.cross_entropy(model(x), y).backward()
        optimizer.step()


def loss_after_real_step(model, optimizer, factory, j: int, delta: float, batch) -> float:
    """The loss on `batch` after the real step of a copy, group j's LR moved by `delta` (grads as on `model`)."""
    twin = copy.deepcopy(model)
    _, twin_optimizer = build(twin, factory)
    twin_optimizer.load_state_dict(copy.deepcopy(optimizer.state_dict()))  # moments, step counts, LRs (not shared)
    for p_twin, p in zip(twin.parameters(), model.parameters(), strict=True):
        p_twin.grad = p.grad.clone()
    twin_optimizer.param_groups[j]["lr"] += delta
    twin_optimizer.step()
    with torch.no_grad():
        return float(nn.functional.cross_entropy(twin(batch[0]), batch[1]))


def finite_difference(model, optimizer, factory, batch, eps: float = 1e-6) -> torch.Tensor:
    return torch.tensor(
        [
            (
                loss_after_real_step(model, optimizer, factory, j, eps, batch)
                - loss_after_real_step(model, optimizer, factory, j, -eps, batch)
            )
            / (2 * eps)
            for j in range(len(optimizer.param_groups))
        ],
        dtype=torch.float64,
    )


def relative_error(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a - b).abs().max() / b.abs().max())


@pytest.mark.parametrize("warmup", [0, 5], ids=["first-step", "after-5-steps"])
@pytest.mark.parametrize("name", list(OPTIMIZERS))
def test_hypergradient_equals_finite_difference_of_the_real_step(name, warmup):
    factory = OPTIMIZERS[name]
    model, batches = model_and_data()
    groups, optimizer = build(model, factory)
    train_steps(model, optimizer, batches[:warmup])
    train_batch, meta_batch = batches[6], batches[7]
    optimizer.zero_grad()
    nn.functional.cross_entropy(model(train_batch[0]), train_batch[1]).backward()
    expected = finite_difference(model, optimizer, factory, meta_batch)

    metalr = MetaLR(optimizer, groups, init_lrs=[g["lr"] for g in optimizer.param_groups], bounds=(1e-9, 10.0))
    state_before = copy.deepcopy(optimizer.state_dict())
    got = metalr_step(model, nn.functional.cross_entropy, meta_batch, metalr, epoch=10)
    assert relative_error(got, expected) < 1e-5, (got, expected)
    # the optimizer's state is untouched by the direction (the real step will read it next)
    after = optimizer.state_dict()["state"]
    for k, state in state_before["state"].items():
        for key, value in state.items():
            assert torch.equal(torch.as_tensor(after[k][key]), torch.as_tensor(value)), (k, key)


def test_raw_gradient_hypergradient_is_not_the_derivative_of_an_adamw_step():
    """The old virtual step θ − α∘g (what the fixed test above must catch): off for AdamW after a few steps."""
    factory = OPTIMIZERS["adamw"]
    model, batches = model_and_data()
    groups, optimizer = build(model, factory)
    train_steps(model, optimizer, batches[:5])
    optimizer.zero_grad()
    nn.functional.cross_entropy(model(batches[6][0]), batches[6][1]).backward()
    expected = finite_difference(model, optimizer, factory, batches[7])
    from medtransfer.metalr import hypergradient_from_directions

    raw = [[p.grad for p in g.params] for g in groups]
    lrs = [g["lr"] for g in optimizer.param_groups]
    old = hypergradient_from_directions(model, nn.functional.cross_entropy, batches[7], lrs, groups, raw)
    assert relative_error(old, expected) > 0.1


@pytest.mark.parametrize("warmup", [0, 4], ids=["first-step", "after-4-steps"])
@pytest.mark.parametrize("name", list(OPTIMIZERS))
def test_train_next_hypergradient_equals_finite_difference_of_the_next_batch_loss(name, warmup):
    """−⟨g_{t+1}, d_t⟩ = ∂L_{t+1}(θ_t − α∘d_t)/∂α: the next batch's loss after the real step t, LR of t moved."""
    factory = OPTIMIZERS[name]
    model, batches = model_and_data(seed=3)
    groups, optimizer = build(model, factory)
    train_steps(model, optimizer, batches[:warmup])
    metalr = MetaLR(optimizer, groups, init_lrs=[g["lr"] for g in optimizer.param_groups], bounds=(1e-9, 10.0))
    step_batch, next_batch = batches[5], batches[6]
    optimizer.zero_grad()
    nn.functional.cross_entropy(model(step_batch[0]), step_batch[1]).backward()
    expected = finite_difference(model, optimizer, factory, next_batch)
    assert next_batch_metalr_step(metalr, epoch=10) is None  # nothing kept yet: no update, the direction is kept
    assert metalr.pending is not None
    optimizer.step()
    metalr.record()
    optimizer.zero_grad()
    nn.functional.cross_entropy(model(next_batch[0]), next_batch[1]).backward()
    lrs_before = metalr.lrs
    got = next_batch_metalr_step(metalr, epoch=10)
    assert relative_error(got, expected) < 1e-5, (got, expected)
    assert not torch.equal(metalr.lrs, lrs_before)  # the LRs of the coming step moved


def test_published_variant_differentiates_its_own_virtual_step():
    """θ̂ = θ + α·g with the raw gradient: its hypergradient is +⟨∇L_meta(θ̂), g⟩, checked by finite differences."""
    model, batches = model_and_data(seed=5)
    groups, optimizer = build(model, OPTIMIZERS["adam-l2"])
    train_steps(model, optimizer, batches[:3])
    optimizer.zero_grad()
    nn.functional.cross_entropy(model(batches[4][0]), batches[4][1]).backward()
    grads = {p: p.grad.clone() for p in model.parameters()}
    lrs = [g["lr"] for g in optimizer.param_groups]

    def meta_loss(j: int, delta: float) -> float:
        twin = copy.deepcopy(model)
        with torch.no_grad():
            for group_index, group in enumerate(layer_groups(twin)):
                for p_twin, p in zip(group.params, groups[group_index].params, strict=True):
                    p_twin += (lrs[group_index] + (delta if group_index == j else 0.0)) * grads[p]
            return float(nn.functional.cross_entropy(twin(batches[5][0]), batches[5][1]))

    expected = torch.tensor([(meta_loss(j, 1e-6) - meta_loss(j, -1e-6)) / 2e-6 for j in range(3)], dtype=torch.float64)
    metalr = MetaLR(optimizer, groups, init_lrs=lrs, bounds=(1e-9, 10.0), variant="published")
    got = metalr_step(model, nn.functional.cross_entropy, batches[5], metalr, epoch=10)
    assert relative_error(got, expected) < 1e-5


def test_direction_is_the_real_step_per_unit_lr_for_every_optimizer():
    for name, factory in OPTIMIZERS.items():
        model, batches = model_and_data(seed=7)
        _, optimizer = build(model, factory)
        train_steps(model, optimizer, batches[:3])
        optimizer.zero_grad()
        nn.functional.cross_entropy(model(batches[4][0]), batches[4][1]).backward()
        params = list(model.parameters())
        directions = update_directions(optimizer, params)
        before = [p.detach().clone() for p in params]
        lr_of = {id(p): g["lr"] for g in optimizer.param_groups for p in g["params"]}
        optimizer.step()
        for p, p0, d in zip(params, before, directions, strict=True):
            assert torch.allclose(p.detach(), p0 - lr_of[id(p)] * d, rtol=0, atol=1e-14), name


def test_unknown_optimizer_is_refused_with_the_supported_ones():
    model, _ = model_and_data()
    groups = layer_groups(model)
    optimizer = torch.optim.RMSprop(param_groups(groups, 0.01))
    with pytest.raises(UnsupportedOptimizer, match="SGD, Adam, AdamW"):
        MetaLR(optimizer, groups)
    MetaLR(optimizer, groups, variant="published")  # the published virtual step needs no optimizer knowledge


@pytest.mark.parametrize(("name", "stored"), [("adamw", False), ("sgd-momentum-nesterov-wd", True)])
def test_train_next_keeps_what_it_needs_through_a_checkpoint_and_drops_it_after_a_skipped_step(tmp_path, name, stored):
    """Adam(W) and momentum SGD read the last step back from the optimizer's state (only its LRs are kept);
    Nesterov and plain SGD keep the direction itself. Either way it survives a weights_only checkpoint."""
    model, batches = model_and_data()
    groups, optimizer = build(model, OPTIMIZERS[name])
    metalr = MetaLR(optimizer, groups, init_lrs=LRS, bounds=(1e-9, 10.0))
    assert metalr.reads_back_directions is not stored
    nn.functional.cross_entropy(model(batches[0][0]), batches[0][1]).backward()
    next_batch_metalr_step(metalr, epoch=1)
    assert (metalr.pending["directions"] is not None) is stored
    path = tmp_path / "state.pt"
    torch.save(metalr.state_dict(), path)
    groups_b, optimizer_b = build(copy.deepcopy(model), OPTIMIZERS[name])
    restored = MetaLR(optimizer_b, groups_b, init_lrs=LRS, bounds=(1e-9, 10.0))
    restored.load_state_dict(torch.load(path, weights_only=True))
    assert torch.equal(restored.pending["lrs"], metalr.pending["lrs"])
    if stored:
        for kept, loaded in zip(metalr.pending["directions"], restored.pending["directions"], strict=True):
            for a, b in zip(kept, loaded, strict=True):
                assert torch.equal(a, b)
    metalr.drop_pending()
    assert metalr.pending is None and "pending_lrs" not in metalr.state_dict()
