"""Cost of a MetaLR training step next to a plain fine-tuning step (time and peak memory).

Four modes on torchvision ResNet-18 (``weights=None``) in train mode, on fixed random tensors:

``plain``
    forward on the train batch, CrossEntropy, ``zero_grad(set_to_none=True)``, backward, ``optimizer.step()``
    (AdamW, weight decay 1e-4, over ``param_groups(layer_groups(model), lr)``: the bundles' optimizer).
``metalr``
    the same forward/backward, then ``medtransfer.metalr.metalr_step`` (the function the trainer's
    ``medtransfer.handlers.MetaLRHandler`` calls: the hypergradient on a validation batch of the same size from the
    training gradients turned into AdamW's update directions, then ``metalr.update(h, epoch=10)``),
    ``metalr.record()``, then the real ``optimizer.step()``.
``metalr_interval4``
    the same with ``MetaLR(..., meta_interval=4)``: the hypergradient only when ``metalr.is_due()``.
    Timing starts on a due iteration and covers a multiple of 4 iterations, so its mean is the amortised cost.
``metalr_train_next``
    no meta batch: ``medtransfer.metalr.next_batch_metalr_step`` (what the handler calls for
    ``metalr_meta_source train_next``) moves the LRs along −⟨g_t, d_{t−1}⟩ and keeps this step's direction d_t.
    Its extra memory is that direction buffer, one float per parameter (``direction_buffer_mib`` in the JSON).

Each mode runs in its own subprocess (this script re-invoked with a hidden ``--_mode``), one after the other, never
in parallel. Time: wall time per iteration (CUDA synchronised before the clock is read), median for ``plain`` and
``metalr``, mean over whole 4-iteration blocks for ``metalr_interval4`` (median of the block means is reported too).

Peak memory is the rise over the state just before the first step, after the model, optimizer and data exist:

* CUDA: ``max_memory_allocated()`` (after ``reset_peak_memory_stats()``) minus ``memory_allocated()`` before.
* CPU: peak RSS. ``ru_maxrss`` is a process-lifetime high-water mark, so building the model could already have set
  it. The baseline is therefore read from ``/proc/self/status`` once everything is built and before any step:
  ``VmRSS`` (and ``VmHWM``, after asking the kernel to reset it through ``/proc/self/clear_refs``, which works on
  Linux >= 4.0); after the steps ``VmHWM`` is read again and the rise is ``VmHWM_after - VmRSS_before``. If the reset
  was refused and the build's high-water mark was never exceeded, the rise is an underestimate; ``hwm_reset`` in the
  JSON says whether it worked.

The rise includes what the first step allocates for good (gradients, Adam state) in every mode, so the ratio
metalr/plain is the relative extra memory of a MetaLR training process at its peak.

Example::

    .venv/bin/python benchmarks/metalr_step.py --batch-size 32 --image-size 64 --json /tmp/metalr_bench.json

Other CPU work on the machine distorts the numbers, multi-threaded steps most: when all cores are busy, OpenMP threads
wait on descheduled peers and a step can get several times slower and erratic. Check the load average printed with
the table (``load_average_start`` in the JSON); on a shared machine ``--threads 1`` and ``--repeats 3`` keep the ratios
meaningful. Peak RSS also depends on how glibc reuses freed heap memory and can move by tens of MiB from one process to
the next; ``--repeats`` reports the median and ``--malloc-mmap-threshold 131072`` makes it track live tensors.

Targets (reported, not asserted): ratio_metalr <= 1.85, ratio_metalr_interval4 <= 1.25, ratio_metalr_train_next <=
1.10, peak_mem_ratio_metalr <= 1.15, peak_mem_ratio_metalr_interval4 <= 1.15.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime as dt
import json
import math
import os
import platform
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch
from torch import nn

MODES = ("plain", "metalr", "metalr_interval4", "metalr_train_next")
TARGETS = {
    "ratio_metalr": 1.85,
    "ratio_metalr_interval4": 1.25,
    "ratio_metalr_train_next": 1.10,
    "peak_mem_ratio_metalr": 1.15,
    "peak_mem_ratio_metalr_interval4": 1.15,
}
MiB = 1024 * 1024


# --------------------------------------------------------------------------------------------------
# One mode, in the current process
# --------------------------------------------------------------------------------------------------


def _proc_status_kib(*keys: str) -> dict[str, int]:
    """``VmRSS``/``VmHWM`` etc. from /proc/self/status, in KiB."""
    found: dict[str, int] = {}
    with open("/proc/self/status") as f:
        for line in f:
            key, _, value = line.partition(":")
            if key in keys:
                found[key] = int(value.split()[0])
    return found


def _reset_hwm() -> bool:
    """Reset this process's peak RSS (VmHWM) to its current RSS; False where the kernel does not allow it."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
    except OSError:
        return False
    status = _proc_status_kib("VmRSS", "VmHWM")
    # after a successful reset VmHWM is the current RSS (allow a few pages of drift between the two reads)
    return status["VmHWM"] - status["VmRSS"] < 1024


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def build(args: argparse.Namespace, mode: str, device: torch.device):
    """Model, optimizer, MetaLR (None for ``plain``) and the fixed train and validation batches of one mode."""
    from torchvision.models import resnet18

    from medtransfer.layers import layer_groups, param_groups
    from medtransfer.metalr import MetaLR

    torch.manual_seed(0)
    model = resnet18(weights=None, num_classes=args.num_classes).to(device).train()
    groups = layer_groups(model)
    optimizer = torch.optim.AdamW(param_groups(groups, args.lr), weight_decay=1e-4)
    metalr = None
    if mode != "plain":
        metalr = MetaLR(optimizer, groups, base_lr=args.lr, meta_interval=4 if mode == "metalr_interval4" else 1)
    generator = torch.Generator().manual_seed(1)
    shape = (args.batch_size, 3, args.image_size, args.image_size)
    train = (
        torch.randn(shape, generator=generator).to(device),
        torch.randint(0, args.num_classes, (args.batch_size,), generator=generator).to(device),
    )
    val = (
        torch.randn(shape, generator=generator).to(device),
        torch.randint(0, args.num_classes, (args.batch_size,), generator=generator).to(device),
    )
    return model, optimizer, metalr, train, val


