"""The `medtransfer` command. Thin on purpose: every sub-command calls one library function.

Training, evaluation and inference run through MONAI bundles (``python -m monai.bundle run``); this command covers
what sits around them: inspecting layer groups, making demo data, and summarising runs over seeds.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path


def _layers(args: argparse.Namespace) -> None:
    from medtransfer.layers import describe, layer_groups
    from medtransfer.models import build_classifier

    model = build_classifier(args.arch, num_classes=args.num_classes, pretrained_ckpt=args.pretrained_ckpt)
    print(describe(layer_groups(model, args.granularity)))


def _demo_data(args: argparse.Namespace) -> None:
    from medtransfer import data

    if args.task == "busi":
        out = data.make_synthetic_busi(
            args.out_dir, n_per_class=args.n_per_class, image_size=args.image_size, seed=args.seed
        )
    else:
        make = {
            "kermany": data.make_synthetic_kermany,
            "pocus": data.make_synthetic_pocus,
            "lits": data.make_synthetic_lits,
        }
        out = make[args.task](args.out_dir, seed=args.seed)
    print(f"wrote a SYNTHETIC {args.task} demo set (not medical data) to {out}")


def _summarize(args: argparse.Namespace) -> None:
    from medtransfer.report import format_summary, save_json, summarize_runs

    summary = summarize_runs(args.run_dirs, metrics_file=args.metrics_file, keys=tuple(args.keys))
    table = format_summary(summary)
    print(table)
    if args.out:
        out = Path(args.out)
        out.parent.mkdir(parents=True, exist_ok=True)
        out.with_suffix(".md").write_text(table + "\n")
        save_json(summary, out.with_suffix(".json"))
        print(f"saved {out.with_suffix('.md')} and {out.with_suffix('.json')}")


def _cv(args: argparse.Namespace) -> None:
    import logging

    from medtransfer.cv import parse_overrides, run_cross_validation

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s: %(message)s")
    run_cross_validation(
        args.bundle,
        folds=args.folds,
        config_files=args.config,
        overrides=parse_overrides(args.overrides),
        runs_dir=args.runs_dir,
        name=args.name,
        resume=args.resume,
        only_folds=args.fold,
    )


def _pocus_frames(args: argparse.Namespace) -> None:
    from medtransfer.data.pocus_datalist import extract_pocus_frames

    out = extract_pocus_frames(
        args.dataset_dir, args.out_dir, num_folds=args.folds, seed=args.seed, probe=args.probe, fps=args.fps,
        max_frames=args.max_frames, image_size=args.image_size,
    )  # fmt: skip
    print(f"wrote patient-grouped folds of frames to {out} (read them with --dataset_format pocus_frames)")


def _data_root(args: argparse.Namespace) -> None:
    from medtransfer.data.paths import DATA_ENV, data_root

    root = data_root()
    print(f"{root} ({'found' if root.is_dir() else 'missing'}; set {DATA_ENV} to change it)")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="medtransfer", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("layers", help="print a model's layer groups (the unit of MetaLR, freezing and transferability)")
    p.add_argument("--arch", default="resnet18")
    p.add_argument("--num-classes", type=int, default=2)
    p.add_argument("--granularity", default="block", choices=("block", "stage"))
    p.add_argument("--pretrained-ckpt", default=None, help="also check that this local checkpoint loads")
    p.set_defaults(func=_layers)

    p = sub.add_parser("demo-data", help="write a synthetic demo set in a task's real file layout")
    p.add_argument("out_dir")
    p.add_argument("--task", default="busi", choices=("busi", "kermany", "pocus", "lits"))
    p.add_argument("--n-per-class", type=int, default=24, help="busi only")
    p.add_argument("--image-size", type=int, default=128, help="busi only")
    p.add_argument("--seed", type=int, default=0)
    p.set_defaults(func=_demo_data)

    p = sub.add_parser("summarize", help="mean ± std of test metrics over runs (seeds or folds)")
    p.add_argument("run_dirs", nargs="+")
    p.add_argument("--metrics-file", default="test_metrics.json")
    p.add_argument("--keys", nargs="+", default=["accuracy", "auc", "macro_f1"])
    p.add_argument("--out", default=None, help="also save OUT.md and OUT.json")
    p.set_defaults(func=_summarize)

    p = sub.add_parser(
        "cv",
        help="k-fold cross-validation of a bundle: train + evaluate every test fold, pool the confusion matrices",
        epilog="Further --key value pairs are bundle overrides, e.g. --epochs 20 --dataset_dir ../shared/data/pocus",
        allow_abbrev=False,
    )
    p.add_argument("--bundle", required=True, help="bundle folder, e.g. bundles/pocus_classification")
    p.add_argument("--folds", type=int, default=5)
    p.add_argument("--config", action="append", default=[], help="config fragment merged after train.json (repeat)")
    p.add_argument("--name", default=None, help="cross-validation folder name (default cv_<timestamp>)")
    p.add_argument("--runs-dir", default=None, help="parent folder (default runs/<bundle name>)")
    p.add_argument("--resume", action="store_true", help="continue an interrupted cross-validation (--name)")
    p.add_argument("--fold", type=int, action="append", default=None, help="run only this fold now (repeat)")
    p.set_defaults(func=_cv)

    p = sub.add_parser("pocus-frames", help="decode POCUS clips into patient-grouped fold folders of PNG frames")
    p.add_argument("dataset_dir", help="folder holding pocus_videos/")
    p.add_argument("out_dir", help="new folder: <out>/fold<i>/<class>/<clip>_<frame>.png")
    p.add_argument("--folds", type=int, default=5)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--probe", default="convex", choices=("convex", "linear", "all"))
    p.add_argument("--fps", type=float, default=3.0)
    p.add_argument("--max-frames", type=int, default=30)
    p.add_argument("--image-size", type=int, default=None, help="resize frames to this square size (default: keep)")
    p.set_defaults(func=_pocus_frames)

    p = sub.add_parser("data-root", help="where the real data is looked for")
    p.set_defaults(func=_data_root)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args, rest = parser.parse_known_args(argv)
    if args.command == "cv":
        args.overrides = rest
    elif rest:
        parser.error(f"unrecognized arguments: {' '.join(rest)}")
    from medtransfer.errors import MedTransferError

    try:
        args.func(args)
    except MedTransferError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
