"""The `medtransfer` command. Thin on purpose: every sub-command calls one library function.

Training, evaluation and inference run through MONAI bundles (``python -m monai.bundle run``); this command covers
what sits around them: inspecting layer groups, making demo data, and summarising runs over seeds.
"""

from __future__ import annotations

import argparse
import copy
import sys
from pathlib import Path

# = medtransfer.report.PLOT_FORMATS, not imported here because that loads matplotlib for every command
PLOT_FORMATS = ("png", "pdf", "svg")


def _layers(args: argparse.Namespace) -> None:
    from medtransfer.errors import MedTransferError
    from medtransfer.layers import describe, layer_groups
    from medtransfer.models import CLASSIFIERS, TIMM_PREFIX, build_classifier, build_unet

    if args.arch_name and args.arch not in ("resnet18", args.arch_name):
        raise SystemExit(f"medtransfer layers: ARCH {args.arch_name!r} and --arch {args.arch!r} disagree; give one")
    arch = args.arch_name or args.arch
    if arch == "unet":
        model = build_unet(
            spatial_dims=args.spatial_dims, in_channels=args.in_channels, num_classes=args.num_classes,
            pretrained_ckpt=args.pretrained_ckpt,
        )  # fmt: skip
    elif arch in CLASSIFIERS or arch.startswith(TIMM_PREFIX):
        try:
            model = build_classifier(arch, num_classes=args.num_classes, pretrained_ckpt=args.pretrained_ckpt)
        except ValueError as err:  # an unknown timm name; checkpoint errors are reported by main()
            if isinstance(err, MedTransferError):
                raise
            raise SystemExit(f"medtransfer layers: {err}") from err
    else:
        raise SystemExit(
            f"medtransfer layers: unknown architecture {arch!r}; choose one of {', '.join(CLASSIFIERS)}, "
            "timm:<model name>, unet"
        )
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

    summary = summarize_runs(args.run_dirs, metrics_file=args.metrics_file, keys=args.keys)
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

    from medtransfer.cv import run_cross_validation
    from medtransfer.launch import parse_overrides

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


def _placement(args: argparse.Namespace):
    from medtransfer.workflows.study import Placement

    devices = args.devices.split(",") if args.devices else None
    return Placement(name=args.name, runs_dir=args.runs_dir, shard=args.shard, devices=devices)


def _seed_list(args: argparse.Namespace) -> list[int]:
    return list(range(args.seeds)) if args.seed is None else list(args.seed)


def _study(args: argparse.Namespace, what: str, collect, run, **options) -> None:
    """The shared body of ``compare`` and ``sweep bidirectional``: collect a finished study, or run (continue) one."""
    import logging

    from medtransfer.launch import parse_overrides

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s: %(message)s")
    if args.collect:
        if not args.study:
            raise SystemExit(f"medtransfer {what} --collect needs the study folder: --collect --study DIR")
        collect(args.study)
        return
    if not args.bundle:
        raise SystemExit(f"medtransfer {what} needs --bundle NAME (an installed bundle or a bundle folder)")
    run(args.bundle, seeds=_seed_list(args), folds=args.folds, overrides=parse_overrides(args.overrides),
        placement=_placement(args), **options)  # fmt: skip


def _compare(args: argparse.Namespace) -> None:
    from medtransfer.workflows.compare import collect_comparison, run_comparison

    strategies = [s for s in args.strategies.split(",") if s]
    _study(args, "compare", collect_comparison, run_comparison, strategies=strategies)


def _sweep(args: argparse.Namespace) -> None:
    from medtransfer.workflows.sweep import collect_sweep, run_bidirectional_sweep

    _study(args, "sweep bidirectional", lambda study: collect_sweep(study, metric=args.metric),
           run_bidirectional_sweep)  # fmt: skip


