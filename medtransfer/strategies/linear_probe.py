"""Linear probing: train the new head on the frozen pre-trained backbone (weights and BatchNorm statistics).

The classic transfer baseline (e.g. Kornblith et al., CVPR 2019; Kumar et al., ICLR 2022): it measures how good the
pre-trained features already are for the target. Nothing below the head moves, so without augmentation every
epoch computes the same features: :class:`FeatureDataset` computes them once (the *fast path*, fragment
``linear_probe_fast.json``) and :class:`HeadOnFeatures` trains the head on them, giving the same head as the slow path
on the same batches. With augmentation (``linear_probe.json``) each epoch sees new images and the backbone runs
every iteration, in eval mode for its normalisation layers.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import Dataset

from medtransfer.errors import StrategyError
from medtransfer.layers import LayerGroup
from medtransfer.strategies.base import FineTuningStrategy, head_module

__all__ = ["FeatureDataset", "HeadOnFeatures", "LinearProbe", "TrainHeadOnFeatures", "extract_features", "linear_head"]


class LinearProbe(FineTuningStrategy):
    """Only the head (the last layer group) trains."""

    name = "linear_probe"

    def trainable(self, groups: Sequence[LayerGroup]) -> list[str]:
        return [groups[-1].name]


def linear_head(network: nn.Module, groups: Sequence[LayerGroup]) -> nn.Linear:
    """The network's head if it is a Linear layer on one feature vector per image; else a clear error."""
    head = head_module(network, groups)
    if not isinstance(head, nn.Linear):
        raise StrategyError(
            f"the linear-probe fast path caches one feature vector per image, but this network's head is a "
            f"{type(head).__name__}, not a Linear layer (a segmentation head?); use the linear_probe strategy, "
            "which runs the frozen backbone every iteration"
        )
    return head


@torch.no_grad()
def extract_features(
    model: nn.Module, groups: Sequence[LayerGroup], images: torch.Tensor, batch_size: int = 64
) -> torch.Tensor:
    """The head's input for every image, with the model in eval mode (what the frozen backbone computes)."""
    head = head_module(model, groups)
    captured: list[torch.Tensor] = []
    handle = head.register_forward_pre_hook(lambda _m, args: captured.append(args[0].detach()))
    was_training = model.training
    model.eval()
    try:
        for start in range(0, len(images), batch_size):
            model(images[start : start + batch_size])
    finally:
        handle.remove()
        model.train(was_training)
    return torch.cat(captured)


class FeatureDataset(Dataset):
    """``{"image": feature vector, "label": label}`` for every item of `dataset`, computed once by the frozen backbone.

    `dataset` yields ``{"image", "label"}`` dicts without augmentation (the bundles' load and normalise transforms).
    Features are computed on `device`, batch by batch, and kept there.
    """

    def __init__(
        self,
        network: nn.Module,
        groups: Sequence[LayerGroup],
        dataset: Dataset,
        device: torch.device | str,
        batch_size: int = 64,
    ) -> None:
        from monai.data import DataLoader

        linear_head(network, groups)
        features, labels = [], []
        for batch in DataLoader(dataset, batch_size=batch_size, shuffle=False, num_workers=0):
            images = torch.as_tensor(batch["image"]).to(device)
            features.append(extract_features(network, groups, images, batch_size))
            labels.append(torch.as_tensor(batch["label"]))
        self.features, self.labels = torch.cat(features), torch.cat(labels)

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, index: int) -> dict:
        return {"image": self.features[index], "label": self.labels[index]}


class HeadOnFeatures(nn.Module):
    """The network's own head applied to cached features (shared, so training it trains the network's head).

    timm networks drop out the pooled features before their classifier (``drop_rate``); so does this, in train mode.
    """

    def __init__(self, network: nn.Module, groups: Sequence[LayerGroup]) -> None:
        super().__init__()
        self.head = linear_head(network, groups)
        inner = getattr(network, "module", network)
        self.drop_rate = float(getattr(inner, "drop_rate", 0.0) or 0.0)

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        return self.head(F.dropout(features, self.drop_rate, self.training) if self.drop_rate else features)


class TrainHeadOnFeatures:
    """The fast path inside a bundle: when training starts, compute the features once and train the head on them.

    On ``STARTED`` it builds a :class:`FeatureDataset` from `dataset` (the training split with the evaluation
    transforms, i.e. no augmentation), gives the trainer a loader over it (``Engine.set_data``) and the network's
    head as its network; validation, checkpoints and reports keep using the whole network, whose head it trains.
    """

    def __init__(
        self, network: nn.Module, groups: Sequence[LayerGroup], dataset: Dataset, batch_size: int, seed: int = 0
    ) -> None:
        linear_head(network, groups)  # refuse a segmentation bundle when the config is read, not after caching
        self.network, self.groups, self.dataset = network, groups, dataset
        self.batch_size, self.seed = int(batch_size), int(seed)
        self.seconds: float | None = None

    def attach(self, engine) -> None:
        from ignite.engine import Events

        engine.add_event_handler(Events.STARTED, self)

    def __call__(self, engine) -> None:
        import time

        from monai.data import DataLoader

        started = time.perf_counter()
        device = next(self.network.parameters()).device
        features = FeatureDataset(self.network, self.groups, self.dataset, device, self.batch_size)
        generator = torch.Generator().manual_seed(self.seed)
        engine.set_data(DataLoader(features, batch_size=self.batch_size, shuffle=True, generator=generator))
        engine.network = HeadOnFeatures(self.network, self.groups)
        self.seconds = time.perf_counter() - started
