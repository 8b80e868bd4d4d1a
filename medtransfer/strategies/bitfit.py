"""BitFit: train only the biases and the normalisation layers' parameters, plus the new head.

Zaken, Ravfogel & Goldberg (ACL 2022) fine-tune only the bias terms of a pre-trained transformer; for CNNs the usual
extension also trains the affine parameters (γ, β) of the normalisation layers (BatchNorm, GroupNorm, LayerNorm,
InstanceNorm), which are few and set each channel's scale and shift. Dutt et al. (MIDL 2024) count it among the
parameter-efficient methods that do best on small medical datasets. Every other weight keeps its pre-trained value
(``requires_grad`` off, so it is bit-identical after training); the head (the last layer group) is new and trains
whole. BatchNorm running statistics keep updating in training mode: the norms' γ and β train, so their statistics
follow the target's images (freeze them with ``partial``/``linear_probe`` if a frozen body is what you want).

On EfficientNet-Lite0 (2 classes) BitFit trains 1.3 % of the parameters (44,578 of 3.37 M): the BatchNorm γ/β of every block
(the convolutions have no bias) and the 1,280 → 2 head.
"""

from __future__ import annotations

from collections.abc import Sequence

from torch import nn

from medtransfer import layers
from medtransfer.layers import LayerGroup
from medtransfer.strategies.base import FineTuningStrategy

__all__ = ["BitFit", "bitfit_parameter_names"]

NORMS = (nn.modules.batchnorm._NormBase, nn.GroupNorm, nn.LayerNorm, nn.LocalResponseNorm)


def bitfit_parameter_names(model: nn.Module, groups: Sequence[LayerGroup]) -> set[str]:
    """Names of the parameters BitFit trains: every bias, every parameter of a normalisation layer, the whole head."""
    names = {name for name, _ in model.named_parameters() if name.rpartition(".")[2] == "bias"}
    for module_name, module in model.named_modules():
        if isinstance(module, NORMS):
            names |= {f"{module_name}.{p}" if module_name else p for p, _ in module.named_parameters(recurse=False)}
    return names | set(groups[-1].param_names)


class BitFit(FineTuningStrategy):
    """Biases, normalisation parameters and the head train; every other weight keeps its pre-trained value."""

    name = "bitfit"

    def param_groups(
        self, model: nn.Module, groups: Sequence[LayerGroup], lr: float, weight_decay: float = 0.0
    ) -> list[dict]:
        """One optimizer group per layer group holding trainable parameters (its biases and norms), tagged by name."""
        chosen = bitfit_parameter_names(model, groups)
        for name, parameter in model.named_parameters():
            parameter.requires_grad_(name in chosen)
        return layers.param_groups(groups, lr, weight_decay=weight_decay)

    def settings(self) -> dict:
        return {"strategy": self.name}
