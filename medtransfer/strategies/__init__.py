"""Fine-tuning strategies, one method per module, all on :mod:`medtransfer.layers` groups.

Each is selected by a fragment in ``configs/strategies/<name>.json`` that replaces the bundle's ``finetune`` object
(see that folder's README for the contract); MetaLR, which owns the LRs rather than the parameter groups, lives in
:mod:`medtransfer.metalr` and its fragments ``metalr`` and ``metalr_normalized``.
"""

from medtransfer.strategies.auto_rgn import AutoRGN, AutoRGNHandler
from medtransfer.strategies.base import FineTuningStrategy, head_module
from medtransfer.strategies.bitfit import BitFit, bitfit_parameter_names
from medtransfer.strategies.bss import BSS, BSSLoss, spectral_shrinkage
from medtransfer.strategies.discriminative import DiscriminativeLR
from medtransfer.strategies.freezing import FrozenGroups, freeze_groups
from medtransfer.strategies.full import FullFineTuning
from medtransfer.strategies.l2_sp import L2SP, L2SPLoss
from medtransfer.strategies.linear_probe import FeatureDataset, HeadOnFeatures, LinearProbe, TrainHeadOnFeatures
from medtransfer.strategies.llrd import LayerwiseLRDecay
from medtransfer.strategies.lp_ft import LinearProbeThenFineTune, UnfreezeBackbone
from medtransfer.strategies.partial import PartialFineTuning
from medtransfer.strategies.surgical import SurgicalFineTuning

__all__ = [
    "BitFit",
    "bitfit_parameter_names",
    "BSS",
    "L2SP",
    "AutoRGN",
    "AutoRGNHandler",
    "BSSLoss",
    "DiscriminativeLR",
    "FeatureDataset",
    "FineTuningStrategy",
    "FrozenGroups",
    "FullFineTuning",
    "HeadOnFeatures",
    "L2SPLoss",
    "LayerwiseLRDecay",
    "LinearProbe",
    "LinearProbeThenFineTune",
    "PartialFineTuning",
    "SurgicalFineTuning",
    "TrainHeadOnFeatures",
    "UnfreezeBackbone",
    "freeze_groups",
    "head_module",
    "spectral_shrinkage",
]
