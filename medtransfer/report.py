"""Result files: JSON, markdown tables and plots for runs and multi-seed summaries.

Plots are drawn on ``matplotlib.figure.Figure`` objects attached to an explicit Agg canvas rather than
through ``pyplot``: that works on headless machines without touching the global backend (which other
code in the same process may rely on), never opens a window, and leaves no figure registered in
pyplot's global list, so nothing leaks across the many plots a sweep writes.

Every plot goes through :func:`save_figure`, which writes the format(s) and resolution that
:func:`configure_plots` set (``medtransfer --plot-format pdf --dpi 300 ...``). The setting lives in the
environment variables ``MEDTRANSFER_PLOT_FORMAT`` and ``MEDTRANSFER_PLOT_DPI``, so bundle runs started as
child processes write their plots the same way.
"""

from __future__ import annotations

import json
import logging
import math
import os
from collections.abc import Sequence
from dataclasses import dataclass
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
    "CLASSIFICATION_KEYS",
    "PLOT_FORMATS",
    "MetricsError",
    "MissingMetricsError",
    "PlotSettings",
    "configure_plots",
    "figure_paths",
    "format_summary",
    "legend",
    "markdown_table",
    "metric_label",
    "metric_values",
    "parse_dpi",
    "plot_confusion_matrix",
    "plot_history",
    "plot_lr_curves",
    "plot_settings",
    "save_figure",
    "save_json",
    "series_styles",
    "summarize_runs",
]

PLOT_FORMATS = ("png", "pdf", "svg")
FORMAT_ENV = "MEDTRANSFER_PLOT_FORMAT"
DPI_ENV = "MEDTRANSFER_PLOT_DPI"
DEFAULT_DPI = 120
# text stays text: selectable and editable in SVG, TrueType (not Type 3) fonts in PDF, as journals ask
_VECTOR_RC = {"svg.fonttype": "none", "pdf.fonttype": 42}
# PDF output subsets fonts with fontTools, which logs a dozen INFO lines per file: noise in a run's log
if logging.getLogger("fontTools.subset").level == logging.NOTSET:
    logging.getLogger("fontTools.subset").setLevel(logging.WARNING)
LINESTYLES = ("-", "--", "-.", ":")
MARKERS = ("o", "s", "^", "D", "v", "P", "X", "*")


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


@dataclass(frozen=True)
class PlotSettings:
    """How plots are written. ``formats`` None: the suffix of the path a plot is saved to (PNG unless it names pdf or
    svg); else every listed format is written beside each other under the path's stem."""

    formats: tuple[str, ...] | None = None
    dpi: int = DEFAULT_DPI


def _parse_formats(value: str | Sequence[str]) -> tuple[str, ...]:
    items = value.split(",") if isinstance(value, str) else list(value)
    formats = tuple(dict.fromkeys(str(f).strip().lower().lstrip(".") for f in items if str(f).strip()))
    bad = [f for f in formats if f not in PLOT_FORMATS]
    if bad or not formats:
        raise ValueError(f"plot format(s) {bad or list(items)} not supported; choose from {', '.join(PLOT_FORMATS)}")
    return formats


def parse_dpi(value: int | str) -> int:
    """``value`` as a plot resolution in dots per inch (10..2400), else ValueError saying why."""
    try:
        dpi = int(value)
    except (TypeError, ValueError):
        raise ValueError(f"plot dpi must be a whole number, got {value!r}") from None
    if not 10 <= dpi <= 2400:
        raise ValueError(f"plot dpi must lie in 10..2400, got {dpi}")
    return dpi


def plot_settings() -> PlotSettings:
    """The current plot settings, read from ``MEDTRANSFER_PLOT_FORMAT`` (``pdf``, ``png,svg``, ...) and
    ``MEDTRANSFER_PLOT_DPI``; an invalid value is an error naming the variable rather than a silent default."""
    settings = PlotSettings()
    fmt, dpi = os.environ.get(FORMAT_ENV, "").strip(), os.environ.get(DPI_ENV, "").strip()
    try:
        return PlotSettings(
            formats=_parse_formats(fmt) if fmt else settings.formats, dpi=parse_dpi(dpi) if dpi else settings.dpi
        )
    except ValueError as e:
        raise MedTransferError(f"{e} (from the environment: {FORMAT_ENV}={fmt!r}, {DPI_ENV}={dpi!r})") from None


