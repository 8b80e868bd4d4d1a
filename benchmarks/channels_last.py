"""Training speed with channels-last (NHWC) convolution weights next to the default NCHW layout.

Both are the bundle's own training runs (``busi_classification``, strategy ``full``), one after the other, never in
parallel, differing only in the bundle's ``channels_last`` setting, which ``medtransfer.models.place_network``
applies to the network the trainer uses. Same start, data, epochs, batch size and seed; the wall time covers the
whole training run (data caching, augmentation, validation each epoch), as a user waits for it. The last epoch's
mean training loss and the final validation AUC of both are reported beside the times: the layouts differ only in
floating-point summation order.

Example (BreastMNIST, ImageNet EfficientNet-Lite0, 64 px, 3 epochs)::

    .venv/bin/python benchmarks/channels_last.py --epochs 3 --json /tmp/channels_last.json

Target (reported, not asserted): speed-up >= 1.3 on CPU.
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import time
from pathlib import Path

import torch

from medtransfer.bundling import bundle_path, strategy_path
from medtransfer.data.paths import data_root
from medtransfer.runs import run_bundle_workflow


def timed_training(channels_last: bool, settings: dict, runs_dir: Path) -> dict:
    name = "channels_last" if channels_last else "nchw"
    configs = bundle_path("busi_classification") / "configs"
    run = {**settings, "channels_last": channels_last, "runs_dir": str(runs_dir), "run_name": name}
    started = time.perf_counter()
    run_bundle_workflow([configs / "train.json", strategy_path("full")], run)
    train_s = time.perf_counter() - started
    last = json.loads((runs_dir / name / "history.json").read_text())["epochs"][-1]
    return {
        "train_s": round(train_s, 2),
        "last_train_loss": last.get("train_loss"),
        "last_val_auc": last.get("val_auc"),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--image-size", type=int, default=64)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--arch", default="efficientnet_lite0")
    parser.add_argument("--dataset", default=None, help="a MedMNIST .npz (default: BreastMNIST in MEDTRANSFER_DATA)")
    parser.add_argument("--json", default=None, help="write the results here")
    args = parser.parse_args()
    dataset = args.dataset or str(data_root() / "medmnist" / "breastmnist.npz")
    settings = {"dataset_format": "medmnist", "dataset_dir": dataset, "arch": args.arch, "pretrained": "imagenet",
                "epochs": args.epochs, "image_size": args.image_size, "batch_size": args.batch_size, "seed": 0,
                "device": "cuda" if torch.cuda.is_available() else "cpu"}  # fmt: skip
    with tempfile.TemporaryDirectory() as tmp:
        nchw = timed_training(False, settings, Path(tmp))
        channels_last = timed_training(True, settings, Path(tmp))
    result = {"settings": settings, "nchw": nchw, "channels_last": channels_last,
              "speedup": round(nchw["train_s"] / channels_last["train_s"], 2), "torch": torch.__version__,
              "threads": torch.get_num_threads(), "cpu_count": os.cpu_count(),
              "load_average_start": os.getloadavg()}  # fmt: skip
    print(json.dumps(result, indent=2))
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
