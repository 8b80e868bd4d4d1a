"""MONAI/Ignite handlers (transitional re-export; being split into one module per concern)."""

from medtransfer.engine import (  # noqa: F401
    ClassificationMetric,
    ClassificationReport,
    EpochCheckpoint,
    EpochSeed,
    LRRecorder,
    MetaLRIteration,
    ResumeFromRun,
    SaveInitialWeights,
    StopOnNonFiniteLoss,
    TrainingHistory,
    read_history,
    val_metrics,
)
from medtransfer.handlers.progress import RunProgress  # noqa: F401
from medtransfer.segmentation import SegmentationReport  # noqa: F401
