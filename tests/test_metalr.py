"""Tests for medtransfer.metalr: the closed-form hypergradient against autograd, MetaLR's rules and exact resume.

The hypergradient reference below is independent of the implementation: it builds the virtual step
θ̂ = θ − α∘g functionally (``torch.func.functional_call``) with the LRs as a leaf tensor and differentiates the
validation loss with respect to them by autograd, never touching the real model's parameters or buffers.
"""

from __future__ import annotations

import contextlib
import math

import pytest
import torch
import torchvision
from monai.losses import DiceCELoss
from monai.networks.nets import UNet
from torch import nn
from torch.func import functional_call

from medtransfer.layers import layer_groups, param_groups
from medtransfer.metalr import (
    CyclingBatches,
    MetaLR,
    hypergradient_from_directions,
    layer_hypergradient,
    metalr_step,
    preserved_buffers,
)


@pytest.fixture(autouse=True, scope="module")
def single_thread():
    """Small CPU workloads: one intra-op thread is faster and avoids thread oversubscription on a busy machine."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def rel(a: torch.Tensor, b: torch.Tensor) -> float:
    a, b = a.double(), b.double()
    return float((a - b).norm() / b.norm())


def reference_hypergradient(model, loss_fn, train_batch, val_batch, lrs, groups, dtype=torch.float64) -> torch.Tensor:
    """d L_val(θ − α∘g) / dα by autograd through a functional virtual step (buffers are clones: no side effects)."""
    params = dict(model.named_parameters())
    buffers = {n: b.detach().clone() for n, b in model.named_buffers()}
    x, y = train_batch
    train_loss = loss_fn(functional_call(model, (params, {n: b.clone() for n, b in buffers.items()}), (x,)), y)
    names = [n for n, p in params.items() if p.requires_grad]
    g = dict(zip(names, torch.autograd.grad(train_loss, [params[n] for n in names]), strict=True))
    alpha = torch.tensor([float(a) for a in lrs], dtype=dtype, requires_grad=True)
    virtual = {}
    for j, group in enumerate(groups):
        for name in group.param_names:
            theta = params[name].detach()
            virtual[name] = theta - alpha[j].to(theta.dtype) * g[name] if name in g else theta
    xv, yv = val_batch
    val_loss = loss_fn(functional_call(model, (virtual, buffers), (xv,)), yv)
    (hyper,) = torch.autograd.grad(val_loss, alpha)
    return hyper.double()


def resnet18_problem(dtype: torch.dtype):
    torch.manual_seed(0)
    model = torchvision.models.resnet18(weights=None, num_classes=3).to(dtype).train()
    gen = torch.Generator().manual_seed(1)
    train = (torch.randn(4, 3, 32, 32, generator=gen, dtype=dtype), torch.randint(0, 3, (4,), generator=gen))
    val = (torch.randn(4, 3, 32, 32, generator=gen, dtype=dtype), torch.randint(0, 3, (4,), generator=gen))
    return model, nn.CrossEntropyLoss(), train, val


def unet_problem(dtype: torch.dtype):
    torch.manual_seed(0)
    model = UNet(spatial_dims=2, in_channels=1, out_channels=2, channels=(4, 8, 16), strides=(2, 2), num_res_units=1)
    model = model.to(dtype).train()
    gen = torch.Generator().manual_seed(2)

    def batch():
        image = torch.randn(1, 1, 32, 32, generator=gen, dtype=dtype)
        label = (torch.rand(1, 1, 32, 32, generator=gen) > 0.5).to(dtype)
        return image, label

    return model, DiceCELoss(to_onehot_y=True, softmax=True), batch(), batch()


# ResNet-18 needs float64: at 32x32 its last BatchNorms normalise over 4 values (1x1 maps), which makes the
# float32 hypergradient change by ~1-5 % under a 1-ulp change of the weights, so float32 cannot resolve 1e-4.
# The small UNet agrees to ~1e-7 in float32.
@pytest.mark.parametrize(
    ("make", "dtype"),
    [(resnet18_problem, torch.float64), (unet_problem, torch.float32)],
    ids=["resnet18-float64", "unet2d-float32"],
)
def test_hypergradient_matches_autograd_through_virtual_step(make, dtype):
    model, loss_fn, train, val = make(dtype)
    groups = layer_groups(model)
    assert len(groups) >= 5
    lrs = torch.linspace(0.05, 0.5, len(groups)).tolist()  # varied per group, large enough to matter

    expected = reference_hypergradient(model, loss_fn, train, val, lrs, groups, dtype)
    got = layer_hypergradient(model, loss_fn, train, val, lrs, groups)

    assert got.dtype == torch.float64 and got.shape == (len(groups),)
    assert torch.isfinite(got).all() and expected.norm() > 0
    assert rel(got, expected) < 1e-4, (got, expected)

    # a virtual step that was never applied would give the hypergradient at α = 0, which is far from this one
    at_zero = layer_hypergradient(model, loss_fn, train, val, [0.0] * len(groups), groups)
    assert rel(at_zero, expected) > 1e-2
    assert rel(at_zero, reference_hypergradient(model, loss_fn, train, val, [0.0] * len(groups), groups, dtype)) < 1e-4


def test_hypergradient_in_eval_mode_uses_running_stats():
    model, loss_fn, train, val = unet_problem(torch.float32)
    with torch.no_grad():  # non-trivial running statistics, so eval mode differs from train mode
        for _ in range(3):
            model(torch.randn(2, 1, 32, 32) * 2 + 1)
    model.eval()
    groups = layer_groups(model)
    lrs = torch.linspace(0.1, 0.5, len(groups)).tolist()
    expected = reference_hypergradient(model, loss_fn, train, val, lrs, groups, torch.float32)
    assert rel(layer_hypergradient(model, loss_fn, train, val, lrs, groups), expected) < 1e-4
    assert not model.training


def test_hypergradient_leaves_parameters_grads_and_buffers_as_they_were():
    model, loss_fn, train, val = resnet18_problem(torch.float32)
    groups = layer_groups(model)
    # a mix of existing and missing .grad fields, to see that neither is touched
    for i, p in enumerate(model.parameters()):
        p.grad = torch.full_like(p, 0.5) if i % 2 else None
    params_before = {n: p.detach().clone() for n, p in model.named_parameters()}
    grads_before = {n: None if p.grad is None else p.grad.clone() for n, p in model.named_parameters()}
    buffers_before = {n: b.clone() for n, b in model.named_buffers()}
    lrs = torch.linspace(0.05, 0.5, len(groups)).tolist()

    hyper = layer_hypergradient(model, loss_fn, train, val, lrs, groups)
    assert torch.isfinite(hyper).all()

    drift = max((p.detach() - params_before[n]).abs().max().item() for n, p in model.named_parameters())
    print(f"max parameter drift after layer_hypergradient (float32): {drift:.3g}")
    for name, p in model.named_parameters():
        # θ − αg + αg is exact only up to rounding (observed: max |Δ| ≈ 6e-8 on ResNet-18 in float32)
        assert torch.allclose(p.detach(), params_before[name], rtol=1e-6, atol=1e-7), name
        before = grads_before[name]
        if before is None:
            assert p.grad is None, name
        else:
            assert torch.equal(p.grad, before), name
    assert any(n.endswith("num_batches_tracked") for n in buffers_before)
    for name, b in model.named_buffers():
        assert torch.equal(b, buffers_before[name]), name
    assert model.training


def test_preserved_buffers_restores_even_on_error():
    model = nn.Sequential(nn.Linear(3, 4), nn.BatchNorm1d(4)).train()
    before = {n: b.clone() for n, b in model.named_buffers()}
    with pytest.raises(RuntimeError, match="boom"), preserved_buffers(model):
        model(torch.randn(8, 3) + 3)
        assert not torch.equal(model[1].running_mean, before["1.running_mean"])
        raise RuntimeError("boom")
    for name, b in model.named_buffers():
        assert torch.equal(b, before[name]), name


# --------------------------------------------------------------------------------------------------
# A two-layer linear model where the right LR moves are known
# --------------------------------------------------------------------------------------------------
#
# out = B·A·x with A = [[1, -2], [0, 1]], B = [1, 1]; MSE. Training sample x = e1 (out = 1, target 0), validation
# sample x_v = e1 + e2 (out_v = 0, target -1): both want the output lower. For small α,
#     ∂L_val/∂α_A ≈ −⟨∇_A L_val, g_A⟩ = −4·|B|²·⟨x_v, x⟩ = −8  (A's training step lowers out_v too: raise α_A),
#     ∂L_val/∂α_B ≈ −⟨∇_B L_val, g_B⟩ = −4·⟨A x_v, A x⟩ = +4  (B's training step raises out_v: lower α_B).


def two_layer_problem():
    model = nn.Sequential(nn.Linear(2, 2, bias=False), nn.Linear(2, 1, bias=False)).double()
    with torch.no_grad():
        model[0].weight.copy_(torch.tensor([[1.0, -2.0], [0.0, 1.0]]))
        model[1].weight.copy_(torch.tensor([[1.0, 1.0]]))
    train = (torch.tensor([[1.0, 0.0]], dtype=torch.float64), torch.tensor([[0.0]], dtype=torch.float64))
    val = (torch.tensor([[1.0, 1.0]], dtype=torch.float64), torch.tensor([[-1.0]], dtype=torch.float64))
    return model, nn.MSELoss(), train, val


def val_loss_after_virtual_step(model, loss_fn, train, val, lrs) -> float:
    """L_val(θ − α∘g) evaluated directly, for finite differences."""
    params = dict(model.named_parameters())
    train_loss = loss_fn(functional_call(model, params, (train[0],)), train[1])
    grads = torch.autograd.grad(train_loss, list(params.values()))
    groups = layer_groups(model)
    virtual = {}
    for j, group in enumerate(groups):
        for name in group.param_names:
            virtual[name] = params[name].detach() - lrs[j] * grads[list(params).index(name)]
    with torch.no_grad():
        return float(loss_fn(functional_call(model, virtual, (val[0],)), val[1]))


def test_hypergradient_sign_on_a_known_problem_and_finite_differences():
    model, loss_fn, train, val = two_layer_problem()
    groups = layer_groups(model)
    assert [g.name for g in groups] == ["0", "1"]
    lrs = [0.01, 0.01]
    hyper = layer_hypergradient(model, loss_fn, train, val, lrs, groups)
    assert hyper[0] < 0 < hyper[1]
    assert hyper[0] == pytest.approx(-8, rel=0.1) and hyper[1] == pytest.approx(4, rel=0.1)

    eps = 1e-6
    for j in range(2):
        up, down = list(lrs), list(lrs)
        up[j] += eps
        down[j] -= eps
        numeric = (
            val_loss_after_virtual_step(model, loss_fn, train, val, up)
            - val_loss_after_virtual_step(model, loss_fn, train, val, down)
        ) / (2 * eps)
        assert float(hyper[j]) == pytest.approx(numeric, rel=1e-6)


@pytest.mark.parametrize("rule", ["multiplicative", "additive"])
def test_metalr_raises_the_helpful_lr_and_lowers_the_harmful_one(rule):
    model, loss_fn, train, val = two_layer_problem()
    groups = layer_groups(model)
    optimizer = torch.optim.SGD(param_groups(groups, 0.01), lr=0.01)
    hyper_lr = 0.01 if rule == "multiplicative" else 1e-4  # relative steps of ~8 % / 4 %, absolute ones of ~1e-3
    metalr = MetaLR(optimizer, groups, init_lrs=[0.01, 0.01], hyper_lr=hyper_lr, rule=rule, bounds=(1e-6, 1.0))
    trajectory = [metalr.lrs]
    for _ in range(4):
        hyper = layer_hypergradient(model, loss_fn, train, val, metalr.lrs, groups)
        metalr.update(hyper, epoch=10)  # past the default 5 pinned epochs of the head (group "1")
        metalr.record()
        trajectory.append(metalr.lrs)
    for before, after in zip(trajectory, trajectory[1:], strict=False):
        assert after[0] > before[0] and after[1] < before[1]
    assert [g["lr"] for g in optimizer.param_groups] == metalr.lrs.tolist()
    assert metalr.history == [t.tolist() for t in trajectory[1:]]


def test_frozen_group_gets_zero_and_others_see_no_step_on_it():
    model, loss_fn, train, val = two_layer_problem()
    groups = layer_groups(model)
    unfrozen_with_zero_lr = layer_hypergradient(model, loss_fn, train, val, [0.0, 0.3], groups)
    model[0].weight.requires_grad_(False)
    frozen = layer_hypergradient(model, loss_fn, train, val, [0.7, 0.3], groups)
    assert frozen[0] == 0
    assert float(frozen[1]) == pytest.approx(float(unfrozen_with_zero_lr[1]), rel=1e-12)


def test_hypergradient_from_directions_matches_and_honours_context_and_loss_scale():
    model, loss_fn, train, val = two_layer_problem()
    groups = layer_groups(model)
    lrs = torch.tensor([0.2, 0.05], dtype=torch.float64)
    loss = loss_fn(model(train[0]), train[1])
    flat = torch.autograd.grad(loss, [p for g in groups for p in g.params])
    grads = [[flat[0]], [flat[1]]]
    entered = []

    @contextlib.contextmanager
    def context():
        entered.append(True)
        yield

    plain = hypergradient_from_directions(model, loss_fn, val, lrs, groups, grads)
    scaled = hypergradient_from_directions(
        model, loss_fn, val, lrs, groups, grads, forward_context=context, loss_scale=1024.0
    )
    assert entered == [True]
    assert rel(plain, layer_hypergradient(model, loss_fn, train, val, lrs, groups)) < 1e-12
    assert rel(scaled, plain) < 1e-12
    assert rel(plain, reference_hypergradient(model, loss_fn, train, val, lrs.tolist(), groups)) < 1e-10
    with pytest.raises(ValueError, match="learning rates"):
        hypergradient_from_directions(model, loss_fn, val, [0.1], groups, grads)


def test_metalr_step_uses_the_gradients_on_the_params_and_moves_the_lrs():
    """The one meta update the trainer's handler and the benchmark share: hypergradient from ``.grad``, then update."""
    model, loss_fn, train, val = two_layer_problem()
    groups = layer_groups(model)
    metalr = MetaLR(torch.optim.SGD(param_groups(groups, 0.05)), groups, init_lrs=[0.2, 0.05], bounds=(1e-6, 1.0))
    lrs = metalr.lrs
    loss_fn(model(train[0]), train[1]).backward()
    grads = [p.grad.clone() for p in model.parameters()]
    hyper = metalr_step(model, loss_fn, val, metalr, epoch=metalr.pin_epochs + 1)
    assert rel(hyper, layer_hypergradient(model, loss_fn, train, val, lrs, groups)) < 1e-12
    assert rel(metalr.lrs, lrs * (1 - metalr.hyper_lr * hyper)) < 1e-12
    assert all(torch.equal(p.grad, g) for p, g in zip(model.parameters(), grads, strict=True))  # the real step's g


