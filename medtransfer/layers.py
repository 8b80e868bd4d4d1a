"""Split a network into ordered layer groups, input to output.

Everything layer-wise in medtransfer (MetaLR's one learning rate per group, freezing, layer-wise
transferability, plots) consumes :func:`layer_groups`, so that "group j" means the same thing everywhere.

As in timm's ``group_matcher``, grouping is data: for each model family a small function turns the
model's actual structure into an ordered *spec*, a list of ``(group name, display label, prefixes)``.
One generic routine, :func:`assign_groups`, then maps every parameter (by its ``named_parameters()``
name) to the one group whose prefix matches it on a dotted boundary, and refuses a partition that
leaves a parameter out or puts it in two groups.
"""

from __future__ import annotations

import numbers
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

from torch import nn

__all__ = [
    "GRANULARITIES",
    "GroupSpec",
    "LayerGroup",
    "assign_groups",
    "describe",
    "layer_groups",
    "param_groups",
]

GRANULARITIES = ("block", "stage")

GroupSpec = tuple[str, str, tuple[str, ...]]
"""``(name, label, prefixes)``: a prefix is a module path ("layer1.0") or an exact parameter name ("class_token")."""

_CONV_TYPES = (nn.Conv1d, nn.Conv2d, nn.Conv3d, nn.ConvTranspose1d, nn.ConvTranspose2d, nn.ConvTranspose3d)


@dataclass(frozen=True)
class LayerGroup:
    """One group of parameters; ``name`` is the stable id, ``label`` is what plots show."""

    name: str
    label: str
    param_names: tuple[str, ...]
    params: tuple[nn.Parameter, ...] = field(repr=False, compare=False)

    def numel(self) -> int:
        """Number of scalar parameters in the group (frozen ones included)."""
        return sum(p.numel() for p in self.params)


# --------------------------------------------------------------------------------------------------
# Generic assignment
# --------------------------------------------------------------------------------------------------


def assign_groups(model: nn.Module, spec: Sequence[GroupSpec]) -> list[LayerGroup]:
    """Partition ``model``'s parameters according to ``spec``, keeping the spec's order.

    A parameter belongs to a group when one of the group's prefixes equals its name or is a dotted
    prefix of it ("layer1.1" matches "layer1.1.conv1.weight" but not "layer1.10.conv1.weight").
    Within a group, parameters keep ``named_parameters()`` order. Groups that match no parameter
    (e.g. a classifier replaced by ``nn.Identity``) are dropped, because an optimizer cannot take an
    empty group and a plot has nothing to show for it.

    Raises:
        ValueError: a group name or prefix is listed twice, or a parameter matches no group or
            more than one group.
    """
    owner: dict[str, int] = {}
    seen_names: set[str] = set()
    for index, (name, _label, prefixes) in enumerate(spec):
        if name in seen_names:
            raise ValueError(f"layer group name {name!r} is listed twice in the group spec")
        seen_names.add(name)
        for prefix in prefixes:
            if prefix in owner:
                raise ValueError(f"prefix {prefix!r} is listed in layer groups {spec[owner[prefix]][0]!r} and {name!r}")
            owner[prefix] = index

    members: list[list[tuple[str, nn.Parameter]]] = [[] for _ in spec]
    for param_name, param in model.named_parameters():
        parts = param_name.split(".")
        matches = {owner[p] for p in (".".join(parts[: i + 1]) for i in range(len(parts))) if p in owner}
        if not matches:
            raise ValueError(
                f"parameter {param_name!r} of {type(model).__name__} is in no layer group "
                f"(groups: {[s[0] for s in spec]}); extend the group spec to cover it"
            )
        if len(matches) > 1:
            names = [spec[i][0] for i in sorted(matches)]
            raise ValueError(
                f"parameter {param_name!r} of {type(model).__name__} matches several layer groups: {names}"
            )
        members[matches.pop()].append((param_name, param))

    return [
        LayerGroup(
            name=name,
            label=label,
            param_names=tuple(n for n, _ in items),
            params=tuple(p for _, p in items),
        )
        for (name, label, _prefixes), items in zip(spec, members, strict=True)
        if items
    ]


