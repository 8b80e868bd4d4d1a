"""Freeze layer groups: no gradient, no optimizer step, and no change to their normalisation statistics.

Setting ``requires_grad=False`` stops the weights, but a BatchNorm layer in train mode still normalises with the
batch's statistics and moves its running mean and variance, so a "frozen" backbone would drift and behave unlike the
pre-trained one. :func:`freeze_groups` therefore also keeps every normalisation layer of a frozen group in eval mode:
a forward pre-hook (public ``nn.Module`` API) switches it to eval right before each forward, whatever
``model.train()`` the trainer calls each iteration did, so its buffers stay bit-identical and it uses the
pre-trained statistics.
"""

from __future__ import annotations

from collections.abc import Collection, Sequence
from dataclasses import dataclass, field

from torch import nn
from torch.utils.hooks import RemovableHandle

from medtransfer.layers import LayerGroup

__all__ = ["FrozenGroups", "freeze_groups", "norm_modules_of"]

_NORMS_WITH_STATISTICS = (
    nn.BatchNorm1d,
    nn.BatchNorm2d,
    nn.BatchNorm3d,
    nn.SyncBatchNorm,
    nn.InstanceNorm1d,
    nn.InstanceNorm2d,
    nn.InstanceNorm3d,
)


def _keep_eval(module: nn.Module, _inputs: object) -> None:
    module.train(False)


def norm_modules_of(model: nn.Module, param_names: Collection[str]) -> list[tuple[str, nn.Module]]:
    """The normalisation layers with running statistics whose parameters all lie in `param_names`.

    A layer without affine parameters belongs where its parent's parameters are: frozen if they all are.
    """
    names = set(param_names)
    found = []
    for module_name, module in model.named_modules():
        if not isinstance(module, _NORMS_WITH_STATISTICS):
            continue
        own = [f"{module_name}.{n}" for n, _ in module.named_parameters(recurse=False)]
        if not own:
            parent = module_name.rpartition(".")[0]
            owner = model.get_submodule(parent) if parent else model
            own = [f"{parent}.{n}" if parent else n for n, _ in owner.named_parameters()]
        if own and all(n in names for n in own):
            found.append((module_name, module))
    return found


@dataclass
class FrozenGroups:
    """What :func:`freeze_groups` froze; :meth:`release` undoes it (LP-FT's switch to full fine-tuning)."""

    names: tuple[str, ...]
    params: list[nn.Parameter] = field(repr=False)
    norm_layers: list[str]
    _handles: list[RemovableHandle] = field(repr=False)

    def release(self) -> None:
        """Make the groups trainable again and let their normalisation layers follow ``model.train()``."""
        for p in self.params:
            p.requires_grad_(True)
        for handle in self._handles:
            handle.remove()
        self._handles.clear()


def freeze_groups(model: nn.Module, groups: Sequence[LayerGroup], frozen: Collection[str]) -> FrozenGroups:
    """Freeze the layer groups named in `frozen` (weights and normalisation statistics); return what was frozen."""
    known = {g.name for g in groups}
    unknown = set(frozen) - known
    if unknown:
        raise ValueError(f"no layer groups named {sorted(unknown)}; the groups are {[g.name for g in groups]}")
    chosen = [g for g in groups if g.name in set(frozen)]
    params = [p for g in chosen for p in g.params]
    for p in params:
        p.requires_grad_(False)
    norms = norm_modules_of(model, [n for g in chosen for n in g.param_names])
    handles = [module.register_forward_pre_hook(_keep_eval) for _, module in norms]
    return FrozenGroups(tuple(g.name for g in chosen), params, [n for n, _ in norms], handles)
