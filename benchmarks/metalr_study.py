"""The corrected-MetaLR study (issue 22): η grid on validation, then every variant and control against plain fine-tuning.

Every run is the bundle's own training through ``medtransfer.workflows.compare.run_comparison`` (the function
``medtransfer compare`` calls), so studies resume, record their settings and keep finished runs. The variants are
strategy fragments written into the study folder from the shipped ones (``configs/strategies``) with a few keys
changed, so each run's ``run_info.json`` says exactly what it trained with.

Targets: BreastMNIST 64 px (``busi_classification``) and PneumoniaMNIST 64 px with 500 training images
(``chestxray_classification --max_train 500``), both MedMNIST releases with their official splits; the ImageNet
EfficientNet-Lite0 start, 10 epochs, batch 64.

    for seed in 0 1; do for target in breastmnist pneumoniamnist500; do   # η grid, 6 values over 5 decades
        python benchmarks/metalr_study.py grid --target $target --seed $seed; done; done
    python benchmarks/metalr_study.py choose                           # best mean validation rank -> grid.md
    for seed in 0 1 2 3 4; do for target in breastmnist pneumoniamnist500; do
        python benchmarks/metalr_study.py compare --target $target --seed $seed; done; done
    python benchmarks/metalr_study.py report --out docs/results        # paired intervals, tables, LR figure

``grid`` selects on validation AUC only (each run's best validation epoch); ``compare`` reports test metrics of the
checkpoint selected on validation; the meta data of every ``heldout`` run is a slice of the training split.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import statistics
from pathlib import Path

from medtransfer.bundling import strategy_path

TARGETS = {
    "breastmnist": {"bundle": "busi_classification", "file": "medmnist/breastmnist.npz", "overrides": {}},
    "pneumoniamnist500": {
        "bundle": "chestxray_classification",
        "file": "medmnist/pneumoniamnist.npz",
        "overrides": {"max_train": 500},
    },
}
COMMON = {"arch": "efficientnet_lite0", "pretrained": "imagenet", "epochs": 10, "batch_size": 64, "image_size": 64}
ETAS = (1e-5, 1e-4, 1e-3, 1e-2, 1e-1, 1.0)
# label -> (shipped fragment, keys changed)
VARIANTS = {
    "full": ("full", {}),
    "discriminative": ("discriminative", {}),
    "discriminative_constant": ("discriminative", {"discriminative_schedule": "constant"}),
    "metalr_heldout": ("metalr", {"metalr_meta_source": "heldout"}),
    "metalr_train": ("metalr", {"metalr_meta_source": "train"}),
    "metalr_train_next": ("metalr", {"metalr_meta_source": "train_next"}),
    "metalr_scale1": ("metalr", {"metalr_backbone_scale": 1.0}),
    "metalr_normalized": ("metalr_normalized", {}),
    "metalr_published": ("metalr_published", {}),
}


# each label's setting and how it was chosen (only MetaLR's η was tuned, on validation: `grid`, `choose`)
SETTINGS = {
    "full": "lr 1e-3, cosine (default)",
    "discriminative": "body 1e-4, head 1e-3, cosine (MetaLR's start)",
    "discriminative_constant": "body 1e-4, head 1e-3, constant (MetaLR's start)",
    "metalr_heldout": "η 0.1 tuned; start body 1e-4, head 1e-3",
    "metalr_train": "η 0.1 tuned; start body 1e-4, head 1e-3",
    "metalr_train_next": "η 0.1 tuned; start body 1e-4, head 1e-3",
    "metalr_scale1": "η 0.1 tuned; start 1e-3 everywhere",
    "metalr_normalized": "η 0.05 (default); start body 1e-4, head 1e-3",
    "metalr_published": "published: Adam + L2 1e-4, lr 0.01, body 1e-3, η 0.1",
}


def data_root() -> Path:
    return Path(os.environ.get("MEDTRANSFER_DATA", "../shared/data")).resolve()


def write_variant(folder: Path, label: str, base: str, changes: dict) -> Path:
    """A complete fragment: the shipped `base` with `changes`, its strategy named `label`."""
    fragment = json.loads(strategy_path(base).read_text())
    unknown = set(changes) - set(fragment)
    if unknown:
        raise KeyError(f"{base}.json has no {sorted(unknown)}")
    fragment.update(changes)
    fragment["strategy"] = label
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"{label}.json"
    path.write_text(json.dumps(fragment, indent=4, ensure_ascii=False) + "\n")
    return path


def overrides_for(target: str) -> dict:
    spec = TARGETS[target]
    return {**COMMON, "dataset_format": "medmnist", "dataset_dir": str(data_root() / spec["file"]), **spec["overrides"]}


def eta_label(eta: float) -> str:
    return f"metalr_eta{eta:g}"


def run(target: str, name: str, fragments: list[Path], seeds: list[int], runs_dir: Path) -> Path:
    from medtransfer.workflows.compare import run_comparison
    from medtransfer.workflows.study import Placement

    placement = Placement(name=name, runs_dir=runs_dir)
    return run_comparison(
        TARGETS[target]["bundle"], [str(f) for f in fragments], seeds, overrides=overrides_for(target),
        placement=placement,
    )  # fmt: skip


def grid(args: argparse.Namespace) -> None:
    folder = args.runs_dir / "fragments"
    fragments = [write_variant(folder, eta_label(eta), "metalr", {"metalr_hyper_lr": eta}) for eta in args.etas]
    run(args.target, f"grid_{args.target}_seed{args.seed}", fragments, [args.seed], args.runs_dir)


def compare(args: argparse.Namespace) -> None:
    folder = args.runs_dir / "fragments"
    changes = {"metalr_hyper_lr": args.hyper_lr} if args.hyper_lr is not None else {}
    fragments = []
    for label, (base, keys) in VARIANTS.items():
        extra = {**keys, **changes} if base == "metalr" else keys
        fragments.append(write_variant(folder, label, base, extra))
    # one study per (target, seed), so the targets can be run seed by seed, alternately; `report` joins them
    run(args.target, f"{args.target}_seed{args.seed}", fragments, [args.seed], args.runs_dir)


def _rows(study: Path) -> list[dict]:
    from medtransfer.workflows.outcomes import finished_outcomes

    return finished_outcomes(study)[2]


def _finished(study: Path) -> list[dict]:
    """The finished runs' rows of a study (none yet: no rows)."""
    try:
        return _rows(study)
    except FileNotFoundError:
        return []