# --------------------------------------------------------------------------------------------------
# Family specs: each returns prefixes relative to the model it is given
# --------------------------------------------------------------------------------------------------


def _owns_params(module: nn.Module) -> bool:
    return next(module.parameters(), None) is not None


def _out_channels(module: nn.Module) -> int | None:
    """Output channels of the last convolution inside ``module`` (in registration order)."""
    convs = [m for m in module.modules() if isinstance(m, _CONV_TYPES)]
    return convs[-1].out_channels if convs else None


def _resnet_spec(model: nn.Module, granularity: str) -> list[GroupSpec]:
    spec: list[GroupSpec] = [("conv1+bn1", "Conv 1", ("conv1", "bn1"))]
    for stage in range(1, 5):
        stage_name = f"layer{stage}"
        if granularity == "stage":
            spec.append((stage_name, f"Stage {stage}", (stage_name,)))
        else:
            for block, (child, _) in enumerate(getattr(model, stage_name).named_children(), start=1):
                spec.append((f"{stage_name}.{child}", f"Block {stage}-{block}", (f"{stage_name}.{child}",)))
    spec.append(("fc", "FC", ("fc",)))
    return spec


def _densenet_spec(model: nn.Module, granularity: str) -> list[GroupSpec]:
    # Walk ``features`` in order: everything before the first dense block is the stem; norm5 (and
    # anything else after the last dense block) belongs to the last block's output.
    stem: list[str] = []
    units: list[list] = []  # [name, label, prefixes, kind]
    for child, module in model.features.named_children():
        path = f"features.{child}"
        if child.startswith("denseblock"):
            i = child[len("denseblock") :]
            if granularity == "stage":
                units.append([f"stage{i}", f"Stage {i}", [path], "stage"])
            else:
                units.append([path, f"Dense block {i}", [path], "block"])
        elif child.startswith("transition") and units:
            i = child[len("transition") :]
            if granularity == "stage":
                units[-1][2].append(path)
            else:
                units.append([path, f"Transition {i}", [path], "transition"])
        elif not _owns_params(module):
            continue
        elif not units:
            stem.append(path)
        else:
            # after the last dense block (norm5): attach to the most recent dense block / stage
            target = next(u for u in reversed(units) if u[3] != "transition")
            target[2].append(path)
    stem_name = "features." + "+".join(p.removeprefix("features.") for p in stem) if stem else "features.stem"
    spec: list[GroupSpec] = [(stem_name, "Conv 0", tuple(stem))]
    spec += [(name, label, tuple(prefixes)) for name, label, prefixes, _ in units]
    spec.append(("classifier", "Classifier", ("classifier",)))
    return spec


def _vit_spec(model: nn.Module, granularity: str) -> list[GroupSpec]:
    blocks = [f"encoder.layers.{child}" for child, _ in model.encoder.layers.named_children()]
    spec: list[GroupSpec] = [("embed", "Embedding", ("class_token", "conv_proj", "encoder.pos_embedding"))]
    if granularity == "stage":
        n_stages = min(4, len(blocks))
        start = 0
        for s in range(n_stages):
            size = len(blocks) // n_stages + (1 if s < len(blocks) % n_stages else 0)
            spec.append((f"stage{s + 1}", f"Stage {s + 1}", tuple(blocks[start : start + size])))
            start += size
    else:
        spec += [(path, f"Block {i + 1}", (path,)) for i, path in enumerate(blocks)]
    spec.append(("head", "Head", ("encoder.ln", "heads")))
    return spec


