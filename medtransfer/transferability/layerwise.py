"""Layer-wise transferability T of Chen, Li, Ding & Liu, "Rethinking Two Consensuses of the Transferability in Deep
Learning" (2022).

For every layer group (:func:`medtransfer.layers.layer_groups`, so "layer j" means the same as in MetaLR and the
plots) ``T = D(θr, θFB) / D(θA, θFB)``: θr is the random initialisation pre-training started from, θA the pre-trained
weights, θFB the weights after fine-tuning θA on task B, and D the mean absolute element-wise difference. A large T
means fine-tuning stayed much closer to the pre-trained weights than to random ones: the layer transferred.

Three modes, because the paper's number and "every parameter" answer different questions:

``paper`` (the published definition and its reference computation, ``cal_transferability.py``)
    Only weight kernels/matrices count: the ``weight`` of Conv/ConvTranspose (any dimension) and Linear modules, and
    MultiheadAttention's input projections (``in_proj_weight``, ``q/k/v_proj_weight``). Biases, norm layers (BN/LN/GN
    affine), PReLU slopes, class tokens and position embeddings do not count. Each counted tensor k gets its own
    D_k (mean absolute difference over its elements), and the group's T is a ratio of means,
    T = mean_k D_k(θr, θFB) / mean_k D_k(θA, θFB), as the reference code averages D over a bottleneck's three convs
    before dividing; a ResNet-50 bottleneck gives one value (18 layers in all).
    Residual shortcut convs (a module path component ``downsample``, ``shortcut`` or MONAI's ``residual``) are left out
    unless ``include_shortcut=True``: the paper speaks of "the three convs of a bottleneck", the main path. The same
    rule gives ViTs their Linear/attention weights and MONAI U-Nets their conv weights.
``full``
    D over all parameters of the group (all elements of all tensors pooled), T = D(θr, θFB) / D(θA, θFB). Buffers
    (BN running statistics) are not parameters and never count.
``tensor_mean``
    The tensors of ``paper``, but the mean of the per-tensor ratios, mean_k [D_k(θr, θFB) / D_k(θA, θFB)]: every
    conv of a block weighs the same in T whatever its distances (medtransfer's ``paper`` mode before it followed the
    reference; it differs where a block's convs moved by different amounts, e.g. 1.314 against 1.304).

The head (the last group) is re-initialised when the target task has other classes; then it cannot be compared with
θA or θr, and the fine-tuning run's own head initialisation θB0 is used for both distances, which gives exactly T = 1.
The head is shown but never enters the overall score, the mean T over the other layers.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from matplotlib.figure import Figure
from torch import nn

from medtransfer.atomic import write_csv_atomic
from medtransfer.errors import CheckpointError
from medtransfer.layers import LayerGroup, layer_groups
from medtransfer.models import build_classifier, read_state_dict, strip_wrapper_prefix
from medtransfer.report import legend, markdown_table, save_figure, save_json, series_styles

MODES = ("paper", "full", "tensor_mean")
SHORTCUT_NAMES = ("downsample", "shortcut", "residual")
"""Module names of residual shortcut paths (torchvision ResNet, common custom nets, MONAI ResidualUnit)."""

ROW_HEADERS = ("index", "name", "label", "t", "d_init_ft", "d_pre_ft", "n_tensors", "numel", "is_head", "note")

_MHA_WEIGHTS = ("in_proj_weight", "q_proj_weight", "k_proj_weight", "v_proj_weight")
_UNCHANGED = (
    "unchanged by fine-tuning (distance from the fine-tuning start is 0, e.g. a frozen layer): "
    "T undefined, left out of the overall"
)
StateDict = Mapping[str, torch.Tensor]


# --------------------------------------------------------------------------------------------------
# Results
# --------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class LayerT:
    """T of one layer group.

    ``d_init_ft`` and ``d_pre_ft`` are D(θr, θFB) and D(θA, θFB): in ``paper`` mode the means of the per-tensor D
    over the tensors fine-tuning moved (so ``t`` is their ratio), in the other modes over the counted tensors
    pooled (in ``tensor_mean`` mode ``t`` is the mean of per-tensor ratios and need not equal their ratio). For a
    re-initialised head both are D(θB0, θFB). ``t`` is NaN when undefined, and ``note`` then says why.
    """

    name: str
    label: str
    t: float
    d_init_ft: float
    d_pre_ft: float
    n_tensors: int
    numel: int
    is_head: bool
    note: str = ""


def _scored(layers: Sequence[LayerT]) -> list[LayerT]:
    """The layers the overall score averages: not the head, and with a finite T."""
    return [la for la in layers if not la.is_head and math.isfinite(la.t)]


@dataclass
class TransferabilityResult:
    """Per-layer T, input to output, and the overall score (mean T over the non-head layers with finite T)."""

    layers: list[LayerT]
    overall: float
    mode: str
    most_transferable: str | None
    include_shortcut: bool = False
    sources: dict[str, str] = field(default_factory=dict)

    def rows(self) -> list[tuple[Any, ...]]:
        """One tuple per layer in :data:`ROW_HEADERS` order, for tables and CSV."""
        return [
            (i, la.name, la.label, la.t, la.d_init_ft, la.d_pre_ft, la.n_tensors, la.numel, la.is_head, la.note)
            for i, la in enumerate(self.layers)
        ]

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready summary (NaN stays NaN, as :func:`medtransfer.report.save_json` writes it)."""
        return {
            "mode": self.mode,
            "include_shortcut": self.include_shortcut,
            "overall": self.overall,
            "n_layers_in_overall": len(_scored(self.layers)),
            "most_transferable": self.most_transferable,
            "sources": dict(self.sources),
            "layers": [asdict(la) for la in self.layers],
        }