def configure_plots(formats: str | Sequence[str] | None = None, dpi: int | None = None) -> PlotSettings:
    """Set the format(s) (``png``, ``pdf``, ``svg``; several write one file each) and the dpi of every plot this
    process and the bundle runs it starts write; None leaves a setting as it is. Returns the settings now in force.

    Stored in the environment (``MEDTRANSFER_PLOT_FORMAT``, ``MEDTRANSFER_PLOT_DPI``) so that child processes
    inherit it. The dpi sets the pixel size of PNGs and the resolution of raster parts (heatmaps) in PDF/SVG.
    """
    if formats is not None:
        os.environ[FORMAT_ENV] = ",".join(_parse_formats(formats))
    if dpi is not None:
        os.environ[DPI_ENV] = str(parse_dpi(dpi))
    return plot_settings()


def figure_paths(path: Path | str) -> list[Path]:
    """The files :func:`save_figure` writes for ``path`` under the current settings (the first is returned)."""
    path = Path(path)
    suffix = path.suffix.lower().lstrip(".")
    formats = plot_settings().formats or ((suffix,) if suffix in PLOT_FORMATS else ("png",))
    stem = path.with_suffix("") if suffix in PLOT_FORMATS else path
    return [stem.with_name(f"{stem.name}.{fmt}") for fmt in formats]


def save_figure(fig: Figure, path: Path | str) -> Path:
    """Write ``fig`` in the configured format(s) and dpi (see :func:`configure_plots`) and free it.

    ``path`` names the plot (``history.png``); its suffix is replaced by each configured format, so with
    ``--plot-format pdf`` the same call writes ``history.pdf``. Returns the first file written.
    """
    settings = plot_settings()
    paths = figure_paths(path)
    FigureCanvasAgg(fig)  # explicit Agg canvas: no GUI backend, no pyplot global state
    with matplotlib.rc_context(_VECTOR_RC):
        for out in paths:
            out.parent.mkdir(parents=True, exist_ok=True)
            fig.savefig(out, dpi=settings.dpi, format=out.suffix[1:], bbox_inches="tight")
    fig.clear()  # the figure is not registered with pyplot, so clearing it is all "closing" needs
    return paths[0]


def _same_series(a: np.ndarray, b: np.ndarray) -> bool:
    return a.shape == b.shape and bool(np.allclose(a, b, rtol=1e-9, atol=0.0, equal_nan=True))