def _study_options(p: argparse.ArgumentParser, default_seeds: int) -> None:
    """The options every multi-run study shares: seeds or folds, where, slices, devices, collect."""
    p.add_argument(
        "--bundle", default=None, help="an installed bundle name or a bundle folder (required unless --collect)"
    )
    p.add_argument("--seeds", type=int, default=default_seeds, help="run seeds 0 .. N-1")
    p.add_argument("--seed", type=int, action="append", default=None, help="run exactly this seed (repeat)")
    p.add_argument("--folds", type=int, default=None,
                   help="cross-validate every run over this many patient-grouped test folds (POCUS) instead of one "
                   "train/val/test split")  # fmt: skip
    p.add_argument("--name", default=None, help="study folder name (default: a timestamp); rerun with it to resume")
    p.add_argument("--runs-dir", default=None, help="parent folder (default runs/<bundle name>)")
    p.add_argument("--shard", type=_shard, default=None, metavar="I/N",
                   help="run only the I-th of N slices (1-based), e.g. from a cluster job array")  # fmt: skip
    p.add_argument("--devices", default=None, metavar="0,1,...",
                   help="run slices in parallel, one process per CUDA device")  # fmt: skip
    p.add_argument("--collect", action="store_true", help="only build the table and plot from finished runs")
    p.add_argument("--study", default=None, help="with --collect: the study folder")


def _shard(text: str) -> tuple[int, int]:
    from medtransfer.workflows.study import parse_shard

    try:
        return parse_shard(text)
    except ValueError as e:
        raise argparse.ArgumentTypeError(str(e)) from None


def _pocus_frames(args: argparse.Namespace) -> None:
    from medtransfer.data.pocus_datalist import extract_pocus_frames

    out = extract_pocus_frames(
        args.dataset_dir, args.out_dir, num_folds=args.folds, seed=args.seed, probe=args.probe, fps=args.fps,
        max_frames=args.max_frames, image_size=args.image_size, unknown_files=args.unknown_files,
        include_images=args.include_images,
    )  # fmt: skip
    print(f"wrote patient-grouped folds of frames to {out} (read them with --dataset_format pocus_frames)")


def _transfer(args: argparse.Namespace) -> None:
    import json
    import logging

    from medtransfer.launch import parse_overrides

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s: %(message)s")
    if args.step in ("pretrain", "finetune", "join"):
        from medtransfer.runs import check_run_name
        from medtransfer.transferability.study import train_and_evaluate

        settings = {"dataset_format": args.dataset_format, "dataset_dir": args.root}
        settings["run_name"] = check_run_name(args.name)
        settings |= {"arch": args.arch, "runs_dir": args.runs_dir}
        if args.step != "pretrain":
            settings["pretrained_ckpt"] = str(Path(args.pretrained_run) / "model.pt")
            settings["max_train"] = args.max_train
        settings |= parse_overrides(args.overrides)
        if args.step == "join":
            from medtransfer.transferability.join import JOIN_STRATEGIES, run_join

            finished = {}
            for spec in args.run or ():
                key, _, run = spec.partition("=")
                if not run:
                    raise SystemExit(f"--run takes STRATEGY=RUN_DIR, got {spec!r}")
                finished[key] = run
            strategies = args.strategy if args.strategy is not None else [] if finished else list(JOIN_STRATEGIES)
            print(run_join(args.bundle, args.pretrained_run, settings, strategies, args.out, args.plain_run, args.mode,
                           finished))  # fmt: skip
            return
        run = train_and_evaluate(args.bundle, settings)
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
        joins = dict(spec.partition("=")[::2] for spec in args.join or ())
        for spec in args.target:
            name, _, run = spec.partition("=")
            if not run:
                raise SystemExit(f"--target takes NAME=FINETUNE_RUN_DIR, got {spec!r}")
            results[name] = measure_runs(args.pretrain_run, run, mode=args.mode)
            rows.append(study_row(name, args.pretrain_run, run, args.mode, results[name], joins.get(name)))
        unknown = set(joins) - set(results)
        if unknown:
            raise SystemExit(f"--join names {sorted(unknown)} that no --target has")
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


