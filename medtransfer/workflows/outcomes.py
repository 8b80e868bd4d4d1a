"""What a finished study run gives a table: its test metrics, how its checkpoint was selected, and warning flags.

One run is a train/val/test run (``test_metrics.json``, ``history.json``) or a cross-validation (``cv_summary.json``
pooled over the test folds, one ``history.json`` per fold). Every number comes from data the run never selected on:
the checkpoint is chosen on validation, the metric is the test split's (or the pooled test folds').
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from pathlib import Path

from medtransfer.atomic import write_csv_atomic
from medtransfer.metrics import mean_std
from medtransfer.runs import selected_on_meta_data
from medtransfer.workflows.study import RunSpec, finished_runs, read_study

__all__ = ["CHANCE_AUC", "METRICS", "epochs_to_reach", "finished_outcomes", "group_rows", "metric_keys", "run_outcome",
           "write_rows"]  # fmt: skip

METRICS = ("accuracy", "auc", "macro_f1", "mean_dice")  # classification, then segmentation (LiTS)
LABELS = {"accuracy": "accuracy", "auc": "AUC", "macro_f1": "macro-F1", "mean_dice": "mean Dice"}
CHANCE_AUC = 0.6  # a selected checkpoint whose validation AUC is at most this is "near chance"


def _selection(history_file: Path) -> tuple[int, float, str]:
    history = json.loads(history_file.read_text())
    best, key = history["best"], history["key_metric"]
    return int(best["epoch"]), float(best.get(f"val_{key}", math.nan)), key


def epochs_to_reach(history_file: Path, target: float) -> int | None:
    """The first epoch whose validation key metric is at least ``target`` (None if no epoch reached it)."""
    history = json.loads(Path(history_file).read_text())
    key = f"val_{history['key_metric']}"
    return next((int(r["epoch"]) for r in history["epochs"] if r.get(key, -math.inf) >= target), None)


def run_outcome(study_dir: Path, spec: RunSpec, done: dict) -> dict:
    """A flat row: label, seed, the test metrics, wall time, the selected epoch(s) and the flags."""
    run_dir = study_dir / spec.name
    row = {"run": spec.name, "label": spec.label, "strategy": spec.strategy, "seed": spec.seed, **spec.extra,
           "wall_min": round(done["wall_s"] / 60, 2)}  # fmt: skip
    if spec.folds:
        metrics = json.loads((run_dir / "cv_summary.json").read_text())["frame"]
        histories = sorted(run_dir.glob("fold*/history.json"))
    else:
        metrics = json.loads((run_dir / "test_metrics.json").read_text())
        histories = [run_dir / "history.json"]
    row.update({m: float(metrics[m]) for m in METRICS if m in metrics})
    selections = [_selection(h) for h in histories if h.is_file()]
    flags = []
    if any(epoch == 1 for epoch, _, _ in selections):
        flags.append("first-epoch checkpoint")
    if any(key == "auc" and value <= CHANCE_AUC for _, value, key in selections):
        flags.append(f"validation AUC <= {CHANCE_AUC}")
    if any(selected_on_meta_data(d) for d in {h.parent for h in histories} | {run_dir}):
        flags.append("selected on meta data")
    if done.get("attempt") == "resumed":  # the time before the interruption was not recorded
        flags.append("resumed: wall time is the last attempt's")
    row["selected_epochs"] = " ".join(str(e) for e, _, _ in selections)
    row["val_key_metric"] = round(min((v for _, v, _ in selections), default=math.nan), 4)
    row["flags"] = "; ".join(flags)
    return row


def metric_keys(rows: Sequence[dict]) -> list[str]:
    """The test metrics every row has (accuracy, AUC, macro-F1 for classification; mean Dice for segmentation)."""
    return [m for m in METRICS if all(m in r for r in rows)]


def group_rows(rows: Sequence[dict], by: Sequence[str] = ("label",)) -> list[dict]:
    """mean and std over the runs sharing `by` (seeds or folds), in first-seen order, with the runs' flags."""
    groups: dict[tuple, list[dict]] = {}
    for row in rows:
        groups.setdefault(tuple(row[k] for k in by), []).append(row)
    out = []
    for key, members in groups.items():
        entry = dict(zip(by, key, strict=True))
        entry["n"] = len(members)
        entry["seeds"] = " ".join(str(r["seed"]) for r in members)
        for m in (*metric_keys(rows), "wall_min"):
            entry[f"{m}_mean"], entry[f"{m}_std"] = mean_std([r[m] for r in members])
        flagged = [f"{r['seed']}: {r['flags']}" for r in members if r["flags"]]
        entry["flags"] = " | ".join(f"seed {f}" for f in flagged)
        out.append(entry)
    return out


def finished_outcomes(study_dir: Path) -> tuple[dict, list[RunSpec], list[dict]]:
    """The study's record, its runs, and the outcome rows of those that finished (an error if none has)."""
    record, specs = read_study(study_dir)
    done = finished_runs(study_dir, specs)
    rows = [run_outcome(study_dir, s, done[s.name]) for s in specs if s.name in done]
    if not rows:
        raise FileNotFoundError(f"no finished run in {study_dir} yet; run the study (or its shards) first")
    return record, specs, rows


def write_rows(path: Path, rows: Sequence[dict]) -> None:
    """Rows of equal keys as a CSV, atomically."""
    write_csv_atomic(path, list(rows[0]), ([r[k] for k in rows[0]] for r in rows))
