"""Partial fine-tuning: only the first k or only the last k backbone groups train, plus the new head.

The bi-directional experiment of the MetaLR paper (Chen et al., MICCAI 2023, Fig. 1) sweeps k both ways: bottom-up
(the k groups next to the input, which hold domain-specific, low-level features) and top-down (the k groups next to
the head, which hold task-specific ones). The head is new, randomly initialised for the target's classes, so it
always trains: k = 0 is the linear probe and k = L (every backbone group) is full fine-tuning, in both directions.
Frozen groups keep their BatchNorm statistics too (:mod:`medtransfer.strategies.freezing`).
"""

from __future__ import annotations

from collections.abc import Sequence

from medtransfer.errors import StrategyError
from medtransfer.layers import LayerGroup
from medtransfer.strategies.base import FineTuningStrategy

__all__ = ["PartialFineTuning"]


class PartialFineTuning(FineTuningStrategy):
    """Train ``first_k`` groups from the input side, or ``last_k`` from the head side (one of the two), plus the head."""

    name = "partial"

    def __init__(self, first_k: int | None = None, last_k: int | None = None) -> None:
        super().__init__()
        if (first_k is None) == (last_k is None):
            raise StrategyError("partial fine-tuning takes exactly one of first_k and last_k (the other stays null)")
        k = first_k if first_k is not None else last_k
        if int(k) != k or k < 0:
            raise StrategyError(f"partial fine-tuning: k must be a whole number >= 0, got {k!r}")
        self.first_k, self.last_k = first_k, last_k

    @property
    def direction(self) -> str:
        return "bottom-up" if self.first_k is not None else "top-down"

    @property
    def k(self) -> int:
        return int(self.first_k if self.first_k is not None else self.last_k)

    def trainable(self, groups: Sequence[LayerGroup]) -> list[str]:
        backbone = list(groups[:-1])
        if self.k > len(backbone):
            raise StrategyError(
                f"partial fine-tuning: k = {self.k} but the network has {len(backbone)} backbone groups "
                f"({', '.join(g.name for g in backbone)}) before its head {groups[-1].name}"
            )
        chosen = backbone[: self.k] if self.first_k is not None else backbone[len(backbone) - self.k :]
        return [g.name for g in chosen] + [groups[-1].name]

    def settings(self) -> dict:
        return {"strategy": self.name, "partial_first_k": self.first_k, "partial_last_k": self.last_k}