def _doctor(args: argparse.Namespace) -> int:
    from medtransfer.doctor import diagnose

    diagnosis = diagnose(args.dataset_dir, args.dataset_format, split_seed=args.split_seed)
    diagnosis.save(json_path=args.json, csv_path=args.csv)
    print(diagnosis.report())
    return diagnosis.exit_status


def _data_root(args: argparse.Namespace) -> None:
    from medtransfer.data.paths import DATA_ENV, data_root

    root = data_root()
    print(f"{root} ({'found' if root.is_dir() else 'missing'}; set {DATA_ENV} to change it)")


def _run(args: argparse.Namespace) -> None:
    from medtransfer.launch import run

    name = run(
        args.bundle, args.strategy, workflow=args.workflow, evaluate=args.evaluate, overrides=args.overrides,
        gpus=args.gpus, distributed_worker=args.distributed_worker,
    )  # fmt: skip
    if not args.distributed_worker:
        processes = f" on {args.gpus} processes" if args.gpus > 1 else ""
        print(f"run {name} finished ({args.workflow}{' + evaluate' if args.evaluate else ''}{processes})")


def _bundle(args: argparse.Namespace) -> None:
    from medtransfer import bundling

    if args.action == "list":
        from medtransfer.report import markdown_table

        rows = [[b.name, b.version, b.task] for b in bundling.list_bundles()]
        print(markdown_table(["bundle", "version", "task"], rows))
        print(f"\nstrategies: {', '.join(bundling.strategy_names())}  (medtransfer run NAME --strategy S)")
    elif args.action == "path":
        print(bundling.bundle_path(args.name))
    elif args.action == "compose":
        stale = bundling.compose_bundles(check=args.check)
        verb = "out of date" if args.check else "rewritten"
        print("\n".join(f"{verb}: {p}" for p in stale) or "every composed bundle config is up to date")
        if args.check and stale:
            raise SystemExit("run `medtransfer bundle compose` (or `make bundles`) and commit the result")
    else:
        target = bundling.init_bundle(args.name, args.dir, force=args.force)
        print(f"copied {args.name} to {target}; run it from anywhere with\n"
              f"  python -m monai.bundle run --config_file {target / 'configs' / 'train.json'}\n"
              f"  medtransfer run {target} [--strategy {target / 'configs' / 'strategies' / 'metalr.json'}]")  # fmt: skip


class HelpFormatter(argparse.ArgumentDefaultsHelpFormatter):
    """Every option's help ends with its default, also for options given without a help text; defaults that mean
    "off" or "not given" (None, False, an empty list) are not shown, since "(default: None)" tells nothing."""

    def _get_help_string(self, action: argparse.Action) -> str:
        if _silent_default(action.default):
            return action.help or ""
        return super()._get_help_string(action) or ""

    def _format_action(self, action: argparse.Action) -> str:
        if not action.help and action.option_strings and not _silent_default(action.default):
            action = copy.copy(action)
            action.help = "(default: %(default)s)"
        return super()._format_action(action)


def _silent_default(default: object) -> bool:
    return default is None or default is False or default is argparse.SUPPRESS or default == []


class Parser(argparse.ArgumentParser):
    """An ArgumentParser whose sub-commands (``add_subparsers`` makes them of the same class) show defaults."""

    def __init__(self, *args, **kwargs) -> None:
        kwargs.setdefault("formatter_class", HelpFormatter)
        super().__init__(*args, **kwargs)


def _dpi(text: str) -> int:
    from medtransfer.report import parse_dpi

    try:
        return parse_dpi(text)
    except ValueError as e:
        raise argparse.ArgumentTypeError(str(e)) from None


def _apply_plot_options(args: argparse.Namespace) -> None:
    """--plot-format / --dpi through medtransfer.report.configure_plots, which keeps them in the environment: plots
    written here and in the bundle runs a command starts (in-process or as child processes) follow them."""
    if args.plot_format or args.dpi is not None:
        from medtransfer.report import configure_plots

        configure_plots(formats=args.plot_format, dpi=args.dpi)


