"""T-informed start: MetaLR's initial layer-wise LRs chosen from a one-epoch transferability probe.

MetaLR starts every backbone group at 0.1× the head's LR and lets the validation hypergradient move them. The
transferability result says which layers should move little (high T) and which much (low T), so this strategy asks
a cheap question before training: a copy of the network is fine-tuned for ``probe_epochs`` (one) epoch with one LR
for every group (AdamW at the bundle's ``lr`` and weight decay, the training set with its augmentation), and each
body group's T_j = D(θr, θprobe) / D(θA, θprobe) is measured (paper mode, :mod:`medtransfer.transferability`).
The rule, with ``low`` = 0.01 and ``high`` = 1 by default::

    lr_j = lr · high · (low / high) ** ((log T_j − log T_min) / (log T_max − log T_min)),   head: lr_head = lr

The most transferable body group starts at ``low``·lr, the least at ``high``·lr, geometrically in log T between (the
group whose T is the geometric middle starts at 0.1·lr, MetaLR's default start); all-equal or undefined T gives the
geometric middle √(low·high)·lr. The rule is scale-free in T, so a one-epoch probe (whose T are large: θprobe is
still near θA) ranks and spaces the layers as well as a longer one would. MetaLR then trains from these LRs, with
the hyper-parameters of the ``metalr`` fragment.

θr is the random initialisation the pre-training started from: ``init.pt`` beside the pre-trained checkpoint (the
``natural_transferability`` bundle keeps it). Without one (torchvision or timm ImageNet weights do not ship theirs)
a proxy θr is drawn: the same architecture re-initialised with its own init scheme under ``seed``. D between two
independent draws of that scheme and a trained layer is nearly the same for any draw, so the proxy changes T little
(it is recorded in ``t_probe.json`` either way).

The probe runs once per run: its T, LRs and settings are saved to ``<output_dir>/t_probe.json`` and read back on
resume or rerun. It trains a copy, so the network, the optimizer and (through the bundle's per-epoch re-seeding)
the training that follows are those of a run without the probe.
"""

from __future__ import annotations

import copy
import json
import logging
import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from torch import nn

from medtransfer.layers import LayerGroup
from medtransfer.report import save_json

logger = logging.getLogger(__name__)

__all__ = ["kept_init", "probe_transferability", "t_informed_lrs", "t_informed_start"]

PROBE_FILE = "t_probe.json"


def t_informed_lrs(t_values: Sequence[float], lr: float, low: float = 0.01, high: float = 1.0) -> list[float]:
    """The rule above: initial LRs for the body groups (one per T, input to output) and the head (appended, ``lr``)."""
    if not 0 < low <= high:
        raise ValueError(f"need 0 < low <= high, got low={low}, high={high}")
    finite = [t for t in t_values if math.isfinite(t) and t > 0]
    middle = lr * math.sqrt(low * high)
    if len(finite) < 2 or max(finite) == min(finite):
        return [middle] * len(t_values) + [lr]
    log_min, log_max = math.log(min(finite)), math.log(max(finite))
    body = []
    for t in t_values:
        if not (math.isfinite(t) and t > 0):
            body.append(middle)
            continue
        position = (math.log(t) - log_min) / (log_max - log_min)  # 0: least transferable, 1: most
        body.append(lr * high * (low / high) ** position)
    return [*body, lr]


def kept_init(pretrained_ckpt: str | None) -> str | None:
    """θr of a pre-training run: the ``init.pt`` beside its ``model.pt``, when it was kept."""
    if not pretrained_ckpt:
        return None
    path = Path(pretrained_ckpt).parent / "init.pt"
    return str(path) if path.is_file() else None


def _proxy_init(network: nn.Module, seed: int) -> dict[str, torch.Tensor]:
    """A fresh draw of the architecture's own initialisation (every module's ``reset_parameters``), seeded."""
    fresh = copy.deepcopy(network)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        for module in fresh.modules():
            if hasattr(module, "reset_parameters"):
                module.reset_parameters()
    return {k: v.detach().cpu().clone() for k, v in fresh.state_dict().items()}