def choose(args: argparse.Namespace) -> dict:
    """Mean validation AUC per η on each target, its rank there, and the η with the best mean rank."""
    from scipy.stats import rankdata

    table: dict[str, dict[str, float]] = {}  # target -> label -> mean validation AUC over the seeds
    for target in TARGETS:
        by_label: dict[str, list[float]] = {}
        for study in sorted(args.runs_dir.glob(f"compare_grid_{target}_seed*")):
            for row in _finished(study):
                by_label.setdefault(row["label"], []).append(row["val_key_metric"])
        if not by_label:
            continue
        table[target] = {label: sum(v) / len(v) for label, v in by_label.items()}
    labels = sorted(
        {label for scores in table.values() for label in scores}, key=lambda s: float(s[len("metalr_eta") :])
    )
    ranks = {}
    for target, scores in table.items():
        values = [-scores.get(label, -math.inf) for label in labels]
        ranks[target] = dict(zip(labels, rankdata(values, method="average"), strict=True))
    mean_rank = {label: sum(r[label] for r in ranks.values()) / len(ranks) for label in labels}
    # ties go to the smaller η: its LRs sit on the bounds less often (a bound-to-bound η is no tuned value)
    best = min(labels, key=lambda label: (mean_rank[label], float(label[len("metalr_eta") :])))
    lines = [
        "| η | " + " | ".join(f"{t} val AUC (rank)" for t in table) + " | mean rank |",
        "|---" * (len(table) + 2) + "|",
    ]
    for label in labels:
        cells = [f"{table[t][label]:.4f} ({ranks[t][label]:g})" if label in table[t] else "-" for t in table]
        mark = " **chosen**" if label == best else ""
        lines.append(f"| {label[len('metalr_eta') :]}{mark} | " + " | ".join(cells) + f" | {mean_rank[label]:.1f} |")
    text = "\n".join(lines) + "\n"
    (args.runs_dir / "grid.md").write_text(text)
    print(text)
    result = {"table": table, "ranks": ranks, "mean_rank": mean_rank, "chosen": float(best[len("metalr_eta") :])}
    (args.runs_dir / "grid.json").write_text(json.dumps(result, indent=1, default=float) + "\n")
    return result


