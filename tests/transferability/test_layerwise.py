"""Tests for medtransfer.transferability.layerwise: T = D(θr, θFB) / D(θA, θFB) per layer group.

The state dicts are built so that every distance is known in closed form (θA = θr + a per tensor, θFB = θA + b per
tensor, so D(θr, θFB) = |a + b| and D(θA, θFB) = |b|), and the expected T is computed here from parameter names, not
with the library's helpers.
"""

from __future__ import annotations

import csv
import json
import math

import pytest
import torch
import torchvision
from monai.networks.nets import UNet
from torch import nn

from medtransfer.errors import CheckpointError
from medtransfer.transferability import (
    ROW_HEADERS,
    format_transferability,
    layerwise_transferability,
    mean_abs_diff,
    measure_files,
    paper_overall,
    plot_transferability_curves,
    save_transferability,
)

PAPER_CIFAR10_RESNET50 = [
    3.44, 7.76, 8.59, 7.3, 5.42, 9.2, 6.1, 5.52, 4.23, 7.65, 8.3, 8.32, 8.86, 8.88, 5.96, 13.0, 13.81, 1.0,
]  # fmt: skip
RESNET18_GROUPS = ["conv1+bn1"] + [f"layer{s}.{b}" for s in range(1, 5) for b in range(2)] + ["fc"]

State = dict[str, torch.Tensor]


# --------------------------------------------------------------------------------------------------
# Helpers: closed-form state dicts and an independent reference computation
# --------------------------------------------------------------------------------------------------


def _base(model: nn.Module) -> State:
    """The model's state dict (buffers included, as torch.save(model.state_dict()) has it), floats as float64."""
    return {
        k: v.detach().to(torch.float64).clone() if v.is_floating_point() else v.clone()
        for k, v in model.state_dict().items()
    }


def _offsets(names: list[str]) -> tuple[dict[str, float], dict[str, float]]:
    """Distinct dyadic per-tensor offsets a (pre-training) and b (fine-tuning), b never 0."""
    a = {n: 0.25 * (1 + k % 4) * (1 if k % 3 else -1) for k, n in enumerate(names)}
    b = {n: 0.0625 * (1 + 2 * (k % 3)) * (-1) ** k for k, n in enumerate(names)}  # never -a/2: no T of exactly 1
    return a, b


def _shift(state: State, offsets: dict[str, float]) -> State:
    return {k: v + offsets[k] if k in offsets else v.clone() for k, v in state.items()}


def _resnet_states(model: nn.Module) -> tuple[State, State, State, dict[str, float], dict[str, float]]:
    names = [n for n, _ in model.named_parameters()]
    a, b = _offsets(names)
    init = _base(model)
    pretrained = _shift(init, a)
    return init, pretrained, _shift(pretrained, b), a, b


def _resnet_group(name: str) -> str:
    if name.startswith(("conv1.", "bn1.")):
        return "conv1+bn1"
    if name.startswith("fc."):
        return "fc"
    return ".".join(name.split(".")[:2])


def _paper_counts(name: str, tensor: torch.Tensor) -> bool:
    """The published definition for ResNets: main-path conv kernels and the final linear weight."""
    return (name.endswith(".weight") and tensor.ndim == 4 and "downsample" not in name) or name == "fc.weight"


def _expected_resnet(model: nn.Module, a: dict[str, float], b: dict[str, float], mode: str) -> dict[str, float]:
    by_group: dict[str, list[tuple[str, torch.Tensor]]] = {}
    for name, p in model.named_parameters():
        by_group.setdefault(_resnet_group(name), []).append((name, p))
    expected = {}
    for group, members in by_group.items():
        counted = [n for n, p in members if _paper_counts(n, p)]
        if mode == "paper":  # the reference: mean_k D_k(θr, θFB) / mean_k D_k(θA, θFB), D_k constant per tensor
            expected[group] = sum(abs(a[n] + b[n]) for n in counted) / sum(abs(b[n]) for n in counted)
        elif mode == "tensor_mean":
            expected[group] = sum(abs(a[n] + b[n]) / abs(b[n]) for n in counted) / len(counted)
        else:
            num = sum(p.numel() * abs(a[n] + b[n]) for n, p in members)
            den = sum(p.numel() * abs(b[n]) for n, p in members)
            expected[group] = num / den
    return expected


def _t(result) -> dict[str, float]:
    return {la.name: la.t for la in result.layers}


