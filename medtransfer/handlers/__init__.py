"""MONAI/Ignite handlers, one module per concern, each with the ``attach(engine)`` contract MONAI workflows use.

Bundles name them as ``medtransfer.handlers.<Name>`` in their ``train#handlers`` / ``validate#handlers``, so this
package exports every public handler; the modules are ``checkpoints`` (training state, history, exact resume),
``reports`` (validation metrics and evaluation reports), ``metalr`` (MetaLR and the LR recorder), ``augment``
(augmentation of whole batches on the device) and ``progress``.
"""

from medtransfer.handlers.augment import BatchAugmentation
from medtransfer.handlers.checkpoints import (
    BestModelSaver,
    EpochCheckpoint,
    EpochSeed,
    ResumeFromRun,
    SaveInitialWeights,
    StopOnNonFiniteLoss,
    TrainingHistory,
    read_history,
)
from medtransfer.handlers.early_stopping import EarlyStopping
from medtransfer.handlers.metalr import LRRecorder, MetaLRHandler
from medtransfer.handlers.progress import ErrorsReportedOnce, RunProgress
from medtransfer.handlers.reports import (
    ClassificationMetric,
    ClassificationReport,
    SegmentationReport,
    as_rows,
    val_dice_metrics,
    val_metrics,
)

__all__ = [
    "BatchAugmentation",
    "BestModelSaver",
    "ClassificationMetric",
    "ClassificationReport",
    "EarlyStopping",
    "EpochCheckpoint",
    "ErrorsReportedOnce",
    "EpochSeed",
    "LRRecorder",
    "MetaLRHandler",
    "ResumeFromRun",
    "RunProgress",
    "SaveInitialWeights",
    "SegmentationReport",
    "StopOnNonFiniteLoss",
    "TrainingHistory",
    "as_rows",
    "read_history",
    "val_dice_metrics",
    "val_metrics",
]
