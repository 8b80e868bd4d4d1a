"""The transferability study end to end: pre-train, fine-tune, measure T per layer, describe each target, relate them.

Each step is an ordinary run of ``bundles/natural_transferability`` (so it can be inspected, resumed and evaluated on
its own) and leaves its files in the run directory:

- ``pretrain``: ``init.pt`` (θr, saved before the first step), ``model.pt`` (θA, best on validation);
- ``finetune``: ``init.pt`` (θB0: θA's body with the new head), ``model.pt`` (θFB), ``test_metrics.json``;
- ``measure``/``study_row``: ``transferability/`` (per-layer T as CSV/JSON/PNG) and ``target_stats.json`` (G, D, N,
  LogME, LEEP computed from θA before any fine-tuning);
- ``study_table``: the table over targets, the curves side by side, the regression of log T on G, D, log N (five
  targets or more) and the rank correlation of LogME/LEEP with T.
"""

from __future__ import annotations

import functools
import json
import logging
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from medtransfer.atomic import write_text_atomic
from medtransfer.data.registry import dataset_records
from medtransfer.report import format_p, markdown_table, save_json
from medtransfer.runs import run_bundle_workflow, train_then_evaluate
from medtransfer.transferability.features import extract_features
from medtransfer.transferability.layerwise import (
    TransferabilityResult,
    load_state,
    measure_files,
    plot_transferability_curves,
    save_transferability,
)

logger = logging.getLogger(__name__)

# the bundle whose pre-processing the statistics reuse (the installed copy)
DEFAULT_BUNDLE = "natural_transferability"


def _run_info(run_dir: Path) -> dict:
    path = run_dir / "run_info.json"
    if not path.is_file():
        raise FileNotFoundError(f"{path} not found; {run_dir} is not a finished bundle run")
    return json.loads(path.read_text())["settings"]


def train_and_evaluate(
    bundle: str | Path, overrides: Mapping[str, Any], evaluate: bool = True, strategies: Sequence[str] = ()
) -> Path:
    """Train one run of the bundle (with ``strategies``' fragments and ``overrides``), then evaluate it on the test
    split; return the run dir.

    Run again, the same command continues: a finished training is only evaluated, an interrupted one resumes
    (:func:`medtransfer.runs.train_then_evaluate`).
    """
    from medtransfer.launch import check_overrides, config_files

    check_overrides(bundle, strategies, overrides)
    run_dir = Path(overrides["runs_dir"]) / str(overrides["run_name"])
    train = config_files(bundle, strategies, "train")
    if evaluate:
        train_then_evaluate(run_dir, train, config_files(bundle, strategies, "evaluate"), dict(overrides))
    else:
        run_bundle_workflow(train, overrides)
    return run_dir


def measure_runs(pretrain_dir: str | Path, finetune_dir: str | Path, mode: str = "paper") -> TransferabilityResult:
    """Per-layer T of a fine-tuning run against the pre-training run it started from."""
    pretrain_dir, finetune_dir = Path(pretrain_dir), Path(finetune_dir)
    return measure_files(
        _run_info(finetune_dir)["arch"],
        pretrain_dir / "init.pt",
        pretrain_dir / "model.pt",
        finetune_dir / "model.pt",
        finetune_init_path=finetune_dir / "init.pt",
        mode=mode,
    )


def _loader(records: list[dict], image_size: int, run: Mapping[str, Any], bundle: str | Path = DEFAULT_BUNDLE,
            batch_size: int = 128):  # fmt: skip
    """Records -> batches pre-processed exactly as the bundle's validation does (its load + normalize transforms),
    with the image mode and normalisation that `run` (a run's recorded settings) trained with.

    Runs from before ``image_mode`` existed were read as RGB by this bundle, which the fallback keeps.
    """
    from monai.bundle import ConfigParser
    from monai.data import DataLoader, Dataset
    from monai.transforms import Compose

    from medtransfer.bundling import bundle_path

    parser = ConfigParser()
    parser.read_config(bundle_path(bundle) / "configs" / "train.json")
    parser["image_size"] = int(image_size)
    parser["image_mode_used"] = run.get("image_mode_used", "rgb")
    for key in ("norm_mean", "norm_std"):
        if run.get(key) is not None:
            parser[key] = list(run[key])
    transform = Compose(
        parser.get_parsed_content("load_transforms") + parser.get_parsed_content("normalize_transforms")
    )
    return DataLoader(Dataset(records, transform), batch_size=batch_size, shuffle=False, num_workers=0)


