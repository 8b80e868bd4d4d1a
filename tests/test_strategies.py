"""Fine-tuning strategies: what each one trains, the LRs and penalties their formulas give, the linear-probe fast path.

A small CNN with BatchNorm in every group (stem, block1, block2, fc) stands in for a pre-trained network; every
expected value is computed here independently (autograd on copies, numpy SVD, the formulas written out).
"""

from __future__ import annotations

import copy
import math
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from torch import nn

from medtransfer.handlers import LRRecorder
from medtransfer.layers import layer_groups
from medtransfer.metalr import MetaLR, metalr_step
from medtransfer.strategies import (
    BSS,
    L2SP,
    AutoRGN,
    AutoRGNHandler,
    FeatureDataset,
    FullFineTuning,
    HeadOnFeatures,
    LayerwiseLRDecay,
    LinearProbe,
    LinearProbeThenFineTune,
    PartialFineTuning,
    SurgicalFineTuning,
)
from medtransfer.strategies.auto_rgn import cosine_factor, relative_gradient_norms
from medtransfer.strategies.llrd import decayed_lrs

GROUPS = ["stem", "block1", "block2", "fc"]


class Tiny(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.BatchNorm2d(4), nn.ReLU())
        self.block1 = nn.Sequential(nn.Conv2d(4, 6, 3, padding=1), nn.BatchNorm2d(6), nn.ReLU())
        self.block2 = nn.Sequential(nn.Conv2d(6, 6, 3, padding=1), nn.BatchNorm2d(6), nn.ReLU())
        self.fc = nn.Linear(6, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.block2(self.block1(self.stem(x))).mean((2, 3)))


def _model(seed: int = 0) -> Tiny:
    torch.manual_seed(seed)
    return Tiny()


def _batches(n: int = 3, size: int = 6, seed: int = 1) -> list[tuple[torch.Tensor, torch.Tensor]]:
    g = torch.Generator().manual_seed(seed)
    return [(torch.randn(size, 3, 8, 8, generator=g), torch.randint(0, 3, (size,), generator=g)) for _ in range(n)]