# --------------------------------------------------------------------------------------------------
# Arithmetic
# --------------------------------------------------------------------------------------------------


def _abs_diff_sum(a: torch.Tensor, b: torch.Tensor) -> float:
    """Sum of |a - b| in float64, so millions of small differences do not lose precision in float32/16."""
    if a.shape != b.shape:
        raise ValueError(f"cannot compare tensors of shapes {tuple(a.shape)} and {tuple(b.shape)}")
    return float((a.detach().to(torch.float64) - b.detach().to(torch.float64)).abs_().sum().item())


def mean_abs_diff(a: torch.Tensor, b: torch.Tensor) -> float:
    """D(a, b): mean absolute element-wise difference, accumulated in float64 (NaN for empty tensors)."""
    total = _abs_diff_sum(a, b)
    return total / a.numel() if a.numel() else math.nan


def paper_overall(values: Sequence[float], head_last: bool = True) -> float:
    """The overall score: mean of the per-layer T, without the head (the last value) and non-finite values.

    The head is re-initialised for the target task, so its T (1 by construction) says nothing about transfer; a NaN
    (a layer fine-tuning did not change) has no T to average. NaN when nothing is left.
    """
    body = list(values)[:-1] if head_last else list(values)
    finite = [float(v) for v in body if math.isfinite(v)]
    return math.fsum(finite) / len(finite) if finite else math.nan


# --------------------------------------------------------------------------------------------------
# Which tensors count
# --------------------------------------------------------------------------------------------------


def _is_weight_tensor(model: nn.Module, param_name: str) -> bool:
    module_path, _, leaf = param_name.rpartition(".")
    module = model.get_submodule(module_path) if module_path else model
    if isinstance(module, (nn.modules.conv._ConvNd, nn.Linear)):
        return leaf == "weight"
    return isinstance(module, nn.MultiheadAttention) and leaf in _MHA_WEIGHTS


def _is_shortcut(param_name: str) -> bool:
    return any(part in SHORTCUT_NAMES for part in param_name.split(".")[:-1])