@functools.lru_cache(maxsize=4)
def _source_features(pretrain_dir: str, image_size: int, max_samples: int, device: str) -> np.ndarray:
    """θA's penultimate features of (a seeded sample of) its own training split: the same for every target."""
    pre = _run_info(Path(pretrain_dir))
    source = _sample(
        dataset_records(pre["dataset_format"], pre["dataset_dir"], "train", seed=pre["split_seed"]), max_samples, 0
    )
    features, _, _ = extract_features(_pretrained_model(pretrain_dir), _loader(source, image_size, pre), device=device)
    features.setflags(write=False)
    return features


def _normalization(run: Mapping[str, Any]) -> dict:
    """The normalisation θA was trained with: the target's features go through θA, so they are normalised as θA's
    inputs were."""
    return {k: run[k] for k in ("norm_mean", "norm_std") if run.get(k) is not None}


def _pretrained_model(pretrain_dir: str | Path):
    from medtransfer.models import build_classifier

    pre = _run_info(Path(pretrain_dir))
    model = build_classifier(pre["arch"], num_classes=len(pre["classes"]))
    model.load_state_dict(load_state(Path(pretrain_dir) / "model.pt"))
    return model


def _sample(records: list[dict], limit: int, seed: int) -> list[dict]:
    if len(records) <= limit:
        return records
    idx = np.random.default_rng(seed).choice(len(records), size=limit, replace=False)
    return [records[i] for i in sorted(idx)]


def target_statistics(
    pretrain_dir: str | Path, finetune_dir: str | Path, max_samples: int = 2000, device: str = "cpu"
) -> dict:
    """G, D, N, LogME and LEEP of the fine-tuning target, from θA's penultimate features (no fine-tuning needed).

    The source sample is the pre-training set's training split and the target sample the fine-tuning run's
    training split, each at most ``max_samples`` images (seeded), pre-processed like the runs themselves.
    """
    from scipy.special import softmax

    from medtransfer.transferability.scores import leep, logme
    from medtransfer.transferability.statistics import dataset_statistics

    pre, ft = _run_info(Path(pretrain_dir)), _run_info(Path(finetune_dir))
    size = int(ft["image_size"])
    target_all = dataset_records(
        ft["dataset_format"], ft["dataset_dir"], "train", seed=ft["split_seed"], max_train=ft.get("max_train")
    )
    target = _sample(target_all, max_samples, 0)
    src_features = _source_features(str(Path(pretrain_dir).resolve()), size, max_samples, device)
    tgt_features, tgt_labels, tgt_logits = extract_features(
        _pretrained_model(pretrain_dir), _loader(target, size, {**ft, **_normalization(pre)}), device=device
    )
    stats = dataset_statistics(src_features, tgt_features, tgt_labels, n_train=len(target_all))
    stats.update(
        {
            "LogME": logme(tgt_features, tgt_labels),
            "LEEP": leep(softmax(tgt_logits, axis=1), tgt_labels),
            "source": pre["dataset_format"],
            "target": ft["dataset_format"],
            "target_dir": str(ft["dataset_dir"]),
            "samples": {"source": len(src_features), "target": len(target)},
        }
    )
    return stats


def study_row(
    name: str,
    pretrain_dir: str | Path,
    finetune_dir: str | Path,
    mode: str = "paper",
    result: TransferabilityResult | None = None,
    join_dir: str | Path | None = None,
) -> dict:
    """Measure one target (T per layer, statistics), save both into the fine-tuning run, return the table row.

    ``result`` is the target's :func:`measure_runs` when the caller already has it (the study also plots it).
    ``join_dir`` (a ``transfer join`` output of the same target) adds, per MetaLR strategy, the rank correlation of
    its learned LRs with T.
    """
    finetune_dir = Path(finetune_dir)
    result = result if result is not None else measure_runs(pretrain_dir, finetune_dir, mode=mode)
    save_transferability(result, finetune_dir / "transferability")
    stats = target_statistics(pretrain_dir, finetune_dir)
    save_json(stats, finetune_dir / "target_stats.json")
    test = finetune_dir / "test_metrics.json"
    accuracy = json.loads(test.read_text()).get("accuracy") if test.is_file() else None
    return {
        "dataset": name,
        "T": result.overall,
        "most_transferable": result.most_transferable,
        "G": stats["G"],
        "D": stats["D"],
        "N": stats["N"],
        "LogME": stats["LogME"],
        "LEEP": stats["LEEP"],
        "test_accuracy": accuracy,
        "layers": {layer.name: layer.t for layer in result.layers},
        "run": str(finetune_dir),
        "join": join_columns(join_dir) if join_dir else {},
    }