def make_step(model, optimizer, metalr, train, val, profile: bool = False, train_next: bool = False):
    """The training step of one mode, as a closure (``metalr is None``: plain).

    The meta update is the library's own ``metalr_step``, looked up when it runs, so the benchmark measures exactly
    what training runs (its profiler labels ``hypergradient`` and ``metalr_update`` come from there).
    """
    from medtransfer import metalr as metalr_lib

    loss_fn = nn.CrossEntropyLoss()
    inputs, targets = train

    def label(name: str):
        if profile:
            return torch.profiler.record_function(name)
        return contextlib.nullcontext()

    def step() -> bool:
        """One iteration; returns whether it computed a hypergradient."""
        meta = False
        with label("train_fwd_bwd"):
            loss = loss_fn(model(inputs), targets)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
        if metalr is not None and train_next:
            meta = metalr_lib.next_batch_metalr_step(metalr, epoch=10) is not None
            metalr.record()
        elif metalr is not None:
            if metalr.is_due():
                meta = True
                metalr_lib.metalr_step(model, loss_fn, val, metalr, epoch=10)
            metalr.record()
        with label("optimizer_step"):
            optimizer.step()
        return meta

    return step


def run_mode(args: argparse.Namespace, mode: str) -> dict:
    """Build, warm up, time and measure one mode in this process."""
    device = torch.device(args.device)
    if args.threads:
        torch.set_num_threads(args.threads)
    model, optimizer, metalr, train, val = build(args, mode, device)
    step = make_step(model, optimizer, metalr, train, val, train_next=mode == "metalr_train_next")

    # memory baseline: everything built, no step taken yet
    mem: dict = {}
    if device.type == "cuda":
        _sync(device)
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(device)
        mem["baseline_mib"] = torch.cuda.memory_allocated(device) / MiB
    else:
        mem["hwm_reset"] = _reset_hwm()
        before = _proc_status_kib("VmRSS", "VmHWM")
        mem["baseline_mib"] = before["VmRSS"] / 1024
        mem["hwm_before_mib"] = before["VmHWM"] / 1024
        mem["ru_maxrss_before_mib"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024

    for _ in range(args.warmup):
        step()
    # interval mode: start the timed window on a due iteration, so it holds whole meta_interval blocks
    while metalr is not None and mode == "metalr_interval4" and not metalr.is_due():
        step()

    times, metas = [], []
    for _ in range(args.iters):
        _sync(device)
        start = time.perf_counter()
        metas.append(step())
        _sync(device)
        times.append((time.perf_counter() - start) * 1e3)

    if device.type == "cuda":
        mem["peak_mib"] = torch.cuda.max_memory_allocated(device) / MiB
    else:
        after = _proc_status_kib("VmRSS", "VmHWM")
        mem["peak_mib"] = after["VmHWM"] / 1024
        mem["rss_after_mib"] = after["VmRSS"] / 1024
        mem["ru_maxrss_after_mib"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    mem["peak_rise_mib"] = mem["peak_mib"] - mem["baseline_mib"]

    blocks = [statistics.fmean(times[i : i + 4]) for i in range(0, len(times), 4)]
    result = {
        "mode": mode,
        "times_ms": times,
        "meta_iterations": metas,
        "median_ms": statistics.median(times),
        "mean_ms": statistics.fmean(times),
        "min_ms": min(times),
        "stdev_ms": statistics.stdev(times) if len(times) > 1 else 0.0,
        "block4_median_ms": statistics.median(blocks),
        "meta_median_ms": statistics.median([t for t, m in zip(times, metas, strict=True) if m])
        if any(metas)
        else None,
        "nonmeta_median_ms": (
            statistics.median([t for t, m in zip(times, metas, strict=True) if not m]) if not all(metas) else None
        ),
        "threads": torch.get_num_threads(),
        "direction_buffer_mib": sum(p.numel() * p.element_size() for p in model.parameters()) / MiB,
        **mem,
    }
    if args.profile and mode == "metalr":
        result["profile"] = _profile(model, optimizer, metalr, train, val, args.profile_iters)
    return result


def _profile(model, optimizer, metalr, train, val, iters: int) -> str:
    """torch.profiler table of a few metalr iterations (labelled parts + the ops inside them)."""
    from torch.profiler import ProfilerActivity, profile

    step = make_step(model, optimizer, metalr, train, val, profile=True)
    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if torch.cuda.is_available() else [])
    with profile(activities=activities, profile_memory=True) as prof:
        for _ in range(iters):
            step()
    sort = "self_cuda_time_total" if torch.cuda.is_available() else "self_cpu_time_total"
    labels = prof.key_averages().table(sort_by="cpu_time_total", row_limit=12)
    ops = prof.key_averages().table(sort_by=sort, row_limit=25)
    return f"per {iters} iterations\n{labels}\n{ops}"


# --------------------------------------------------------------------------------------------------
# Parent: one subprocess per mode, then the table and the JSON
# --------------------------------------------------------------------------------------------------


def _child_argv(args: argparse.Namespace, mode: str, out: str) -> list[str]:
    argv = [sys.executable, os.path.abspath(__file__), "--_mode", mode, "--_out", out]
    argv += ["--batch-size", str(args.batch_size), "--image-size", str(args.image_size)]
    argv += ["--iters", str(args.iters), "--warmup", str(args.warmup), "--device", args.device]
    argv += ["--num-classes", str(args.num_classes), "--lr", repr(args.lr)]
    if args.threads:
        argv += ["--threads", str(args.threads)]
    if args.profile:
        argv += ["--profile", "--profile-iters", str(args.profile_iters)]
    return argv


def _run_child(args: argparse.Namespace, mode: str) -> dict:
    with tempfile.TemporaryDirectory() as tmp:
        out = os.path.join(tmp, "result.json")
        env = dict(os.environ)
        if args.malloc_mmap_threshold:
            env["MALLOC_MMAP_THRESHOLD_"] = str(args.malloc_mmap_threshold)
        proc = subprocess.run(_child_argv(args, mode, out), capture_output=True, text=True, env=env)
        if proc.returncode != 0:
            sys.stderr.write(proc.stdout + proc.stderr)
            raise SystemExit(f"mode {mode} failed with exit code {proc.returncode}")
        return json.loads(Path(out).read_text())


def _hardware_name(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _load() -> str:
    try:
        return " ".join(f"{x:.2f}" for x in os.getloadavg())
    except OSError:
        return "n/a"


def summarize(args: argparse.Namespace, runs: list[dict[str, dict]]) -> dict:
    """Headline numbers (median over repeats) plus every repeat's raw results."""
    device = torch.device(args.device)

    def med(mode: str, key: str) -> float:
        return statistics.median(r[mode][key] for r in runs)

    plain_ms, metalr_ms = med("plain", "median_ms"), med("metalr", "median_ms")
    interval_ms = med("metalr_interval4", "mean_ms")
    next_ms = med("metalr_train_next", "median_ms")
    peaks = {m: med(m, "peak_rise_mib") for m in MODES}
    summary = {
        "device": str(device),
        "hardware": _hardware_name(device),
        "torch_version": torch.__version__,
        "threads": runs[0]["plain"]["threads"],
        "batch_size": args.batch_size,
        "val_batch_size": args.batch_size,
        "image_size": args.image_size,
        "num_classes": args.num_classes,
        "iters": args.iters,
        "warmup": args.warmup,
        "repeats": len(runs),
        "timestamp": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
        "load_average_start": getattr(args, "load_average_start", None),
        "load_average_end": _load(),
        "plain_ms": plain_ms,
        "metalr_ms": metalr_ms,
        "metalr_interval4_ms": interval_ms,
        "metalr_interval4_block4_median_ms": med("metalr_interval4", "block4_median_ms"),
        "ratio_metalr": metalr_ms / plain_ms,
        "ratio_metalr_interval4": interval_ms / plain_ms,
        "metalr_train_next_ms": next_ms,
        "ratio_metalr_train_next": next_ms / plain_ms,
        "metalr_train_next_peak_rise_mib": peaks["metalr_train_next"],
        "peak_mem_ratio_metalr_train_next": peaks["metalr_train_next"] / peaks["plain"],
        "train_next_extra_mib": peaks["metalr_train_next"] - peaks["plain"],
        "direction_buffer_mib": runs[0]["plain"]["direction_buffer_mib"],
        "ratio_metalr_min": med("metalr", "min_ms") / med("plain", "min_ms"),
        "plain_peak_rise_mib": peaks["plain"],
        "metalr_peak_rise_mib": peaks["metalr"],
        "metalr_interval4_peak_rise_mib": peaks["metalr_interval4"],
        "peak_mem_ratio_metalr": peaks["metalr"] / peaks["plain"],
        "peak_mem_ratio_metalr_interval4": peaks["metalr_interval4"] / peaks["plain"],
        "malloc_mmap_threshold": args.malloc_mmap_threshold,
        "memory_method": (
            "cuda max_memory_allocated - memory_allocated before the first step"
            if device.type == "cuda"
            else "VmHWM after the steps - VmRSS before the first step (/proc/self/status), VmHWM reset beforehand"
        ),
    }
    summary["targets"] = {k: {"limit": v, "value": summary[k], "met": summary[k] <= v} for k, v in TARGETS.items()}
    summary["runs"] = [{m: {k: v for k, v in r[m].items() if k != "profile"} for m in MODES} for r in runs]
    return summary


def print_report(summary: dict) -> None:
    print(
        f"\nMetaLR step benchmark: ResNet-18, batch {summary['batch_size']} (train) + {summary['val_batch_size']} (val), "
        f"{summary['image_size']}x{summary['image_size']}, {summary['iters']} timed iterations, "
        f"{summary['repeats']} repeat(s)"
    )
    print(
        f"device {summary['device']} ({summary['hardware']}), torch {summary['torch_version']}, "
        f"{summary['threads']} threads, load average {summary['load_average_start']} (start) / "
        f"{summary['load_average_end']} (end)"
        + (f", MALLOC_MMAP_THRESHOLD_={summary['malloc_mmap_threshold']}" if summary["malloc_mmap_threshold"] else "")
        + "\n"
    )
    rows = [
        ("plain", summary["plain_ms"], 1.0, summary["plain_peak_rise_mib"], 1.0),
        (
            "metalr",
            summary["metalr_ms"],
            summary["ratio_metalr"],
            summary["metalr_peak_rise_mib"],
            summary["peak_mem_ratio_metalr"],
        ),
        (
            "metalr_interval4",
            summary["metalr_interval4_ms"],
            summary["ratio_metalr_interval4"],
            summary["metalr_interval4_peak_rise_mib"],
            summary["peak_mem_ratio_metalr_interval4"],
        ),
        (
            "metalr_train_next",
            summary["metalr_train_next_ms"],
            summary["ratio_metalr_train_next"],
            summary["metalr_train_next_peak_rise_mib"],
            summary["peak_mem_ratio_metalr_train_next"],
        ),
    ]
    print(f"{'mode':<18} {'ms/iter':>9} {'x plain':>8} {'peak rise MiB':>14} {'x plain':>8}")
    for name, ms, ratio, mib, mratio in rows:
        print(f"{name:<18} {ms:9.1f} {ratio:8.2f} {mib:14.1f} {mratio:8.2f}")
    print(
        "(plain, metalr, metalr_train_next: median per iteration; metalr_interval4: mean over whole 4-iteration blocks)"
    )
    print(
        f"train_next keeps one direction buffer of {summary['direction_buffer_mib']:.1f} MiB; its peak rise over plain: "
        f"{summary['train_next_extra_mib']:+.1f} MiB"
    )
    for i, run in enumerate(summary["runs"]):
        iv = run["metalr_interval4"]
        print(
            f"repeat {i}: plain median {run['plain']['median_ms']:.1f} (min {run['plain']['min_ms']:.1f}, "
            f"sd {run['plain']['stdev_ms']:.1f}), metalr median {run['metalr']['median_ms']:.1f} "
            f"(min {run['metalr']['min_ms']:.1f}, sd {run['metalr']['stdev_ms']:.1f}), interval4 mean "
            f"{iv['mean_ms']:.1f} / block median {iv['block4_median_ms']:.1f} "
            f"(meta it. {iv['meta_median_ms']:.1f}, other it. {iv['nonmeta_median_ms']:.1f})"
        )
    print()
    for name, t in summary["targets"].items():
        print(f"target {name} <= {t['limit']}: {t['value']:.3f} -> {'met' if t['met'] else 'MISSED'}")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--batch-size", type=int, default=32, help="train and validation batch size (default 32)")
    parser.add_argument("--image-size", type=int, default=64, help="square input size (default 64)")
    parser.add_argument("--iters", type=int, default=20, help="timed iterations, rounded up to a multiple of 4")
    parser.add_argument("--warmup", type=int, default=3, help="untimed iterations first (default 3)")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--json", type=Path, help="write the results here")
    parser.add_argument("--threads", type=int, help="torch.set_num_threads (default: leave as is)")
    parser.add_argument("--num-classes", type=int, default=2)
    parser.add_argument("--lr", type=float, default=1e-3, help="AdamW LR (MetaLR: the head's initial LR)")
    parser.add_argument("--repeats", type=int, default=1, help="run the three modes this many times, interleaved")
    parser.add_argument(
        "--malloc-mmap-threshold",
        type=int,
        metavar="BYTES",
        help="CPU: run the mode processes with MALLOC_MMAP_THRESHOLD_=BYTES (e.g. 131072) so that glibc maps every "
        "large tensor on its own and unmaps it when freed; peak RSS then tracks live tensor memory, run to run, "
        "instead of heap reuse. Steps get slower (fresh pages every allocation): use it for the memory columns",
    )
    parser.add_argument("--profile", action="store_true", help="also print a torch.profiler table of metalr steps")
    parser.add_argument("--profile-iters", type=int, default=4)
    parser.add_argument("--_mode", choices=MODES, help=argparse.SUPPRESS)
    parser.add_argument("--_out", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    args.iters = max(4, math.ceil(args.iters / 4) * 4)
    if args.repeats < 1:
        parser.error("--repeats must be >= 1")
    return args


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    if args._mode:  # child: one mode, result to --_out
        result = run_mode(args, args._mode)
        if "profile" in result:
            print(result["profile"])
        Path(args._out).write_text(json.dumps(result))
        return
    args.load_average_start = _load()
    runs = []
    for repeat in range(args.repeats):
        run = {}
        for mode in MODES:  # sequentially: parallel runs distort the timings
            print(f"[repeat {repeat}] {mode} ...", file=sys.stderr, flush=True)
            run[mode] = _run_child(args, mode)
            if "profile" in run[mode]:
                print(run[mode]["profile"])
        runs.append(run)
    summary = summarize(args, runs)
    print_report(summary)
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(summary, indent=2) + "\n")
        print(f"\nwrote {args.json}")


if __name__ == "__main__":
    main()
