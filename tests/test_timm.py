"""timm models by name (``arch="timm:<name>"``): layer groups from the model's own group_matcher, timm's pretrained
weights from its cache or a clear offline error, local checkpoints, normalisation from ``pretrained_cfg``."""

from __future__ import annotations

import pytest
import timm
import torch
from safetensors.torch import save_file
from test_pretrained import offline  # noqa: F401  (autouse: offline switches on, empty caches in tmp_path)
from timm.models import group_parameters
from torch import nn

from medtransfer.cli import main
from medtransfer.errors import CheckpointError
from medtransfer.layers import layer_groups
from medtransfer.models import IMAGENET_MEAN, IMAGENET_STD, build_classifier, input_normalization


def _assert_exact_partition(model: nn.Module, groups) -> None:
    names = [n for g in groups for n in g.param_names]
    assert len(names) == len(set(names)), "a parameter is in two groups"
    assert names == [n for n, _ in model.named_parameters()], "groups must cover every parameter, in order"
    assert [g.name for g in groups][0] == "stem" and groups[-1].name == "head"


# small timm models of the three families (the ViT at 32 px with 4 blocks, to stay quick)
TINY = {
    "resnet18": lambda: timm.create_model("resnet18", num_classes=3),
    "tf_efficientnet_lite0": lambda: build_classifier("efficientnet_lite0", num_classes=3),
    "efficientnet_b0": lambda: timm.create_model("efficientnet_b0", num_classes=3),
    "vit_tiny": lambda: timm.create_model("vit_tiny_patch16_224", num_classes=3, img_size=32, depth=4),
}


@pytest.mark.parametrize("name", list(TINY))
@pytest.mark.parametrize("granularity", ["block", "stage"])
def test_timm_layer_groups_are_an_exact_partition_in_timm_order(name, granularity):
    model = TINY[name]()
    groups = layer_groups(model, granularity)
    _assert_exact_partition(model, groups)
    assert {id(p) for p in groups[-1].params} == {id(p) for p in model.get_classifier().parameters()}  # the head
    timm_groups = list(group_parameters(model, model.group_matcher(coarse=granularity == "stage")).values())
    assert [list(g.param_names) for g in groups] == timm_groups  # timm's own grouping, stem to head
    wrapped = layer_groups(nn.DataParallel(model), granularity)
    assert [g.name for g in wrapped] == [g.name for g in groups]
    assert wrapped[0].param_names[0].startswith("module.")


def test_timm_group_names_and_labels_are_readable():
    resnet = layer_groups(timm.create_model("resnet18", num_classes=3), "block")
    assert [g.name for g in resnet] == ["stem"] + [f"layer{s}.{b}" for s in range(1, 5) for b in (0, 1)] + ["head"]
    assert [g.label for g in resnet][:4] == ["Stem", "Block 1.1", "Block 1.2", "Block 2.1"]
    assert len(resnet) == 10  # the MetaLR paper's ResNet-18 groups
    stages = layer_groups(timm.create_model("resnet18", num_classes=3), "stage")
    assert [g.label for g in stages] == ["Stem", "Stage 1", "Stage 2", "Stage 3", "Stage 4", "Head"]

    lite0 = build_classifier("efficientnet_lite0", num_classes=3)
    stages = layer_groups(lite0, "stage")
    assert [g.name for g in stages] == ["stem"] + [f"blocks.{s}" for s in range(7)] + ["head"]
    assert [g.label for g in stages] == ["Stem"] + [f"Stage {s}" for s in range(1, 8)] + ["Head"]
    assert stages[-1].param_names == ("classifier.weight", "classifier.bias")
    assert "conv_head.weight" in stages[-2].param_names  # timm merges the 1x1 head conv into the last stage
    blocks = layer_groups(lite0, "block")
    assert len(blocks) == 1 + 16 + 1 and blocks[3].label == "Block 2.2" and blocks[3].name == "blocks.1.1"

    vit = TINY["vit_tiny"]()
    for granularity in ("block", "stage"):  # timm's ViT matcher is per block at both granularities
        groups = layer_groups(vit, granularity)
        assert [g.label for g in groups] == ["Stem", "Block 1", "Block 2", "Block 3", "Block 4", "Head"]
        assert "cls_token" in groups[0].param_names and "norm.weight" in groups[-2].param_names


