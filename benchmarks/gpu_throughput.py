"""Training throughput of plain fine-tuning and MetaLR, with data loading excluded and included, through the trainer.

Every number comes from MONAI's ``SupervisedTrainer`` running the bundles' training step (the same trainer, loss and,
for MetaLR, the same ``medtransfer.handlers.MetaLRHandler`` the bundles attach), so what is measured is what trains:

``excluded``
    the trainer's loader is a list of batches already on the device: the step alone (forward, backward, meta update,
    optimizer step), the ceiling the input pipeline can at best reach.
``included``
    a ``DataLoader`` over an in-memory dataset of uint8 images with the bundles' CPU augmentation (random flip and
    affine), ``num_workers`` worker processes, pinned memory and persistent workers. ``included / excluded`` says
    whether the input pipeline keeps the device busy (target: at least 0.9).
``device_augment``
    the same loader without the flip and affine, which ``medtransfer.handlers.BatchAugmentation`` (the bundles'
    ``--augment_on_device true``) applies to whole batches on the device instead (2-D cases only).

Networks: ResNet-18 and EfficientNet-Lite0 (random init; the weights do not change the cost) at 64² and 224², and the
LiTS bundle's 3-D U-Net on 64³ patches (voxels per second). AMP: ``--amp bf16`` (default on CUDA; no loss scaling
needed) or ``fp16`` (with the trainer's grad scaler) or ``none``; 2-D networks in channels-last. Time: wall time
between the first timed and the last iteration (CUDA synchronised), after ``--warmup`` iterations.

Example (a GPU machine; the card is named in the JSON)::

    python benchmarks/gpu_throughput.py --json gpu_throughput.json

On a CPU, for a smoke run: ``--cases resnet18@32 --batch-size 8 --iterations 3 --warmup 1 --amp none``.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import platform
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

DEFAULT_CASES = ("resnet18@64", "resnet18@224", "efficientnet_lite0@64", "efficientnet_lite0@224", "unet3d@64")
MODES = ("plain", "metalr")
LOADINGS = ("excluded", "included", "device_augment")


@dataclass
class Case:
    arch: str
    size: int

    @property
    def volumetric(self) -> bool:
        return self.arch == "unet3d"

    @property
    def items_per_sample(self) -> int:
        """Images for 2-D classification; voxels for the 3-D U-Net."""
        return self.size**3 if self.volumetric else 1

    @classmethod
    def parse(cls, text: str) -> Case:
        arch, _, size = text.partition("@")
        return cls(arch, int(size or 64))


def build(case: Case, device: torch.device, num_classes: int = 3):
    """Network (on `device`, channels-last for 2-D), loss and layer groups, as the bundles build them."""
    from monai.losses import DiceCELoss

    from medtransfer.layers import layer_groups
    from medtransfer.models import build_classifier, build_unet, place_network

    torch.manual_seed(0)
    if case.volumetric:
        network = build_unet(spatial_dims=3, in_channels=1, num_classes=num_classes,
                             channels=[16, 32, 64, 128, 256], num_res_units=2)  # fmt: skip
        loss = DiceCELoss(to_onehot_y=True, softmax=True)
    else:
        network = build_classifier(case.arch, num_classes=num_classes)
        loss = torch.nn.CrossEntropyLoss()
    network = place_network(network, device, channels_last=not case.volumetric)
    return network, loss, layer_groups(network)


def samples(case: Case, count: int, num_classes: int = 3, seed: int = 0) -> list[dict]:
    """In-memory uint8 images (or volumes) with labels: what a CacheDataset holds after loading."""
    rng = np.random.default_rng(seed)
    if case.volumetric:
        shape = (1, case.size, case.size, case.size)
        return [
            {"image": rng.integers(0, 255, shape, dtype=np.uint8),
             "label": rng.integers(0, num_classes, shape, dtype=np.uint8)}
            for _ in range(count)
        ]  # fmt: skip
    shape = (1, case.size, case.size)
    return [{"image": rng.integers(0, 255, shape, dtype=np.uint8), "label": int(rng.integers(num_classes))}
            for _ in range(count)]  # fmt: skip


def random_transforms(case: Case) -> list:
    """The bundles' random flip and affine."""
    from monai import transforms as mt

    keys = ["image", "label"] if case.volumetric else ["image"]
    return [
        mt.RandFlipd(keys=keys, prob=0.5, spatial_axis=0 if case.volumetric else 1),
        mt.RandAffined(keys=keys, prob=0.5, rotate_range=0.17, scale_range=0.1, padding_mode="border",
                       mode=("bilinear", "nearest") if case.volumetric else "bilinear"),  # fmt: skip
    ]