def report(args: argparse.Namespace) -> None:
    """Per target: mean ± std of test ACC/AUC, paired difference to `full` with its 95 % t interval, wall time."""
    from medtransfer.metrics import mean_std
    from medtransfer.paired import format_interval, paired_differences, scores_from_runs

    out = []
    for target in TARGETS:
        studies = sorted(args.runs_dir.glob(f"compare_{target}_seed*"))
        rows = [row for study in studies if (study / "study.json").is_file() for row in _finished(study)]
        if not rows:
            continue
        out.append(f"### {target}\n")
        diffs = {
            m: {
                d.strategy: d
                for d in paired_differences(scores_from_runs(((r["label"], r["seed"], r) for r in rows), m), "full")
            }
            for m in ("accuracy", "auc")
        }  # noqa: E501
        header = (
            "| strategy | setting | n | test ACC | test AUC | ΔACC vs full [95 % CI] | ΔAUC vs full [95 % CI] "
            "| wall min/run, median [range] | flags |"
        )
        lines = [header, "|---|---|---|---|---|---|---|---|---|"]
        by_label: dict[str, list[dict]] = {}
        for row in rows:
            by_label.setdefault(row["label"], []).append(row)
        for label, members in by_label.items():

            def ms(key: str, members: list[dict] = members) -> str:
                mean, std = mean_std([r[key] for r in members])
                return f"{mean:.3f} ± {std:.3f}" if len(members) > 1 else f"{mean:.3f}"

            def wall(members: list[dict] = members) -> str:
                """Median and range: robust to a run that shared the CPU with other work."""
                minutes = sorted(r["wall_min"] for r in members)
                return f"{statistics.median(minutes):.2f} [{minutes[0]:.2f}–{minutes[-1]:.2f}]"

            delta = [
                format_interval(diffs[m][label]) if label in diffs[m] else "reference" for m in ("accuracy", "auc")
            ]
            flags = "; ".join(sorted({r["flags"] for r in members if r["flags"]}))
            lines.append(
                f"| {label} | {SETTINGS.get(label, '')} | {len(members)} | {ms('accuracy')} | {ms('auc')} | {delta[0]} | {delta[1]} | "
                f"{wall()} | {flags} |"
            )
        out.append("\n".join(lines) + "\n")
        out.append(_against_control(rows))
        figure = forest_plot(diffs, target, args.runs_dir / f"paired_{target}.png")
        out.append(f"![paired differences, {target}]({figure.name})\n")
    text = "\n".join(out)
    (args.runs_dir / "report.md").write_text(text)
    print(text)


CONTROL = "discriminative_constant"  # MetaLR's initial LRs and constant schedule, no meta step
# the variants that start where the control stays (body 0.1x lr, head lr, AdamW 1e-3): their difference to it is the
# meta step's; metalr_scale1 (one LR everywhere) and metalr_published (Adam, lr 0.01) start elsewhere
SAME_START = ("metalr_heldout", "metalr_train", "metalr_train_next", "metalr_normalized")


def _against_control(rows: list[dict]) -> str:
    """What the meta step adds: the paired difference of each MetaLR variant that starts where its control stays."""
    from medtransfer.paired import format_interval, paired_differences, scores_from_runs

    lines = [f"Against `{CONTROL}` (what the meta step adds):\n", "| strategy | ΔACC [95 % CI] | ΔAUC [95 % CI] |",
             "|---|---|---|"]  # fmt: skip
    found = {
        m: {d.strategy: d for d in paired_differences(scores_from_runs(((r["label"], r["seed"], r) for r in rows), m), CONTROL)}
        for m in ("accuracy", "auc")
    }  # fmt: skip
    for label in SAME_START:
        if label in found["auc"]:
            acc, auc = format_interval(found["accuracy"][label]), format_interval(found["auc"][label])
            lines.append(f"| {label} | {acc} | {auc} |")
    return "\n".join(lines) + "\n"


def forest_plot(diffs: dict, target: str, path: Path) -> Path:
    """Each strategy's paired difference to `full` (test ACC and AUC) with its 95 % t interval."""
    from matplotlib.figure import Figure
    from matplotlib.ticker import MaxNLocator

    from medtransfer.report import save_figure

    labels = list(diffs["auc"])
    fig = Figure(figsize=(7.5, 0.45 * len(labels) + 1.6))
    axes = fig.subplots(1, 2, sharey=True)
    for ax, metric in zip(axes, ("accuracy", "auc"), strict=True):
        for k, label in enumerate(labels):
            d = diffs[metric][label]
            if math.isfinite(d.low):
                ax.errorbar(d.mean, k, xerr=[[d.mean - d.low], [d.high - d.mean]], fmt="o", capsize=3, color="C0")
            elif math.isfinite(d.mean):
                ax.plot(d.mean, k, "o", color="C0")
        ax.axvline(0.0, color="grey", lw=1)
        ax.xaxis.set_major_locator(MaxNLocator(4))
        ax.set_title(f"test {'ACC' if metric == 'accuracy' else 'AUC'} − full (95 % CI)", fontsize=10)
        ax.grid(axis="x", alpha=0.3)
    axes[0].set_yticks(range(len(labels)), labels)
    axes[0].invert_yaxis()
    n = max(d.n for d in diffs["auc"].values())
    fig.suptitle(f"{target}: paired by seed (n = {n})", fontsize=11)
    fig.tight_layout()
    return save_figure(fig, path)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("action", choices=("grid", "choose", "compare", "report"))
    parser.add_argument("--target", choices=sorted(TARGETS), default="breastmnist")
    parser.add_argument("--seed", type=int, default=0, help="the seed of this study (grid, compare)")
    parser.add_argument("--etas", type=float, nargs="+", default=list(ETAS))
    parser.add_argument("--hyper-lr", type=float, help="compare: metalr_hyper_lr of the metalr variants")
    parser.add_argument("--runs-dir", type=Path, default=Path("runs/metalr_study"))
    args = parser.parse_args(argv)
    {"grid": grid, "choose": choose, "compare": compare, "report": report}[args.action](args)


if __name__ == "__main__":
    main()