# --------------------------------------------------------------------------------------------------
# Small pieces
# --------------------------------------------------------------------------------------------------


def test_mean_abs_diff_accumulates_in_float64_and_checks_shapes() -> None:
    a = torch.zeros(1_000_001, dtype=torch.float16)
    b = torch.full_like(a, 0.5)
    b[0] = -1.5
    assert mean_abs_diff(a, b) == pytest.approx((1_000_000 * 0.5 + 1.5) / 1_000_001, rel=1e-12)
    with pytest.raises(ValueError, match=r"\(3,\).*\(4,\)"):
        mean_abs_diff(torch.zeros(3), torch.zeros(4))


def test_paper_overall_excludes_head_and_undefined_layers() -> None:
    assert round(paper_overall(PAPER_CIFAR10_RESNET50), 2) == 7.78
    assert paper_overall(PAPER_CIFAR10_RESNET50) == pytest.approx(sum(PAPER_CIFAR10_RESNET50[:-1]) / 17, rel=1e-12)
    assert paper_overall([2.0, math.nan, 4.0, 100.0]) == 3.0
    assert paper_overall([2.0, 4.0], head_last=False) == 3.0
    assert math.isnan(paper_overall([math.nan, 1.0]))


# --------------------------------------------------------------------------------------------------
# Closed-form ResNets
# --------------------------------------------------------------------------------------------------


def _exact(model, mode: str):
    """T of a ResNet with known per-tensor offsets, every layer checked against the closed form."""
    init, pretrained, finetuned, a, b = _resnet_states(model)
    result = layerwise_transferability(model, init, pretrained, finetuned, mode=mode)
    expected = _expected_resnet(model, a, b, mode)
    for layer in result.layers:
        assert layer.t == pytest.approx(expected[layer.name], rel=1e-9), layer.name
    return result, expected


@pytest.mark.parametrize("mode", ["paper", "full", "tensor_mean"])
def test_resnet18_exact_t_per_layer(mode: str) -> None:
    result, expected = _exact(torchvision.models.resnet18(weights=None, num_classes=4), mode)
    assert [la.name for la in result.layers] == RESNET18_GROUPS
    assert [la.is_head for la in result.layers] == [False] * 9 + [True]
    assert all(layer.note == "" for layer in result.layers)
    body = [expected[g] for g in RESNET18_GROUPS[:-1]]
    assert result.overall == pytest.approx(sum(body) / len(body), rel=1e-9)
    assert result.most_transferable == max(RESNET18_GROUPS[:-1], key=expected.__getitem__)
    assert result.mode == mode
    if mode != "full":  # two main-path convs per basic block; the stem conv; fc.weight
        assert [la.n_tensors for la in result.layers] == [1] + [2] * 8 + [1]


def test_state_dicts_of_wrapped_models_give_the_same_t() -> None:
    """DataParallel/DDP (``module.``) and torch.compile (``_orig_mod.``) prefixes are stripped, per state dict."""
    model = torchvision.models.resnet18(weights=None, num_classes=4)
    init, pretrained, finetuned, _, _ = _resnet_states(model)
    plain = layerwise_transferability(model, init, pretrained, finetuned)
    ddp = {f"module.{k}": v for k, v in pretrained.items()}
    compiled = {f"_orig_mod.{k}": v for k, v in finetuned.items()}
    assert _t(layerwise_transferability(model, init, ddp, compiled)) == _t(plain)


@pytest.mark.parametrize("mode", ["paper", "full", "tensor_mean"])
def test_resnet50_exact_t_per_layer(mode: str) -> None:
    result, expected = _exact(torchvision.models.resnet50(weights=None, num_classes=3), mode)
    assert len(result.layers) == 18
    assert [la.name for la in result.layers] == list(expected)
    if mode != "full":  # three convs per bottleneck, downsample excluded
        assert [la.n_tensors for la in result.layers] == [1] + [3] * 16 + [1]


