"""Cross-validation over a bundle's folds: train and evaluate every test fold, then pool the test folds.

Each fold is an ordinary bundle run (``train.json`` then ``train.json + evaluate.json`` with ``fold=i``), so a fold
directory looks exactly like a single run and can be inspected, evaluated or resumed on its own. The pooled report
sums the folds' confusion matrices, which is how the POCUS papers report per-class precision/recall, and also gives
mean ± std of each fold's metrics. An interrupted cross-validation continues where it stopped (``resume=True``):
evaluated folds are kept, a fold that was training resumes from its last epoch checkpoint.
"""

from __future__ import annotations

import contextlib
import csv
import importlib
import json
import logging
import math
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from medtransfer.atomic import write_text_atomic
from medtransfer.errors import RunDirectoryError
from medtransfer.launch import parse_overrides  # noqa: F401  (re-exported: cv's override reader)
from medtransfer.metrics import classification_report, confusion_report, mean_std
from medtransfer.report import markdown_table, plot_confusion_matrix, save_json
from medtransfer.runs import check_run_name, timestamp, train_then_evaluate

logger = logging.getLogger(__name__)

FOLD_METRICS = ("accuracy", "auc", "macro_f1")
# level -> the prefix of the ClassificationReport files (``<prefix>_metrics.json``, ``<prefix>_predictions.csv``)
LEVELS = {"frame": "test", "clip": "test_clip"}


class OncePerMessage(logging.Filter):
    """Lets each distinct (level, message) through once. Every fold is one or two bundle workflows, and MONAI's
    workflow repeats its start-up warnings for each (``Logging file is set to False``, ``Not all config files are in
    ...`` when a strategy fragment lives outside the bundle): said once, they stay readable."""

    def __init__(self) -> None:
        super().__init__()
        self.seen: set[tuple[int, str]] = set()

    def filter(self, record: logging.LogRecord) -> bool:
        key = (record.levelno, record.getMessage())
        if key in self.seen:
            return False
        self.seen.add(key)
        return True


# the loggers whose per-workflow start-up messages repeat identically for every fold
REPEATING_LOGGERS = ("monai.bundle.workflows",)


@contextlib.contextmanager
def once_per_message(names: Sequence[str] = REPEATING_LOGGERS) -> Iterator[OncePerMessage]:
    """While the block runs, each distinct message of the loggers ``names`` is logged once."""
    once = OncePerMessage()
    for name in names:
        # import the module first: MONAI's get_logger() adds its stdout handler only to a logger not yet created
        importlib.import_module(name)
    loggers = [logging.getLogger(n) for n in names]
    for lg in loggers:
        lg.addFilter(once)
    try:
        yield once
    finally:
        for lg in loggers:
            lg.removeFilter(once)


def run_cross_validation(
    bundle_dir: str | Path,
    folds: int = 5,
    config_files: Sequence[str | Path] = (),
    overrides: Mapping[str, Any] | None = None,
    runs_dir: str | Path | None = None,
    name: str | None = None,
    resume: bool = False,
    only_folds: Sequence[int] | None = None,
) -> dict:
    """Train and evaluate test folds ``0 .. folds-1`` of a bundle and write the pooled report; return it.

    ``config_files`` are merged after the bundle's ``train.json`` (e.g. ``configs/strategies/metalr.json``);
    ``overrides`` are bundle settings (``{"epochs": 20}``). Folds run in ``runs_dir/name/fold<i>`` (default
    ``runs/<bundle>/cv_<timestamp>``). ``only_folds`` restricts which folds run now (the report covers every fold
    whose evaluation exists), so folds can be spread over machines and pooled at the end.
    """
    from medtransfer.bundling import bundle_path, strategy_path

    bundle = bundle_path(bundle_dir)
    configs = bundle / "configs"
    if not (configs / "train.json").is_file() or not (configs / "evaluate.json").is_file():
        raise FileNotFoundError(f"{configs} must hold train.json and evaluate.json; pass a bundle folder")
    name = check_run_name(f"cv_{timestamp()}" if name is None else name)
    cv_dir = Path(runs_dir or Path("runs") / bundle.name) / name
    if cv_dir.exists() and not resume:
        raise RunDirectoryError(
            f"cross-validation folder {cv_dir} already exists; pass --resume to continue it or choose another --name"
        )
    from medtransfer.launch import check_overrides

    extra = [strategy_path(c) for c in config_files]
    check_overrides(bundle, extra, dict(overrides or {}))
    settings = {**dict(overrides or {}), "num_folds": folds}
    record = {"bundle": str(bundle), "folds": folds, "config_files": [str(c) for c in extra], "overrides": settings}
    recorded = cv_dir / "cv_settings.json"
    if recorded.is_file():
        before = json.loads(recorded.read_text())
        now = json.loads(json.dumps(record, default=str))
        if before != now:
            changed = sorted(k for k in set(before) | set(now) if before.get(k) != now.get(k))
            raise RunDirectoryError(
                f"{cv_dir} was started with other settings ({', '.join(changed)} differ: {before} vs {now}); "
                "pooling folds trained differently would mix two experiments. Resume with the same options or "
                "choose another --name"
            )
    cv_dir.mkdir(parents=True, exist_ok=True)
    save_json(record, recorded)
    with once_per_message():
        for fold in only_folds if only_folds is not None else range(folds):
            _run_fold(fold, folds, cv_dir, [configs / "train.json", *extra], configs / "evaluate.json", settings)
    return summarize_cross_validation(cv_dir)


