"""The comparison's paired answer: each strategy against the reference, seed by seed, on the same test images.

For every strategy and seed the two runs' ``test_predictions.csv`` are matched image by image. Per strategy the table
gives the mean per-seed difference in AUC and accuracy with its 95 % t interval over seeds (:mod:`medtransfer.paired`)
and a p value from the images themselves: DeLong's test (AUC) and McNemar's exact test (accuracy) per seed, combined
over seeds with Stouffer's method, Holm-corrected over the strategies (:mod:`medtransfer.paired_images`). Binary
targets on a single test split; cross-validation studies (pooled folds) and multi-class targets get the interval only.

Caution: every seed tests on the same images, so the per-seed tests are positively correlated and Stouffer's
combination, which assumes independent tests, gives a p that is too small when the same images decide every seed.
Read it beside the interval over seeds, which assumes nothing of the kind: a small p with an interval across zero
means "consistent on these test images", not "better in general".
"""

from __future__ import annotations

import csv
import math
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from medtransfer.paired import format_interval, paired_differences, scores_from_runs
from medtransfer.paired_images import combine_over_seeds, delong_test, holm, mcnemar_test
from medtransfer.report import format_p, markdown_table

__all__ = ["paired_against_reference", "read_predictions"]


def read_predictions(run_dir: str | Path) -> dict[str, tuple[np.ndarray, str, str]] | None:
    """``source -> (class probabilities, predicted, label)`` from a run's ``test_predictions.csv`` (None without)."""
    path = Path(run_dir) / "test_predictions.csv"
    if not path.is_file():
        return None
    with path.open(newline="") as f:
        rows = list(csv.DictReader(f))
    if not rows or "label" not in rows[0]:
        return None
    columns = [c for c in rows[0] if c.startswith("p_")]
    return {r["source"]: (np.array([float(r[c]) for c in columns]), r["predicted"], r["label"]) for r in rows}


def _image_tests(reference_dir: Path, strategy_dir: Path):
    """DeLong and McNemar of strategy − reference on the images both runs scored (None where not applicable)."""
    ref, other = read_predictions(reference_dir), read_predictions(strategy_dir)
    if ref is None or other is None:
        return None, None
    shared = sorted(set(ref) & set(other))
    positive = _positive_name(reference_dir)
    if not shared or positive is None:
        return None, None
    labels = np.array([ref[s][2] == positive for s in shared], int)
    if labels.min() == labels.max():
        return None, None
    auc = delong_test(labels, [other[s][0][1] for s in shared], [ref[s][0][1] for s in shared])
    accuracy = mcnemar_test([ref[s][2] for s in shared], [other[s][1] for s in shared], [ref[s][1] for s in shared])
    return auc, accuracy


def _positive_name(run_dir: Path) -> str | None:
    """The second class of the run's predictions (column ``p_<name>``), the one whose probability is the AUC score."""
    with (Path(run_dir) / "test_predictions.csv").open(newline="") as f:
        header = next(csv.reader(f))
    names = [c[2:] for c in header if c.startswith("p_")]
    return names[1] if len(names) == 2 else None


def paired_against_reference(study_dir: Path, rows: Sequence[dict], reference: str = "full") -> str:
    """The Markdown table of every strategy against `reference` (empty when the reference has no runs)."""
    if not any(r["label"] == reference for r in rows):
        return ""
    intervals: dict[str, dict] = {}
    for metric in ("auc", "accuracy"):
        scored = [r for r in rows if isinstance(r.get(metric), float) and math.isfinite(r[metric])]
        if any(r["label"] == reference for r in scored):
            scores = scores_from_runs(((r["label"], r["seed"], r) for r in scored), metric)
            intervals[metric] = {d.strategy: d for d in paired_differences(scores, reference)}
    if not intervals:
        return ""  # no classification metrics (a segmentation study)
    intervals = {m: intervals.get(m, {}) for m in ("auc", "accuracy")}
    runs = {(r["label"], r["seed"]): study_dir / r["run"] for r in rows}
    labels = [label for label in dict.fromkeys(r["label"] for r in rows) if label != reference]
    combined: dict[str, dict[str, float]] = {}
    for label in labels:
        tests = {"auc": [], "accuracy": []}
        for (name, seed), run_dir in runs.items():
            if name != label or (reference, seed) not in runs:
                continue
            auc, accuracy = _image_tests(runs[(reference, seed)], run_dir)
            if auc is not None:
                tests["auc"].append(auc)
                tests["accuracy"].append(accuracy)
        combined[label] = {m: combine_over_seeds(t)[1] if t else math.nan for m, t in tests.items()}
    adjusted = {m: dict(zip(labels, holm([combined[s][m] for s in labels]), strict=True)) for m in ("auc", "accuracy")}
    table = markdown_table(
        ["strategy", "ΔAUC [95 % CI over seeds]", "p (DeLong, Holm)", "ΔACC [95 % CI over seeds]",
         "p (McNemar, Holm)"],
        [[s, format_interval(intervals["auc"][s]) if s in intervals["auc"] else "-", _p(adjusted["auc"][s]),
          format_interval(intervals["accuracy"][s]) if s in intervals["accuracy"] else "-",
          _p(adjusted["accuracy"][s])] for s in labels],
    )  # fmt: skip
    return (
        f"## Paired against `{reference}` (same seed, same test images)\n\n{table}\n\n"
        "Δ: mean of the per-seed differences, 95 % t interval over seeds. p: per-seed DeLong (AUC) and exact McNemar "
        "(accuracy) tests on the shared test images, combined over seeds (Stouffer), Holm-corrected over the "
        "strategies; `-` where not applicable (multi-class, pooled folds). The seeds share the test images, so the combined "
        "p is optimistic; read it beside the interval.\n"
    )


def _p(value: float) -> str:
    return "-" if not math.isfinite(value) else format_p(value)