def augmentation(case: Case, on_cpu: bool = True):
    """The bundles' CPU augmentation (unless `on_cpu` is false) and normalisation (3 channels for the 2-D nets)."""
    from monai import transforms as mt

    keys = ["image", "label"] if case.volumetric else ["image"]
    steps = [
        mt.CastToTyped(keys="image", dtype=np.float32),
        *(random_transforms(case) if on_cpu else []),
        mt.ScaleIntensityRanged(keys="image", a_min=0, a_max=255, b_min=-1.0, b_max=1.0),
    ]
    if not case.volumetric:
        steps.append(mt.RepeatChanneld(keys="image", repeats=3))
    steps.append(mt.EnsureTyped(keys=keys, track_meta=False))
    return mt.Compose(steps)


def loader(case: Case, args: argparse.Namespace, loading: str, device: torch.device):
    """A loader of ``warmup + iterations`` batches: pre-made device batches, or the real input pipeline."""
    from monai.data import DataLoader, Dataset

    count = (args.warmup + args.iterations) * args.batch_size
    dataset = Dataset(samples(case, count), transform=augmentation(case, on_cpu=loading != "device_augment"))
    if loading == "excluded":
        batches = list(DataLoader(dataset, batch_size=args.batch_size, num_workers=0))
        return [{k: v.to(device) for k, v in batch.items()} for batch in batches]
    workers = args.num_workers
    return DataLoader(dataset, batch_size=args.batch_size, shuffle=True, num_workers=workers,
                      pin_memory=device.type == "cuda", persistent_workers=workers > 0,
                      prefetch_factor=4 if workers > 0 else None)  # fmt: skip


def measure(case: Case, mode: str, loading: str, args: argparse.Namespace, device: torch.device) -> dict:
    """Items per second of one (case, mode, loading) through ``SupervisedTrainer``."""
    from ignite.engine import Events
    from monai.engines import SupervisedTrainer

    from medtransfer.handlers import BatchAugmentation, MetaLRHandler
    from medtransfer.layers import param_groups
    from medtransfer.metalr import CyclingBatches, MetaLR

    network, loss, groups = build(case, device)
    optimizer = torch.optim.AdamW(param_groups(groups, args.lr), lr=args.lr)
    handlers: list = []
    if loading == "device_augment":
        handlers.append(BatchAugmentation(random_transforms(case), enabled=True))
    if mode == "metalr":
        metalr = MetaLR(optimizer, groups, base_lr=args.lr, pin_epochs=0, meta_interval=args.meta_interval)
        held_out = [augmentation(case)(s) for s in samples(case, args.batch_size, seed=1)]
        handlers.append(MetaLRHandler(metalr, CyclingBatches(held_out, args.batch_size)))
    amp = args.amp != "none" and device.type == "cuda"
    trainer = SupervisedTrainer(
        device=device, max_epochs=1, train_data_loader=loader(case, args, loading, device), network=network,
        optimizer=optimizer, loss_function=loss, amp=amp, non_blocking=True, train_handlers=handlers,
        amp_kwargs={"dtype": torch.bfloat16 if args.amp == "bf16" else torch.float16} if amp else None,
    )  # fmt: skip
    stamps: list[float] = []

    @trainer.on(Events.ITERATION_COMPLETED)
    def _stamp(engine) -> None:
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        stamps.append(time.perf_counter())

    trainer.run()
    timed = stamps[args.warmup - 1 :] if args.warmup > 0 else stamps
    seconds = timed[-1] - timed[0]
    items = (len(timed) - 1) * args.batch_size * case.items_per_sample
    unit = "voxels/s" if case.volumetric else "images/s"
    return {"case": f"{case.arch}@{case.size}", "mode": mode, "loading": loading, "throughput": items / seconds,
            "unit": unit, "iterations": len(timed) - 1, "seconds": seconds}  # fmt: skip