def _run_fold(
    fold: int, folds: int, cv_dir: Path, train_configs: list[Path], evaluate_config: Path, settings: Mapping[str, Any]
) -> None:
    """Train (or resume) fold ``fold`` unless it finished, then evaluate it on its held-out test fold."""
    if not 0 <= fold < folds:
        raise ValueError(f"fold {fold} is outside 0..{folds - 1}")
    fold_dir = cv_dir / f"fold{fold}"
    if (fold_dir / f"{LEVELS['frame']}_metrics.json").is_file():
        logger.info(f"fold {fold + 1}/{folds}: already evaluated, kept")
        return
    run = {**settings, "fold": fold, "runs_dir": str(cv_dir), "run_name": f"fold{fold}"}
    logger.info(f"fold {fold + 1}/{folds}: train (or resume) -> {fold_dir}, then test on the held-out fold")
    train_then_evaluate(fold_dir, train_configs, [*train_configs, evaluate_config], run)


def _read_predictions(path: Path, names: Sequence[str]) -> tuple[np.ndarray, np.ndarray]:
    """(probabilities N x C, label indices N) from a ``*_predictions.csv`` written by ClassificationReport."""
    with path.open(newline="") as f:
        rows = list(csv.DictReader(f))
    probs = np.array([[float(r[f"p_{c}"]) for c in names] for r in rows], dtype=np.float64).reshape(-1, len(names))
    labels = np.array([list(names).index(r["label"]) for r in rows], dtype=np.int64)
    return probs, labels


def _pool(reports: list[dict], prediction_files: list[Path]) -> dict:
    """Summed confusion matrix -> per-class table; AUC of all test predictions together; per-fold mean ± std."""
    names = reports[0]["class_names"]
    for r in reports[1:]:
        if r["class_names"] != names:
            raise ValueError(f"folds disagree on the classes: {names} vs {r['class_names']}")
    cm = np.sum([np.asarray(r["confusion_matrix"]) for r in reports], axis=0)
    pooled = confusion_report(cm, names)
    if all(f.is_file() for f in prediction_files):
        parts = [_read_predictions(f, names) for f in prediction_files]
        pooled["auc"] = classification_report(
            np.concatenate([p for p, _ in parts]), np.concatenate([y for _, y in parts]), names
        )["auc"]
    per_fold = {k: [float(r[k]) for r in reports] for k in FOLD_METRICS}
    # a test fold without some class has no AUC for it: average the folds where it is defined, and say how many
    pooled["fold_mean_std"] = {
        k: (*mean_std([x for x in v if math.isfinite(x)] or [math.nan]), sum(map(math.isfinite, v)))
        for k, v in per_fold.items()
    }
    pooled["per_fold"] = per_fold
    return pooled


def summarize_cross_validation(cv_dir: str | Path) -> dict:
    """Pool the evaluated folds of ``cv_dir`` into ``cv_summary.json``/``.md`` and confusion-matrix PNGs.

    Levels: ``frame`` (every test frame) and, where the bundle reports it, ``clip`` (one prediction per clip, the
    mean of its frames' probabilities).
    """
    cv_dir = Path(cv_dir)
    fold_dirs = sorted(
        (d for d in cv_dir.glob("fold*") if (d / f"{LEVELS['frame']}_metrics.json").is_file()),
        key=lambda d: int(d.name[4:]),
    )
    if not fold_dirs:
        raise FileNotFoundError(f"no evaluated fold (fold*/{LEVELS['frame']}_metrics.json) in {cv_dir}")
    summary: dict[str, Any] = {"cv_dir": str(cv_dir), "folds": [d.name for d in fold_dirs]}
    lines = [f"# Cross-validation: {cv_dir}", "", f"Folds evaluated: {', '.join(summary['folds'])}."]
    for level, prefix in LEVELS.items():
        files = [d / f"{prefix}_metrics.json" for d in fold_dirs]
        if not all(f.is_file() for f in files):
            continue
        predictions = [d / f"{prefix}_predictions.csv" for d in fold_dirs]
        pooled = _pool([json.loads(f.read_text()) for f in files], predictions)
        summary[level] = pooled
        names = pooled["class_names"]
        plot_confusion_matrix(
            np.asarray(pooled["confusion_matrix"]),
            names,
            cv_dir / f"cv_{level}_confusion_matrix.png",
            title=f"{len(fold_dirs)} test folds summed ({level}s): accuracy {pooled['accuracy']:.3f} (n={pooled['n']})",
        )
        rows = [
            [c, pooled["per_class"][c]["precision"], pooled["per_class"][c]["recall"], pooled["per_class"][c]["f1"],
             pooled["per_class"][c]["support"]]
            for c in names
        ]  # fmt: skip
        stats = pooled["fold_mean_std"]
        lines += [
            "",
            f"## {level.capitalize()} level, test folds pooled (summed confusion matrix)",
            "",
            markdown_table(["class", "precision", "recall", "F1", "support"], rows),
            "",
            f"Accuracy {pooled['accuracy']:.3f}, macro-F1 {pooled['macro_f1']:.3f}"
            + (f", AUC of the pooled predictions {pooled['auc']:.3f}" if "auc" in pooled else "")
            + f" (n = {pooled['n']}).",
            "Per fold, mean ± std (over the folds where the metric is defined): "
            + ", ".join(f"{k} {m:.3f} ± {sd:.3f} ({n} folds)" for k, (m, sd, n) in stats.items())
            + ".",
        ]
    save_json(summary, cv_dir / "cv_summary.json")
    text = "\n".join(lines) + "\n"
    write_text_atomic(cv_dir / "cv_summary.md", text)
    print(text)
    return summary
