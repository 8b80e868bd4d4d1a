"""The discriminative strategy: MetaLR's initial LRs (body s·lr, head lr) held fixed, under the bundle's schedule.

Expected LRs are written out here (0.1·lr, lr, the cosine's value), never read back from the strategy; the update
check steps an independent AdamW per layer group at the LR the formula gives.
"""

from __future__ import annotations

import copy
import csv
import json
import math

import pytest
import torch
from monai.bundle import ConfigParser
from torchvision.models import resnet18

from medtransfer.bundling import bundle_path, strategy_names, strategy_path
from medtransfer.errors import StrategyError
from medtransfer.launch import project_error
from medtransfer.layers import layer_groups
from medtransfer.runs import run_bundle_workflow
from medtransfer.strategies import DiscriminativeLR
from medtransfer.strategies.discriminative import schedule

LR, WD = 1e-3, 1e-4
BUSI = bundle_path("busi_classification") / "configs"


def _resnet(seed: int = 0) -> torch.nn.Module:
    torch.manual_seed(seed)
    return resnet18(weights=None, num_classes=3)


def _optimizer(model: torch.nn.Module, scale: float = 0.1) -> tuple[torch.optim.AdamW, list]:
    groups = layer_groups(model)
    return torch.optim.AdamW(DiscriminativeLR(scale).param_groups(model, groups, LR, WD)), groups


def test_body_groups_at_scaled_lr_head_at_lr_every_parameter_once():
    model = _resnet()
    optimizer, groups = _optimizer(model)
    assert len(groups) == 10  # stem, 8 BasicBlocks, fc: the MetaLR paper's ResNet-18 groups
    assert [g["name"] for g in optimizer.param_groups] == [g.name for g in groups]
    assert [g["lr"] for g in optimizer.param_groups] == pytest.approx([1e-4] * 9 + [1e-3], rel=1e-12)
    assert optimizer.param_groups[-1]["name"] == "fc"
    assert all(g["weight_decay"] == WD for g in optimizer.param_groups)
    held = [id(p) for g in optimizer.param_groups for p in g["params"]]
    assert len(held) == len(set(held))
    assert set(held) == {id(p) for p in model.parameters()}
    assert all(p.requires_grad for p in model.parameters())  # nothing frozen


def test_scale_is_a_setting():
    optimizer, _ = _optimizer(_resnet(), scale=0.25)
    assert [g["lr"] for g in optimizer.param_groups] == pytest.approx([2.5e-4] * 9 + [1e-3], rel=1e-12)
    assert DiscriminativeLR(0.25).settings() == {"strategy": "discriminative", "discriminative_backbone_scale": 0.25}


def test_one_adamw_step_moves_each_group_at_its_own_lr():
    model = _resnet()
    reference = copy.deepcopy(model)
    optimizer, groups = _optimizer(model)
    # the same step, taken by one independent AdamW per layer group at the LR the formula gives
    ref_groups = layer_groups(reference)
    independent = [
        torch.optim.AdamW(g.params, lr=LR if j == len(ref_groups) - 1 else 0.1 * LR, weight_decay=WD)
        for j, g in enumerate(ref_groups)
    ]
    g = torch.Generator().manual_seed(1)
    x, y = torch.randn(4, 3, 32, 32, generator=g), torch.tensor([0, 1, 2, 0])
    for net in (model, reference):
        torch.nn.functional.cross_entropy(net(x), y).backward()
    before = [p.detach().clone() for p in model.parameters()]
    optimizer.step()
    for opt in independent:
        opt.step()
    for (name, p), q in zip(model.named_parameters(), reference.parameters(), strict=True):
        torch.testing.assert_close(p, q, rtol=0, atol=1e-7, msg=name)
    # and the LRs differ where they should: AdamW's first step moves a weight by about its LR (|m/√v| ≈ 1)
    moved = [max((p - p0).abs().max().item() for p, p0 in _pairs(model, before, grp)) for grp in groups]
    assert moved[-1] == pytest.approx(LR, rel=0.05)
    assert all(m == pytest.approx(0.1 * LR, rel=0.05) for m in moved[:-1])


def _pairs(model, before, group):
    index = {id(p): i for i, p in enumerate(model.parameters())}
    return [(p, before[index[id(p)]]) for p in group.params]


def test_cosine_scales_every_group_by_the_same_factor_constant_leaves_them():
    optimizer, _ = _optimizer(_resnet())
    cosine = schedule(optimizer, "cosine", 2)
    assert isinstance(cosine, torch.optim.lr_scheduler.CosineAnnealingLR) and cosine.T_max == 2
    start = [g["lr"] for g in optimizer.param_groups]
    for epoch, factor in ((1, 0.5 * (1 + math.cos(math.pi / 2))), (2, 0.0)):
        optimizer.step()
        cosine.step()
        lrs = [g["lr"] for g in optimizer.param_groups]
        expected = [factor * 1e-4] * 9 + [factor * 1e-3]
        assert lrs == pytest.approx(expected, rel=1e-9, abs=1e-15), f"after epoch {epoch}"
        assert [a / b for a, b in zip(lrs, start, strict=True)] == pytest.approx([factor] * 10, abs=1e-12)

    optimizer, _ = _optimizer(_resnet())
    constant = schedule(optimizer, "constant", 2)
    assert [g["lr"] for g in optimizer.param_groups] == pytest.approx([1e-4] * 9 + [1e-3], rel=1e-12)
    for _ in range(3):
        optimizer.step()
        constant.step()
        assert [g["lr"] for g in optimizer.param_groups] == pytest.approx([1e-4] * 9 + [1e-3], rel=1e-12)


