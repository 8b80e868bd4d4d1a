"""Full fine-tuning: every layer group trains from the pre-trained weights, with one LR schedule for all.

The baseline every comparison starts from (the "plain" fine-tuning of the MetaLR paper, Chen et al. 2023). Paper
defaults used by the bundles: AdamW, lr 1e-3, cosine decay over the epochs, weight decay 1e-4.
"""

from __future__ import annotations

from medtransfer.strategies.base import FineTuningStrategy

__all__ = ["FullFineTuning"]


class FullFineTuning(FineTuningStrategy):
    """θ ← θ − lr·update(g) for every parameter: nothing frozen, no per-layer LR."""

    name = "full"