def test_paper_mode_is_the_reference_ratio_of_means_not_the_mean_of_ratios() -> None:
    """A ResNet-50 whose bottleneck convs moved by different known amounts: the two definitions disagree, and paper
    mode gives the reference's mean_k D_k(θr, θFB) / mean_k D_k(θA, θFB), computed here by hand."""
    model = torchvision.models.resnet50(weights=None, num_classes=3)
    pretrained = _base(model)
    moves = {"conv1": (0.01, 2.0), "conv2": (0.04, 1.2), "conv3": (0.02, 1.5)}  # |θFB - θA| and T of each conv
    init, finetuned = {}, {}
    for name, tensor in pretrained.items():
        conv = name.rsplit(".", 2)[-2] if name.count(".") >= 2 else ""
        step, t = moves.get(conv, (0.03, 1.1)) if name.endswith(".weight") else (0.03, 1.1)
        finetuned[name] = tensor + step if tensor.is_floating_point() else tensor.clone()
        init[name] = tensor - (t - 1) * step if tensor.is_floating_point() else tensor.clone()
    paper = _t(layerwise_transferability(model, init, pretrained, finetuned, mode="paper"))
    per_tensor = _t(layerwise_transferability(model, init, pretrained, finetuned, mode="tensor_mean"))
    steps_and_ts = list(moves.values())
    reference = sum(s * t for s, t in steps_and_ts) / sum(s for s, _ in steps_and_ts)  # (0.02+0.048+0.03)/0.07
    mean_of_ratios = sum(t for _, t in steps_and_ts) / 3
    for block in ("layer1.0", "layer2.3", "layer4.2"):
        assert paper[block] == pytest.approx(reference, rel=1e-9)
        assert per_tensor[block] == pytest.approx(mean_of_ratios, rel=1e-9)
    assert abs(reference - mean_of_ratios) > 0.1  # 1.400 against 1.567: the definitions disagree here


def _paper_vector_states(model: nn.Module) -> tuple[State, State, State, State]:
    """θr, θA, θFB, θB0 whose per-layer paper T is PAPER_CIFAR10_RESNET50, head re-sized 1000 -> 10 classes.

    Per tensor: θFB = θA + s and θr = θA - (T - 1) s, so D(θr, θFB) = T |s| and D(θA, θFB) = |s|. The three convs of a
    bottleneck share one s and get v - 0.5, v, v + 0.5 (the reference's ratio of means is then v); the downsample conv
    gets 50 and BN parameters get arbitrary changes, which the paper definition must ignore.
    """
    pretraining = torchvision.models.resnet50(weights=None, num_classes=1000)
    pretrained = _base(pretraining)
    groups = ["conv1+bn1"] + [f"layer{s}.{i}" for s, n in zip(range(1, 5), (3, 4, 6, 3), strict=True) for i in range(n)]
    value = dict(zip(groups, PAPER_CIFAR10_RESNET50, strict=False))
    init, finetuned = {}, {}
    for k, (name, tensor) in enumerate(pretrained.items()):
        if not tensor.is_floating_point() or name.startswith("fc."):
            init[name], finetuned[name] = tensor.clone(), tensor.clone()
            continue
        # one step per block (the counted convs of a block move alike, so the mean of their T is the block's T) and
        # another for the rest of the tensors
        counted_conv = name.endswith(".weight") and tensor.ndim == 4
        step = 0.01 * (1 + groups.index(_resnet_group(name)) % 5) if counted_conv else 0.01 * (1 + k % 5)
        v = value[_resnet_group(name)]
        conv = name.rsplit(".", 2)[-2]
        if "downsample.0" in name:
            t = 50.0
        elif conv in ("conv1", "conv2", "conv3") and name.endswith(".weight"):
            t = v + {"conv1": -0.5, "conv2": 0.0, "conv3": 0.5}[conv] if name != "conv1.weight" else v
        else:  # BN parameters and running statistics: not counted in paper mode
            t = 7.0 + k % 3
        finetuned[name] = tensor + step
        init[name] = tensor - (t - 1) * step
    torch.manual_seed(0)
    finetune_init = {k: v.clone() for k, v in finetuned.items()}
    finetune_init["fc.weight"] = torch.randn(10, 2048, dtype=torch.float64) * 0.01
    finetune_init["fc.bias"] = torch.zeros(10, dtype=torch.float64)
    finetuned["fc.weight"] = finetune_init["fc.weight"] + 0.003 * torch.randn(10, 2048, dtype=torch.float64)
    finetuned["fc.bias"] = finetune_init["fc.bias"] + 0.001
    init["fc.weight"] = pretrained["fc.weight"] + 0.2
    return init, pretrained, finetuned, finetune_init