def test_unknown_schedule_is_refused_naming_it_and_the_choices():
    optimizer, _ = _optimizer(_resnet())
    with pytest.raises(StrategyError, match=r"'linear'.*\['cosine', 'constant'\]"):
        schedule(optimizer, "linear", 2)


@pytest.mark.parametrize("scale", [0, -0.1, float("nan"), float("inf"), "0.1", True])
def test_backbone_scale_must_be_a_positive_number(scale):
    with pytest.raises(StrategyError, match="backbone_scale") as refused:
        DiscriminativeLR(scale)
    assert repr(scale) in str(refused.value)


def test_the_shared_fragment_tests_cover_this_fragment():
    # tests/test_strategy_fragments.py parametrizes over strategy_names(): contract keys, MONAI properties, and one
    # training iteration on every bundle
    assert "discriminative" in strategy_names()
    fragment = json.loads(strategy_path("discriminative").read_text())
    assert fragment["finetune"]["_target_"] == "medtransfer.strategies.DiscriminativeLR"
    assert "lr_scheduler" in fragment and "+run_settings" in fragment


def _parser(demo_dir, **overrides) -> ConfigParser:
    parser = ConfigParser()
    parser.read_config([str(BUSI / "train.json"), str(strategy_path("discriminative"))])
    parser.update({"dataset_dir": str(demo_dir), "image_size": 32, "device": "$torch.device('cpu')", **overrides})
    return parser


def test_fragment_builds_the_bundles_optimizer_and_schedules(demo_dir):
    parser = _parser(demo_dir)
    optimizer = parser.get_parsed_content("optimizer")
    assert [g["lr"] for g in optimizer.param_groups] == pytest.approx([1e-4] * 9 + [1e-3], rel=1e-12)
    scheduler = parser.get_parsed_content("lr_scheduler")
    assert isinstance(scheduler, torch.optim.lr_scheduler.CosineAnnealingLR) and scheduler.T_max == 10
    assert parser.get_parsed_content("checkpoint_objects")["lr_scheduler"] is scheduler

    parser = _parser(demo_dir, discriminative_schedule="constant", discriminative_backbone_scale=0.5, lr=0.002)
    optimizer = parser.get_parsed_content("optimizer")
    assert [g["lr"] for g in optimizer.param_groups] == pytest.approx([1e-3] * 9 + [2e-3], rel=1e-12)
    assert isinstance(parser.get_parsed_content("lr_scheduler"), torch.optim.lr_scheduler.ConstantLR)

    with pytest.raises(RuntimeError) as refused:
        _parser(demo_dir, discriminative_schedule="step").get_parsed_content("lr_scheduler")
    assert isinstance(project_error(refused.value), StrategyError)
    assert "'step'" in str(project_error(refused.value))


@pytest.mark.slow
def test_busi_bundle_trains_two_epochs_with_cosine_scaled_group_lrs(demo_dir, tmp_path):
    overrides = {
        "dataset_dir": str(demo_dir), "image_size": 32, "epochs": 2, "batch_size": 2, "runs_dir": str(tmp_path),
        "run_name": "one", "train#trainer#epoch_length": 1, "validate#evaluator#epoch_length": 1,
        "validate#dataloader#batch_size": 64, "channels_last": False,
    }  # fmt: skip
    run_bundle_workflow([BUSI / "train.json", strategy_path("discriminative")], overrides)
    run = tmp_path / "one"
    info = json.loads((run / "run_info.json").read_text())
    assert info["settings"]["strategy"] == "discriminative"
    assert info["settings"]["discriminative_backbone_scale"] == 0.1
    assert info["settings"]["discriminative_schedule"] == "cosine"
    assert info["settings"]["strategy_settings"] == {
        "strategy": "discriminative",
        "discriminative_backbone_scale": 0.1,
    }
    with open(run / "lr_history.csv", newline="") as f:
        rows = list(csv.reader(f))
    assert rows[0][-1] == "fc" and len(rows[0]) == 11
    epoch1, epoch2 = ([float(v) for v in row[1:]] for row in rows[1:])
    assert epoch1 == pytest.approx([1e-4] * 9 + [1e-3], rel=1e-6)
    assert epoch2 == pytest.approx([0.5e-4] * 9 + [0.5e-3], rel=1e-6)  # cos(π/2) after one of T_max = 2 epochs
    assert (run / "checkpoint_epoch=2.pt").is_file()