# --------------------------------------------------------------------------------------------------
# MetaLR's rules
# --------------------------------------------------------------------------------------------------


def three_group_model() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(4, 4), nn.Linear(4, 4), nn.Linear(4, 2)).double()


def make_metalr(**kwargs) -> MetaLR:
    model = three_group_model()
    groups = layer_groups(model)
    optimizer = torch.optim.SGD(param_groups(groups, 0.05))
    return MetaLR(optimizer, groups, **kwargs)


def optimizer_lrs(metalr: MetaLR) -> list[float]:
    return [g["lr"] for g in metalr.optimizer.param_groups]


def test_update_rules_match_hand_computation():
    hyper = torch.tensor([1.0, -2.0, 0.5])
    m = make_metalr(init_lrs=[1e-3, 2e-3, 5e-3], hyper_lr=0.1, rule="multiplicative", pin_epochs=0)
    returned = m.update(hyper, epoch=1)
    expected = [1e-3 * (1 - 0.1), 2e-3 * (1 + 0.2), 5e-3 * (1 - 0.05)]
    assert optimizer_lrs(m) == pytest.approx(expected, rel=1e-12)
    assert returned.tolist() == pytest.approx(expected, rel=1e-12) and m.updates == 1

    m = make_metalr(init_lrs=[1e-3, 2e-3, 5e-3], hyper_lr=0.1, rule="additive", pin_epochs=0)
    m.update(torch.tensor([0.001, -0.002, 0.01], dtype=torch.float64), epoch=1)
    assert optimizer_lrs(m) == pytest.approx([1e-3 - 1e-4, 2e-3 + 2e-4, 5e-3 - 1e-3], rel=1e-12)

    with pytest.raises(ValueError, match="rule"):
        make_metalr(rule="sgd")


