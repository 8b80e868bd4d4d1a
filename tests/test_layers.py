"""Tests for medtransfer.layers: every family is partitioned completely, in input-to-output order."""

from __future__ import annotations

import pytest
import torch
import torchvision
from monai.networks.nets import BasicUNet, UNet
from torch import nn

from medtransfer.layers import GRANULARITIES, LayerGroup, assign_groups, describe, layer_groups, param_groups

RESNET18_BLOCKS = [
    "conv1+bn1",
    "layer1.0",
    "layer1.1",
    "layer2.0",
    "layer2.1",
    "layer3.0",
    "layer3.1",
    "layer4.0",
    "layer4.1",
    "fc",
]


def small_vit(num_layers: int = 4) -> torchvision.models.VisionTransformer:
    return torchvision.models.VisionTransformer(
        image_size=32, patch_size=8, num_layers=num_layers, num_heads=2, hidden_dim=32, mlp_dim=64, num_classes=3
    )


def small_unet(spatial_dims: int, num_res_units: int, channels=(8, 16, 32, 64)) -> UNet:
    return UNet(
        spatial_dims=spatial_dims,
        in_channels=1,
        out_channels=3,
        channels=channels,
        strides=(2,) * (len(channels) - 1),
        num_res_units=num_res_units,
    )


class RootParam(nn.Module):
    """A custom model with a parameter set directly on the root, plus a parameter-free child."""

    def __init__(self) -> None:
        super().__init__()
        self.scale = nn.Parameter(torch.ones(1))
        self.encoder = nn.Linear(4, 8)
        self.act = nn.ReLU()
        self.decoder = nn.Linear(8, 2)


@pytest.fixture(scope="module")
def models() -> dict[str, nn.Module]:
    return {
        "resnet18": torchvision.models.resnet18(weights=None),
        "resnet34": torchvision.models.resnet34(weights=None),
        "resnet50": torchvision.models.resnet50(weights=None),
        "densenet121": torchvision.models.densenet121(weights=None),
        "vit": small_vit(4),
        "vit6": small_vit(6),
        "unet2d_res0": small_unet(2, 0),
        "unet2d_res2": small_unet(2, 2),
        "unet3d_res0": small_unet(3, 0),
        "unet3d_res2": small_unet(3, 2),
        "unet2d_two_levels": small_unet(2, 1, channels=(4, 8)),
        "basicunet2d": BasicUNet(spatial_dims=2, in_channels=1, out_channels=3, features=(4, 4, 8, 16, 32, 4)),
        "basicunet3d": BasicUNet(spatial_dims=3, in_channels=1, out_channels=2, features=(4, 4, 8, 16, 32, 4)),
        "sequential": nn.Sequential(nn.Linear(3, 4), nn.ReLU(), nn.Linear(4, 2)),
        "root_param": RootParam(),
    }


ALL_MODELS = [
    "resnet18",
    "resnet34",
    "resnet50",
    "densenet121",
    "vit",
    "vit6",
    "unet2d_res0",
    "unet2d_res2",
    "unet3d_res0",
    "unet3d_res2",
    "unet2d_two_levels",
    "basicunet2d",
    "basicunet3d",
    "sequential",
    "root_param",
]


def names(groups: list[LayerGroup]) -> list[str]:
    return [g.name for g in groups]


# ------------------------------------------------------------------ partition invariants


@pytest.mark.parametrize("granularity", GRANULARITIES)
@pytest.mark.parametrize("key", ALL_MODELS)
def test_every_parameter_in_exactly_one_group(models, key, granularity):
    model = models[key]
    groups = layer_groups(model, granularity)
    assigned = [n for g in groups for n in g.param_names]
    assert len(assigned) == len(set(assigned)), "a parameter is in two groups"
    assert set(assigned) == {n for n, _ in model.named_parameters()}
    assert len(set(names(groups))) == len(groups), "group names must be unique"
    by_name = dict(model.named_parameters())
    for g in groups:
        assert g.params, f"empty group {g.name}"
        assert len(g.params) == len(g.param_names)
        assert all(p is by_name[n] for n, p in zip(g.param_names, g.params, strict=True))
        assert g.numel() == sum(p.numel() for p in g.params)
    assert sum(g.numel() for g in groups) == sum(p.numel() for p in model.parameters())


@pytest.mark.parametrize("key", ["resnet18", "resnet50", "densenet121", "vit", "vit6"])
@pytest.mark.parametrize("granularity", GRANULARITIES)
def test_order_follows_named_parameters(models, key, granularity):
    model = models[key]
    flat = [n for g in layer_groups(model, granularity) for n in g.param_names]
    assert flat == [n for n, _ in model.named_parameters()]


