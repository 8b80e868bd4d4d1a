"""Speed of the linear-probe fast path (features computed once) next to the slow path (backbone every iteration).

Both are the bundle's own runs, one after the other, never in parallel: ``linear_probe.json`` (the frozen backbone
runs forward on every augmented batch) and ``linear_probe_fast.json`` (``medtransfer.strategies.TrainHeadOnFeatures``
computes the un-augmented training split's features once, then the head trains on them). Same bundle, start, data,
epochs, batch size and seed; the wall time covers the whole training run (data caching, feature extraction,
validation each epoch), as a user waits for it. Test metrics of both are reported beside the times, since the fast
path trains without augmentation.

Example (BreastMNIST, ImageNet EfficientNet-Lite0, 64 px, 10 epochs)::

    .venv/bin/python benchmarks/linear_probe_fast.py --epochs 10 --json /tmp/lp_fast.json

Target (reported, not asserted): speed-up >= 3 at 10 epochs (measured: 2.4 on 2 CPU cores, README).
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import time
from pathlib import Path

from medtransfer.bundling import bundle_path, strategy_path
from medtransfer.data.paths import data_root
from medtransfer.runs import run_bundle_workflow


def timed_run(fragment: str, settings: dict, runs_dir: Path) -> dict:
    configs = bundle_path("busi_classification") / "configs"
    run = {**settings, "runs_dir": str(runs_dir), "run_name": fragment}
    started = time.perf_counter()
    run_bundle_workflow([configs / "train.json", strategy_path(fragment)], run)
    train_s = time.perf_counter() - started
    run_bundle_workflow([configs / "train.json", strategy_path(fragment), configs / "evaluate.json"], run)
    metrics = json.loads((runs_dir / fragment / "test_metrics.json").read_text())
    return {"train_s": round(train_s, 2), "test_accuracy": metrics["accuracy"], "test_auc": metrics["auc"]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, default=10)
    parser.add_argument("--image-size", type=int, default=64)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--dataset", default=None, help="a MedMNIST .npz (default: BreastMNIST in MEDTRANSFER_DATA)")
    parser.add_argument("--json", default=None, help="write the results here")
    args = parser.parse_args()
    dataset = args.dataset or str(data_root() / "medmnist" / "breastmnist.npz")
    settings = {"dataset_format": "medmnist", "dataset_dir": dataset, "arch": "efficientnet_lite0",
                "pretrained": "imagenet", "epochs": args.epochs, "image_size": args.image_size,
                "batch_size": args.batch_size, "seed": 0}  # fmt: skip
    with tempfile.TemporaryDirectory() as tmp:
        slow = timed_run("linear_probe", settings, Path(tmp))
        fast = timed_run("linear_probe_fast", settings, Path(tmp))
    result = {"settings": settings, "slow": slow, "fast": fast, "speedup": round(slow["train_s"] / fast["train_s"], 2),
              "cpu_count": os.cpu_count(), "load_average_start": os.getloadavg()}  # fmt: skip
    print(json.dumps(result, indent=2))
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
