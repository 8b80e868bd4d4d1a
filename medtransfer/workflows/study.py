"""A study: a fixed list of independent bundle runs in one folder, run resumably, in slices, or in parallel.

``study.json`` in the study folder lists every run (its folder name, strategy fragment, overrides, seed, and whether
it is a cross-validation); each run finishes with ``study_run.json`` (wall time, when). So:

- a finished run is never redone, and after a crash only unfinished runs run again (a run with an epoch checkpoint
  resumes from it, exactly, through the bundle's own ``resume``);
- ``shard=(i, n)`` runs the i-th of n interleaved slices (1-based, as ``SLURM_ARRAY_TASK_ID`` usually is), so a cluster
  job array can split a study and any process can collect the table afterwards;
- ``devices=[...]`` starts one worker process per device (``CUDA_VISIBLE_DEVICES``), each running one slice.
"""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from medtransfer.atomic import write_text_atomic
from medtransfer.errors import RunDirectoryError
from medtransfer.report import save_json

__all__ = [
    "Placement",
    "RunSpec",
    "finished_runs",
    "launch_study",
    "parse_shard",
    "read_study",
    "run_study",
    "shard_of",
    "write_study",
]

logger = logging.getLogger(__name__)

STUDY_FILE = "study.json"
DONE_FILE = "study_run.json"


@dataclass(frozen=True)
class RunSpec:
    """One run of a study: ``name`` is its folder, ``label`` its row in the tables (runs with one label are seeds)."""

    name: str
    label: str
    strategy: str
    seed: int
    overrides: dict[str, Any] = field(default_factory=dict)
    folds: int | None = None  # a cross-validation over this many folds instead of one train/val/test run
    extra: dict[str, Any] = field(default_factory=dict)  # what the study's tables need (k, direction, ...)


@dataclass(frozen=True)
class Placement:
    """Where a study lives (``runs_dir/<kind>_<name>``, default ``runs/<bundle>``) and which of its runs run here."""

    name: str | None = None
    runs_dir: str | Path | None = None
    shard: tuple[int, int] | None = None
    devices: Sequence[str] | None = None

    def folder(self, bundle: str, prefix: str) -> Path:
        from medtransfer.bundling import bundle_path
        from medtransfer.runs import check_run_name, timestamp

        root = Path(self.runs_dir) if self.runs_dir else Path("runs") / bundle_path(bundle).name
        name = timestamp() if self.name is None else check_run_name(self.name)
        return root / (name if name.startswith(f"{prefix}_") else f"{prefix}_{name}")


def launch_study(
    bundle: str,
    kind: str,
    specs: Sequence[RunSpec],
    settings: Mapping,
    placement: Placement,
    summary_line: Callable[[RunSpec, Path, dict], str],
    collect: Callable[[Path], object],
) -> Path:
    """Record the study (prefix: its kind's first word), run this placement's share, collect once all runs are done."""
    from medtransfer.launch import check_overrides

    for strategy in dict.fromkeys(spec.strategy for spec in specs):  # before any run starts, once per fragment
        check_overrides(bundle, [strategy], settings.get("overrides", {}))
    study_dir = placement.folder(bundle, kind.split()[-1] if kind.endswith("sweep") else kind)
    write_study(study_dir, bundle, specs, kind, settings)
    run_study(study_dir, shard=placement.shard, devices=placement.devices, summary_line=summary_line)
    if len(finished_runs(study_dir, specs)) == len(specs):
        collect(study_dir)
    return study_dir


def parse_shard(text: str) -> tuple[int, int]:
    """``"2/4"`` -> (2, 4), checked: 1 <= i <= n."""
    try:
        i, n = (int(part) for part in str(text).split("/"))
    except ValueError:
        raise ValueError(f"--shard takes i/n, e.g. 1/4 (the first of four slices), got {text!r}") from None
    if not 1 <= i <= n:
        raise ValueError(f"--shard {text}: i must lie in 1..n")
    return i, n


def shard_of(specs: Sequence[RunSpec], shard: tuple[int, int] | None) -> list[RunSpec]:
    """The runs of slice i of n: every n-th run from the i-th, so each slice gets every kind of run."""
    if shard is None:
        return list(specs)
    i, n = shard
    return [s for k, s in enumerate(specs) if k % n == i - 1]


def write_study(study_dir: Path, bundle: str, specs: Sequence[RunSpec], kind: str, settings: Mapping) -> None:
    """Record the study; a folder that holds a different study is refused (mixing them would mix experiments)."""
    record = {"kind": kind, "bundle": bundle, "settings": dict(settings), "runs": [asdict(s) for s in specs]}
    record = json.loads(json.dumps(record, default=str))
    path = study_dir / STUDY_FILE
    if path.is_file():
        before = json.loads(path.read_text())
        if before != record:
            changed = sorted(k for k in set(before) | set(record) if before.get(k) != record.get(k))
            raise RunDirectoryError(
                f"{path} describes another study ({', '.join(changed)} differ); continue it with the same options, "
                "or choose another --name"
            )
        return
    study_dir.mkdir(parents=True, exist_ok=True)
    save_json(record, path)