def _state(model: nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def _train(model, optimizer, loss_fn, batches) -> None:
    for x, y in batches:
        model.train()  # what MONAI's trainer does every iteration
        optimizer.zero_grad()
        loss_fn(model(x), y).backward()
        optimizer.step()


@pytest.mark.parametrize(
    ("strategy", "trains"),
    [
        (FullFineTuning(), GROUPS),
        (LinearProbe(), ["fc"]),
        (PartialFineTuning(first_k=1), ["stem", "fc"]),
        (PartialFineTuning(first_k=2), ["stem", "block1", "fc"]),
        (PartialFineTuning(last_k=1), ["block2", "fc"]),
        (PartialFineTuning(first_k=0), ["fc"]),
        (PartialFineTuning(last_k=3), GROUPS),
        (SurgicalFineTuning("block1"), ["block1", "fc"]),
        (SurgicalFineTuning(0), ["stem", "fc"]),
        (LinearProbeThenFineTune(probe_epochs=1), ["fc"]),
        (LayerwiseLRDecay(0.5), GROUPS),
        (AutoRGN(), GROUPS),
        (L2SP(), GROUPS),
        (BSS(), GROUPS),
    ],
    ids=lambda v: v if isinstance(v, str) else None,
)
def test_strategy_trains_exactly_its_groups_and_frozen_batchnorm_stays(strategy, trains):
    model = _model()
    groups = layer_groups(model)
    assert [g.name for g in groups] == GROUPS
    before = _state(model)
    optimizer = torch.optim.AdamW(strategy.param_groups(model, groups, 1e-2, weight_decay=0.1), lr=1e-2)
    loss_fn = strategy.training_loss(nn.functional.cross_entropy, model, groups)
    _train(model, optimizer, loss_fn, _batches())
    after = _state(model)
    for key in before:
        group = key.split(".")[0]
        if group in trains:
            if not key.endswith("num_batches_tracked"):
                assert not torch.equal(before[key], after[key]), f"{key} of trained group {group} did not move"
        else:
            assert torch.equal(before[key], after[key]), f"{key} of frozen group {group} changed"


def test_lp_ft_unfreezes_the_backbone_after_the_probe_epochs():
    model = _model()
    groups = layer_groups(model)
    strategy = LinearProbeThenFineTune(probe_epochs=1)
    optimizer = torch.optim.AdamW(strategy.param_groups(model, groups, 1e-2), lr=1e-2)
    assert {g["name"] for g in optimizer.param_groups} == set(GROUPS)  # all there from the start
    _train(model, optimizer, nn.functional.cross_entropy, _batches(1))
    probed = _state(model)
    strategy.unfreeze()
    _train(model, optimizer, nn.functional.cross_entropy, _batches(2, seed=2))
    after = _state(model)
    assert all(not torch.equal(probed[k], after[k]) for k in probed if not k.endswith("num_batches_tracked"))


def test_partial_and_surgical_refuse_what_the_network_does_not_have():
    groups = layer_groups(_model())
    with pytest.raises(ValueError, match="3 backbone groups"):
        PartialFineTuning(first_k=4).trainable(groups)
    with pytest.raises(ValueError, match="exactly one"):
        PartialFineTuning(first_k=1, last_k=1)
    with pytest.raises(ValueError, match="no layer group named 'layer9'"):
        SurgicalFineTuning("layer9").trainable(groups)


def test_llrd_lrs_are_decay_powers_from_the_head_and_1d_tensors_get_no_weight_decay():
    model = _model()
    groups = layer_groups(model)
    pg = LayerwiseLRDecay(0.5).param_groups(model, groups, 0.1, weight_decay=0.05)
    lr_of = {g["name"]: g["lr"] for g in pg}
    assert [lr_of[n] for n in GROUPS] == pytest.approx([0.1 * 0.125, 0.1 * 0.25, 0.1 * 0.5, 0.1])
    assert decayed_lrs(4, 0.1, 0.5) == pytest.approx([0.0125, 0.025, 0.05, 0.1])
    names = {id(p): n for n, p in model.named_parameters()}
    for g in pg:
        for p in g["params"]:
            expected = 0.0 if p.ndim == 1 else 0.05
            assert g["weight_decay"] == expected, names[id(p)]
    recorded = LRRecorder("unused", torch.optim.AdamW(pg), groups, tensorboard=False).effective_lrs()
    assert recorded == pytest.approx([0.0125, 0.025, 0.05, 0.1])


def test_lr_recorder_reports_zero_for_frozen_groups():
    model = _model()
    groups = layer_groups(model)
    optimizer = torch.optim.AdamW(PartialFineTuning(last_k=1).param_groups(model, groups, 0.01))
    assert LRRecorder("unused", optimizer, groups, tensorboard=False).effective_lrs() == [0.0, 0.0, 0.01, 0.01]
    other = _model()
    other_groups = layer_groups(other)
    auto = torch.optim.AdamW(AutoRGN().param_groups(other, other_groups, 0.01))
    auto.param_groups[0]["lr"] = 0.0  # stem.0.weight: 108 of the stem's 120 values; the rest train at 0.01
    recorded = LRRecorder("unused", auto, other_groups, tensorboard=False).effective_lrs()
    assert recorded[0] == pytest.approx(0.01 * 12 / 120)  # the size-weighted mean


def test_auto_rgn_lrs_follow_the_relative_gradient_norms():
    model = _model()
    groups = layer_groups(model)
    strategy = AutoRGN(n_batches=2)
    optimizer = torch.optim.Adam(strategy.param_groups(model, groups, 0.01))
    batches = _batches(2)
    # independent: per tensor, ‖∂L/∂θ‖/‖θ‖ on each batch from autograd on a copy, averaged
    reference = copy.deepcopy(model).train()
    named = list(reference.named_parameters())
    zero = [n for n, p in named if not p.detach().any()]
    assert zero == ["stem.1.bias", "block1.1.bias", "block2.1.bias"]  # BatchNorm shifts start at 0: RGN undefined
    expected = np.zeros(len(named))
    for x, y in batches:
        reference.zero_grad()
        nn.functional.cross_entropy(reference(x), y).backward()
        expected += [p.grad.norm().item() / (p.detach().norm().item() or math.nan) for _, p in named]
    expected /= len(batches)
    params = [g["params"][0] for g in optimizer.param_groups]
    rgn = relative_gradient_norms(model, nn.functional.cross_entropy, batches, params).numpy()
    defined = ~np.isnan(expected)
    assert rgn[defined] == pytest.approx(expected[defined], rel=1e-5) and np.isinf(rgn[~defined]).all()

    buffers = [b.clone() for b in model.buffers()]
    model.eval()
    engine = SimpleNamespace(
        state=SimpleNamespace(epoch=3, device="cpu"), network=model, loss_function=nn.functional.cross_entropy,
        prepare_batch=lambda batch, device, non_blocking, **kw: batch, non_blocking=False, to_kwargs={},
    )  # fmt: skip
    AutoRGNHandler(strategy, optimizer, lr=0.01, epochs=10, batches=iter(batches))(engine)
    factor = 0.5 * (1 + math.cos(math.pi * 2 / 10))
    assert cosine_factor(3, 10) == pytest.approx(factor)
    lrs = np.array([g["lr"] for g in optimizer.param_groups])
    scales = np.where(defined, expected / np.nanmax(expected), 1.0)  # all-zero tensors train at the full LR
    assert lrs == pytest.approx(0.01 * factor * scales, rel=1e-5)
    assert lrs.max() == pytest.approx(0.01 * factor) and lrs.min() < 0.1 * lrs.max()
    assert not model.training and all(torch.equal(a, b) for a, b in zip(buffers, model.buffers(), strict=True))


def test_metalr_normalized_rule_moves_each_lr_by_exp_of_eta_cosine():
    model = _model()
    groups = layer_groups(model)
    optimizer = torch.optim.SGD(FullFineTuning().param_groups(model, groups, 0.01), lr=0.01)
    init = [0.004, 0.003, 0.002, 0.01]
    metalr = MetaLR(optimizer, groups, rule="normalized", hyper_lr=0.3, bounds=(1e-8, 1.0), init_lrs=init,
                    pin_epochs=0)  # fmt: skip
    (x, y), val = _batches(1)[0], _batches(1, seed=7)[0]
    model.eval()  # no BatchNorm statistics in play, so the copy below sees the same function
    nn.functional.cross_entropy(model(x), y).backward()
    train_grads = {n: p.grad.clone() for n, p in model.named_parameters()}
    # independent: θ̂ = θ − α_j g on a copy, h = ∇L_val(θ̂), cos per group
    shifted = copy.deepcopy(model)
    with torch.no_grad():
        for j, group in enumerate(groups):
            for n in group.param_names:
                shifted.get_parameter(n).sub_(init[j] * train_grads[n])
    shifted.zero_grad()
    nn.functional.cross_entropy(shifted(val[0]), val[1]).backward()
    expected = []
    for j, group in enumerate(groups):
        h = torch.cat([shifted.get_parameter(n).grad.flatten() for n in group.param_names]).double()
        g = torch.cat([train_grads[n].flatten() for n in group.param_names]).double()
        expected.append(init[j] * math.exp(0.3 * float(h @ g / (h.norm() * g.norm()))))
    cosines = metalr_step(model, nn.functional.cross_entropy, val, metalr, epoch=1)
    assert cosines.abs().max() <= 1
    assert metalr.lrs.tolist() == pytest.approx(expected, rel=1e-6)


def test_l2_sp_penalty_and_its_gradient_match_the_formula():
    model = _model()
    groups = layer_groups(model)
    loss = L2SP(alpha=0.3, beta=0.07).training_loss(nn.functional.cross_entropy, model, groups)
    start = copy.deepcopy(model)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.1)
    backbone = [n for g in groups[:-1] for n in g.param_names]
    towards = sum(((model.get_parameter(n) - start.get_parameter(n)) ** 2).sum().item() for n in backbone)
    head = sum((p**2).sum().item() for p in model.fc.parameters())
    penalty = loss.penalty()
    assert penalty.item() == pytest.approx(0.15 * towards + 0.035 * head, rel=1e-6)
    penalty.backward()
    for n in backbone:
        expected = 0.3 * (model.get_parameter(n) - start.get_parameter(n))
        assert torch.allclose(model.get_parameter(n).grad, expected, atol=1e-7)
    assert torch.allclose(model.fc.weight.grad, 0.07 * model.fc.weight.detach(), atol=1e-7)
    x, y = _batches(1)[0]
    assert loss(model(x), y).item() == pytest.approx(nn.functional.cross_entropy(model(x), y).item() + penalty.item())