def test_paper_cifar10_resnet50_vector() -> None:
    model = torchvision.models.resnet50(weights=None, num_classes=10)
    init, pretrained, finetuned, finetune_init = _paper_vector_states(model)

    result = layerwise_transferability(model, init, pretrained, finetuned, finetune_init=finetune_init)
    values = [la.t for la in result.layers]
    assert values == pytest.approx(PAPER_CIFAR10_RESNET50, abs=1e-9)
    assert values[-1] == 1.0  # exactly: both distances are D(θB0, θFB)
    assert result.layers[-1].is_head and "re-initialised" in result.layers[-1].note
    assert round(result.overall, 2) == 7.78
    assert result.most_transferable == "layer4.2"

    # with the shortcut the first bottleneck of each stage also averages in its downsample conv (T = 50)
    shortcut = layerwise_transferability(
        model, init, pretrained, finetuned, finetune_init=finetune_init, include_shortcut=True
    )
    for name, v in zip(["layer1.0", "layer2.0", "layer3.0", "layer4.0"], [7.76, 5.42, 4.23, 5.96], strict=True):
        assert _t(shortcut)[name] == pytest.approx((3 * v + 50) / 4, abs=1e-9)
    assert _t(shortcut)["layer1.1"] == pytest.approx(8.59, abs=1e-9)

    with pytest.raises(CheckpointError, match="finetune_init") as err:
        layerwise_transferability(model, init, pretrained, finetuned)
    assert "fc.weight" in str(err.value) and "(10, 2048)" in str(err.value) and "(1000, 2048)" in str(err.value)


def test_head_reinitialised_with_same_shape_uses_finetune_init() -> None:
    model = torchvision.models.resnet18(weights=None, num_classes=4)
    init, pretrained, finetuned, a, b = _resnet_states(model)
    normal = layerwise_transferability(model, init, pretrained, finetuned)
    assert normal.layers[-1].t == pytest.approx(_expected_resnet(model, a, b, "paper")["fc"], rel=1e-9)
    assert normal.layers[-1].t != 1.0

    finetune_init = {k: v.clone() for k, v in pretrained.items()}
    finetune_init["fc.weight"] = finetuned["fc.weight"] - 0.03
    result = layerwise_transferability(model, init, pretrained, finetuned, finetune_init=finetune_init)
    assert result.layers[-1].t == 1.0
    assert result.layers[-1].d_pre_ft == pytest.approx(0.03, rel=1e-9)
    assert _t(result) | {"fc": 0} == _t(normal) | {"fc": 0}  # the body does not depend on θB0


# --------------------------------------------------------------------------------------------------
# Errors and undefined layers
# --------------------------------------------------------------------------------------------------


def test_mismatched_architecture_names_the_tensor() -> None:
    r18 = torchvision.models.resnet18(weights=None, num_classes=4)
    r34 = torchvision.models.resnet34(weights=None, num_classes=4)
    init, pretrained, finetuned, _, _ = _resnet_states(r18)
    with pytest.raises(CheckpointError, match=r"layer1\.2\."):
        layerwise_transferability(r34, init, pretrained, finetuned)

    deeper = _base(r34)
    with pytest.raises(CheckpointError, match=r"pretrained\.pt.*layer1\.2\."):
        layerwise_transferability(r18, init, deeper, finetuned, sources={"pretrained": "pretrained.pt"})

    finetuned["layer2.0.conv1.weight"] = torch.zeros(128, 64, 1, 1, dtype=torch.float64)
    with pytest.raises(CheckpointError) as err:
        layerwise_transferability(r18, init, pretrained, finetuned, sources={"finetuned": "runs/ft/best.pt"})
    message = str(err.value)
    for part in ("layer2.0.conv1.weight", "runs/ft/best.pt", "(128, 64, 1, 1)", "(128, 64, 3, 3)"):
        assert part in message


def test_unknown_mode_is_refused() -> None:
    model = torchvision.models.resnet18(weights=None, num_classes=4)
    init, pretrained, finetuned, _, _ = _resnet_states(model)
    with pytest.raises(ValueError, match="mode"):
        layerwise_transferability(model, init, pretrained, finetuned, mode="average")


