"""Penultimate features and source logits of a pre-trained classifier on a target dataset.

Dataset statistics (domain gap, diversity) and transferability scores (LogME, LEEP) are all computed from what the
pre-trained network sees *before* fine-tuning: the input of its final classifier layer (the representation a new head
would be trained on) and that layer's output (the source-task logits LEEP needs). Both come from one forward hook on
the head, so the same code serves ResNet (``fc``), DenseNet (``classifier``) and ViT (``heads.head``) without
architecture-specific surgery.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

import numpy as np
import torch
from torch import nn

__all__ = ["extract_features", "find_head"]


def find_head(model: nn.Module) -> nn.Linear:
    """The last ``nn.Linear`` in ``model.modules()``: the classifier head of torchvision ResNet/DenseNet/ViT.

    Registration order puts the head last in all of these (ViT's MLP blocks come before ``heads.head``), so no
    per-architecture attribute names are needed.
    """
    head = None
    for module in model.modules():
        if isinstance(module, nn.Linear):
            head = module
    if head is None:
        raise ValueError(
            f"{type(model).__name__} has no nn.Linear layer to use as the classifier head; "
            "pass head=<the final classifier module> to extract_features"
        )
    return head


def _split_batch(batch: Any) -> tuple[torch.Tensor, torch.Tensor]:
    """Images and labels from a MONAI-style dict batch or an ``(x, y)`` tuple batch."""
    if isinstance(batch, Mapping):
        missing = [k for k in ("image", "label") if k not in batch]
        if missing:
            raise KeyError(
                f"dict batch lacks key(s) {missing} (has {sorted(batch)}); the loader must yield image/label"
            )
        return batch["image"], batch["label"]
    if isinstance(batch, (tuple, list)) and len(batch) >= 2:
        return batch[0], batch[1]
    raise TypeError(
        f"batch must be a dict with 'image'/'label' or an (x, y) tuple, got {type(batch).__name__}; "
        "wrap the dataset so each item yields image and label"
    )


def _label_vector(label: Any, batch_size: int) -> np.ndarray:
    """Class indices (B,) from int labels of shape (B,) or (B, 1), or one-hot labels of shape (B, C)."""
    t = torch.as_tensor(label).detach().cpu()
    if t.ndim == 2 and t.shape[1] > 1:
        t = t.argmax(dim=1)
    t = t.reshape(-1)
    if t.numel() != batch_size:
        raise ValueError(f"batch has {batch_size} images but {t.numel()} labels (label shape {tuple(label.shape)})")
    if t.is_floating_point() and not torch.equal(t, t.round()):
        raise ValueError(f"labels must be class indices or one-hot vectors, got fractional values {t[:5].tolist()}")
    return t.to(torch.int64).numpy()


def _model_device(model: nn.Module) -> torch.device | None:
    for p in model.parameters():
        return p.device
    return None


@torch.no_grad()
def extract_features(
    model: nn.Module,
    loader: Iterable,
    device: str | torch.device = "cpu",
    head: nn.Module | None = None,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Run ``model`` over ``loader`` and return ``(features (N, F) float64, labels (N,) int64, logits (N, C_source))``.

    ``features`` is the input of ``head`` (default: :func:`find_head`), flattened per sample; ``logits`` is the
    head's output, i.e. the *source* task's logits when the model still has its pre-trained head (keep it for LEEP).
    The model runs in eval mode (BatchNorm running statistics, no dropout) without gradients; its training flag and
    device are restored afterwards so callers can extract features in the middle of a training script.
    """
    head = find_head(model) if head is None else head
    if not any(m is head for m in model.modules()):
        raise ValueError(
            f"head {type(head).__name__} is not a submodule of {type(model).__name__}; pass one of its layers"
        )
    device = torch.device(device)
    was_training = model.training
    original_device = _model_device(model)
    captured: dict[str, torch.Tensor] = {}

    def hook(_module: nn.Module, inputs: tuple, output: torch.Tensor) -> None:
        captured["features"] = inputs[0].detach()
        captured["logits"] = output.detach()

    handle = head.register_forward_hook(hook)
    features: list[np.ndarray] = []
    labels: list[np.ndarray] = []
    logits: list[np.ndarray] = []
    try:
        model.eval()
        model.to(device)
        for batch in loader:
            x, y = _split_batch(batch)
            x = torch.as_tensor(x).to(device)
            captured.clear()
            model(x)
            if "features" not in captured:
                raise RuntimeError(
                    f"the head {type(head).__name__} was not called in {type(model).__name__}.forward; "
                    "pass head=<the module whose input is the penultimate feature>"
                )
            n = x.shape[0]
            features.append(captured["features"].reshape(n, -1).double().cpu().numpy())
            logits.append(captured["logits"].reshape(n, -1).double().cpu().numpy())
            labels.append(_label_vector(y, n))
    finally:
        handle.remove()
        model.train(was_training)
        if original_device is not None:
            model.to(original_device)
    if not features:
        raise ValueError("loader yielded no batches; check the dataset is not empty")
    return np.concatenate(features), np.concatenate(labels), np.concatenate(logits)