def test_bss_penalty_is_eta_times_the_smallest_squared_singular_values_of_the_head_input():
    model = _model()
    groups = layer_groups(model)
    loss = BSS(eta=0.01, k=2).training_loss(nn.functional.cross_entropy, model, groups)
    captured = []
    model.fc.register_forward_pre_hook(lambda _m, args: captured.append(args[0].detach().numpy().copy()))
    x, y = _batches(1)[0]
    pred = model(x)
    singular = np.linalg.svd(captured[0], compute_uv=False)  # 6 × 6 features
    expected = nn.functional.cross_entropy(pred, y).item() + 0.01 * float((np.sort(singular)[:2] ** 2).sum())
    assert loss(pred, y).item() == pytest.approx(expected, rel=1e-5)
    with torch.no_grad():
        model(x)  # evaluation forwards are not captured
    with pytest.raises(RuntimeError, match="no features"):
        loss(pred, y)


def test_linear_probe_fast_path_gives_the_same_head_as_the_slow_path():
    slow, fast = _model(), _model()
    g = torch.Generator().manual_seed(3)
    items = [{"image": torch.randn(3, 8, 8, generator=g), "label": torch.tensor(i % 3)} for i in range(12)]
    order = torch.randperm(12, generator=g).tolist()
    batches = [order[i : i + 4] for i in range(0, 12, 4)] * 3  # three epochs, no augmentation

    groups = layer_groups(slow)
    opt = torch.optim.AdamW(LinearProbe().param_groups(slow, groups, 0.05), lr=0.05)
    for idx in batches:
        slow.train()
        opt.zero_grad()
        x = torch.stack([items[i]["image"] for i in idx])
        y = torch.stack([items[i]["label"] for i in idx])
        nn.functional.cross_entropy(slow(x), y).backward()
        opt.step()

    fast_groups = layer_groups(fast)
    opt = torch.optim.AdamW(LinearProbe().param_groups(fast, fast_groups, 0.05), lr=0.05)
    features = FeatureDataset(fast, fast_groups, items, "cpu", batch_size=5)
    head = HeadOnFeatures(fast, fast_groups).train()
    for idx in batches:
        opt.zero_grad()
        f = torch.stack([features[i]["image"] for i in idx])
        y = torch.stack([features[i]["label"] for i in idx])
        nn.functional.cross_entropy(head(f), y).backward()
        opt.step()
    assert not torch.equal(fast.fc.weight, _model().fc.weight)  # it trained
    assert torch.allclose(slow.fc.weight, fast.fc.weight, atol=1e-6)
    assert torch.allclose(slow.fc.bias, fast.fc.bias, atol=1e-6)
    assert all(torch.equal(a, b) for a, b in zip(slow.state_dict().values(), fast.state_dict().values(),
                                                  strict=True) if a.dtype != torch.float32 or a.ndim != 2)  # fmt: skip