def test_timm_arch_builds_with_the_dataset_head_and_unknown_names_fail():
    model = build_classifier("timm:resnet18", num_classes=3)
    assert model.get_classifier().out_features == 3
    with pytest.raises(ValueError, match="unknown timm model 'resnet_nope'"):
        build_classifier("timm:resnet_nope")


def test_timm_imagenet_offline_and_missing_is_a_clear_error(tmp_path):
    with pytest.raises(CheckpointError) as err:
        build_classifier("timm:resnet18", num_classes=3, pretrained="imagenet")
    message = str(err.value)
    assert "timm/resnet18.a1_in1k" in message and "model.safetensors" in message
    assert str(tmp_path / "hf_cache") in message and "--pretrained_ckpt PATH" in message


def _hub_cache_file(cache, repo: str, filename: str):
    """Where huggingface_hub keeps `filename` of `repo` at revision main (refs/main -> snapshots/<commit>/)."""
    commit = "0" * 40
    repo_dir = cache / f"models--{repo.replace('/', '--')}"
    (repo_dir / "refs").mkdir(parents=True)
    (repo_dir / "refs" / "main").write_text(commit)
    (repo_dir / "snapshots" / commit).mkdir(parents=True)
    return repo_dir / "snapshots" / commit / filename


def test_timm_imagenet_weights_in_the_hub_cache_load_through_timm(tmp_path):
    torch.manual_seed(5)
    saved = timm.create_model("resnet18", num_classes=1000).state_dict()
    save_file({k: v.contiguous() for k, v in saved.items()},
              _hub_cache_file(tmp_path / "hf_cache", "timm/resnet18.a1_in1k", "model.safetensors"))  # fmt: skip
    model = build_classifier("timm:resnet18", num_classes=5, pretrained="imagenet")
    assert model.fc.weight.shape == (5, 512)
    state = model.state_dict()
    assert all(torch.equal(state[k], saved[k]) for k in saved if not k.startswith("fc."))


def test_timm_local_checkpoint_loads_with_head_replaced(tmp_path):
    torch.manual_seed(6)
    saved = timm.create_model("resnet18", num_classes=1000).state_dict()
    path = tmp_path / "resnet18.safetensors"
    save_file({k: v.contiguous() for k, v in saved.items()}, path)
    for kwargs in ({"pretrained": path}, {"pretrained_ckpt": path}):
        model = build_classifier("timm:resnet18", num_classes=2, **kwargs)
        assert model.fc.weight.shape == (2, 512)
        assert torch.equal(model.state_dict()["layer3.1.conv2.weight"], saved["layer3.1.conv2.weight"])


def test_timm_normalization_comes_from_pretrained_cfg():
    vit = input_normalization("timm:vit_tiny_patch16_224", "imagenet")
    assert vit["mean"] == [0.5] * 3 and vit["std"] == [0.5] * 3 and "vit_tiny_patch16_224" in vit["source"]
    resnet = input_normalization("timm:resnet18", "imagenet")
    assert resnet["mean"] == list(IMAGENET_MEAN) and resnet["std"] == list(IMAGENET_STD)
    assert input_normalization("timm:vit_tiny_patch16_224")["mean"] == list(IMAGENET_MEAN)  # random init: default


def test_cli_layers_lists_timm_and_efficientnet_lite0_groups(capsys):
    assert main(["layers", "efficientnet_lite0", "--granularity", "stage"]) == 0
    out = capsys.readouterr().out
    assert "Stem" in out and "Stage 7" in out and "Head" in out
    assert main(["layers", "timm:resnet18"]) == 0
    assert "Block 4.2" in capsys.readouterr().out
    with pytest.raises(SystemExit, match="unknown timm model"):
        main(["layers", "timm:resnet_nope"])
