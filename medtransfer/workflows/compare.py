"""``medtransfer compare``: which fine-tuning strategy works for this bundle's data? Every strategy, several seeds.

Each run trains with one strategy fragment, selects its checkpoint on validation and is tested once (the test split,
or the pooled test folds of a cross-validation); the table gives mean ± std over seeds with the wall time per run,
and flags runs whose selected checkpoint is the first epoch or whose validation AUC is near chance. Runs are a
:mod:`medtransfer.workflows.study`, so finished runs are kept, crashes resume, and slices run on many devices.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
from matplotlib.figure import Figure

from medtransfer.atomic import write_text_atomic
from medtransfer.metrics import mean_std
from medtransfer.report import markdown_table, save_figure, save_json
from medtransfer.workflows.outcomes import (
    LABELS,
    epochs_to_reach,
    finished_outcomes,
    group_rows,
    metric_keys,
    run_outcome,
    write_rows,
)
from medtransfer.workflows.paired_table import paired_against_reference
from medtransfer.workflows.study import Placement, RunSpec, launch_study

__all__ = ["DEFAULT_STRATEGIES", "collect_comparison", "comparison_specs", "run_comparison"]

PLAIN = "full"  # the reference of "epochs to reach plain fine-tuning's best validation score"
DEFAULT_STRATEGIES = ("full", "linear_probe", "lp_ft", "llrd", "l2_sp", "bss", "auto_rgn", "metalr",
                      "metalr_normalized")  # fmt: skip


def comparison_specs(
    strategies: Sequence[str], seeds: Sequence[int], folds: int | None = None, overrides: Mapping | None = None
) -> list[RunSpec]:
    """One run per (seed, strategy), seeds outermost, so a partial study already compares every strategy."""
    return [
        RunSpec(
            name=f"{Path(s).stem}_seed{seed}",
            label=Path(s).stem,
            strategy=s,
            seed=int(seed),
            overrides=dict(overrides or {}),
            folds=folds,
        )  # fmt: skip
        for seed in seeds
        for s in strategies
    ]


def _summary_line(spec: RunSpec, study_dir: Path, done: dict) -> str:
    row = run_outcome(study_dir, spec, done)
    text = ", ".join(f"test {LABELS[m]} {row[m]:.3f}" for m in metric_keys([row]))
    return text + (f" [{row['flags']}]" if row["flags"] else "")


def run_comparison(
    bundle: str,
    strategies: Sequence[str] = DEFAULT_STRATEGIES,
    seeds: Sequence[int] = (0, 1, 2),
    folds: int | None = None,
    overrides: Mapping[str, Any] | None = None,
    placement: Placement | None = None,
) -> Path:
    """Run (or continue) the comparison in ``compare_<name>``; collect the table when every run is done."""
    specs = comparison_specs(strategies, seeds, folds, overrides)
    settings = {
        "strategies": list(strategies),
        "seeds": list(seeds),
        "folds": folds,
        "overrides": dict(overrides or {}),
    }
    return launch_study(bundle, "compare", specs, settings, placement or Placement(), _summary_line, collect_comparison)


def add_epochs_to_plain_best(study_dir: Path, rows: list[dict]) -> bool:
    """Per run, the first epoch its validation key metric reached the best one plain fine-tuning (same seed) reached.

    Adds ``epochs_to_plain_best`` (NaN where never reached) to every row of a train/val/test comparison that has plain
    runs; returns whether it did (cross-validations, whose folds each have a history, are left out).
    """
    plain = {r["seed"]: r for r in rows if r["label"] == PLAIN}
    if not plain or any(r["selected_epochs"].count(" ") for r in rows):
        return False
    for row in rows:
        reference = plain.get(row["seed"])
        if reference is None:
            row["epochs_to_plain_best"] = math.nan
            continue
        best = json.loads((study_dir / reference["run"] / "history.json").read_text())["best"]
        key = json.loads((study_dir / reference["run"] / "history.json").read_text())["key_metric"]
        reached = epochs_to_reach(study_dir / row["run"] / "history.json", float(best[f"val_{key}"]))
        row["epochs_to_plain_best"] = math.nan if reached is None else reached
    return True


def _speed_cell(members: Sequence[dict]) -> str:
    reached = [r["epochs_to_plain_best"] for r in members if math.isfinite(r["epochs_to_plain_best"])]
    if not reached:
        return f"never (0/{len(members)})"
    mean, std = mean_std(reached)
    return f"{mean:.1f} ± {std:.1f} ({len(reached)}/{len(members)})"


def collect_comparison(study_dir: str | Path) -> dict:
    """Per-run CSV, mean ± std table (Markdown, CSV) and a bar plot with error bars, from every finished run.

    With plain fine-tuning (``full``) among the strategies, the table also gives the epochs each strategy took to
    reach plain fine-tuning's best validation score (same seed; mean ± std over the runs that reached it).
    """
    study_dir = Path(study_dir)
    record, specs, rows = finished_outcomes(study_dir)
    speed = add_epochs_to_plain_best(study_dir, rows)
    summary = group_rows(rows)
    keys = metric_keys(rows)
    write_rows(study_dir / "compare_runs.csv", rows)
    write_rows(study_dir / "compare_table.csv", summary)
    pooled = "pooled test folds" if record["settings"].get("folds") else "test split"
    by_label: dict[str, list[dict]] = {}
    for row in rows:
        by_label.setdefault(row["label"], []).append(row)
    speed_header = ["epochs to plain's best val (reached)"] if speed else []
    table = markdown_table(
        ["strategy", "runs (seeds)", *(f"{LABELS[m]} ({pooled})" for m in keys), *speed_header,
         "wall time per run (min)", "flags"],
        [[r["label"], f"{r['n']} ({r['seeds']})",
          *(f"{r[f'{m}_mean']:.3f} ± {r[f'{m}_std']:.3f}" for m in keys),
          *([_speed_cell(by_label[r["label"]])] if speed else []),
          f"{r['wall_min_mean']:.1f}", r["flags"]] for r in summary],
    )  # fmt: skip
    missing = len(specs) - len(rows)
    text = f"# Strategy comparison: {record['bundle']}\n\n{table}\n"
    if missing:
        text += f"\n{missing} of {len(specs)} runs have not finished; rows cover the finished ones.\n"
    if not record["settings"].get("folds"):
        paired = paired_against_reference(study_dir, rows, PLAIN)
        text += f"\n{paired}" if paired else ""
    write_text_atomic(study_dir / "compare_table.md", text)
    _plot_bars(
        summary, keys[:2], study_dir / "compare_bars.png", f"{record['bundle']} ({pooled}, mean ± std over seeds)"
    )
    result = {"study_dir": str(study_dir), "runs": rows, "summary": summary, "missing": missing}
    save_json(result, study_dir / "compare_summary.json")
    print(text)
    return result


def _plot_bars(summary: Sequence[dict], keys: Sequence[str], path: Path, title: str) -> Path:
    fig = Figure(figsize=(max(6.0, 0.9 * len(summary) + 2), 4.0))
    ax = fig.add_subplot(1, 1, 1)
    x = np.arange(len(summary))
    width = 0.76 / len(keys)
    for j, metric in enumerate(keys):
        means = [r[f"{metric}_mean"] for r in summary]
        stds = [r[f"{metric}_std"] for r in summary]
        offset = (j - (len(keys) - 1) / 2) * width
        ax.bar(x + offset, means, width, yerr=stds, capsize=3, label=LABELS[metric])
    ax.set_xticks(x, [r["label"] for r in summary], rotation=30, ha="right")
    low = min(r[f"{m}_mean"] for r in summary for m in keys)
    ax.set_ylim(max(0.0, low - 0.15), 1.0)
    ax.set_ylabel("test metric")
    ax.set_title(title)
    ax.legend(loc="lower right", fontsize=9)
    ax.grid(axis="y", alpha=0.3)
    return save_figure(fig, path)