@pytest.mark.parametrize("mode", ["paper", "full"])
def test_frozen_layer_is_nan_with_note_and_left_out_of_overall(mode: str) -> None:
    model = torchvision.models.resnet18(weights=None, num_classes=4)
    init, pretrained, finetuned, a, b = _resnet_states(model)
    for name in finetuned:
        if name.startswith("layer2.1."):
            finetuned[name] = pretrained[name].clone()
    result = layerwise_transferability(model, init, pretrained, finetuned, mode=mode)

    frozen = next(la for la in result.layers if la.name == "layer2.1")
    assert math.isnan(frozen.t) and frozen.d_pre_ft == 0.0
    assert "unchanged by fine-tuning" in frozen.note
    expected = _expected_resnet(model, a, b, mode)
    rest = [expected[g] for g in RESNET18_GROUPS[:-1] if g != "layer2.1"]
    assert result.overall == pytest.approx(sum(rest) / len(rest), rel=1e-9)
    assert math.isfinite(result.overall)


def test_partly_frozen_group_averages_the_changed_tensors() -> None:
    model = torchvision.models.resnet18(weights=None, num_classes=4)
    init, pretrained, finetuned, a, b = _resnet_states(model)
    finetuned["layer3.0.conv1.weight"] = pretrained["layer3.0.conv1.weight"].clone()
    layer = next(
        la for la in layerwise_transferability(model, init, pretrained, finetuned).layers if la.name == "layer3.0"
    )
    n = "layer3.0.conv2.weight"
    assert layer.t == pytest.approx(abs(a[n] + b[n]) / abs(b[n]), rel=1e-9)
    assert "1 of 2" in layer.note


def test_full_and_paper_count_different_tensors() -> None:
    """BN parameters changed, conv weights not: paper sees an unchanged network, full does not."""
    model = torchvision.models.resnet18(weights=None, num_classes=4)
    init = _base(model)
    pretrained = {k: v + 0.5 if v.is_floating_point() else v.clone() for k, v in init.items()}
    bn = {n for n, _ in model.named_parameters() if n.split(".")[-2].startswith("bn") or ".downsample.1." in n}
    finetuned = {k: v + 0.25 if k in bn else v.clone() for k, v in pretrained.items()}

    paper = layerwise_transferability(model, init, pretrained, finetuned, mode="paper")
    full = layerwise_transferability(model, init, pretrained, finetuned, mode="full")
    assert all(math.isnan(la.t) and "unchanged" in la.note for la in paper.layers)
    assert math.isnan(paper.overall) and paper.most_transferable is None
    for layer in full.layers[:-1]:  # D(r, FB) = 0.75 and D(A, FB) = 0.25 on the BN params, 0.5 / 0 elsewhere
        members = [(n, p.numel()) for n, p in model.named_parameters() if _resnet_group(n) == layer.name]
        n_bn = sum(k for n, k in members if n in bn)
        n_all = sum(k for _, k in members)
        assert layer.t == pytest.approx((0.75 * n_bn + 0.5 * (n_all - n_bn)) / (0.25 * n_bn), rel=1e-9)
        assert layer.numel == n_all
    assert math.isnan(full.layers[-1].t)  # fc has no BN: unchanged

    # conv weights with T = 2 and BN with T = 5: paper reports 2, full the numel-weighted mix
    finetuned = {k: v + (0.25 if k in bn else 0.125) if v.is_floating_point() else v for k, v in pretrained.items()}
    init = {k: v - (4 * 0.25 if k in bn else 1 * 0.125) if v.is_floating_point() else v for k, v in pretrained.items()}
    paper = layerwise_transferability(model, init, pretrained, finetuned, mode="paper")
    full = layerwise_transferability(model, init, pretrained, finetuned, mode="full")
    assert [la.t for la in paper.layers] == pytest.approx([2.0] * 10, rel=1e-9)
    layer = full.layers[1]
    members = [(n, p.numel()) for n, p in model.named_parameters() if _resnet_group(n) == layer.name]
    n_bn = sum(k for n, k in members if n in bn)
    n_conv = sum(k for n, k in members if n not in bn)
    expected = (5 * 0.25 * n_bn + 2 * 0.125 * n_conv) / (0.25 * n_bn + 0.125 * n_conv)
    assert layer.t == pytest.approx(expected, rel=1e-9) and abs(layer.t - 2.0) > 1e-3


# --------------------------------------------------------------------------------------------------
# Other families
# --------------------------------------------------------------------------------------------------