@pytest.mark.parametrize("key", ALL_MODELS)
def test_stage_groups_are_unions_of_consecutive_block_groups(models, key):
    blocks = layer_groups(models[key], "block")
    stages = layer_groups(models[key], "stage")
    i = 0
    for stage in stages:
        merged: list[str] = []
        while len(merged) < len(stage.param_names):
            assert i < len(blocks), f"stage {stage.name} runs past the last block group"
            merged += blocks[i].param_names
            i += 1
        assert tuple(merged) == stage.param_names, f"stage {stage.name} is not a run of consecutive blocks"
    assert i == len(blocks)


# ------------------------------------------------------------------ torchvision families


def test_resnet18_block_names_are_the_metalr_partition(models):
    groups = layer_groups(models["resnet18"])
    assert names(groups) == RESNET18_BLOCKS
    assert [g.label for g in groups][:3] == ["Conv 1", "Block 1-1", "Block 1-2"]
    assert groups[-2].label == "Block 4-2"
    assert groups[-1].label == "FC"
    assert groups[0].param_names == ("conv1.weight", "bn1.weight", "bn1.bias")
    assert groups[-1].param_names == ("fc.weight", "fc.bias")


def test_resnet_stage_names(models):
    groups = layer_groups(models["resnet18"], "stage")
    assert names(groups) == ["conv1+bn1", "layer1", "layer2", "layer3", "layer4", "fc"]
    assert [g.label for g in groups] == ["Conv 1", "Stage 1", "Stage 2", "Stage 3", "Stage 4", "FC"]


@pytest.mark.parametrize("key", ["resnet34", "resnet50"])
def test_resnet34_and_50_have_18_block_groups(models, key):
    groups = layer_groups(models[key])
    assert len(groups) == 18
    assert groups[1].name == "layer1.0"
    assert groups[-2].name == "layer4.2"
    assert groups[-2].label == "Block 4-3"
    assert len(layer_groups(models[key], "stage")) == 6


def test_densenet121_groups(models):
    groups = layer_groups(models["densenet121"])
    assert names(groups) == [
        "features.conv0+norm0",
        "features.denseblock1",
        "features.transition1",
        "features.denseblock2",
        "features.transition2",
        "features.denseblock3",
        "features.transition3",
        "features.denseblock4",
        "classifier",
    ]
    assert groups[0].label == "Conv 0"
    assert groups[1].label == "Dense block 1"
    assert groups[2].label == "Transition 1"
    # the final batch norm belongs to the last dense block's output
    assert "features.norm5.weight" in groups[7].param_names
    stages = layer_groups(models["densenet121"], "stage")
    assert len(stages) == 6
    assert [g.label for g in stages[1:5]] == ["Stage 1", "Stage 2", "Stage 3", "Stage 4"]
    assert "features.transition1.conv.weight" in stages[1].param_names
    assert "features.norm5.weight" in stages[4].param_names


def test_vit_groups(models):
    groups = layer_groups(models["vit"])
    assert len(groups) == 2 + 4
    assert names(groups)[0] == "embed"
    assert names(groups)[-1] == "head"
    assert names(groups)[1:-1] == [f"encoder.layers.encoder_layer_{i}" for i in range(4)]
    assert [g.label for g in groups[1:-1]] == ["Block 1", "Block 2", "Block 3", "Block 4"]
    # class_token is a direct parameter of the root: exact-name prefixes must work
    assert set(groups[0].param_names) == {"class_token", "conv_proj.weight", "conv_proj.bias", "encoder.pos_embedding"}
    assert set(groups[-1].param_names) == {
        "encoder.ln.weight",
        "encoder.ln.bias",
        "heads.head.weight",
        "heads.head.bias",
    }
    assert len(layer_groups(models["vit6"])) == 2 + 6


def test_vit_stages_split_blocks_into_nearly_equal_chunks(models):
    stages = layer_groups(models["vit6"], "stage")
    assert names(stages) == ["embed", "stage1", "stage2", "stage3", "stage4", "head"]
    per_stage = [len({n.split(".")[2] for n in g.param_names}) for g in stages[1:-1]]
    assert per_stage == [2, 2, 1, 1]
    two = layer_groups(small_vit(2), "stage")
    assert names(two) == ["embed", "stage1", "stage2", "head"]


# ------------------------------------------------------------------ MONAI families


