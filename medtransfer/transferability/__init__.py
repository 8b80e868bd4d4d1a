"""Transferability measures: how much of a pre-trained network fine-tuning kept, layer by layer."""

from medtransfer.transferability.layerwise import (
    MODES,
    ROW_HEADERS,
    SHORTCUT_NAMES,
    LayerT,
    TransferabilityResult,
    counted_tensors,
    format_transferability,
    layerwise_transferability,
    load_state,
    mean_abs_diff,
    measure_files,
    paper_overall,
    plot_transferability_curves,
    save_transferability,
)

__all__ = [
    "MODES",
    "ROW_HEADERS",
    "SHORTCUT_NAMES",
    "LayerT",
    "TransferabilityResult",
    "counted_tensors",
    "format_transferability",
    "layerwise_transferability",
    "load_state",
    "mean_abs_diff",
    "measure_files",
    "paper_overall",
    "plot_transferability_curves",
    "save_transferability",
]