@pytest.mark.parametrize("rule", ["multiplicative", "additive"])
def test_update_clamps_to_bounds(rule):
    m = make_metalr(init_lrs=[1e-3, 1e-3, 1e-3], hyper_lr=1.0, rule=rule, bounds=(1e-5, 2e-3), pin_epochs=0)
    m.update(torch.tensor([1e4, -1e4, 0.0]), epoch=1)  # far below zero, far above the upper bound, unchanged
    assert optimizer_lrs(m) == [1e-5, 2e-3, 1e-3]


def test_head_is_pinned_during_the_first_epochs_only():
    m = make_metalr(base_lr=1e-3, hyper_lr=0.1, pin_epochs=2)
    assert m.pinned_index == [2]
    hyper = torch.tensor([-1.0, -1.0, -1.0])
    for epoch in (1, 2):
        m.update(hyper, epoch=epoch)
        assert optimizer_lrs(m)[2] == 1e-3  # reset to its initial LR
    assert optimizer_lrs(m)[:2] == pytest.approx([1e-4 * 1.1**2] * 2, rel=1e-12)  # the backbone moves meanwhile
    m.update(hyper, epoch=3)
    assert optimizer_lrs(m)[2] == pytest.approx(1.1e-3, rel=1e-12)

    named = make_metalr(base_lr=1e-3, hyper_lr=0.1, pinned=["0"], pin_epochs=1)
    named.update(hyper, epoch=1)
    assert optimizer_lrs(named) == pytest.approx([1e-4, 1.1e-4, 1.1e-3], rel=1e-12)
    with pytest.raises(ValueError, match="pinned"):
        make_metalr(pinned=["nope"])