def _batch_pair(batch: Any, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    if isinstance(batch, dict):
        return batch["image"].to(device), batch["label"].to(device)
    return batch[0].to(device), batch[1].to(device)


def probe_transferability(
    network: nn.Module,
    groups: Sequence[LayerGroup],
    dataset: torch.utils.data.Dataset,
    loss: nn.Module,
    lr: float,
    init_state: dict[str, torch.Tensor] | None = None,
    weight_decay: float = 0.0,
    epochs: int = 1,
    batch_size: int = 64,
    seed: int = 0,
    max_iterations: int | None = None,
    granularity: str = "block",
):
    """Fine-tune a copy of ``network`` for ``epochs`` with one LR, return its per-group T (a TransferabilityResult).

    θA is ``network``'s current weights (the fine-tuning start, head included), θr is ``init_state`` (with the head
    taken from θA: the head is new, its T is not used) or a seeded proxy draw.
    """
    from monai.data import DataLoader

    from medtransfer.transferability.layerwise import layerwise_transferability

    device = next(network.parameters()).device
    start = {k: v.detach().cpu().clone() for k, v in network.state_dict().items()}
    init = dict(init_state) if init_state is not None else _proxy_init(network, seed)
    for name in groups[-1].param_names:  # the head is re-initialised for the target: compare it with itself
        init[name] = start[name]
    probe = copy.deepcopy(network).train()
    optimizer = torch.optim.AdamW([p for p in probe.parameters() if p.requires_grad], lr=lr, weight_decay=weight_decay)
    generator = torch.Generator().manual_seed(seed)
    loader = DataLoader(dataset, batch_size=batch_size, shuffle=True, generator=generator, num_workers=0)
    steps = 0
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        for _ in range(epochs):
            for batch in loader:
                images, labels = _batch_pair(batch, device)
                optimizer.zero_grad(set_to_none=True)
                loss(probe(images), labels).backward()
                optimizer.step()
                steps += 1
                if max_iterations is not None and steps >= max_iterations:
                    break
            if max_iterations is not None and steps >= max_iterations:
                break
    finetuned = {k: v.detach().cpu() for k, v in probe.state_dict().items()}
    result = layerwise_transferability(network, init, start, finetuned, finetune_init=start, granularity=granularity)
    result.sources["probe_iterations"] = str(steps)
    return result


def t_informed_start(
    network: nn.Module,
    groups: Sequence[LayerGroup],
    dataset: torch.utils.data.Dataset,
    loss: nn.Module,
    lr: float,
    output_dir: str,
    pretrained_ckpt: str | None = None,
    weight_decay: float = 0.0,
    batch_size: int = 64,
    seed: int = 0,
    low: float = 0.01,
    high: float = 1.0,
    probe_epochs: int = 1,
    probe_iterations: int | None = None,
    granularity: str = "block",
) -> list[float]:
    """MetaLR's ``init_lrs`` for this run: read from ``t_probe.json`` when the run has one, else probed and saved."""
    settings = {"lr": float(lr), "low": float(low), "high": float(high), "probe_epochs": int(probe_epochs),
                "probe_iterations": probe_iterations, "seed": int(seed), "groups": [g.name for g in groups]}  # fmt: skip
    path = Path(output_dir) / PROBE_FILE
    if path.is_file():
        saved = json.loads(path.read_text())
        if saved.get("settings") == settings:
            logger.info(f"T-informed start: the probe's LRs from {path}")
            return [float(v) for v in saved["init_lrs"]]
        logger.warning(f"{path} was probed with other settings ({saved.get('settings')}); probing again")
    init_path = kept_init(pretrained_ckpt)
    init_state = None
    if init_path is not None:
        from medtransfer.transferability.layerwise import load_state

        init_state = load_state(init_path)
    result = probe_transferability(
        network, groups, dataset, loss, lr, init_state, weight_decay, probe_epochs, batch_size, seed,
        probe_iterations, granularity,
    )  # fmt: skip
    body = [la for la in result.layers if not la.is_head]
    if [la.name for la in result.layers] != [g.name for g in groups]:
        raise ValueError(
            f"the probe measured groups {[la.name for la in result.layers]} but the optimizer has "
            f"{[g.name for g in groups]}: the T-informed start needs every layer group trainable"
        )
    init_lrs = t_informed_lrs([la.t for la in body], lr, low, high)
    save_json(
        {"settings": settings, "theta_r": init_path or f"proxy: a fresh initialisation drawn with seed {seed}",
         "t": {la.name: la.t for la in body}, "init_lrs": init_lrs,
         "probe_iterations": int(result.sources["probe_iterations"])},
        path,
    )  # fmt: skip
    logger.info("T-informed start: " + ", ".join(f"{la.label} T={la.t:.2f}" for la in body))
    return init_lrs