def join_columns(join_dir: str | Path) -> dict:
    """Per strategy of a ``transfer join``: ρ(T, learned LR) and its permutation p, mean and final LR."""
    path = Path(join_dir) / "join.json"
    if not path.is_file():
        raise FileNotFoundError(f"{path} not found: run `medtransfer transfer join` for this target first")
    results = json.loads(path.read_text())["results"]
    return {
        key: {"rho_mean_lr": r["mean_lr"]["rho"], "p_mean_lr": r["mean_lr"]["p"], "rho_final_lr": r["final_lr"]["rho"],
              "p_final_lr": r["final_lr"]["p"], "overall_t": r["overall_t"],
              "rho_plain_t": (r.get("plain_mean_lr") or {}).get("rho"), "p_plain_t": (r.get("plain_mean_lr") or {}).get("p")}
        for key, r in results.items()
    }  # fmt: skip


def _cell(row: Mapping, strategy: str, column: str) -> Any:
    value = row.get("join", {}).get(strategy, {}).get(column)
    if column.startswith("p_"):
        return format_p(value)
    return "" if value is None else value


def study_table(rows: Sequence[dict], results: Mapping[str, TransferabilityResult], out_dir: str | Path) -> str:
    """Write ``study.md``/``.json``, ``curves.png`` and, where possible, the regression and score correlations."""
    from medtransfer.transferability.regression import (
        fit_transferability_regression,
        format_regression,
        plot_partial_effects,
    )
    from medtransfer.transferability.scores import score_correlations

    out = Path(out_dir)
    plot_transferability_curves(results, out / "curves.png")
    headers = ["dataset", "T (overall)", "most transferable", "G", "D", "N", "LogME", "LEEP", "test acc"]
    joined = list(dict.fromkeys(k for r in rows for k in r.get("join", {})))
    for key in joined:
        headers += [f"ρ(T, LR) {key}", "p", f"ρ(T plain, LR) {key}", "p"]
    table = markdown_table(
        headers,
        [[r["dataset"], r["T"], r["most_transferable"], r["G"], r["D"], r["N"], r["LogME"], r["LEEP"],
          r["test_accuracy"],
          *(_cell(r, key, column) for key in joined for column in ("rho_mean_lr", "p_mean_lr", "rho_plain_t",
                                                                      "p_plain_t"))] for r in rows],
    )  # fmt: skip
    lines = ["# Layer-wise transferability study", "", table, ""]
    if joined:
        lines += ["ρ(T, LR): Spearman correlation over the body layer groups of T (of the MetaLR run) and the "
                  "geometric-mean LR MetaLR learned for them (`transfer join`); ρ(T plain, LR): the same LRs against "
                  "plain fine-tuning's T, free of the coupling of a run's LRs with its own T; negative = the LRs follow "
                  "T; p: permutation test.", ""]
    summary: dict[str, Any] = {"rows": list(rows)}
    if len(rows) >= 3:
        summary["rank_correlation"] = score_correlations(rows)
        for score, values in summary["rank_correlation"].items():
            lines.append(f"{score} vs T: Spearman {values['spearman']:.3f}, Kendall {values['kendall']:.3f}")
        lines.append("")
    try:
        fit = fit_transferability_regression([{k: r[k] for k in ("dataset", "T", "G", "D", "N")} for r in rows])
    except ValueError as err:
        lines.append(f"Regression of log T on G, D, log N not fitted: {err}")
    else:
        summary["regression"] = fit
        plot_partial_effects(fit, rows, out / "partial_effects.png")
        lines += ["## log T ≈ a·G + b·D + c·log N + d (standardised predictors)", "", format_regression(fit)]
    save_json(summary, out / "study.json")
    text = "\n".join(lines) + "\n"
    write_text_atomic(out / "study.md", text)
    return text
