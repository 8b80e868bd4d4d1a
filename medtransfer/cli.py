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
    from medtransfer.data import make_synthetic_busi

    out = make_synthetic_busi(args.out_dir, n_per_class=args.n_per_class, image_size=args.image_size, seed=args.seed)
    print(f"wrote a SYNTHETIC BUSI-like demo set (not medical data) to {out}")


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

    p = sub.add_parser("demo-data", help="write the synthetic BUSI-like demo set (BUSI file layout)")
    p.add_argument("out_dir")
    p.add_argument("--n-per-class", type=int, default=24)
    p.add_argument("--image-size", type=int, default=128)
    p.add_argument("--seed", type=int, default=0)
    p.set_defaults(func=_demo_data)

    p = sub.add_parser("summarize", help="mean ± std of test metrics over runs (seeds or folds)")
    p.add_argument("run_dirs", nargs="+")
    p.add_argument("--metrics-file", default="test_metrics.json")
    p.add_argument("--keys", nargs="+", default=["accuracy", "auc", "macro_f1"])
    p.add_argument("--out", default=None, help="also save OUT.md and OUT.json")
    p.set_defaults(func=_summarize)

    p = sub.add_parser("data-root", help="where the real data is looked for")
    p.set_defaults(func=_data_root)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    from medtransfer.errors import MedTransferError

    try:
        args.func(args)
    except MedTransferError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
