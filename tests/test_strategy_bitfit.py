"""BitFit trains exactly the biases, the normalisation parameters and the head; every other weight stays bit-identical."""

from __future__ import annotations

import copy

import torch
from torch import nn

from medtransfer.layers import layer_groups
from medtransfer.strategies import BitFit


def _net() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Conv2d(3, 8, 3, padding=1, bias=False), nn.BatchNorm2d(8), nn.ReLU(),
        nn.Conv2d(8, 8, 3, padding=1), nn.GroupNorm(2, 8), nn.ReLU(),
        nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(8, 2),
    )  # fmt: skip


def test_bitfit_trains_exactly_the_biases_norms_and_head():
    model = _net()
    groups = layer_groups(model)
    before = copy.deepcopy(model.state_dict())
    optimizer = torch.optim.AdamW(BitFit().param_groups(model, groups, lr=1e-2, weight_decay=1e-4))
    images, labels = torch.randn(6, 3, 8, 8), torch.tensor([0, 1, 0, 1, 0, 1])
    for _ in range(3):
        optimizer.zero_grad()
        nn.functional.cross_entropy(model(images), labels).backward()
        optimizer.step()
    after = model.state_dict()
    trained = {"1.weight", "1.bias", "3.bias", "4.weight", "4.bias", "8.weight", "8.bias"}  # BN, conv bias, GN, head
    for name, value in before.items():
        if name in trained or name in ("1.running_mean", "1.running_var", "1.num_batches_tracked"):
            assert not torch.equal(value, after[name]), f"{name} did not train"  # BN statistics follow the target
        else:
            assert torch.equal(value, after[name]), f"{name} moved"
    assert {n for n, p in model.named_parameters() if p.requires_grad} == trained
