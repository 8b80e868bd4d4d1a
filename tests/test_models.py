"""Checkpoint loading (heads replaced, everything else must fit exactly, bad files named) and network placement."""

import copy
from pathlib import Path

import pytest
import torch
import torchvision

from medtransfer.errors import CheckpointError, SettingsError
from medtransfer.models import (
    build_classifier,
    check_input_size,
    load_pretrained,
    place_network,
    read_state_dict,
    strip_wrapper_prefix,
)


@pytest.fixture(scope="module")
def imagenet_like(tmp_path_factory) -> Path:
    """A torchvision-style ResNet-18 checkpoint with a 1000-class head (random weights: nothing is downloaded)."""
    torch.manual_seed(1)
    path = tmp_path_factory.mktemp("ckpt") / "resnet18_imagenet_like.pth"
    torch.save(torchvision.models.resnet18(weights=None).state_dict(), path)
    return path


def test_pretrained_backbone_loaded_and_head_replaced(imagenet_like):
    source = torch.load(imagenet_like, weights_only=True)
    model = build_classifier("resnet18", num_classes=3, pretrained_ckpt=imagenet_like)
    state = model.state_dict()
    for key in ("conv1.weight", "layer3.1.bn2.running_var", "layer4.1.conv2.weight"):
        assert torch.equal(state[key], source[key]), key
    assert state["fc.weight"].shape == (3, 512)
    report = load_pretrained(build_classifier("resnet18", num_classes=3), imagenet_like)
    assert sorted(report.replaced_head) == ["fc.bias", "fc.weight"]
    assert "conv1.weight" in report.loaded and not report.ignored


def test_wrapped_and_prefixed_checkpoints_load(imagenet_like, tmp_path):
    source = torch.load(imagenet_like, weights_only=True)
    wrapped = tmp_path / "lightning_style.pt"
    torch.save({"state_dict": {f"module.{k}": v for k, v in source.items()}, "epoch": 3}, wrapped)
    model = build_classifier("resnet18", num_classes=1000)
    report = load_pretrained(model, wrapped)
    assert report.prefix == "module."
    assert torch.equal(model.state_dict()["layer2.0.downsample.0.weight"], source["layer2.0.downsample.0.weight"])
    assert torch.equal(model.state_dict()["fc.weight"], source["fc.weight"])  # same head size: kept, not replaced


def test_wrapper_prefix_is_the_one_that_names_most_model_keys(imagenet_like, tmp_path):
    source = torch.load(imagenet_like, weights_only=True)
    model_keys = build_classifier("resnet18", num_classes=1000).state_dict()
    assert strip_wrapper_prefix(source, model_keys) == (dict(source), "")  # nothing to strip: left as is
    compiled = {f"_orig_mod.{k}": v for k, v in source.items()} | {"_orig_mod_extra": torch.zeros(1)}
    stripped, prefix = strip_wrapper_prefix(compiled, model_keys)
    assert prefix == "_orig_mod." and stripped.keys() == source.keys()  # keys outside the wrapper are left out
    path = tmp_path / "compiled.pt"
    torch.save(compiled, path)
    report = load_pretrained(build_classifier("resnet18", num_classes=3), path)
    assert report.prefix == "_orig_mod." and report.ignored == ["_orig_mod_extra"]


def test_ssl_checkpoint_with_projection_head_reports_ignored_keys(imagenet_like, tmp_path):
    source = torch.load(imagenet_like, weights_only=True)
    ssl = {f"backbone.{k}": v for k, v in source.items() if not k.startswith("fc.")}
    ssl["projector.0.weight"] = torch.zeros(128, 512)
    path = tmp_path / "ssl.pt"
    torch.save(ssl, path)
    report = load_pretrained(build_classifier("resnet18", num_classes=2), path)
    assert report.prefix == "backbone."
    assert report.ignored == ["projector.0.weight"]


