"""``medtransfer sweep bidirectional``: which layers must move for this target? (MetaLR paper, Chen et al. 2023, Fig. 1)

For k = 0 … L (L = the network's backbone groups, from :mod:`medtransfer.layers`) it fine-tunes, beside the new
head, the first k groups (bottom-up: the input side, low-level and domain-specific features) or the last k (top-down:
the head side, task-specific features), everything else frozen with its BatchNorm statistics
(:mod:`medtransfer.strategies.partial`). Both directions share their ends: k = 0 is the linear probe and k = L is full
fine-tuning, run once each and drawn as the reference lines. If accuracy climbs fast bottom-up, the first layers
carry the domain gap; if it climbs fast top-down, the last layers carry the task.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
from matplotlib.figure import Figure

from medtransfer.atomic import write_text_atomic
from medtransfer.report import markdown_table, save_figure, save_json
from medtransfer.workflows.outcomes import LABELS, finished_outcomes, group_rows, metric_keys, run_outcome, write_rows
from medtransfer.workflows.study import Placement, RunSpec, launch_study

__all__ = ["backbone_group_names", "collect_sweep", "run_bidirectional_sweep", "sweep_specs"]

DIRECTIONS = ("bottom-up", "top-down")


def backbone_group_names(bundle: str, overrides: Mapping[str, Any] | None = None) -> list[str]:
    """The bundle network's layer groups before its head, as the runs will build them (same arch and overrides)."""
    from monai.bundle import ConfigParser

    from medtransfer.bundling import bundle_path

    parser = ConfigParser()
    parser.read_config(str(bundle_path(bundle) / "configs" / "train.json"))
    parser.update({k: v for k, v in dict(overrides or {}).items()})
    groups = parser.get_parsed_content("layer_groups")
    return [g.name for g in groups[:-1]]


def sweep_specs(
    backbone: Sequence[str], seeds: Sequence[int], folds: int | None = None, overrides: Mapping | None = None
) -> list[RunSpec]:
    """Every (seed, k, direction); k = 0 and k = L once per seed, shared by both directions."""
    depth = len(backbone)
    specs = []
    for seed in seeds:
        for k in range(depth + 1):
            ends = k in (0, depth)
            for direction in DIRECTIONS[:1] if ends else DIRECTIONS:
                key = "partial_first_k" if direction == "bottom-up" else "partial_last_k"
                moving = list(backbone[:k]) if direction == "bottom-up" else list(backbone[depth - k :])
                name = f"{'both' if ends else direction}_k{k}_seed{seed}"
                label = f"{'both' if ends else direction} k={k}"
                specs.append(RunSpec(
                    name=name, label=label, strategy="partial", seed=int(seed), folds=folds,
                    overrides={**dict(overrides or {}), key: k, "partial_first_k" if key.endswith("last_k")
                               else "partial_last_k": None},
                    extra={"k": k, "direction": "both" if ends else direction, "trainable": " ".join(moving)},
                ))  # fmt: skip
    return specs


def _sweep_line(spec: RunSpec, study_dir: Path, done: dict) -> str:
    row = run_outcome(study_dir, spec, done)
    return ", ".join(f"test {LABELS[m]} {row[m]:.3f}" for m in metric_keys([row]))


def run_bidirectional_sweep(
    bundle: str,
    seeds: Sequence[int] = (0,),
    folds: int | None = None,
    overrides: Mapping[str, Any] | None = None,
    placement: Placement | None = None,
) -> Path:
    """Run (or continue) the sweep in ``sweep_<name>``; collect CSV, table and plot when all runs are done."""
    backbone = backbone_group_names(bundle, overrides)
    specs = sweep_specs(backbone, seeds, folds, overrides)
    settings = {"backbone_groups": backbone, "seeds": list(seeds), "folds": folds, "overrides": dict(overrides or {})}
    return launch_study(bundle, "bidirectional sweep", specs, settings, placement or Placement(), _sweep_line,
                        collect_sweep)  # fmt: skip