def series_styles(
    series: Sequence[Sequence[float]], labels: Sequence[str], names: Sequence[str] | None = None
) -> list[tuple[str, dict]]:
    """A legend label and line-style keywords for each series, so that none hides another.

    Each series gets its own line style and marker (markers spread over long series and offset between series);
    a series equal to an earlier one is labelled "<label> (same as <earlier name>)", since it is drawn exactly on
    top. ``names`` are the short names used there (default: the labels).
    """
    arrays = [np.asarray(s, dtype=float) for s in series]
    names = list(labels if names is None else names)
    out = []
    for j, (values, label) in enumerate(zip(arrays, labels, strict=True)):
        same = next((names[i] for i in range(j) if _same_series(arrays[i], values)), None)
        step = max(1, len(values) // 8)
        style = {
            "linestyle": LINESTYLES[j % len(LINESTYLES)],
            "marker": MARKERS[j % len(MARKERS)],
            "markevery": (min(len(values) - 1, (j * step) // max(1, len(arrays))) if len(values) else 0, step),
            "markersize": 4,
        }
        out.append((f"{label} (same as {same})" if same else label, style))
    return out


def legend(ax: Any, count: int, inside_up_to: int = 4, **kwargs: Any) -> None:
    """A legend inside the axes for a few series, outside to the right (never over the data) for more."""
    if count > inside_up_to:
        kwargs = {"loc": "center left", "bbox_to_anchor": (1.01, 0.5), "fontsize": 8, **kwargs}
    else:
        kwargs = {"loc": "best", "fontsize": 9, **kwargs}
    ax.legend(**kwargs)


def plot_confusion_matrix(
    cm: np.ndarray | Sequence[Sequence[int]],
    class_names: Sequence[str],
    path: Path | str,
    title: str = "Confusion matrix",
) -> Path:
    """Save a confusion-matrix heatmap (PNG, or the configured format: :func:`save_figure`).

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
    ax.set_xlabel("predicted class")
    ax.set_ylabel("true class")
    ax.set_title(title)
    return save_figure(fig, path)


def _finite_number(value: Any) -> bool:
    return (
        isinstance(value, (int, float, np.integer, np.floating))
        and not isinstance(value, bool)
        and math.isfinite(value)
    )


_METRIC_WORDS = {"auc": "AUC", "f1": "F1", "macro_f1": "macro-F1", "dice": "Dice", "loss": "loss"}


def metric_label(key: str) -> str:
    """A readable name for a metric key in legends and tables: ``val_macro_f1`` -> ``macro-F1``,
    ``val_dice_liver`` -> ``Dice (liver)``, ``val_mean_dice`` -> ``mean Dice``, ``train_loss`` -> ``training loss``."""
    name = key[4:] if key.startswith("val_") else key
    if name == "train_loss":
        return "training loss"
    if name in _METRIC_WORDS:
        return _METRIC_WORDS[name]
    head, _, rest = name.partition("_")
    if head in ("dice", "auc", "f1") and rest:
        return f"{_METRIC_WORDS[head]} ({rest.replace('_', ' ')})"
    return " ".join(_METRIC_WORDS.get(word, word) for word in name.split("_"))


def plot_history(history: Sequence[dict], path: Path | str, title: str = "Training history") -> Path:
    """Save training loss and validation metrics per epoch as a two-panel figure (PNG by default).

    Loss and metrics get separate panels because their scales differ (loss is unbounded, metrics lie in
    [0, 1]). Missing or non-finite values are skipped per series, so epochs without validation still plot.
    Metrics with equal values (accuracy and macro-F1 of a balanced split) get their own line style and a
    "(same as ...)" legend entry instead of hiding each other.
    """
    if not history:
        raise ValueError("history is empty: no epochs to plot")
    epochs = [row.get("epoch", i + 1) for i, row in enumerate(history)]
    val_keys = sorted({k for row in history for k, v in row.items() if k.startswith("val_") and _finite_number(v)})

    def values(key: str) -> list[float]:
        return [float(row[key]) if _finite_number(row.get(key)) else math.nan for row in history]

    def panel(ax, keys: Sequence[str], ylabel: str, title: str) -> None:
        series = {k: values(k) for k in keys if any(map(math.isfinite, values(k)))}
        styles = series_styles(list(series.values()), [metric_label(k) for k in series])
        for ys, (label, style) in zip(series.values(), styles, strict=True):
            xs = [e for e, v in zip(epochs, ys, strict=True) if math.isfinite(v)]
            ax.plot(xs, [v for v in ys if math.isfinite(v)], label=label, **{**style, "markevery": None})
        if series:
            legend(ax, len(series))
        else:
            ax.text(0.5, 0.5, f"no {title.lower()} values recorded", ha="center", va="center", transform=ax.transAxes)
        ax.set_xlabel("epoch")
        ax.set_ylabel(ylabel)
        ax.set_title(title)
        ax.grid(alpha=0.3)

    fig = Figure(figsize=(11, 4.2))
    ax_loss, ax_val = fig.subplots(1, 2)
    panel(ax_loss, ["train_loss"], "training loss (mean over the epoch's iterations)", "Training loss")
    unit_range = all(0.0 <= float(row[k]) <= 1.0 for row in history for k in val_keys if _finite_number(row.get(k)))
    panel(ax_val, val_keys, "validation metric" + (" (fraction, 0 to 1)" if unit_range else ""), "Validation")
    for ax in (ax_loss, ax_val):
        ax.xaxis.get_major_locator().set_params(integer=True)
    fig.suptitle(title)
    fig.tight_layout()
    return save_figure(fig, path)


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

    `history` is iterations x groups; `labels` are the groups' display names (Conv 1, Block 1-1, ..., FC), which the
    legend shows (outside the axes when there are many). Groups whose learning rate stayed equal to an earlier
    group's (all of them before MetaLR moves them, frozen ones) are drawn with their own line style and marker and
    labelled "(same as ...)".
    """
    values = np.asarray(history, dtype=float)
    if values.ndim != 2 or values.shape[1] != len(labels):
        raise ValueError(f"history must be iterations x {len(labels)} groups, got shape {values.shape}")
    fig = Figure(figsize=(8, 4.2))
    ax = fig.subplots()
    colours = matplotlib.colormaps["viridis"](np.linspace(0, 0.95, len(labels)))
    steps = np.arange(1, len(values) + 1)
    styles = series_styles(list(values.T), [str(label) for label in labels])
    for j, (label, style) in enumerate(styles):
        ax.plot(steps, values[:, j], label=label, color=colours[j], linewidth=1.4, **style)
    ax.set_yscale("log")
    ax.set_xlabel("iteration (optimiser step)")
    ax.set_ylabel("learning rate (log scale)")
    ax.set_title(title)
    ax.grid(alpha=0.3, which="both")
    legend(ax, len(labels), inside_up_to=0)
    return save_figure(fig, path)


def format_p(p: float | None) -> str:
    """A p-value for a table: 3 decimals, or 2 significant digits below 0.001 (an exact permutation p of 2/9! must
    not print as 0.000); empty when there is none."""
    if p is None:
        return ""
    if not math.isfinite(p):
        return "nan"
    return f"{p:.3f}" if p >= 0.001 else f"{p:.1e}"


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


CLASSIFICATION_KEYS = ("accuracy", "auc", "macro_f1")
# numbers in a metrics file that describe the run rather than measure it
_BOOKKEEPING = frozenset({"seed", "split_seed", "fold", "num_folds", "epoch", "n", "n_cases", "spatial_dims"})


class MetricsError(MedTransferError, ValueError):
    """A metrics file lacks a requested metric, holds a non-number, or runs share no metric to summarise."""


def _is_metric_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def metric_values(data: dict) -> dict[str, float]:
    """The metrics of a metrics file, flat: top-level numbers (``accuracy``, ``mean_dice``) and summaries at any depth,
    a summary being an object with a ``mean`` (``{"dice": {"liver": {"mean": ..., "std": ...}}}`` gives
    ``dice.liver``). Bookkeeping numbers (seed, n, ...) and unsummarised nested numbers (per-case values) are left out.
    """
    out: dict[str, float] = {}

    def walk(obj: dict, prefix: str) -> None:
        for key, value in obj.items():
            name = f"{prefix}{key}"
            if isinstance(value, dict):
                if _is_metric_number(value.get("mean")):
                    out[name] = float(value["mean"])
                else:
                    walk(value, f"{name}.")
            elif not prefix and _is_metric_number(value) and key not in _BOOKKEEPING:
                out[name] = float(value)

    walk(data, "")
    return out


def _metric(data: dict, key: str, file: Path) -> float:
    """``data[key]``, or the dotted path ``key`` into it (a summary object gives its mean)."""
    value: Any = data
    for part in [key] if key in data else key.split("."):
        if not isinstance(value, dict) or part not in value:
            raise MetricsError(f"{file} lacks metric {key!r}; available: {', '.join(sorted(metric_values(data)))}")
        value = value[part]
    if isinstance(value, dict) and "mean" in value:
        value = value["mean"]
    if not _is_metric_number(value):
        raise MetricsError(f"{file}: metric {key!r} must be a number, got {value!r}")
    return float(value)


def _read_metrics(run_dir: Path, metrics_file: str) -> dict:
    file = run_dir / metrics_file
    if not file.is_file():
        raise MissingMetricsError(
            f"{run_dir} has no {metrics_file} (looked for {file}); run the bundle's evaluate config on it first"
        )
    try:
        data = json.loads(file.read_text(encoding="utf-8"))
    except json.JSONDecodeError as e:
        raise MetricsError(f"{file} is not valid JSON ({e}); re-run the evaluation to rewrite it") from e
    if not isinstance(data, dict):
        raise MetricsError(f"{file} must hold a JSON object of metrics, got {type(data).__name__}")
    return data


def summarize_runs(
    run_dirs: Sequence[Path | str],
    metrics_file: str = "test_metrics.json",
    keys: Sequence[str] | None = CLASSIFICATION_KEYS,
) -> dict:
    """Collect chosen metrics from several runs (typically seeds) and their mean and sample std.

    ``keys`` are top-level metric names or dotted paths into the file (``dice.liver``: a ``{"mean": ...}`` object
    counts as its mean). None picks them: accuracy, AUC and macro-F1 when every run has them, else every metric
    (:func:`metric_values`) all runs share, e.g. ``mean_dice``, ``dice.liver``, ``dice.tumour`` of segmentation runs.

    Returns ``{"runs": [{"run": dir name, <key>: value, ..., "seed": seed or None}], "mean": {key: ...},
    "std": {key: ...}, "n": number of runs}``. A run missing a metric fails loudly instead of being
    dropped, because silently averaging fewer seeds would misstate the spread.
    """
    dirs = [Path(d) for d in run_dirs]
    if not dirs:
        raise ValueError("summarize_runs needs at least one run directory")
    files = [(d, _read_metrics(d, metrics_file)) for d in dirs]
    from medtransfer.provenance import check_comparable

    check_comparable([(str(d), data) for d, data in files])
    if keys is None:
        shared = [metric_values(data) for _, data in files]
        common = [k for k in shared[0] if all(k in m for m in shared[1:])]
        keys = CLASSIFICATION_KEYS if all(k in common for k in CLASSIFICATION_KEYS) else common
        if not keys:
            raise MetricsError(
                f"the {metrics_file} files of {', '.join(d.name for d in dirs)} share no numeric metric to summarise; "
                "name them with --keys"
            )
    keys = list(keys)
    runs: list[dict] = []
    for run_dir, data in files:
        entry: dict[str, Any] = {"run": run_dir.name}
        entry.update({k: _metric(data, k, run_dir / metrics_file) for k in keys})
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
