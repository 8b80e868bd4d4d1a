"""Network factory and checkpoint loading.

Pre-trained weights always come from a local file (no downloads at run time). Loading is strict about everything but
the head: the head is the last layer group (``medtransfer.layers``), which fine-tuning replaces when the number of
classes differs, so head tensors of another shape are dropped and keep their fresh initialisation.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TypeVar

import torch
import torchvision
from torch import nn

from medtransfer.errors import CheckpointError
from medtransfer.layers import layer_groups

logger = logging.getLogger(__name__)

CLASSIFIERS = ("resnet18", "resnet34", "resnet50", "densenet121", "vit_b_16", "vit_s_16")

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
) -> nn.Module:
    """A torchvision classifier with a `num_classes` head, optionally initialised from a local checkpoint.

    Why a factory: bundles name the architecture as a string override (``--arch resnet50``) and the head is sized from
    the dataset's classes, so the same config works for 2-class BreastMNIST and 3-class BUSI.
    """
    if arch == "vit_s_16":  # ViT-S/16 (DeiT-S shape); torchvision has no builder for it
        model: nn.Module = torchvision.models.VisionTransformer(
            image_size=224, patch_size=16, num_layers=12, num_heads=6, hidden_dim=384, mlp_dim=1536,
            num_classes=num_classes,
        )  # fmt: skip
    elif arch in CLASSIFIERS:
        model = getattr(torchvision.models, arch)(weights=None, num_classes=num_classes)
    else:
        raise ValueError(f"unknown arch {arch!r}; choose one of {', '.join(CLASSIFIERS)}")
    if pretrained_ckpt:
        report = load_pretrained(model, pretrained_ckpt, key_map=pretrained_key_map)
        logger.info(report.summary())
    return model


def read_state_dict(path: str | Path) -> dict[str, torch.Tensor]:
    """Read a checkpoint file safely (``weights_only=True``) and unwrap the usual containers to a flat state dict."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint {path} does not exist; pass the path of a local .pt/.pth file")
    try:
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
    if key_map not in KEY_MAPS:
        raise ValueError(f"key_map must be one of {KEY_MAPS}, got {key_map!r}")
    source = read_state_dict(path)
    target = model.state_dict()
    head = _head_keys(model)
    dropped: list[str] = []
    if key_map == "order":
        source, dropped = _map_by_order(source, target, head, path)
    state, prefix = strip_wrapper_prefix(source, target)
    report = LoadReport(
        path=str(path), prefix=prefix, ignored=dropped + [k for k in source if not k.startswith(prefix)]
    )
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