def counted_tensors(
    model: nn.Module, group: LayerGroup, mode: str = "paper", include_shortcut: bool = False
) -> tuple[str, ...]:
    """Parameter names of ``group`` that enter its T in ``mode`` (see the module docstring for the rule)."""
    if mode not in MODES:
        raise ValueError(f"unknown mode {mode!r}; choose one of {MODES}")
    if mode == "full":
        return group.param_names
    return tuple(
        name
        for name in group.param_names
        if _is_weight_tensor(model, name) and (include_shortcut or not _is_shortcut(name))
    )


# --------------------------------------------------------------------------------------------------
# Checking the state dicts
# --------------------------------------------------------------------------------------------------


def _check_keys(state: StateDict, source: str, params: dict[str, torch.Tensor], known: set[str]) -> None:
    missing = [k for k in params if k not in state]
    if missing:
        raise CheckpointError(
            f"{source} lacks {len(missing)} of the model's parameters, e.g. {missing[:3]}; it was saved from another "
            "architecture (check --arch) or is not a full model state dict"
        )
    unexpected = [k for k in state if k not in known]
    if unexpected:
        raise CheckpointError(
            f"{source} has {len(unexpected)} tensors the model lacks, e.g. {unexpected[:3]}; it was saved from "
            "another architecture (e.g. a deeper ResNet), check --arch"
        )


def _shape_error(name: str, source_a: str, shape_a: torch.Size, source_b: str, shape_b: torch.Size) -> CheckpointError:
    return CheckpointError(
        f"tensor {name!r} has shape {tuple(shape_a)} in {source_a} but {tuple(shape_b)} in {source_b}; the files come "
        "from different architectures (check --arch and that all files belong to the same experiment)"
    )


# --------------------------------------------------------------------------------------------------
# The measurement
# --------------------------------------------------------------------------------------------------


def _group_t(
    names: Sequence[str], ref_ft: StateDict, ref_pre: StateDict, ft: StateDict, mode: str
) -> tuple[float, float, float, int, str]:
    """(t, D(ref_ft, FB), D(ref_pre, FB), numel, note) for the counted tensors of one group."""
    if not names:
        return (
            math.nan,
            math.nan,
            math.nan,
            0,
            "no tensors counted in this mode (no conv/linear weights); try mode='full'",
        )
    sums_init: list[float] = []
    sums_pre: list[float] = []
    sizes: list[int] = []
    for name in names:
        sums_init.append(_abs_diff_sum(ref_ft[name], ft[name]))
        sums_pre.append(_abs_diff_sum(ref_pre[name], ft[name]))
        sizes.append(ft[name].numel())
    numel = sum(sizes)
    d_init = math.fsum(sums_init) / numel if numel else math.nan
    d_pre = math.fsum(sums_pre) / numel if numel else math.nan
    if not (math.isfinite(d_init) and math.isfinite(d_pre)):
        return math.nan, d_init, d_pre, numel, "non-finite weights (NaN/inf) in one of the state dicts: T undefined"
    if mode == "full":
        if d_pre == 0:
            return math.nan, d_init, d_pre, numel, _UNCHANGED
        return d_init / d_pre, d_init, d_pre, numel, ""
    moved = [k for k, sp in enumerate(sums_pre) if sp > 0]  # a frozen tensor has no T
    if not moved:
        return math.nan, d_init, d_pre, numel, _UNCHANGED
    note = ""
    if len(moved) < len(names):
        note = (
            f"{len(names) - len(moved)} of {len(names)} weight tensors unchanged by fine-tuning (frozen?); "
            f"T is over the other {len(moved)}"
        )
    if mode == "tensor_mean":
        ratios = [sums_init[k] / sums_pre[k] for k in moved]  # the numels cancel
        return math.fsum(ratios) / len(ratios), d_init, d_pre, numel, note
    d_init = math.fsum(sums_init[k] / sizes[k] for k in moved) / len(moved)
    d_pre = math.fsum(sums_pre[k] / sizes[k] for k in moved) / len(moved)
    return d_init / d_pre, d_init, d_pre, numel, note


