"""Result files: JSON, markdown tables and PNG plots for runs and multi-seed summaries.

Plots are drawn on ``matplotlib.figure.Figure`` objects attached to an explicit Agg canvas rather than
through ``pyplot``: that works on headless machines without touching the global backend (which other
code in the same process may rely on), never opens a window, and leaves no figure registered in
pyplot's global list, so nothing leaks across the many plots a sweep writes.
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import matplotlib
import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from .atomic import write_text_atomic
from .errors import MedTransferError
from .metrics import mean_std

__all__ = [
    "MissingMetricsError",
    "format_summary",
    "markdown_table",
    "plot_confusion_matrix",
    "plot_history",
    "save_json",
    "summarize_runs",
]

_DPI = 120


class MissingMetricsError(MedTransferError, FileNotFoundError):
    """A run directory lacks its metrics file (the message names the file and how to produce it)."""


def _json_default(obj: Any) -> Any:
    """Let numpy scalars/arrays and paths through, since metric code produces them easily."""
    if isinstance(obj, np.generic):
        return obj.item()
    if isinstance(obj, np.ndarray):
        return obj.tolist()
    if isinstance(obj, Path):
        return str(obj)
    raise TypeError(f"Object of type {type(obj).__name__} is not JSON serializable")


def save_json(obj: Any, path: Path | str) -> Path:
    """Write ``obj`` as indented JSON atomically.

    The temp file lives in the destination folder so ``os.replace`` is a same-filesystem rename: a
    reader (or a crash mid-write) sees either the old file or the complete new one, never half a file.
    NaN is written as the bare token ``NaN`` (Python's json reads it back) because undefined metrics
    such as single-class AUC are legitimate results.
    """
    text = json.dumps(obj, indent=2, allow_nan=True, default=_json_default) + "\n"
    return write_text_atomic(path, text)


def _save_figure(fig: Figure, path: Path | str) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    FigureCanvasAgg(fig)  # explicit Agg canvas: no GUI backend, no pyplot global state
    fig.savefig(path, dpi=_DPI, format="png", bbox_inches="tight")
    fig.clear()  # the figure is not registered with pyplot, so clearing it is all "closing" needs
    return path


def plot_confusion_matrix(
    cm: np.ndarray | Sequence[Sequence[int]],
    class_names: Sequence[str],
    path: Path | str,
    title: str = "Confusion matrix",
) -> Path:
    """Save a confusion-matrix heatmap as PNG.

    Colour is row-normalised (fraction of each true class) so rare classes are as readable as common
    ones; the cells still show raw counts because those are what a reader checks against the data.
    """
    counts = np.asarray(cm)
    names = [str(c) for c in class_names]
    if counts.ndim != 2 or counts.shape[0] != counts.shape[1]:
        raise ValueError(f"cm must be square with shape (C, C), got shape {counts.shape}")
    if counts.shape[0] != len(names):
        raise ValueError(f"cm is {counts.shape[0]}x{counts.shape[0]} but {len(names)} class_names were given")
    row_sums = counts.sum(axis=1, keepdims=True).astype(np.float64)
    norm = np.divide(counts, row_sums, out=np.zeros(counts.shape, dtype=np.float64), where=row_sums > 0)

    c = len(names)
    side = max(4.0, 1.0 + 0.8 * c)
    fig = Figure(figsize=(side + 1.2, side))
    ax = fig.add_subplot(1, 1, 1)
    im = ax.imshow(norm, cmap="Blues", vmin=0.0, vmax=1.0)
    cbar = fig.colorbar(im, ax=ax, fraction=0.046, pad=0.04)
    cbar.set_label("fraction of true class")
    fontsize = 12 if c <= 6 else max(6, 14 - c // 2)
    for i in range(c):
        for j in range(c):
            value = counts[i, j]
            text = f"{int(value)}" if float(value).is_integer() else f"{float(value):.2f}"
            ax.text(
                j,
                i,
                text,
                ha="center",
                va="center",
                fontsize=fontsize,
                color="white" if norm[i, j] > 0.5 else "black",
            )
    ax.set_xticks(range(c))
    ax.set_yticks(range(c))
    rotate = c > 3 or max(map(len, names)) > 8
    ax.set_xticklabels(names, rotation=45 if rotate else 0, ha="right" if rotate else "center")
    ax.set_yticklabels(names)
    ax.set_xlabel("Predicted")
    ax.set_ylabel("True")
    ax.set_title(title)
    return _save_figure(fig, path)


def _finite_number(value: Any) -> bool:
    return (
        isinstance(value, (int, float, np.integer, np.floating))
        and not isinstance(value, bool)
        and math.isfinite(value)
    )


def plot_history(history: Sequence[dict], path: Path | str, title: str = "Training history") -> Path:
    """Save training loss and validation metrics per epoch as a two-panel PNG.

    Loss and metrics get separate panels because their scales differ (loss is unbounded, metrics lie in
    [0, 1]). Missing or non-finite values are skipped per series, so epochs without validation still plot.
    """
    if not history:
        raise ValueError("history is empty: no epochs to plot")
    epochs = [row.get("epoch", i + 1) for i, row in enumerate(history)]
    val_keys = sorted({k for row in history for k, v in row.items() if k.startswith("val_") and _finite_number(v)})

    def series(key: str) -> tuple[list, list]:
        pairs = [(e, float(row[key])) for e, row in zip(epochs, history, strict=True) if _finite_number(row.get(key))]
        return [e for e, _ in pairs], [v for _, v in pairs]

    def panel(ax, keys: Sequence[str], ylabel: str, title: str) -> None:
        plotted = False
        for key in keys:
            xs, ys = series(key)
            if xs:
                ax.plot(xs, ys, marker="o", markersize=3, label=key)
                plotted = True
        if plotted:
            ax.legend()
        else:
            ax.text(0.5, 0.5, f"no {title.lower()} values recorded", ha="center", va="center", transform=ax.transAxes)
        ax.set_xlabel("epoch")
        ax.set_ylabel(ylabel)
        ax.set_title(title)
        ax.grid(alpha=0.3)

    fig = Figure(figsize=(11, 4.2))
    ax_loss, ax_val = fig.subplots(1, 2)
    panel(ax_loss, ["train_loss"], "loss", "Training loss")
    panel(ax_val, val_keys, "value", "Validation")
    for ax in (ax_loss, ax_val):
        ax.xaxis.get_major_locator().set_params(integer=True)
    fig.suptitle(title)
    fig.tight_layout()
    return _save_figure(fig, path)


def _format_cell(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, (bool, np.bool_)):
        return str(bool(value))
    if isinstance(value, (float, np.floating)):
        return f"{float(value):.3f}"
    # A literal pipe would end the cell early and shift every later column.
    return str(value).replace("|", "\\|").replace("\n", " ")


def plot_lr_curves(
    history: Sequence[Sequence[float]],
    labels: Sequence[str],
    path: Path | str,
    title: str = "MetaLR layer-wise learning rates",
) -> Path:
    """One line per layer group over iterations on a log axis, like the MetaLR paper's LR figures.

    `history` is iterations x groups; `labels` are the groups' display names (Conv 1, Block 1-1, ..., FC).
    """
    values = np.asarray(history, dtype=float)
    if values.ndim != 2 or values.shape[1] != len(labels):
        raise ValueError(f"history must be iterations x {len(labels)} groups, got shape {values.shape}")
    fig = Figure(figsize=(8, 4.2))
    ax = fig.subplots()
    colours = matplotlib.colormaps["viridis"](np.linspace(0, 0.95, len(labels)))
    steps = np.arange(1, len(values) + 1)
    for j, label in enumerate(labels):
        ax.plot(steps, values[:, j], label=label, color=colours[j], linewidth=1.4)
    ax.set_yscale("log")
    ax.set_xlabel("iteration")
    ax.set_ylabel("learning rate")
    ax.set_title(title)
    ax.grid(alpha=0.3, which="both")
    ax.legend(loc="center left", bbox_to_anchor=(1.01, 0.5), fontsize=8)
    return _save_figure(fig, path)


def markdown_table(headers: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    """GitHub-flavoured markdown table; floats to 3 decimals so seeds line up, strings kept as given.

    Only ``|`` (escaped) and newlines (turned into spaces) are changed in strings, since either would
    break the table structure.
    """
    headers = list(headers)
    if not headers:
        raise ValueError("markdown_table needs at least one header")
    lines = [
        "| " + " | ".join(_format_cell(h) for h in headers) + " |",
        "|" + "|".join(" --- " for _ in headers) + "|",
    ]
    for i, row in enumerate(rows):
        row = list(row)
        if len(row) != len(headers):
            raise ValueError(f"row {i} has {len(row)} cells but there are {len(headers)} headers: {row}")
        lines.append("| " + " | ".join(_format_cell(v) for v in row) + " |")
    return "\n".join(lines)


def summarize_runs(
    run_dirs: Sequence[Path | str],
    metrics_file: str = "test_metrics.json",
    keys: Sequence[str] = ("accuracy", "auc", "macro_f1"),
) -> dict:
    """Collect chosen metrics from several runs (typically seeds) and their mean and sample std.

    Returns ``{"runs": [{"run": dir name, <key>: value, ..., "seed": seed or None}], "mean": {key: ...},
    "std": {key: ...}, "n": number of runs}``. A run missing a metric fails loudly instead of being
    dropped, because silently averaging fewer seeds would misstate the spread.
    """
    dirs = [Path(d) for d in run_dirs]
    if not dirs:
        raise ValueError("summarize_runs needs at least one run directory")
    keys = list(keys)
    runs: list[dict] = []
    for run_dir in dirs:
        file = run_dir / metrics_file
        if not file.is_file():
            raise MissingMetricsError(
                f"{run_dir} has no {metrics_file} (looked for {file}); run the bundle's evaluate config on it first"
            )
        try:
            data = json.loads(file.read_text(encoding="utf-8"))
        except json.JSONDecodeError as e:
            raise ValueError(f"{file} is not valid JSON ({e}); re-run the evaluation to rewrite it") from e
        if not isinstance(data, dict):
            raise ValueError(f"{file} must hold a JSON object of metrics, got {type(data).__name__}")
        missing = [k for k in keys if k not in data]
        if missing:
            raise ValueError(f"{file} lacks metric(s) {missing}; available: {sorted(data)}")
        entry: dict[str, Any] = {"run": run_dir.name}
        for k in keys:
            v = data[k]
            if not isinstance(v, (int, float)) or isinstance(v, bool):
                raise ValueError(f"{file}: metric {k!r} must be a number, got {v!r}")
            entry[k] = float(v)
        entry["seed"] = data.get("seed")
        runs.append(entry)

    mean: dict[str, float] = {}
    std: dict[str, float] = {}
    for k in keys:
        mean[k], std[k] = mean_std([r[k] for r in runs])
    return {"runs": runs, "mean": mean, "std": std, "n": len(runs)}


def format_summary(summary: dict) -> str:
    """Markdown table of a :func:`summarize_runs` result: one row per run, then a "mean ± std" row.

    The seed column is shown only when some run recorded a seed, to keep tables of unseeded runs narrow.
    """
    runs = summary["runs"]
    keys = list(summary["mean"])
    show_seed = any(r.get("seed") is not None for r in runs)
    headers = ["run"] + (["seed"] if show_seed else []) + keys
    rows: list[list[Any]] = []
    for r in runs:
        rows.append([r["run"]] + ([r.get("seed")] if show_seed else []) + [r[k] for k in keys])
    last: list[Any] = ["mean ± std"] + ([""] if show_seed else [])
    last += [f"{summary['mean'][k]:.3f} ± {summary['std'][k]:.3f}" for k in keys]
    rows.append(last)
    return markdown_table(headers, rows)