def _monai_unet_spec(model: nn.Module, granularity: str) -> list[GroupSpec]:
    from monai.networks.layers.simplelayers import SkipConnection

    # model.model == Sequential(down, SkipConnection(<same, or the bottom block>), up), recursively.
    downs: list[tuple[str, nn.Module]] = []
    ups: list[tuple[str, nn.Module]] = []  # top -> bottom while walking
    path, node = "model", model.model
    while isinstance(node, nn.Sequential) and len(node) == 3 and isinstance(node[1], SkipConnection):
        downs.append((f"{path}.0", node[0]))
        ups.append((f"{path}.2", node[2]))
        path, node = f"{path}.1.submodule", node[1].submodule
    if not downs:
        raise ValueError(
            f"{type(model).__name__}.model is not MONAI UNet's Sequential(down, SkipConnection, up) nesting; "
            "cannot find its encoder/decoder levels"
        )
    bottom_path, bottom = path, node
    (out_path, _), *decoder = ups  # ups[0] is the topmost up layer: it produces out_channels
    decoder = decoder[::-1]  # bottom -> top, the order data flows through them
    channels = list(getattr(model, "channels", ()))

    def ch(module: nn.Module, fallback_index: int) -> object:
        found = _out_channels(module)
        if found is not None:
            return found
        return channels[fallback_index] if -len(channels) <= fallback_index < len(channels) else "?"

    if granularity == "stage":
        return [
            ("encoder", "Encoder", tuple(p for p, _ in downs)),
            ("bottom", "Bottom", (bottom_path,)),
            ("decoder", "Decoder", tuple(p for p, _ in decoder)),
            ("out", "Out", (out_path,)),
        ]
    k = len(downs)
    spec: list[GroupSpec] = [(f"down{i + 1}", f"Down-{ch(m, i)}", (p,)) for i, (p, m) in enumerate(downs)]
    spec.append(("bottom", f"Bottom-{ch(bottom, -1)}", (bottom_path,)))
    # decoder[j] sits at level k - j (paired with down{k-j}) and outputs that level's input channels
    spec += [(f"up{k - j}", f"Up-{ch(m, k - j - 2)}", (p,)) for j, (p, m) in enumerate(decoder)]
    spec.append(("out", "Out", (out_path,)))
    return spec


def _monai_basic_unet_spec(model: nn.Module, granularity: str) -> list[GroupSpec]:
    encoder = ["conv_0", "down_1", "down_2", "down_3"]
    decoder = ["upcat_4", "upcat_3", "upcat_2", "upcat_1"]
    if granularity == "stage":
        return [
            ("encoder", "Encoder", tuple(encoder)),
            ("bottom", "Bottom", ("down_4",)),
            ("decoder", "Decoder", tuple(decoder)),
            ("out", "Out", ("final_conv",)),
        ]
    spec: list[GroupSpec] = [(name, f"Down-level {i}", (name,)) for i, name in enumerate(encoder)]
    spec.append(("down_4", "Bottom", ("down_4",)))
    spec += [(name, f"Up-level {name[-1]}", (name,)) for name in decoder]
    spec.append(("final_conv", "Out", ("final_conv",)))
    return spec


def _is_timm(model: nn.Module) -> bool:
    return type(model).__module__.startswith("timm.") and callable(getattr(model, "group_matcher", None))