def build_parser() -> argparse.ArgumentParser:
    parser = Parser(
        prog="medtransfer",
        description=__doc__.splitlines()[0],
        epilog="Global options go before the sub-command: medtransfer --plot-format pdf --dpi 300 cv ...",
    )
    parser.add_argument(
        "--plot-format", action="append", choices=PLOT_FORMATS, default=None,
        help="format of every plot written, also by the bundle runs started (MEDTRANSFER_PLOT_FORMAT); repeat to "
        "write several (default: png)",
    )  # fmt: skip
    parser.add_argument(
        "--dpi", type=_dpi, default=None, metavar="N",
        help="plot resolution in dots per inch: PNG pixel size, raster parts of PDF/SVG (MEDTRANSFER_PLOT_DPI; "
        "default: 120)",
    )  # fmt: skip
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("layers", help="print a model's layer groups (the unit of MetaLR, freezing and transferability)")
    p.add_argument(
        "arch_name", nargs="?", default=None, metavar="ARCH",
        help="a torchvision classifier (resnet18, resnet50, densenet121, vit_b_16, ...), efficientnet_lite0, "
        "timm:<model_name>, or unet (MONAI's residual U-Net); default: --arch",
    )  # fmt: skip
    p.add_argument("--arch", default="resnet18", help="the same as ARCH")
    p.add_argument("--num-classes", type=int, default=2, help="classes of the head (unet: output channels)")
    p.add_argument("--granularity", default="block", choices=("block", "stage"),
                   help="block: a group per residual block or U-Net level; stage: a group per stage")  # fmt: skip
    p.add_argument("--spatial-dims", type=int, default=2, choices=(2, 3), help="unet only: a 2D or 3D network")
    p.add_argument("--in-channels", type=int, default=1, help="unet only: input channels (1 for CT)")
    p.add_argument("--pretrained-ckpt", default=None, help="also check that this local checkpoint loads")
    p.set_defaults(func=_layers)

    p = sub.add_parser("demo-data", help="write a synthetic demo set in a task's real file layout")
    p.add_argument("out_dir", help="folder to write the demo set to")
    p.add_argument("--task", default="busi", choices=("busi", "kermany", "pocus", "lits"),
                   help="whose file layout the demo set has")  # fmt: skip
    p.add_argument("--n-per-class", type=int, default=24, help="images per class (busi only)")
    p.add_argument("--image-size", type=int, default=128, help="image side in pixels (busi only)")
    p.add_argument("--seed", type=int, default=0, help="seed of the generator: the same seed writes the same set")
    p.set_defaults(func=_demo_data)

    p = sub.add_parser("summarize", help="mean ± std of test metrics over runs (seeds or folds)")
    p.add_argument("run_dirs", nargs="+", help="run folders, each holding the metrics file")
    p.add_argument("--metrics-file", default="test_metrics.json",
                   help="metrics file in each run, as the bundle's evaluate config writes it")  # fmt: skip
    p.add_argument(
        "--keys", nargs="+", default=None,
        help="metrics to summarise; dotted paths reach nested ones (dice.liver). Default: accuracy auc macro_f1 "
        "when every run has them, else every metric the runs share (segmentation: mean_dice, dice.<label>)",
    )  # fmt: skip
    p.add_argument("--out", default=None, help="also save OUT.md and OUT.json")
    p.set_defaults(func=_summarize)

    p = sub.add_parser(
        "cv",
        help="k-fold cross-validation of a bundle: train + evaluate every test fold, pool the confusion matrices",
        epilog="Further --key value pairs are bundle overrides, e.g. --epochs 20 --dataset_dir ../shared/data/pocus",
        allow_abbrev=False,
    )
    p.add_argument("--bundle", required=True, help="bundle folder, e.g. bundles/pocus_classification")
    p.add_argument("--folds", type=int, default=5, help="number of test folds k")
    p.add_argument("--config", action="append", default=[], help="config fragment merged after train.json (repeat)")
    p.add_argument("--name", default=None, help="cross-validation folder name (default cv_<timestamp>)")
    p.add_argument("--runs-dir", default=None, help="parent folder (default runs/<bundle name>)")
    p.add_argument("--resume", action="store_true", help="continue an interrupted cross-validation (--name)")
    p.add_argument("--fold", type=int, action="append", default=None, help="run only this fold now (repeat)")
    p.set_defaults(func=_cv)

    p = sub.add_parser(
        "compare",
        help="which fine-tuning strategy works for this data: every strategy x seeds, a table and a bar plot",
        epilog="Further --key value pairs are bundle overrides for every run, e.g. --epochs 20 --arch "
        "efficientnet_lite0 --pretrained imagenet",
        allow_abbrev=False,
    )
    from medtransfer.workflows.compare import DEFAULT_STRATEGIES

    p.add_argument("--strategies", default=",".join(DEFAULT_STRATEGIES),
                   help="comma-separated strategy fragments (names or .json files)")  # fmt: skip
    _study_options(p, default_seeds=3)
    p.set_defaults(func=_compare)

    p = sub.add_parser("sweep", help="multi-run sweeps of a bundle")
    kinds = p.add_subparsers(dest="sweep", required=True)
    q = kinds.add_parser(
        "bidirectional",
        help="fine-tune only the first k or only the last k layer groups, k = 0 .. L: which layers must move",
        epilog="Further --key value pairs are bundle overrides for every run",
        allow_abbrev=False,
    )
    _study_options(q, default_seeds=1)
    q.add_argument(
        "--metric", default="auc", choices=("auc", "accuracy", "macro_f1", "mean_dice"), help="the metric plotted"
    )
    q.set_defaults(func=_sweep)

    p = sub.add_parser("pocus-frames", help="decode POCUS clips into patient-grouped fold folders of PNG frames")
    p.add_argument("dataset_dir", help="folder holding pocus_videos/")
    p.add_argument("out_dir", help="new folder: <out>/fold<i>/<class>/<clip>_<frame>.png")
    p.add_argument("--folds", type=int, default=5, help="number of patient-grouped folds")
    p.add_argument("--seed", type=int, default=0, help="seed of the assignment of patients to folds")
    p.add_argument("--probe", default="convex", choices=("convex", "linear", "all"), help="clips of which probe")
    p.add_argument("--fps", type=float, default=3.0, help="frames taken per second of video")
    p.add_argument("--max-frames", type=int, default=30, help="at most this many frames per clip")
    p.add_argument("--image-size", type=int, default=None, help="resize frames to this square size (default: keep)")
    p.add_argument(
        "--unknown-files",
        "--unknown_files",
        default="error",
        choices=("error", "skip"),
        help="a file with no class in dataset_metadata.csv nor a known name prefix: stop, or leave it out",
    )
    p.add_argument(
        "--include-images",
        "--include_images",
        action="store_true",
        help="also take the still images of pocus_images/ (one frame each)",
    )
    p.set_defaults(func=_pocus_frames)

    p = sub.add_parser("transfer", help="layer-wise transferability: pretrain, finetune, measure, study, regress")
    steps = p.add_subparsers(dest="step", required=True)
    for step, text in (("pretrain", "train from a kept random init (init.pt = θr, model.pt = θA)"),
                       ("finetune", "fine-tune θA on a target (init.pt = θB0, model.pt = θFB)"),
                       ("join", "fine-tune θA with MetaLR; do its learned layer-wise LRs follow T?")):  # fmt: skip
        q = steps.add_parser(
            step, help=text, allow_abbrev=False, epilog="Further --key value pairs are bundle overrides"
        )
        q.add_argument(
            "--dataset-format", "--dataset", dest="dataset_format", required=True,
            help="cifar10, caltech101, ..., pocus, imagefolder, busi, medmnist (medtransfer.data.format_names())",
        )  # fmt: skip
        q.add_argument("--root", required=True, help="the dataset's folder (or .npz file)")
        q.add_argument("--name", required=True, help="run name")
        q.add_argument("--arch", default="resnet18")
        q.add_argument("--bundle", default="bundles/natural_transferability")
        q.add_argument("--runs-dir", default="runs/natural_transferability")
        if step != "pretrain":
            q.add_argument("--pretrained-run", required=True, help="the pre-training run directory (its model.pt)")
            q.add_argument("--max-train", type=int, default=None, help="stratified subset of the training split")
        if step == "join":
            q.add_argument("--strategy", action="append", default=None,
                           help="MetaLR fragment(s) to fine-tune with (repeat; default metalr and metalr_normalized)")
            q.add_argument("--plain-run", default=None,
                           help="a plain fine-tuning run of the same target: its T is the reference without LR coupling")
            q.add_argument("--run", action="append", default=None, metavar="STRATEGY=RUN_DIR",
                           help="join a finished run of the same target too (e.g. from medtransfer compare; repeat)")
            q.add_argument("--mode", default="paper", choices=("paper", "full", "tensor_mean"))
            q.add_argument("--out", default=None, help="where join.md/.json/.png go (default RUNS_DIR/NAME_join)")
        q.set_defaults(func=_transfer)
    q = steps.add_parser("measure", help="per-layer T = D(θr, θFB) / D(θA, θFB) from four state dicts")
    q.add_argument("--arch", default="resnet18")
    q.add_argument("--init", required=True, help="θr: the random initialisation pre-training started from")
    q.add_argument("--pretrained", required=True, help="θA")
    q.add_argument("--finetuned", required=True, help="θFB")
    q.add_argument("--finetune-init", default=None, help="θB0, needed when the head changed size")
    q.add_argument("--mode", default="paper", choices=("paper", "full", "tensor_mean"))
    q.add_argument("--out", default=None, help="save transferability.csv/.json/.png here")
    q.set_defaults(func=_transfer)
    q = steps.add_parser("study", help="T, G, D, N, LogME, LEEP for several fine-tuning runs of one pre-training")
    q.add_argument("--pretrain-run", required=True)
    q.add_argument("--target", action="append", required=True, help="NAME=FINETUNE_RUN_DIR (repeat)")
    q.add_argument("--join", action="append", default=None,
                   help="NAME=JOIN_DIR: a `transfer join` output of that target, for the ρ(T, learned LR) columns")  # fmt: skip
    q.add_argument("--mode", default="paper", choices=("paper", "full", "tensor_mean"))
    q.add_argument("--out", required=True)
    q.set_defaults(func=_transfer)
    for step, text in (("regress", "fit log T on standardised G, D, log N"),
                       ("correlate", "rank correlation of LogME and LEEP with T")):  # fmt: skip
        q = steps.add_parser(step, help=text)
        q.add_argument("rows", help="study.json (or a JSON list of rows with dataset, T, G, D, N, LogME, LEEP)")
        if step == "regress":
            q.add_argument("--out", default=None, help="save the partial-effects plot (PNG) here")
        q.set_defaults(func=_transfer)

    p = sub.add_parser(
        "run",
        help="run a bundle (installed name or folder) with strategy fragments and --key value overrides",
        description="Train (or evaluate, or infer with) a bundle. Further --key value pairs are bundle overrides, "
        "read exactly as `python -m monai.bundle run` reads them (e.g. --epochs 5 --dataset_dir DIR), plus "
        "monai.bundle's own options such as --tracking mlflow.",
        allow_abbrev=False,
    )
    p.add_argument("bundle", help="installed bundle name (see `medtransfer bundle list`) or a bundle folder")
    p.add_argument("--strategy", action="append", default=[], help="strategy fragment name or .json file (repeat)")
    p.add_argument("--workflow", default="train", choices=("train", "evaluate", "inference"),
                   help="evaluate/inference use a finished run (--run_name, default: the newest)")  # fmt: skip
    p.add_argument("--evaluate", action="store_true", help="after training, evaluate the run on the test split")
    p.add_argument("--traceback", action="store_true", help="show the full traceback of an error")
    p.add_argument("--gpus", type=int, default=1,
                   help="train as N data-parallel processes under torchrun (one per GPU; gloo CPU processes without "
                        "CUDA), with the bundle's configs/multi_gpu_train.json")  # fmt: skip
    p.add_argument("--distributed-worker", action="store_true", help=argparse.SUPPRESS)  # set by --gpus for its workers
    p.set_defaults(func=_run)

    p = sub.add_parser("bundle", help="the bundles that ship with medtransfer: list, path, init")
    actions = p.add_subparsers(dest="action", required=True)
    q = actions.add_parser("list", help="name, version and task of every bundle, and the strategy fragments")
    q.set_defaults(func=_bundle)
    q = actions.add_parser("path", help="the folder of an installed bundle")
    q.add_argument("name")
    q.set_defaults(func=_bundle)
    q = actions.add_parser("init", help="copy a bundle into DIR as a self-contained MONAI bundle to adapt")
    q.add_argument("name")
    q.add_argument("dir")
    q.add_argument("--force", action="store_true", help="write into a non-empty DIR")
    q.set_defaults(func=_bundle)
    q = actions.add_parser("compose", help="(development) rewrite the bundles' configs from configs/parts/")
    q.add_argument("--check", action="store_true", help="only list the configs that are out of date")
    q.set_defaults(func=_bundle)

    p = sub.add_parser("data-root", help="where the real data is looked for")
    p.set_defaults(func=_data_root)

    p = sub.add_parser(
        "doctor",
        help="list every problem of a dataset that would stop or spoil a training run, in one table",
        description="Read a dataset as a training run would (same reader, split rule and split seed) and list every "
        "problem found: unreadable files, empty or single-image classes, masks without images, label/shape "
        "mismatches, duplicates across splits. Exits 1 when any problem would stop a run.",
    )
    p.add_argument("dataset_dir", help="the dataset folder (a MedMNIST .npz or datalist JSON file itself)")
    p.add_argument(
        "--format", "--dataset_format", dest="dataset_format", required=True, metavar="FORMAT",
        help="busi, medmnist, imagefolder, pocus_videos, pocus_frames, the natural-image sets "
        "(medtransfer.data.format_names()), or lits, msd, datalist",
    )  # fmt: skip
    p.add_argument("--split-seed", "--split_seed", dest="split_seed", type=int, default=0, metavar="N",
                   help="the split seed of the run to check (the bundles' split_seed)")  # fmt: skip
    p.add_argument("--json", default=None, metavar="FILE", help="also save the table and counts as JSON")
    p.add_argument("--csv", default=None, metavar="FILE", help="also save the table as CSV")
    p.set_defaults(func=_doctor)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args, rest = parser.parse_known_args(argv)
    _apply_plot_options(args)
    if args.command in ("cv", "run", "compare", "sweep") or getattr(args, "step", None) in ("pretrain", "finetune", "join"):
        args.overrides = rest
    elif rest:
        parser.error(f"unrecognized arguments: {' '.join(rest)}")
    from medtransfer.errors import RunInterrupted
    from medtransfer.launch import error_message, project_error, report_error

    try:
        status = args.func(args)  # commands that report their own outcome (doctor) return an exit status
    except KeyboardInterrupt:
        print("interrupted: runs resume from their last complete epoch checkpoint with --resume", file=sys.stderr)
        return 130
    except Exception as exc:
        status = 130 if isinstance(project_error(exc), RunInterrupted) else 2
        if args.command == "run":
            report_error(exc, show_traceback=args.traceback, stream=sys.stderr)
            return status
        message, unexpected = error_message(exc)
        if unexpected:  # a bug, not bad input: its traceback is what a report needs
            raise
        print(message, file=sys.stderr)
        return status
    return int(status or 0)


if __name__ == "__main__":
    sys.exit(main())