def layerwise_transferability(
    model: nn.Module,
    init: StateDict,
    pretrained: StateDict,
    finetuned: StateDict,
    finetune_init: StateDict | None = None,
    mode: str = "paper",
    include_shortcut: bool = False,
    sources: Mapping[str, str] | None = None,
    granularity: str = "block",
) -> TransferabilityResult:
    """T per layer group of ``model`` from the state dicts θr (``init``), θA (``pretrained``), θFB (``finetuned``).

    ``model`` only supplies the layer groups and module types (which names are conv weights); its values are unused.
    ``finetune_init`` (θB0, saved before the first fine-tuning step) is needed when θFB's head has other shapes than
    θA's; it is also used when given and its head differs from θA's (a head re-initialised despite equal shapes).
    ``sources`` maps "init"/"pretrained"/"finetuned"/"finetune_init" to file names for error messages.
    ``granularity`` is the :func:`medtransfer.layers.layer_groups` granularity of the groups T is reported for.

    Raises:
        CheckpointError: a state dict misses a parameter, has tensors the model lacks, or has a tensor of another
            shape (the message names the file, the tensor and both shapes); or the head differs and no
            ``finetune_init`` was given.
        ValueError: unknown ``mode``.
    """
    if mode not in MODES:
        raise ValueError(f"unknown mode {mode!r}; choose one of {MODES}")
    names = {"init": "init state dict (θr)", "pretrained": "pretrained state dict (θA)"}
    names |= {"finetuned": "finetuned state dict (θFB)", "finetune_init": "finetune_init state dict (θB0)"}
    names |= dict(sources or {})

    groups = layer_groups(model, granularity)
    head = groups[-1]
    params = {n: p for g in groups for n, p in zip(g.param_names, g.params, strict=True)}
    known = set(model.state_dict()) | set(params)
    states: dict[str, StateDict] = {"init": init, "pretrained": pretrained, "finetuned": finetuned}
    if finetune_init is not None:
        states["finetune_init"] = finetune_init
    for role in list(states):
        states[role] = strip_wrapper_prefix(states[role], known)[0]
        _check_keys(states[role], names[role], params, known)
    r, a, fb = states["init"], states["pretrained"], states["finetuned"]
    b0 = states.get("finetune_init")

    head_names = set(head.param_names)
    for name, p in params.items():
        if name in head_names:
            continue
        for role in ("init", "pretrained", "finetuned"):
            if states[role][name].shape != p.shape:
                raise _shape_error(name, names[role], states[role][name].shape, "the model", p.shape)
    for name in head.param_names:
        if r[name].shape != a[name].shape:
            raise _shape_error(name, names["init"], r[name].shape, names["pretrained"], a[name].shape)
        if b0 is not None and b0[name].shape != fb[name].shape:
            raise _shape_error(name, names["finetune_init"], b0[name].shape, names["finetuned"], fb[name].shape)

    resized = [n for n in head.param_names if fb[n].shape != a[n].shape]
    if resized and b0 is None:
        n = resized[0]
        raise CheckpointError(
            f"the head of {names['finetuned']} has other shapes than {names['pretrained']} (e.g. {n!r}: "
            f"{tuple(fb[n].shape)} vs {tuple(a[n].shape)}): it was re-initialised for the new classes and cannot be "
            "compared with θA or θr. Pass finetune_init (finetune_init_path in measure_files), the state dict the "
            "fine-tuning run saved before its first step (θB0; save it with "
            "torch.save(model.state_dict(), 'finetune_init.pt') right after building the model)"
        )
    head_reinit = bool(resized) or (b0 is not None and any(_abs_diff_sum(b0[n], a[n]) > 0 for n in head.param_names))

    layers: list[LayerT] = []
    for group in groups:
        counted = counted_tensors(model, group, mode, include_shortcut)
        is_head = group is head
        if is_head and head_reinit:
            assert b0 is not None
            t, d_init, d_pre, numel, note = _group_t(counted, b0, b0, fb, mode)
            if not note:
                note = "re-initialised for the task (θB0 from finetune_init for both distances): T = 1 by definition"
        else:
            t, d_init, d_pre, numel, note = _group_t(counted, r, a, fb, mode)
        layers.append(LayerT(group.name, group.label, t, d_init, d_pre, len(counted), numel, is_head, note))

    overall = paper_overall([la.t for la in layers], head_last=True)
    body = _scored(layers)
    best = max(body, key=lambda la: la.t).name if body else None
    return TransferabilityResult(
        layers=layers,
        overall=overall,
        mode=mode,
        most_transferable=best,
        include_shortcut=include_shortcut,
        sources=dict(sources or {}),
    )