def _by_direction(summary: Sequence[dict], depth: int) -> dict[str, list[dict]]:
    """Each direction's points over k = 0 … L, the shared ends included."""
    ends = {r["k"]: r for r in summary if r["direction"] == "both"}
    lines = {}
    for direction in DIRECTIONS:
        points = {**ends, **{r["k"]: r for r in summary if r["direction"] == direction}}
        lines[direction] = [points[k] for k in sorted(points) if k <= depth]
    return lines


def collect_sweep(study_dir: str | Path, metric: str = "auc") -> dict:
    """``sweep.csv`` (every run), ``sweep.md`` (mean ± std per direction and k) and ``sweep.png``."""
    study_dir = Path(study_dir)
    record, specs, rows = finished_outcomes(study_dir)
    backbone = record["settings"]["backbone_groups"]
    write_rows(study_dir / "sweep.csv", rows)
    summary = group_rows(rows, by=("direction", "k", "trainable"))
    keys = metric_keys(rows)
    if metric not in keys:  # e.g. a segmentation sweep: plot its mean Dice
        metric = keys[0]
    pooled = "pooled test folds" if record["settings"].get("folds") else "test split"
    table = markdown_table(
        ["direction", "k", "trainable groups (+ head)", "runs", *(f"{LABELS[m]} ({pooled})" for m in keys), "wall (min)",
         "flags"],
        [[r["direction"], r["k"], r["trainable"] or "(head only)", r["n"],
          *(f"{r[f'{m}_mean']:.3f} ± {r[f'{m}_std']:.3f}" for m in keys),
          f"{r['wall_min_mean']:.1f}", r["flags"]] for r in sorted(summary, key=lambda r: (r["direction"], r["k"]))],
    )  # fmt: skip
    text = (f"# Bi-directional fine-tuning: {record['bundle']}\n\nBackbone groups (input → head): "
            f"{', '.join(backbone)}.\n\n{table}\n")  # fmt: skip
    missing = len(specs) - len(rows)
    if missing:
        text += f"\n{missing} of {len(specs)} runs have not finished; rows cover the finished ones.\n"
    write_text_atomic(study_dir / "sweep.md", text)
    lines = _by_direction(summary, len(backbone))
    _plot_sweep(lines, summary, metric, len(backbone), study_dir / "sweep.png",
                f"{record['bundle']}: bi-directional fine-tuning ({pooled})")  # fmt: skip
    result = {"study_dir": str(study_dir), "runs": rows, "summary": summary, "missing": missing}
    save_json(result, study_dir / "sweep_summary.json")
    print(text)
    return result


def _plot_sweep(lines: dict, summary: Sequence[dict], metric: str, depth: int, path: Path, title: str) -> Path:
    fig = Figure(figsize=(6.5, 4.2))
    ax = fig.add_subplot(1, 1, 1)
    for (direction, points), style in zip(lines.items(), (("-", "o"), ("--", "s")), strict=False):
        if not points:
            continue
        k = np.array([p["k"] for p in points])
        mean = np.array([p[f"{metric}_mean"] for p in points])
        std = np.array([p[f"{metric}_std"] for p in points])
        ax.plot(k, mean, linestyle=style[0], marker=style[1], label=direction)
        ax.fill_between(k, mean - std, mean + std, alpha=0.2)
    ends = {r["k"]: r for r in summary if r["direction"] == "both"}
    for k, name, colour in ((depth, "full fine-tuning", "grey"), (0, "linear probe", "black")):
        if k in ends:
            ax.axhline(ends[k][f"{metric}_mean"], color=colour, linestyle=":", linewidth=1, label=name)
    ax.set_xlabel("k (trainable backbone groups, besides the head)")
    ax.set_ylabel(f"test {LABELS[metric]} (mean ± std)")
    ax.set_xticks(range(depth + 1))
    ax.set_title(title, fontsize=10)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, loc="lower right")
    return save_figure(fig, path)