def test_default_initial_lrs():
    assert optimizer_lrs(make_metalr(base_lr=0.01)) == pytest.approx([0.001, 0.001, 0.01], rel=1e-12)
    wide = (1e-6, 1.0)
    base_from_optimizer = make_metalr(bounds=wide)
    assert optimizer_lrs(base_from_optimizer) == pytest.approx([0.005, 0.005, 0.05], rel=1e-12)
    assert optimizer_lrs(make_metalr(base_lr=0.01, backbone_scale=0.5)) == pytest.approx([0.005, 0.005, 0.01])
    m = make_metalr(init_lrs=[0.1, 0.2, 0.3], bounds=wide)
    assert optimizer_lrs(m) == [0.1, 0.2, 0.3] and m.lrs.dtype == torch.float64
    # initial LRs outside the bounds are clamped into them (head 0.05 > default upper bound 1e-2)
    assert optimizer_lrs(make_metalr()) == pytest.approx([0.005, 0.005, 0.01], rel=1e-12)
    with pytest.raises(ValueError, match="init_lrs"):
        make_metalr(init_lrs=[0.1, 0.2])


def test_meta_interval_schedules_updates():
    m = make_metalr(meta_interval=4)
    due = []
    for _ in range(10):
        due.append(m.is_due())
        m.record()
    assert [i for i, d in enumerate(due) if d] == [0, 4, 8]
    assert m.iterations == 10 and len(m.history) == 10
    assert all(make_metalr().is_due() for _ in range(3))
    with pytest.raises(ValueError, match="meta_interval"):
        make_metalr(meta_interval=0)