def _random_states(model: nn.Module, seed: int = 0) -> tuple[State, State, State]:
    """θA = θr + N(0, 1), θFB = θA + N(0, 0.1): fine-tuning stays near θA, so every T is finite and > 1."""
    gen = torch.Generator().manual_seed(seed)
    init = _base(model)
    pretrained = {
        k: v + torch.randn(v.shape, generator=gen, dtype=v.dtype) if v.is_floating_point() else v
        for k, v in init.items()
    }
    finetuned = {
        k: v + 0.1 * torch.randn(v.shape, generator=gen, dtype=v.dtype) if v.is_floating_point() else v
        for k, v in pretrained.items()
    }
    return init, pretrained, finetuned


def test_monai_unet_counts_conv_weights() -> None:
    model = UNet(spatial_dims=2, in_channels=1, out_channels=2, channels=(4, 8, 16), strides=(2, 2), num_res_units=1)
    states = _random_states(model)
    result = layerwise_transferability(model, *states)
    shortcut = layerwise_transferability(model, *states, include_shortcut=True)

    assert [la.name for la in result.layers] == ["down1", "down2", "bottom", "up2", "out"]
    assert all(math.isfinite(la.t) and la.t > 1 for la in result.layers)
    # the encoder levels hold one main-path conv and a residual (shortcut) conv; PReLU slopes never count
    assert [la.n_tensors for la in result.layers] == [1, 1, 1, 2, 2]
    assert [la.n_tensors for la in shortcut.layers] == [2, 2, 2, 2, 2]
    assert math.isfinite(result.overall) and result.overall > 1


def test_vision_transformer_counts_linear_and_attention_weights() -> None:
    model = torchvision.models.VisionTransformer(
        image_size=32, patch_size=16, num_layers=2, num_heads=2, hidden_dim=16, mlp_dim=32, num_classes=3
    )
    init, pretrained, finetuned = _random_states(model)
    result = layerwise_transferability(model, init, pretrained, finetuned)
    assert [la.name for la in result.layers] == [
        "embed",
        "encoder.layers.encoder_layer_0",
        "encoder.layers.encoder_layer_1",
        "head",
    ]
    # conv_proj; in_proj, out_proj, mlp.0, mlp.3; heads.head (encoder.ln, tokens and position embedding excluded)
    assert [la.n_tensors for la in result.layers] == [1, 4, 4, 1]
    block = "encoder.layers.encoder_layer_1."
    counted = [
        block + s
        for s in ("self_attention.in_proj_weight", "self_attention.out_proj.weight", "mlp.0.weight", "mlp.3.weight")
    ]

    def d(x: State, y: State, n: str) -> float:
        return (x[n] - y[n]).abs().mean().item()

    expected = sum(d(init, finetuned, n) for n in counted) / sum(d(pretrained, finetuned, n) for n in counted)
    assert result.layers[2].t == pytest.approx(expected, rel=1e-9)
    assert all(math.isfinite(la.t) and la.t > 1 for la in result.layers)
    full = layerwise_transferability(model, init, pretrained, finetuned, mode="full")
    assert full.layers[0].n_tensors == 4  # class_token, conv_proj weight and bias, pos_embedding


# --------------------------------------------------------------------------------------------------
# Files, tables, plots
# --------------------------------------------------------------------------------------------------


def _resnet18_result(freeze: str | None = None):
    model = torchvision.models.resnet18(weights=None, num_classes=4)
    init, pretrained, finetuned, _, _ = _resnet_states(model)
    if freeze:
        for name in finetuned:
            if name.startswith(freeze + "."):
                finetuned[name] = pretrained[name].clone()
    return layerwise_transferability(model, init, pretrained, finetuned)