def card(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return platform.processor() or platform.machine()


def summarize(rows: list[dict]) -> list[dict]:
    """Per case: MetaLR/plain time ratio (loading excluded) and included/excluded throughput per mode."""
    found = {(r["case"], r["mode"], r["loading"]): r["throughput"] for r in rows}
    summary = []
    for case in dict.fromkeys(r["case"] for r in rows):
        entry: dict = {"case": case}
        plain, meta = found.get((case, "plain", "excluded")), found.get((case, "metalr", "excluded"))
        if plain and meta:
            entry["metalr_time_ratio"] = plain / meta
        for mode in MODES:
            excluded = found.get((case, mode, "excluded"))
            for loading, name in (("included", "loading_kept_up"), ("device_augment", "device_augment_kept_up")):
                if excluded and found.get((case, mode, loading)):
                    entry[f"{mode}_{name}"] = found[(case, mode, loading)] / excluded
        summary.append(entry)
    return summary


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--cases", nargs="+", default=list(DEFAULT_CASES), help="ARCH@SIZE (resnet18, efficientnet_lite0, unet3d)")
    p.add_argument("--modes", nargs="+", default=list(MODES), choices=MODES)
    p.add_argument("--loadings", nargs="+", default=list(LOADINGS), choices=LOADINGS)
    p.add_argument("--batch-size", type=int, default=128, help="2-D batch (the 3-D U-Net uses --volume-batch-size)")
    p.add_argument("--volume-batch-size", type=int, default=4)
    p.add_argument("--iterations", type=int, default=30)
    p.add_argument("--warmup", type=int, default=5)
    p.add_argument("--meta-interval", type=int, default=1)
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--amp", default=None, choices=("bf16", "fp16", "none"), help="default: bf16 on CUDA, none on CPU")
    p.add_argument("--num-workers", type=int, default=min(8, os.cpu_count() or 1))
    p.add_argument("--json", default=None, help="write the results here")
    args = p.parse_args(argv)
    if args.amp is None:
        args.amp = "bf16" if torch.cuda.is_available() else "none"
    return args


def main(argv: list[str] | None = None) -> dict:
    args = parse_args(argv)
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    rows = []
    for text in args.cases:
        case = Case.parse(text)
        case_args = argparse.Namespace(**vars(args))
        if case.volumetric:
            case_args.batch_size = args.volume_batch_size
        for mode in args.modes:
            for loading in args.loadings:
                if loading == "device_augment" and case.volumetric:
                    continue  # BatchAugmentation is 2-D
                row = measure(case, mode, loading, case_args, device)
                print(f"{row['case']:>22} {mode:>7} loading {loading:>8}: {row['throughput']:,.0f} {row['unit']}",
                      flush=True)  # fmt: skip
                rows.append({**row, "batch_size": case_args.batch_size})
                if device.type == "cuda":
                    torch.cuda.empty_cache()
    result = {
        "card": card(device), "device": str(device), "torch": torch.__version__, "amp": args.amp,
        "num_workers": args.num_workers, "cpu_count": os.cpu_count(), "meta_interval": args.meta_interval,
        "date": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"), "rows": rows,
        "summary": summarize(rows), "targets": {"loading_kept_up": 0.9},
    }  # fmt: skip
    for entry in result["summary"]:
        print(json.dumps(entry))
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=2) + "\n")
    return result


if __name__ == "__main__":
    main()