@pytest.mark.parametrize("bad", [math.nan, math.inf, -math.inf])
def test_non_finite_hypergradient_leaves_lrs_unchanged(bad):
    m = make_metalr(init_lrs=[1e-3, 2e-3, 3e-3], pin_epochs=0)
    returned = m.update(torch.tensor([0.5, bad, 0.5]), epoch=1)
    assert optimizer_lrs(m) == [1e-3, 2e-3, 3e-3] and returned.tolist() == [1e-3, 2e-3, 3e-3]
    assert m.updates == 0


def test_misaligned_optimizer_is_rejected():
    model = three_group_model()
    groups = layer_groups(model)
    with pytest.raises(ValueError, match="param groups"):
        MetaLR(torch.optim.SGD(model.parameters(), lr=0.1), groups)
    with pytest.raises(ValueError, match="param groups"):
        MetaLR(torch.optim.SGD(param_groups(groups[::-1], 0.1)), groups)


@pytest.mark.parametrize(
    ("factory", "momentum_like"),
    [
        (lambda pg: torch.optim.SGD(pg), False),
        (lambda pg: torch.optim.SGD(pg, momentum=0.9), False),
        (lambda pg: torch.optim.Adam(pg), True),
        (lambda pg: torch.optim.AdamW(pg, weight_decay=0.1), True),
    ],
    ids=["sgd", "sgd-momentum", "adam", "adamw"],
)
def test_works_with_torch_optimizers(factory, momentum_like):
    model = three_group_model()
    groups = layer_groups(model)
    optimizer = factory(param_groups(groups, 0.05))
    m = MetaLR(optimizer, groups, base_lr=0.01, hyper_lr=0.5, bounds=(1e-6, 1.0), pin_epochs=0)
    m.update(torch.tensor([1.0, -1.0, 0.5]), epoch=1)
    new = [5e-4, 1.5e-3, 7.5e-3]
    assert optimizer_lrs(m) == pytest.approx(new, rel=1e-12)

    # the real step uses the new LRs: check each group's first step against its textbook form
    loss = model(torch.randn(5, 4, dtype=torch.float64)).square().mean()
    loss.backward()
    before = [[p.detach().clone() for p in g.params] for g in groups]
    optimizer.step()
    for lr, group, group_before in zip(new, groups, before, strict=True):
        for p, p0 in zip(group.params, group_before, strict=True):
            g = p.grad
            if momentum_like:  # Adam(W)'s first step: m̂/√v̂ = g/|g|
                decay = optimizer.param_groups[0]["weight_decay"]
                expected = p0 * (1 - lr * decay) - lr * g / (g.abs() + 1e-8)
            else:  # SGD's first step (the momentum buffer starts as g)
                expected = p0 - lr * g
            assert torch.allclose(p.detach(), expected, rtol=1e-9, atol=1e-12)