def test_wrong_architecture_names_file_key_and_shapes(tmp_path):
    path = tmp_path / "resnet50.pth"
    torch.save(torchvision.models.resnet50(weights=None).state_dict(), path)
    with pytest.raises(CheckpointError) as err:
        build_classifier("resnet18", num_classes=2, pretrained_ckpt=path)
    message = str(err.value)
    assert "resnet50.pth" in message and "layer1.0." in message and "(64, 64, 1, 1)" in message
    assert "--arch" in message


def test_incomplete_checkpoint_is_refused(imagenet_like, tmp_path):
    source = torch.load(imagenet_like, weights_only=True)
    path = tmp_path / "partial.pt"
    torch.save({k: v for k, v in source.items() if not k.startswith("layer4")}, path)
    with pytest.raises(CheckpointError, match=r"partial\.pt lacks"):
        load_pretrained(build_classifier("resnet18", num_classes=2), path)
    report = load_pretrained(build_classifier("resnet18", num_classes=2), path, strict=False)
    assert not any(k.startswith("layer4") for k in report.loaded)


class _NotAStateDict:
    pass


def test_unreadable_and_missing_files(tmp_path):
    with pytest.raises(CheckpointError, match="does not exist"):
        read_state_dict(tmp_path / "nope.pt")
    pickled = tmp_path / "object.pt"
    torch.save(_NotAStateDict(), pickled)  # weights_only loading must refuse arbitrary pickles
    with pytest.raises(CheckpointError, match=r"object\.pt"):
        read_state_dict(pickled)
    garbage = tmp_path / "truncated.pt"
    garbage.write_bytes(b"PK\x03\x04 not really a zip")
    with pytest.raises(CheckpointError, match=r"truncated\.pt"):
        read_state_dict(garbage)
    empty = tmp_path / "metrics_only.pt"
    torch.save({"epoch": 3, "best": 0.5}, empty)
    with pytest.raises(CheckpointError, match="no state dict"):
        read_state_dict(empty)


def test_unknown_arch():
    with pytest.raises(ValueError, match="resnet18"):
        build_classifier("alexnet9000")


def test_uscl_style_checkpoint_maps_by_order(imagenet_like, tmp_path):
    """A backbone saved under other names (USCL: ``features.N`` + an l1/l2 projection MLP) loads with key_map=order."""
    source = torch.load(imagenet_like, weights_only=True)
    features = torch.nn.Sequential(*list(torchvision.models.resnet18(weights=None).children())[:-1])
    renamed = dict(
        zip(
            (f"features.{k}" for k in features.state_dict()),
            (v for k, v in source.items() if not k.startswith("fc.")),
            strict=True,
        )
    )
    renamed |= {"l1.weight": torch.zeros(512, 512), "l1.bias": torch.zeros(512), "l2.weight": torch.zeros(256, 512)}
    path = tmp_path / "uscl_like.pth"
    torch.save(renamed, path)
    with pytest.raises(CheckpointError, match="pretrained_key_map order"):
        build_classifier("resnet18", num_classes=3, pretrained_ckpt=path)
    model = build_classifier("resnet18", num_classes=3, pretrained_ckpt=path, pretrained_key_map="order")
    for key in ("conv1.weight", "layer2.0.downsample.1.running_var", "layer4.1.bn2.bias"):
        assert torch.equal(model.state_dict()[key], source[key]), key
    report = load_pretrained(build_classifier("resnet18", num_classes=3), path, key_map="order")
    assert sorted(report.ignored) == ["l1.bias", "l1.weight", "l2.weight"]
    short = tmp_path / "resnet34_features.pth"
    torch.save(torchvision.models.resnet34(weights=None).state_dict(), short)
    with pytest.raises(CheckpointError, match="backbone tensors"):
        load_pretrained(build_classifier("resnet18", num_classes=3), short, key_map="order")


def test_place_network_changes_layout_not_values():
    torch.manual_seed(0)
    reference = build_classifier("resnet18", num_classes=3)
    placed = place_network(copy.deepcopy(reference), "cpu", channels_last=True)
    conv_weight = placed.conv1.weight
    assert conv_weight.is_contiguous(memory_format=torch.channels_last) and not conv_weight.is_contiguous()
    assert torch.equal(conv_weight, reference.conv1.weight)
    images = torch.randn(4, 3, 32, 32)  # NCHW input, as the data loader gives it
    reference.eval(), placed.eval()
    torch.testing.assert_close(placed(images), reference(images), rtol=1e-4, atol=1e-5)


