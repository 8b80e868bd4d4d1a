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
        from medtransfer.atomic import write_text_atomic

        out = Path(args.out)
        write_text_atomic(out.with_suffix(".md"), table + "\n")
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


def _transfer(args: argparse.Namespace) -> None:
    import json
    import logging

    from medtransfer.cv import parse_overrides

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s: %(message)s")
    if args.step in ("pretrain", "finetune"):
        from medtransfer.transferability.study import train_and_evaluate

        settings = {"dataset_name": args.dataset, "dataset_dir": args.root, "run_name": args.name, "arch": args.arch}
        settings["runs_dir"] = args.runs_dir
        if args.step == "finetune":
            settings["pretrained_ckpt"] = str(Path(args.pretrained_run) / "model.pt")
            settings["max_train"] = args.max_train
        run = train_and_evaluate(args.bundle, {**settings, **parse_overrides(args.overrides)})
        print(f"{args.step} run: {run} (init.pt = starting weights, model.pt = best on validation)")
    elif args.step == "measure":
        from medtransfer.transferability import format_transferability, measure_files, save_transferability

        result = measure_files(
            args.arch, args.init, args.pretrained, args.finetuned, finetune_init_path=args.finetune_init, mode=args.mode
        )
        print(format_transferability(result))
        if args.out:
            print(f"saved {', '.join(str(p) for p in save_transferability(result, args.out).values())}")
    elif args.step == "study":
        from medtransfer.transferability.study import measure_runs, study_row, study_table

        rows, results = [], {}
        for spec in args.target:
            name, _, run = spec.partition("=")
            if not run:
                raise SystemExit(f"--target takes NAME=FINETUNE_RUN_DIR, got {spec!r}")
            results[name] = measure_runs(args.pretrain_run, run, mode=args.mode)
            rows.append(study_row(name, args.pretrain_run, run, mode=args.mode, result=results[name]))
        print(study_table(rows, results, args.out))
    else:  # regress, correlate: on the rows a study saved (or any JSON list of rows)
        data = json.loads(Path(args.rows).read_text())
        rows = data["rows"] if isinstance(data, dict) else data
        if args.step == "regress":
            from medtransfer.transferability.regression import (
                fit_transferability_regression,
                format_regression,
                plot_partial_effects,
            )

            fit = fit_transferability_regression(rows)
            print(format_regression(fit))
            if args.out:
                print(f"saved {plot_partial_effects(fit, rows, args.out)}")
        else:
            from medtransfer.transferability.scores import score_correlations

            for score, values in score_correlations(rows).items():
                print(
                    f"{score} vs T over {len(rows)} datasets: Spearman {values['spearman']:.3f}, "
                    f"Kendall {values['kendall']:.3f}"
                )


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

    p = sub.add_parser("transfer", help="layer-wise transferability: pretrain, finetune, measure, study, regress")
    steps = p.add_subparsers(dest="step", required=True)
    for step, text in (("pretrain", "train from a kept random init (init.pt = θr, model.pt = θA)"),
                       ("finetune", "fine-tune θA on a target (init.pt = θB0, model.pt = θFB)")):  # fmt: skip
        q = steps.add_parser(
            step, help=text, allow_abbrev=False, epilog="Further --key value pairs are bundle overrides"
        )
        q.add_argument("--dataset", required=True, help="cifar10, caltech101, ..., pocus, imagefolder, busi, medmnist")
        q.add_argument("--root", required=True, help="the dataset's folder (or .npz file)")
        q.add_argument("--name", required=True, help="run name")
        q.add_argument("--arch", default="resnet18")
        q.add_argument("--bundle", default="bundles/natural_transferability")
        q.add_argument("--runs-dir", default="runs/natural_transferability")
        if step == "finetune":
            q.add_argument("--pretrained-run", required=True, help="the pre-training run directory (its model.pt)")
            q.add_argument("--max-train", type=int, default=None, help="stratified subset of the training split")
        q.set_defaults(func=_transfer)
    q = steps.add_parser("measure", help="per-layer T = D(θr, θFB) / D(θA, θFB) from four state dicts")
    q.add_argument("--arch", default="resnet18")
    q.add_argument("--init", required=True, help="θr: the random initialisation pre-training started from")
    q.add_argument("--pretrained", required=True, help="θA")
    q.add_argument("--finetuned", required=True, help="θFB")
    q.add_argument("--finetune-init", default=None, help="θB0, needed when the head changed size")
    q.add_argument("--mode", default="paper", choices=("paper", "full"))
    q.add_argument("--out", default=None, help="save transferability.csv/.json/.png here")
    q.set_defaults(func=_transfer)
    q = steps.add_parser("study", help="T, G, D, N, LogME, LEEP for several fine-tuning runs of one pre-training")
    q.add_argument("--pretrain-run", required=True)
    q.add_argument("--target", action="append", required=True, help="NAME=FINETUNE_RUN_DIR (repeat)")
    q.add_argument("--mode", default="paper", choices=("paper", "full"))
    q.add_argument("--out", required=True)
    q.set_defaults(func=_transfer)
    for step, text in (("regress", "fit log T on standardised G, D, log N"),
                       ("correlate", "rank correlation of LogME and LEEP with T")):  # fmt: skip
        q = steps.add_parser(step, help=text)
        q.add_argument("rows", help="study.json (or a JSON list of rows with dataset, T, G, D, N, LogME, LEEP)")
        if step == "regress":
            q.add_argument("--out", default=None, help="save the partial-effects plot (PNG) here")
        q.set_defaults(func=_transfer)

    p = sub.add_parser("data-root", help="where the real data is looked for")
    p.set_defaults(func=_data_root)
    return parser


def _user_error(exc: BaseException):
    """The MedTransferError behind an exception, if any: bundle runs wrap errors raised inside their config
    expressions in RuntimeError("Failed to evaluate ..."), which would bury the message that names the file and
    the fix under a long traceback."""
    from medtransfer.errors import MedTransferError

    seen = set()
    while exc is not None and id(exc) not in seen:
        if isinstance(exc, MedTransferError):
            return exc
        seen.add(id(exc))
        exc = exc.__cause__ or exc.__context__
    return None


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args, rest = parser.parse_known_args(argv)
    if args.command == "cv" or getattr(args, "step", None) in ("pretrain", "finetune"):
        args.overrides = rest
    elif rest:
        parser.error(f"unrecognized arguments: {' '.join(rest)}")
    try:
        args.func(args)
    except Exception as exc:
        err = _user_error(exc)
        if err is None:
            raise
        print(f"error: {err}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