def test_save_transferability_writes_round_trippable_files(tmp_path) -> None:
    result = _resnet18_result(freeze="layer1.1")
    paths = save_transferability(result, tmp_path / "out")

    assert {k: p.name for k, p in paths.items()} == {
        "csv": "transferability.csv",
        "json": "transferability.json",
        "png": "transferability.png",
    }
    with paths["csv"].open(newline="") as f:
        rows = list(csv.DictReader(f))
    assert list(rows[0]) == list(ROW_HEADERS)
    assert [r["name"] for r in rows] == RESNET18_GROUPS
    for row, layer in zip(rows, result.layers, strict=True):
        for key in ("t", "d_init_ft", "d_pre_ft"):
            value, want = float(row[key]), getattr(layer, key)
            assert value == want or (math.isnan(value) and math.isnan(want)), (layer.name, key)
        assert int(row["n_tensors"]) == layer.n_tensors and row["is_head"] == str(layer.is_head)
    assert "unchanged" in rows[RESNET18_GROUPS.index("layer1.1")]["note"]

    data = json.loads(paths["json"].read_text())
    assert data["overall"] == result.overall and data["mode"] == "paper"
    assert data["n_layers_in_overall"] == 8
    assert [la["t"] for la in data["layers"]][:2] == [result.layers[0].t, result.layers[1].t]
    assert paths["png"].read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_format_transferability_has_a_row_per_layer_and_the_overall() -> None:
    result = _resnet18_result()
    text = format_transferability(result)
    lines = text.splitlines()
    assert lines[0].startswith("| # | layer |")
    assert sum(line.startswith("|") for line in lines) == 2 + len(result.layers)  # header, separator, layers
    assert "fc (head)" in text
    assert f"{result.overall:.2f}" in lines[-1] and result.most_transferable in lines[-1]


def test_plot_transferability_curves(tmp_path) -> None:
    a, b = _resnet18_result(), _resnet18_result(freeze="layer4.0")
    path = plot_transferability_curves({"BUSI": a, "BreastMNIST": b}, tmp_path / "curves.png")
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"

    unet = UNet(spatial_dims=2, in_channels=1, out_channels=2, channels=(4, 8, 16), strides=(2, 2), num_res_units=1)
    other = layerwise_transferability(unet, *_random_states(unet))
    with pytest.raises(ValueError, match="other layers"):
        plot_transferability_curves({"BUSI": a, "LiTS": other}, tmp_path / "mixed.png")


def test_measure_files_reads_checkpoints_and_sizes_the_head(tmp_path) -> None:
    pretraining = torchvision.models.resnet18(weights=None, num_classes=1000)
    init, pretrained, _, _, _ = _resnet_states(pretraining)
    finetune_init = {k: v.clone() for k, v in pretrained.items()}
    finetune_init["fc.weight"] = torch.zeros(3, 512, dtype=torch.float64)
    finetune_init["fc.bias"] = torch.zeros(3, dtype=torch.float64)
    finetuned = {k: v + 0.125 if v.is_floating_point() else v for k, v in finetune_init.items()}
    init, pretrained, finetuned, finetune_init = (
        {k: v.float() if v.is_floating_point() else v for k, v in s.items()}  # saved as float32, like real runs
        for s in (init, pretrained, finetuned, finetune_init)
    )

    def save(state: State | dict, name: str) -> str:
        torch.save(state, tmp_path / name)
        return str(tmp_path / name)

    paths = [save(init, "init.pt"), save(pretrained, "pretrained.pt"), save(finetuned, "finetuned.pt")]
    save({"state_dict": finetune_init}, "finetune_init.pt")  # containers are unwrapped

    result = measure_files("resnet18", *paths, finetune_init_path=tmp_path / "finetune_init.pt")
    assert result.layers[-1].t == 1.0 and len(result.layers) == 10
    assert result.sources["finetuned"] == paths[2]
    assert all(math.isfinite(la.t) for la in result.layers)

    with pytest.raises(CheckpointError, match="finetune_init"):
        measure_files("resnet18", *paths)
    with pytest.raises(CheckpointError, match="missing.pt"):
        measure_files("resnet18", paths[0], str(tmp_path / "missing.pt"), paths[2])
    with pytest.raises(CheckpointError, match="finetuned.pt"):
        measure_files("densenet121", *paths)


@pytest.mark.parametrize("mode", ["paper", "full"])
def test_densenet121_every_group_gets_the_known_ratio(mode):
    model = torchvision.models.densenet121(weights=None, num_classes=3)
    init = {k: v.clone() for k, v in model.state_dict().items()}
    pretrained = {k: v + 1.0 if v.is_floating_point() else v for k, v in init.items()}
    finetuned = {k: v + 0.25 if v.is_floating_point() else v for k, v in pretrained.items()}
    result = layerwise_transferability(model, init, pretrained, finetuned, mode=mode)
    assert len(result.layers) == 9 and result.layers[-1].name == "classifier"
    for layer in result.layers:  # |θr − θFB| = 1.25 and |θA − θFB| = 0.25 everywhere
        assert layer.t == pytest.approx(5.0), layer.name
    assert result.overall == pytest.approx(5.0)