def _timm_spec(model: nn.Module, granularity: str) -> list[GroupSpec]:
    """timm's own grouping (``model.group_matcher``: fine for "block", coarse for "stage"), named readably.

    ``timm.models.group_parameters`` orders the groups as timm's layer-wise LR decay does: the stem, one group per
    block or stage (timm merges the final norm / 1x1 head conv into the last one), then everything its matcher leaves
    out (the classifier), which is our head. Group names are the matched module paths (``layer1.0``, ``blocks.2``).
    """
    from timm.models import group_parameters

    try:
        matcher = model.group_matcher(coarse=granularity == "stage")
    except NotImplementedError:  # a few timm models define no grouping
        return _fallback_spec(model, granularity)
    groups = list(group_parameters(model, matcher).values())
    if not isinstance(matcher, dict):  # a callable matcher gives ordinals only
        return [(f"group{i}", f"Group {i}", tuple(names)) for i, names in enumerate(groups)]
    # (matcher key, regex, ordinal suffix), as timm compiles a dict matcher
    patterns = [
        (key, re.compile(p), None) if isinstance(p, str) else (key, re.compile(p[0]), p[1])
        for key, entry in matcher.items()
        if entry is not None
        for p in (entry if isinstance(entry, list | tuple) else [entry])
    ]
    as_blocks = granularity == "block" or matcher == model.group_matcher(coarse=False)  # e.g. ViT: stages = blocks
    spec: list[GroupSpec] = []
    stages: dict[object, int] = {}  # first ordinal -> stage number, for "Block i.j"
    for index, names in enumerate(groups):
        kind, found, suffix = next(
            ((key, m, suffix) for key, regex, suffix in patterns if (m := regex.match(names[0]))), (None, None, None)
        )
        if kind is None and index == len(groups) - 1:
            spec.append(("head", "Head", tuple(names)))
        elif kind == "stem" and index == 0:
            spec.append(("stem", "Stem", tuple(names)))
        else:
            ordinals = [c for c in (found.groups() if found else ()) if c is not None] + list(suffix or ())
            if len(ordinals) >= 2 and as_blocks:
                stage = stages.setdefault(ordinals[0], len(stages) + 1)
                j = sum(1 for s in spec if s[1].startswith(f"Block {stage}."))
                label = f"Block {stage}.{j + 1}"
            else:
                k = sum(1 for s in spec if s[0] not in ("stem", "head")) + 1
                label = f"Block {k}" if as_blocks else f"Stage {k}"
            name = found.group(0) if found else f"group{index}"
            spec.append((name if name not in {s[0] for s in spec} else f"{name}#{index}", label, tuple(names)))
    return spec


def _fallback_spec(model: nn.Module, granularity: str) -> list[GroupSpec]:
    spec: list[GroupSpec] = []
    direct = tuple(name for name, p in model.named_parameters(recurse=False))
    if direct:
        spec.append(("root", "root", direct))
    spec += [(name, name, (name,)) for name, child in model.named_children() if _owns_params(child)]
    return spec


def _families() -> list[tuple[type, Callable[[nn.Module, str], list[GroupSpec]]]]:
    # imported lazily so that importing medtransfer.layers stays cheap
    from monai.networks.nets import BasicUNet, UNet
    from torchvision.models import DenseNet, ResNet, VisionTransformer

    return [
        (ResNet, _resnet_spec),
        (DenseNet, _densenet_spec),
        (VisionTransformer, _vit_spec),
        (UNet, _monai_unet_spec),
        (BasicUNet, _monai_basic_unet_spec),
    ]


def _unwrap(model: nn.Module) -> tuple[nn.Module, str]:
    """Look through DataParallel/DistributedDataParallel (``module``) and ``torch.compile`` (``_orig_mod``)."""
    prefix = ""
    while True:
        if isinstance(model, (nn.DataParallel, nn.parallel.DistributedDataParallel)):
            attr = "module"
        elif isinstance(getattr(model, "_orig_mod", None), nn.Module):
            attr = "_orig_mod"
        else:
            return model, prefix
        model, prefix = getattr(model, attr), f"{prefix}{attr}."


# --------------------------------------------------------------------------------------------------
# Public API
# --------------------------------------------------------------------------------------------------