# --------------------------------------------------------------------------------------------------
# Files
# --------------------------------------------------------------------------------------------------


def load_state(path: str | Path) -> dict[str, torch.Tensor]:
    """A flat state dict from a local checkpoint (``weights_only=True``, containers unwrapped); errors name the file."""
    return read_state_dict(path)


def _classifier_for(arch: str, finetuned: StateDict, path: str | Path) -> nn.Module:
    """``build_classifier(arch)`` with as many classes as the fine-tuned head has outputs."""
    model = build_classifier(arch, num_classes=2)
    head = layer_groups(model)[-1]
    name = [n for n in head.param_names if _is_weight_tensor(model, n)][-1]  # fc / classifier / heads.head weight
    state, _ = strip_wrapper_prefix(finetuned, model.state_dict())
    if name not in state:
        raise CheckpointError(
            f"{path} has no {name!r}, the classifier weight of {arch}: it is not a {arch} state dict, check --arch"
        )
    num_classes = int(state[name].shape[0])
    return model if num_classes == 2 else build_classifier(arch, num_classes=num_classes)


def measure_files(
    arch: str,
    init_path: str | Path,
    pretrained_path: str | Path,
    finetuned_path: str | Path,
    finetune_init_path: str | Path | None = None,
    mode: str = "paper",
    include_shortcut: bool = False,
) -> TransferabilityResult:
    """:func:`layerwise_transferability` from checkpoint files, for the CLI.

    The model is ``build_classifier(arch, num_classes=...)`` with the class count read from the fine-tuned head.
    """
    finetuned = load_state(finetuned_path)
    model = _classifier_for(arch, finetuned, finetuned_path)
    sources = {"init": str(init_path), "pretrained": str(pretrained_path), "finetuned": str(finetuned_path)}
    finetune_init = None
    if finetune_init_path is not None:
        finetune_init = load_state(finetune_init_path)
        sources["finetune_init"] = str(finetune_init_path)
    return layerwise_transferability(
        model,
        load_state(init_path),
        load_state(pretrained_path),
        finetuned,
        finetune_init=finetune_init,
        mode=mode,
        include_shortcut=include_shortcut,
        sources=sources,
    )


T_AXIS_LABEL = "T = D(θr, θFB) / D(θA, θFB)  (ratio, no unit)"
LAYER_AXIS_LABEL = "layer group (input → output)"


def _t_values(result: TransferabilityResult) -> np.ndarray:
    return np.array([la.t for la in result.layers], dtype=float)


def _draw_curve(
    ax: Any, result: TransferabilityResult, label: str, color: Any, show_overall: bool, style: Mapping | None = None
) -> None:
    x = np.arange(len(result.layers))
    t = _t_values(result)
    body = np.array([not la.is_head for la in result.layers])
    style = {"marker": "o", **(style or {}), "markevery": None}
    ax.plot(x[body], t[body], color=color, linewidth=1.5, label=label, **style)
    head = ~body
    if head.any():
        ax.plot(x[head], t[head], marker="s", linestyle="none", markerfacecolor="none", color=color, markersize=8)
    if show_overall and math.isfinite(result.overall):
        ax.axhline(result.overall, color=color, linestyle="--", linewidth=1, label=f"overall T {result.overall:.2f}")