def read_study(study_dir: str | Path) -> tuple[dict, list[RunSpec]]:
    """The study's record and its runs."""
    path = Path(study_dir) / STUDY_FILE
    if not path.is_file():
        raise RunDirectoryError(f"{path} does not exist; {study_dir} is not a study folder (start one first)")
    record = json.loads(path.read_text())
    return record, [RunSpec(**r) for r in record["runs"]]


def finished_runs(study_dir: Path, specs: Sequence[RunSpec]) -> dict[str, dict]:
    """``{run name: its study_run.json}`` for the runs that finished."""
    done = {}
    for spec in specs:
        path = study_dir / spec.name / DONE_FILE
        if path.is_file():
            done[spec.name] = json.loads(path.read_text())
    return done


def execute(bundle: str, spec: RunSpec, study_dir: Path) -> dict:
    """Train (or resume) and test one run, or run its cross-validation; write and return its ``study_run.json``."""
    from medtransfer.bundling import bundle_path
    from medtransfer.cv import run_cross_validation
    from medtransfer.launch import config_files
    from medtransfer.runs import train_then_evaluate

    run_dir = study_dir / spec.name
    started = time.time()
    if spec.folds:
        attempt = "resumed" if run_dir.exists() else "new"
        overrides = {**spec.overrides, "seed": spec.seed}
        run_cross_validation(bundle_path(bundle), spec.folds, [spec.strategy], overrides, runs_dir=study_dir,
                             name=spec.name, resume=True)  # fmt: skip
    else:
        settings = {**spec.overrides, "seed": spec.seed, "runs_dir": str(study_dir), "run_name": spec.name}
        train = config_files(bundle, [spec.strategy], "train")
        attempt = train_then_evaluate(run_dir, train, config_files(bundle, [spec.strategy], "evaluate"), settings)
    record = {"name": spec.name, "label": spec.label, "seed": spec.seed, "wall_s": round(time.time() - started, 1),
              "attempt": attempt, "finished": time.strftime("%Y-%m-%dT%H:%M:%S")}  # fmt: skip
    write_text_atomic(run_dir / DONE_FILE, json.dumps(record, indent=2) + "\n")
    return record


def run_study(
    study_dir: str | Path,
    shard: tuple[int, int] | None = None,
    devices: Sequence[str] | None = None,
    summary_line: Callable[[RunSpec, Path, dict], str] | None = None,
) -> dict[str, dict]:
    """Run the study's unfinished runs (of one slice, or over `devices` in parallel); return the finished ones."""
    study_dir = Path(study_dir)
    record, specs = read_study(study_dir)
    if devices:
        _run_on_devices(study_dir, devices)
        return finished_runs(study_dir, specs)
    mine = shard_of(specs, shard)
    done = finished_runs(study_dir, mine)
    todo = [s for s in mine if s.name not in done]
    logger.info(f"{study_dir}: {len(mine)} runs in this slice, {len(done)} finished, {len(todo)} to run")
    from tqdm.auto import tqdm

    from medtransfer.cv import once_per_message

    # every run starts one or more MONAI workflows that repeat the same start-up notices: say each once per study
    with once_per_message(), tqdm(total=len(mine), initial=len(done), desc=f"{record['kind']} runs", unit="run",
                                  dynamic_ncols=True, disable=None, position=0) as bar:  # fmt: skip
        for spec in todo:
            bar.set_postfix_str(spec.name)
            result = execute(record["bundle"], spec, study_dir)
            done[spec.name] = result
            text = f"[{len(done)}/{len(mine)}] {spec.name}"
            if summary_line:
                text += f": {summary_line(spec, study_dir, result)}"
            bar.write(f"{text} ({result['wall_s'] / 60:.1f} min)")
            bar.update(1)
    return finished_runs(study_dir, specs)


def _run_on_devices(study_dir: Path, devices: Sequence[str]) -> None:
    """One worker per device, each running one slice with only its device visible; wait for all, fail if one did."""
    n = len(devices)
    workers = []
    for i, device in enumerate(devices, start=1):
        env = {**os.environ, "CUDA_VISIBLE_DEVICES": str(device)}
        log = open(study_dir / f"worker{i}_of{n}.log", "a")  # noqa: SIM115 - closed below, after the worker ends
        cmd = [sys.executable, "-m", "medtransfer.workflows.study", str(study_dir), "--shard", f"{i}/{n}"]
        workers.append((device, subprocess.Popen(cmd, env=env, stdout=log, stderr=subprocess.STDOUT), log))
        logger.info(f"worker {i}/{n} on device {device}: {' '.join(cmd)} (log: {log.name})")
    failed = []
    for device, process, log in workers:
        if process.wait() != 0:
            failed.append(f"device {device} (exit {process.returncode}, see {log.name})")
        log.close()
    if failed:
        raise RuntimeError(
            f"workers failed on {', '.join(failed)}; fix the cause and run again: finished runs are kept"
        )


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m medtransfer.workflows.study STUDY_DIR [--shard i/n]``: what each device worker runs."""
    import argparse

    parser = argparse.ArgumentParser(description=main.__doc__)
    parser.add_argument("study_dir")
    parser.add_argument("--shard", type=parse_shard, default=None)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO)
    run_study(args.study_dir, shard=args.shard)
    return 0


if __name__ == "__main__":
    sys.exit(main())