def layer_groups(model: nn.Module, granularity: str = "block") -> list[LayerGroup]:
    """Split ``model`` into ordered layer groups, input to output.

    Supported families (by ``isinstance``): torchvision ResNet, DenseNet and VisionTransformer, MONAI
    ``UNet`` and ``BasicUNet``; timm models (ResNets, EfficientNets incl. ``efficientnet_lite0``, ViTs, ...)
    are grouped by their own ``group_matcher``: stem, blocks or stages, head. Any other model gets one
    group per top-level child that owns parameters, preceded by a ``"root"`` group for parameters set
    directly on the model.
    ``"block"`` gives one group per residual/dense/transformer block or UNet level (ResNet-18 ->
    the 10 groups of the MetaLR paper); ``"stage"`` merges them into stages.

    Every parameter, frozen or not, is in exactly one group; parameters shared between modules are
    counted once (where ``named_parameters()`` first lists them). Wrappers (DataParallel, DDP,
    ``torch.compile``) are looked through; ``param_names`` keep the wrapper's prefix so they match
    ``model.named_parameters()``, while group names do not.
    """
    if granularity not in GRANULARITIES:
        raise ValueError(f"unknown granularity {granularity!r}; choose one of {GRANULARITIES}")
    inner, prefix = _unwrap(model)
    spec_fn = next((fn for cls, fn in _families() if isinstance(inner, cls)), None)
    spec_fn = spec_fn or (_timm_spec if _is_timm(inner) else _fallback_spec)
    spec = spec_fn(inner, granularity)
    if prefix:
        spec = [(name, label, tuple(prefix + p for p in prefixes)) for name, label, prefixes in spec]
    return assign_groups(model, spec)


def param_groups(groups: Sequence[LayerGroup], lr: float | Sequence[float], **options: object) -> list[dict]:
    """torch.optim parameter groups, one per layer group, in the same order.

    Each dict is ``{"params": [...], "lr": lr_j, "name": group.name, **options}``; ``"name"`` lets
    MetaLR and schedulers find a group again. ``lr`` is one rate for all groups or one per group
    (``lr[j]`` goes with ``groups[j]``). Only parameters with ``requires_grad`` are passed, and a group
    whose parameters are all frozen is left out, because torch optimizers reject empty groups; so
    index into the result by ``"name"``, not by position, when some groups are frozen.

    Raises:
        ValueError: ``lr`` has the wrong length, ``options`` tries to set params/lr/name, or no
            parameter is trainable.
    """
    if isinstance(lr, numbers.Real):
        rates = [float(lr)] * len(groups)
    else:
        rates = [float(r) for r in lr]
        if len(rates) != len(groups):
            raise ValueError(f"got {len(rates)} learning rates for {len(groups)} layer groups; give one per group")
    clash = {"params", "lr", "name"} & options.keys()
    if clash:
        raise ValueError(f"options may not set {sorted(clash)}: param_groups fills them in")
    result = []
    for group, rate in zip(groups, rates, strict=True):
        trainable = [p for p in group.params if p.requires_grad]
        if trainable:
            result.append({"params": trainable, "lr": rate, "name": group.name, **options})
    if not result:
        raise ValueError("no trainable parameters: every parameter in these layer groups has requires_grad=False")
    return result


def describe(groups: Sequence[LayerGroup]) -> str:
    """A small text table of the groups (index, name, label, tensors, parameters) for logs and reports."""
    header = ("#", "name", "label", "tensors", "params")
    rows = [(str(i), g.name, g.label, str(len(g.params)), f"{g.numel():,}") for i, g in enumerate(groups)]
    total = sum(g.numel() for g in groups)
    rows.append(("", "total", "", str(sum(len(g.params) for g in groups)), f"{total:,}"))
    widths = [max(len(r[c]) for r in [header, *rows]) for c in range(len(header))]
    right = {0, 3, 4}

    def fmt(row: Sequence[str]) -> str:
        cells = [
            cell.rjust(w) if c in right else cell.ljust(w) for c, (cell, w) in enumerate(zip(row, widths, strict=True))
        ]
        return "  ".join(cells).rstrip()

    lines = [fmt(header), fmt(["-" * w for w in widths])]
    lines += [fmt(r) for r in rows[:-1]]
    lines += [fmt(["-" * w for w in widths]), fmt(rows[-1])]
    return "\n".join(lines)