def _layer_axes(ax: Any, result: TransferabilityResult, title: str) -> None:
    labels = [f"{la.label} (head)" if la.is_head else la.label for la in result.layers]
    ax.set_xticks(range(len(labels)), labels, rotation=60, ha="right", fontsize=8)
    ax.set_xlabel(LAYER_AXIS_LABEL)
    ax.set_ylabel(T_AXIS_LABEL)
    ax.set_title(title)
    ax.grid(alpha=0.3)


def save_transferability(result: TransferabilityResult, out_dir: str | Path) -> dict[str, Path]:
    """Write ``transferability.csv``, ``.json`` and ``.png`` (the per-layer T curve) to ``out_dir``."""
    out_dir = Path(out_dir)
    paths = {
        # repr() of a float round-trips exactly through float(); NaN is written as "nan"
        "csv": write_csv_atomic(
            out_dir / "transferability.csv",
            ROW_HEADERS,
            ([repr(v) if isinstance(v, float) else v for v in row] for row in result.rows()),
            lineterminator="\n",
        ),
        "json": save_json(result.to_dict(), out_dir / "transferability.json"),
    }
    fig = Figure(figsize=(max(6.0, 0.45 * len(result.layers) + 2), 4.2))
    ax = fig.subplots()
    _draw_curve(ax, result, "T per layer group", "tab:blue", show_overall=True)
    _layer_axes(ax, result, f"Layer-wise transferability ({result.mode} mode; head hollow, not in the overall)")
    legend(ax, 2)
    plot = save_figure(fig, out_dir / "transferability.png")  # or .pdf/.svg: medtransfer.report.configure_plots
    paths[plot.suffix[1:]] = plot
    return paths


def plot_transferability_curves(results: Mapping[str, TransferabilityResult], path: str | Path) -> Path:
    """Several targets' T curves on one figure (same architecture), overall scores in the legend.

    Each target has its own colour, line style and marker; a target whose curve equals an earlier one's is labelled
    "(same as ...)" rather than hidden under it. More than four targets put the legend outside the axes.
    """
    if not results:
        raise ValueError("plot_transferability_curves needs at least one result")
    items = list(results.items())
    names = [la.name for la in items[0][1].layers]
    for key, res in items[1:]:
        if [la.name for la in res.layers] != names:
            raise ValueError(
                f"result {key!r} has other layers than {items[0][0]!r}; "
                "curves can only be compared for one architecture"
            )
    fig = Figure(figsize=(max(6.0, 0.45 * len(names) + 2), 4.2))
    ax = fig.subplots()
    colours = [f"C{i % 10}" for i in range(len(items))]
    labels = [f"{key} (overall T {res.overall:.2f})" for key, res in items]
    styles = series_styles([_t_values(res) for _, res in items], labels, names=[key for key, _ in items])
    for (_, res), colour, (label, style) in zip(items, colours, styles, strict=True):
        _draw_curve(ax, res, label, colour, show_overall=False, style=style)
    _layer_axes(ax, items[0][1], f"Layer-wise transferability ({items[0][1].mode} mode; head hollow)")
    legend(ax, len(items))
    return save_figure(fig, path)


def format_transferability(result: TransferabilityResult) -> str:
    """A markdown table of the layers and a line with the overall score, for logs and reports."""
    headers = ("#", "layer", "label", "T", "D(θr,θFB)", "D(θA,θFB)", "tensors", "params", "note")
    rows = [
        (
            i,
            la.name + (" (head)" if la.is_head else ""),
            la.label,
            la.t,
            la.d_init_ft,
            la.d_pre_ft,
            la.n_tensors,
            la.numel,
            la.note,
        )
        for i, la in enumerate(result.layers)
    ]
    n = len(_scored(result.layers))
    line = (
        f"Overall T ({result.mode} mode, mean over {n} non-head layers): {result.overall:.2f}; "
        f"most transferable layer: {result.most_transferable or 'none'}"
    )
    return markdown_table(headers, rows) + "\n\n" + line + "\n"