@pytest.mark.parametrize("key", ["unet2d_res0", "unet2d_res2", "unet3d_res0", "unet3d_res2"])
def test_unet_block_order_and_output_group(models, key):
    model = models[key]
    groups = layer_groups(model)
    assert names(groups) == ["down1", "down2", "down3", "bottom", "up3", "up2", "out"]
    assert [g.label for g in groups[:4]] == ["Down-8", "Down-16", "Down-32", "Bottom-64"]
    assert [g.label for g in groups[4:]] == ["Up-16", "Up-8", "Out"]
    # the out group is the one that produces out_channels: it holds the network's last convolution,
    # whose weight maps to 3 channels (dim 0 for Conv, dim 1 for ConvTranspose), and no other group
    # holds a convolution that maps to 3 channels
    conv_types = (nn.Conv2d, nn.Conv3d, nn.ConvTranspose2d, nn.ConvTranspose3d)
    convs = [m for m in model.modules() if isinstance(m, conv_types)]
    last = convs[-1]
    out_dim = 1 if isinstance(last, (nn.ConvTranspose2d, nn.ConvTranspose3d)) else 0
    assert last.weight.shape[out_dim] == 3
    out_ids = {id(p) for p in groups[-1].params}
    assert id(last.weight) in out_ids
    assert {id(c.weight) for c in convs if c.out_channels == 3} <= out_ids
    assert all(c.out_channels != 3 for g in groups[:-1] for c in convs if id(c.weight) in {id(p) for p in g.params})


def test_unet_stage_groups(models):
    stages = layer_groups(models["unet2d_res2"], "stage")
    assert names(stages) == ["encoder", "bottom", "decoder", "out"]
    blocks = layer_groups(models["unet2d_res2"])
    assert stages[0].param_names == sum((g.param_names for g in blocks[:3]), ())
    assert stages[2].param_names == sum((g.param_names for g in blocks[4:6]), ())


def test_unet_with_two_levels_has_no_decoder_groups(models):
    assert names(layer_groups(models["unet2d_two_levels"])) == ["down1", "bottom", "out"]
    assert names(layer_groups(models["unet2d_two_levels"], "stage")) == ["encoder", "bottom", "out"]


def test_unet_labels_follow_module_channels():
    groups = layer_groups(small_unet(2, 2, channels=(16, 32, 64, 128, 256)))
    assert [g.label for g in groups] == [
        "Down-16",
        "Down-32",
        "Down-64",
        "Down-128",
        "Bottom-256",
        "Up-64",
        "Up-32",
        "Up-16",
        "Out",
    ]


@pytest.mark.parametrize("key", ["basicunet2d", "basicunet3d"])
def test_basic_unet_groups(models, key):
    groups = layer_groups(models[key])
    assert names(groups) == [
        "conv_0",
        "down_1",
        "down_2",
        "down_3",
        "down_4",
        "upcat_4",
        "upcat_3",
        "upcat_2",
        "upcat_1",
        "final_conv",
    ]
    assert groups[-1].label == "Out"
    stages = layer_groups(models[key], "stage")
    assert names(stages) == ["encoder", "bottom", "decoder", "out"]
    assert {n.split(".")[0] for n in stages[0].param_names} == {"conv_0", "down_1", "down_2", "down_3"}
    assert {n.split(".")[0] for n in stages[1].param_names} == {"down_4"}


# ------------------------------------------------------------------ fallback, wrappers, edge cases


def test_fallback_sequential_one_group_per_child_with_params(models):
    groups = layer_groups(models["sequential"])
    assert names(groups) == ["0", "2"]  # the ReLU owns no parameters
    assert names(layer_groups(models["sequential"], "stage")) == ["0", "2"]


def test_fallback_root_parameter_group_comes_first(models):
    groups = layer_groups(models["root_param"])
    assert names(groups) == ["root", "encoder", "decoder"]
    assert groups[0].param_names == ("scale",)


def test_frozen_parameters_are_still_grouped():
    model = torchvision.models.resnet18(weights=None)
    for p in model.layer1.parameters():
        p.requires_grad_(False)
    groups = layer_groups(model)
    assert names(groups) == RESNET18_BLOCKS
    assert len(groups[1].params) == 6


def test_shared_parameter_appears_once():
    model = nn.Sequential(nn.Linear(4, 4), nn.Linear(4, 4))
    model[1].weight = model[0].weight
    groups = layer_groups(model)
    assigned = [n for g in groups for n in g.param_names]
    assert assigned.count("0.weight") == 1
    assert "1.weight" not in assigned
    assert set(assigned) == {"0.weight", "0.bias", "1.bias"}


def test_dataparallel_wrapper_is_looked_through():
    model = torchvision.models.resnet18(weights=None)
    wrapped = nn.DataParallel(model)
    groups = layer_groups(wrapped)
    assert names(groups) == RESNET18_BLOCKS
    assert groups[0].param_names == ("module.conv1.weight", "module.bn1.weight", "module.bn1.bias")


