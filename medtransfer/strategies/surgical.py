"""Surgical fine-tuning (Lee et al., ICLR 2023): train one chosen layer group, keep the rest as pre-trained.

Lee et al. find that which block to tune depends on the shift: input-level shifts (image statistics, the scanner) are
best fixed in the first block, output-level shifts in the last. Their setting keeps the pre-training's classes; here
the head is new for the target's classes, so it trains beside the chosen group. The group is named as
``medtransfer layers`` lists it (``layer2.0``) or given by index (0 = the first group; negative counts from the head).
"""

from __future__ import annotations

from collections.abc import Sequence

from medtransfer.errors import StrategyError
from medtransfer.layers import LayerGroup
from medtransfer.strategies.base import FineTuningStrategy

__all__ = ["SurgicalFineTuning"]


class SurgicalFineTuning(FineTuningStrategy):
    """Only ``group`` (a name or an index into the layer groups) and the head train."""

    name = "surgical"

    def __init__(self, group: str | int = 0) -> None:
        super().__init__()
        self.group = group

    def chosen(self, groups: Sequence[LayerGroup]) -> LayerGroup:
        if isinstance(self.group, int) or str(self.group).lstrip("-").isdigit():
            index = int(self.group)
            if not -len(groups) <= index < len(groups):
                raise StrategyError(f"surgical: group index {index} is outside the {len(groups)} layer groups")
            return groups[index]
        for g in groups:
            if g.name == self.group:
                return g
        raise StrategyError(f"surgical: no layer group named {self.group!r}; the groups are {[g.name for g in groups]}")

    def trainable(self, groups: Sequence[LayerGroup]) -> list[str]:
        return list(dict.fromkeys([self.chosen(groups).name, groups[-1].name]))

    def settings(self) -> dict:
        return {"strategy": self.name, "surgical_group": self.group}