def test_place_network_one_training_step_matches_nchw():
    # float64: in float32 the NHWC and NCHW kernels sum in different orders, and after a training-mode BatchNorm
    # backward the stem's update can differ by more than any fixed tolerance on some CPUs; in float64 the two
    # layouts agree to ~1e-14, so a real layout bug (a transposed weight, a lost gradient) is all this can catch.
    torch.manual_seed(0)
    reference = build_classifier("resnet18", num_classes=2).double()
    placed = place_network(copy.deepcopy(reference), "cpu", channels_last=True)
    assert placed.conv1.weight.is_contiguous(memory_format=torch.channels_last)
    images, labels = torch.randn(8, 3, 32, 32, dtype=torch.float64), torch.tensor([0, 1] * 4)
    for model in (reference, placed):
        optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
        torch.nn.functional.cross_entropy(model(images), labels).backward()
        optimizer.step()
    for (name, before), after in zip(reference.state_dict().items(), placed.state_dict().values(), strict=True):
        torch.testing.assert_close(after, before, rtol=1e-10, atol=1e-12, msg=name)


def test_place_network_leaves_3d_networks_and_opt_out_alone():
    volumetric = place_network(torch.nn.Sequential(torch.nn.Conv3d(1, 2, 3)), "cpu")
    assert volumetric[0].weight.is_contiguous()
    planar = place_network(build_classifier("resnet18", num_classes=2), "cpu", channels_last=False)
    assert planar.conv1.weight.is_contiguous()


def test_a_vit_is_built_for_the_input_size_and_its_pretrained_position_embedding_resampled(tmp_path):
    """ViT-S/16 pre-trained at 224 px (14x14 patches) loads at 64 px (4x4): every other tensor as in the checkpoint,
    the class token's embedding kept, the patch grid resampled; the network runs at 64 px."""
    torch.manual_seed(0)
    source = build_classifier("vit_s_16", num_classes=5)  # the published layout at 224 px, random values
    torch.save(source.state_dict(), tmp_path / "vit.pt")
    model = build_classifier("vit_s_16", num_classes=2, pretrained_ckpt=tmp_path / "vit.pt", image_size=64)
    assert model.encoder.pos_embedding.shape == (1, 1 + 4 * 4, 384)
    assert torch.equal(model.encoder.pos_embedding[:, 0], source.encoder.pos_embedding[:, 0])
    grid = source.encoder.pos_embedding[0, 1:].reshape(14, 14, 384).permute(2, 0, 1)[None]
    expected = torch.nn.functional.interpolate(grid, size=(4, 4), mode="bicubic", align_corners=True)
    assert torch.allclose(model.encoder.pos_embedding[0, 1:], expected[0].permute(1, 2, 0).reshape(16, 384), atol=1e-6)
    for key, value in source.state_dict().items():
        if key != "encoder.pos_embedding" and not key.startswith("heads"):
            assert torch.equal(model.state_dict()[key], value), key
    check_input_size(model, 64, "vit_s_16")
    assert model(torch.zeros(2, 3, 64, 64)).shape == (2, 2)


def test_an_input_size_a_network_cannot_take_is_refused_naming_both():
    with pytest.raises(SettingsError, match=r"multiple of 16; got 72. Pass --image_size 64 or 80"):
        build_classifier("vit_s_16", image_size=72)
    vit = build_classifier("vit_s_16")  # built for 224 px
    with pytest.raises(SettingsError, match=r"--arch vit_s_16 does not take --image_size 64 inputs \(AssertionError"):
        check_input_size(vit, 64, "vit_s_16")


def test_vit_b_16_at_the_bundles_default_64_pixels_runs():
    """The case that crashed mid-run (torchvision's fixed 224-pixel assert): built for 64 px, it takes 64 px."""
    model = build_classifier("vit_b_16", num_classes=2, image_size=64)
    check_input_size(model, 64, "vit_b_16")