def test_unknown_granularity_raises(models):
    with pytest.raises(ValueError, match="block"):
        layer_groups(models["resnet18"], "layer")


def test_prefix_matches_only_on_dotted_boundary():
    model = nn.Sequential(*[nn.Linear(2, 2) for _ in range(12)])
    spec = [("one", "One", ("1",)), ("rest", "Rest", tuple(str(i) for i in range(12) if i != 1))]
    groups = assign_groups(model, spec)
    assert groups[0].param_names == ("1.weight", "1.bias")
    assert "10.weight" in groups[1].param_names and "11.bias" in groups[1].param_names


def test_unassigned_parameter_is_named_in_the_error():
    model = nn.Sequential(nn.Linear(2, 2), nn.Linear(2, 2))
    with pytest.raises(ValueError, match=r"'1\.weight'"):
        assign_groups(model, [("first", "First", ("0",))])


def test_parameter_in_two_groups_raises():
    model = nn.Sequential(nn.Linear(2, 2))
    with pytest.raises(ValueError, match="several layer groups"):
        assign_groups(model, [("a", "A", ("0",)), ("b", "B", ("0.weight",))])
    with pytest.raises(ValueError, match="listed in layer groups"):
        assign_groups(model, [("a", "A", ("0",)), ("b", "B", ("0",))])


def test_missing_family_parameter_raises():
    model = torchvision.models.resnet18(weights=None)
    model.extra = nn.Parameter(torch.zeros(1))
    with pytest.raises(ValueError, match="'extra'"):
        layer_groups(model)


# ------------------------------------------------------------------ param_groups and describe


def test_param_groups_build_an_sgd_with_per_group_lr():
    model = torchvision.models.resnet18(weights=None)
    groups = layer_groups(model)
    lrs = [0.001 * (i + 1) for i in range(len(groups))]
    pg = param_groups(groups, lrs, momentum=0.9)
    opt = torch.optim.SGD(pg, lr=0.1)
    assert [g["name"] for g in opt.param_groups] == RESNET18_BLOCKS
    assert [g["lr"] for g in opt.param_groups] == pytest.approx(lrs)
    assert all(g["momentum"] == 0.9 for g in opt.param_groups)
    assert sum(len(g["params"]) for g in opt.param_groups) == len(list(model.parameters()))


def test_param_groups_scalar_lr():
    groups = layer_groups(torchvision.models.resnet18(weights=None))
    pg = param_groups(groups, 0.01)
    assert len(pg) == 10
    assert {g["lr"] for g in pg} == {0.01}


def test_param_groups_skip_frozen_params_and_fully_frozen_groups():
    model = torchvision.models.resnet18(weights=None)
    for p in model.conv1.parameters():
        p.requires_grad_(False)
    model.bn1.weight.requires_grad_(False)  # conv1+bn1 keeps only bn1.bias
    for p in model.layer1.parameters():
        p.requires_grad_(False)
    groups = layer_groups(model)
    lrs = [float(i) for i in range(len(groups))]
    pg = param_groups(groups, lrs)
    assert [g["name"] for g in pg] == ["conv1+bn1", *RESNET18_BLOCKS[3:]]
    assert pg[0]["params"] == [model.bn1.bias]
    assert pg[1]["lr"] == 3.0  # lr[j] stays with group j even when earlier groups are skipped
    torch.optim.SGD(pg, lr=0.1)
    assert all(p.requires_grad for g in pg for p in g["params"])


def test_param_groups_reject_wrong_length_lr():
    groups = layer_groups(torchvision.models.resnet18(weights=None))
    with pytest.raises(ValueError, match="9 learning rates for 10"):
        param_groups(groups, [0.1] * 9)


def test_param_groups_reject_all_frozen_and_reserved_options():
    model = nn.Sequential(nn.Linear(2, 2))
    model.requires_grad_(False)
    with pytest.raises(ValueError, match="no trainable"):
        param_groups(layer_groups(model), 0.1)
    with pytest.raises(ValueError, match="name"):
        param_groups(layer_groups(nn.Sequential(nn.Linear(2, 2))), 0.1, name="x")


def test_describe_lists_every_group(models):
    groups = layer_groups(models["resnet18"])
    text = describe(groups)
    lines = text.splitlines()
    assert lines[0].split() == ["#", "name", "label", "tensors", "params"]
    for i, g in enumerate(groups):
        assert any(line.split()[:2] == [str(i), g.name] for line in lines)
    assert f"{sum(g.numel() for g in groups):,}" in lines[-1]