# --------------------------------------------------------------------------------------------------
# Exact resume
# --------------------------------------------------------------------------------------------------


def make_run():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(6, 8), nn.BatchNorm1d(8), nn.ReLU(), nn.Linear(8, 3)).train()
    groups = layer_groups(model)
    optimizer = torch.optim.SGD(param_groups(groups, 0.1), momentum=0.9)
    metalr = MetaLR(optimizer, groups, base_lr=0.1, hyper_lr=2.0, bounds=(1e-4, 1.0), pin_epochs=1, meta_interval=2)
    gen = torch.Generator().manual_seed(5)
    data = [(torch.randn(6, generator=gen), int(torch.randint(0, 3, (), generator=gen))) for _ in range(34)]
    train = CyclingBatches(data[:24], batch_size=8, seed=1)  # 3 iterations per epoch
    val = CyclingBatches(data[24:], batch_size=4, seed=2)  # 10 samples: batches of 4, 4, 2
    return model, groups, optimizer, metalr, train, val


def train_for(iterations, model, groups, optimizer, metalr, train, val) -> None:
    loss_fn = nn.CrossEntropyLoss()
    for _ in range(iterations):
        x, y = next(train)
        if metalr.is_due():
            xv, yv = next(val)
            hyper = layer_hypergradient(model, loss_fn, (x, y), (xv, yv), metalr.lrs, groups)
            metalr.update(hyper, epoch=metalr.iterations // 3 + 1)
        optimizer.zero_grad()
        loss_fn(model(x), y).backward()
        optimizer.step()
        metalr.record()


def test_resume_reproduces_the_lr_trajectory(tmp_path):
    n = 5  # odd, so the resumed run starts between two meta updates (meta_interval=2)
    straight = make_run()
    train_for(2 * n, *straight)

    first = make_run()
    empty = first[3].state_dict()
    assert empty["history"].shape == (0, 3)
    train_for(n, *first)
    model, _, optimizer, metalr, train, val = first
    path = tmp_path / "checkpoint.pt"
    torch.save(
        {
            "model": model.state_dict(),
            "optimizer": optimizer.state_dict(),
            "metalr": metalr.state_dict(),
            "train": train.state_dict(),
            "val": val.state_dict(),
        },
        path,
    )
    del first, model, optimizer, metalr, train, val

    state = torch.load(path, weights_only=True)
    resumed = make_run()
    model, _, optimizer, metalr, train, val = resumed
    model.load_state_dict(state["model"])
    optimizer.load_state_dict(state["optimizer"])
    metalr.load_state_dict(state["metalr"])
    train.load_state_dict(state["train"])
    val.load_state_dict(state["val"])
    assert metalr.iterations == n and len(metalr.history) == n
    train_for(n, *resumed)

    reference = straight[3]
    assert len(reference.history) == 2 * n
    assert metalr.history == reference.history
    assert metalr.lrs.tolist() == reference.lrs.tolist()
    assert metalr.iterations == reference.iterations and metalr.updates == reference.updates == n
    # the LRs really moved (so a resume that ignored them would fail), after the head's pinned first epoch too
    assert len({tuple(h[:2]) for h in reference.history}) > 3
    assert len({h[2] for h in reference.history}) > 1
    for (name, p), p_ref in zip(model.named_parameters(), straight[0].parameters(), strict=True):
        assert torch.equal(p, p_ref), name

    # MetaLR's own state restores the LRs too, without the optimizer's state
    alone = make_run()[3]
    alone.load_state_dict(state["metalr"])
    assert optimizer_lrs(alone) == state["metalr"]["lrs"].tolist() != alone.init_lrs

    with pytest.raises(ValueError, match="LRs"):
        metalr.load_state_dict({**state["metalr"], "lrs": torch.tensor([0.1, 0.2])})


# --------------------------------------------------------------------------------------------------
# CyclingBatches
# --------------------------------------------------------------------------------------------------


def take(batches: CyclingBatches, n: int) -> list:
    return [next(batches) for _ in range(n)]


def test_cycling_batches_are_full_size_and_walk_one_stream_of_permutations():
    data = list(range(10))
    batches = CyclingBatches(data, batch_size=3, seed=7, collate_fn=list)
    drawn = take(batches, 20)  # 60 indices: exactly 6 passes
    assert all(len(b) == 3 for b in drawn)  # no short batch, also where a pass ends inside a batch
    stream = [i for b in drawn for i in b]
    passes = [stream[k : k + 10] for k in range(0, 60, 10)]
    assert all(sorted(p) == data for p in passes)  # every index once per pass
    assert len({tuple(p) for p in passes}) == 6  # a new permutation every pass
    assert iter(batches) is batches


def test_cycling_batches_are_seeded_not_global():
    data = list(range(12))
    torch.manual_seed(0)
    a = take(CyclingBatches(data, 5, seed=3, collate_fn=list), 9)
    torch.manual_seed(123)
    torch.rand(7)
    b = take(CyclingBatches(data, 5, seed=3, collate_fn=list), 9)
    c = take(CyclingBatches(data, 5, seed=4, collate_fn=list), 9)
    assert a == b
    assert a != c


def test_cycling_batches_resume_at_the_exact_next_batch():
    data = list(range(11))
    straight = take(CyclingBatches(data, 4, seed=9, collate_fn=list), 13)
    for stop in (0, 2, 3, 7):  # inside a pass, at a pass boundary, in a later pass
        first = CyclingBatches(data, 4, seed=9, collate_fn=list)
        head = take(first, stop)
        state = first.state_dict()
        resumed = CyclingBatches(data, 4, seed=9, collate_fn=list)
        resumed.load_state_dict(state)
        assert head + take(resumed, 13 - stop) == straight, stop


def test_cycling_batches_cap_the_batch_size_and_reject_an_empty_dataset():
    batches = CyclingBatches(list(range(5)), batch_size=64, seed=0, collate_fn=list)
    assert batches.batch_size == 5
    for batch in take(batches, 3):
        assert sorted(batch) == [0, 1, 2, 3, 4]
    with pytest.raises(ValueError, match="empty"):
        CyclingBatches([], batch_size=2)


def test_cycling_batches_default_collate_stacks_tuples_and_dicts():
    pairs = [(torch.full((2, 3), float(i)), i) for i in range(6)]
    x, y = next(CyclingBatches(pairs, batch_size=4, seed=0))
    assert x.shape == (4, 2, 3) and y.shape == (4,)
    assert torch.equal(x[:, 0, 0], y.to(x.dtype))
    dicts = [{"image": torch.full((1, 2), float(i)), "label": i} for i in range(6)]
    batch = next(CyclingBatches(dicts, batch_size=4, seed=0))
    assert batch["image"].shape == (4, 1, 2) and torch.equal(batch["image"][:, 0, 0], batch["label"].float())
