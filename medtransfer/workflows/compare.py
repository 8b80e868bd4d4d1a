"""``medtransfer compare``: which fine-tuning strategy works for this bundle's data? Every strategy, several seeds.

Each run trains with one strategy fragment, selects its checkpoint on validation and is tested once (the test split,
or the pooled test folds of a cross-validation); the table gives mean ± std over seeds with the wall time per run,
and flags runs whose selected checkpoint is the first epoch or whose validation AUC is near chance. Runs are a
:mod:`medtransfer.workflows.study`, so finished runs are kept, crashes resume, and slices run on many devices.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
from matplotlib.figure import Figure

from medtransfer.atomic import write_csv_atomic, write_text_atomic
from medtransfer.report import markdown_table, save_figure, save_json
from medtransfer.runs import timestamp
from medtransfer.workflows.outcomes import METRICS, group_rows, run_outcome
from medtransfer.workflows.study import RunSpec, finished_runs, read_study, run_study, write_study

__all__ = ["DEFAULT_STRATEGIES", "collect_comparison", "comparison_specs", "run_comparison"]

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
    text = f"test accuracy {row['accuracy']:.3f}, AUC {row['auc']:.3f}"
    return text + (f" [{row['flags']}]" if row["flags"] else "")


def run_comparison(
    bundle: str,
    strategies: Sequence[str] = DEFAULT_STRATEGIES,
    seeds: Sequence[int] = (0, 1, 2),
    folds: int | None = None,
    overrides: Mapping[str, Any] | None = None,
    name: str | None = None,
    runs_dir: str | Path | None = None,
    shard: tuple[int, int] | None = None,
    devices: Sequence[str] | None = None,
) -> Path:
    """Run (or continue) the comparison in ``runs_dir/compare_<name>``; collect the table when every run is done."""
    from medtransfer.bundling import bundle_path

    root = Path(runs_dir) if runs_dir else Path("runs") / bundle_path(bundle).name
    study_dir = root / (name if name and name.startswith("compare_") else f"compare_{name or timestamp()}")
    specs = comparison_specs(strategies, seeds, folds, overrides)
    write_study(study_dir, bundle, specs, "compare", {"strategies": list(strategies), "seeds": list(seeds),
                                                     "folds": folds, "overrides": dict(overrides or {})})  # fmt: skip
    run_study(study_dir, shard=shard, devices=devices, summary_line=_summary_line)
    if len(finished_runs(study_dir, specs)) == len(specs):
        collect_comparison(study_dir)
    return study_dir


def collect_comparison(study_dir: str | Path) -> dict:
    """Per-run CSV, mean ± std table (Markdown, CSV) and a bar plot with error bars, from every finished run."""
    study_dir = Path(study_dir)
    record, specs = read_study(study_dir)
    done = finished_runs(study_dir, specs)
    rows = [run_outcome(study_dir, s, done[s.name]) for s in specs if s.name in done]
    if not rows:
        raise FileNotFoundError(f"no finished run in {study_dir} yet; run the comparison (or its shards) first")
    summary = group_rows(rows)
    write_csv_atomic(study_dir / "compare_runs.csv", list(rows[0]), ([r[k] for k in rows[0]] for r in rows))
    write_csv_atomic(study_dir / "compare_table.csv", list(summary[0]), ([r[k] for k in summary[0]] for r in summary))
    pooled = "pooled test folds" if record["settings"].get("folds") else "test split"
    table = markdown_table(
        ["strategy", "runs (seeds)", f"accuracy ({pooled})", "AUC", "macro-F1", "wall time per run (min)", "flags"],
        [[r["label"], f"{r['n']} ({r['seeds']})",
          *(f"{r[f'{m}_mean']:.3f} ± {r[f'{m}_std']:.3f}" for m in METRICS),
          f"{r['wall_min_mean']:.1f}", r["flags"]] for r in summary],
    )  # fmt: skip
    missing = len(specs) - len(rows)
    text = f"# Strategy comparison: {record['bundle']}\n\n{table}\n"
    if missing:
        text += f"\n{missing} of {len(specs)} runs have not finished; rows cover the finished ones.\n"
    write_text_atomic(study_dir / "compare_table.md", text)
    _plot_bars(summary, study_dir / "compare_bars.png", f"{record['bundle']} ({pooled}, mean ± std over seeds)")
    result = {"study_dir": str(study_dir), "runs": rows, "summary": summary, "missing": missing}
    save_json(result, study_dir / "compare_summary.json")
    print(text)
    return result


def _plot_bars(summary: Sequence[dict], path: Path, title: str) -> Path:
    fig = Figure(figsize=(max(6.0, 0.9 * len(summary) + 2), 4.0))
    ax = fig.add_subplot(1, 1, 1)
    x = np.arange(len(summary))
    width = 0.38
    for j, (metric, label) in enumerate((("accuracy", "accuracy"), ("auc", "AUC"))):
        means = [r[f"{metric}_mean"] for r in summary]
        stds = [r[f"{metric}_std"] for r in summary]
        ax.bar(x + (j - 0.5) * width, means, width, yerr=stds, capsize=3, label=label)
    ax.set_xticks(x, [r["label"] for r in summary], rotation=30, ha="right")
    low = min(min(r["accuracy_mean"], r["auc_mean"]) for r in summary)
    ax.set_ylim(max(0.0, low - 0.15), 1.0)
    ax.set_ylabel("test metric")
    ax.set_title(title)
    ax.legend(loc="lower right", fontsize=9)
    ax.grid(axis="y", alpha=0.3)
    return save_figure(fig, path)
