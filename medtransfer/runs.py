"""Run directories: one folder per training run, never overwritten silently.

A run directory holds everything a run produced (checkpoints, metrics, plots, TensorBoard events, `run_info.json`
with the command line, seed and versions), so results can be traced back to the exact command that made them.
"""

from __future__ import annotations

import datetime as _dt
import json
import logging
import platform
import re
import subprocess
import sys
from pathlib import Path

from medtransfer.errors import RunDirectoryError

CHECKPOINT_PATTERN = re.compile(r"checkpoint_epoch=(\d+)\.pt$")
# the copy of the executed config that `monai.bundle run --tracking mlflow` writes into the run folder first
TRACKING_CONFIG_COPY = re.compile(r"config_\d{8}_\d{6}\.json$")

logger = logging.getLogger(__name__)


def timestamp() -> str:
    """A sortable, filesystem-safe run name for runs that were not given one."""
    return _dt.datetime.now().strftime("%Y%m%d-%H%M%S")


def create_run_dir(path: str | Path, resume: bool = False) -> str:
    """Create `path` for a new run, or check it holds a run to resume.

    A new run refuses a non-empty folder, so a second run with the same name cannot destroy the first one's results.
    """
    path = Path(path)
    if resume:
        if latest_checkpoint(path) is None:
            raise RunDirectoryError(
                f"cannot resume: {path} holds no checkpoint_epoch=N.pt; check --run_name, or drop --resume to start afresh"
            )
        return str(path)
    previous = [p for p in path.iterdir() if not TRACKING_CONFIG_COPY.match(p.name)] if path.exists() else []
    if previous:
        contents = ", ".join(sorted(p.name for p in previous)[:5])
        raise RunDirectoryError(
            f"run directory {path} already exists and holds a previous run ({contents}). Choose another "
            f"--run_name, pass --resume true to continue it, or delete the folder yourself"
        )
    path.mkdir(parents=True, exist_ok=True)
    return str(path)


def require_run_dir(path: str | Path, needs: str = "model.pt") -> str:
    """Check that `path` is a finished run holding `needs` (used by evaluate and inference configs)."""
    path = Path(path)
    if not (path / needs).is_file():
        raise RunDirectoryError(
            f"{path / needs} not found: evaluate/inference need a finished training run; pass --run_name of one "
            f"(folders under {path.parent}: {', '.join(sorted(p.name for p in path.parent.glob('*')))[:200] or 'none'})"
        )
    return str(path)


def latest_run(runs_dir: str | Path, needs: str = "model.pt") -> str:
    """Name of the newest finished run under `runs_dir`, so evaluate/inference work without --run_name.

    Cross-validation folds (``runs_dir/cv_<name>/fold<i>``) count too; their name is the relative path
    ``cv_<name>/fold<i>``, which ``os.path.join(runs_dir, run_name)`` turns back into the folder.
    """
    root = Path(runs_dir)
    # ordered by when the model file was written: evaluating an older run must not make it the newest
    runs = sorted(
        (p.parent for pattern in (f"*/{needs}", f"*/*/{needs}") for p in root.glob(pattern) if p.is_file()),
        key=lambda p: (p / needs).stat().st_mtime,
    )
    if not runs:
        raise RunDirectoryError(f"no finished run (with {needs}) under {runs_dir}; train first, or pass --run_name")
    name = runs[-1].relative_to(root).as_posix()
    import logging

    logging.getLogger(__name__).info(f"no --run_name given: using the newest finished run {name} under {root}")
    return name


def check_same_data(run_dir: str | Path, **settings) -> None:
    """Refuse to evaluate a run on a split that could overlap its training images.

    The test split is defined by every setting passed here besides ``dataset_dir`` (``split_seed``, and for
    cross-validation ``fold``, ``num_folds``, ``probe``): evaluating the same data with another value would score
    the model on images it trained on.
    """
    path = Path(run_dir) / "run_info.json"
    if not path.is_file():
        return
    trained = json.loads(path.read_text()).get("settings", {})
    same_data = str(trained.get("dataset_dir")) == str(settings.get("dataset_dir"))
    if not same_data:
        import logging

        logging.getLogger(__name__).warning(
            f"{run_dir} was trained on {trained.get('dataset_dir')} but is evaluated on {settings.get('dataset_dir')}"
        )
        return
    for key, value in settings.items():
        if key in ("dataset_dir", "dataset_format") or key not in trained or trained[key] == value:
            continue
        raise RunDirectoryError(
            f"{run_dir} was trained with --{key} {trained[key]}; evaluating {settings.get('dataset_dir')} "
            f"with --{key} {value} would test on training images. Pass --{key} {trained[key]}"
        )


def latest_checkpoint(run_dir: str | Path) -> str | None:
    """The newest epoch checkpoint in a run directory, or None."""
    found = [(int(m.group(1)), p) for p in Path(run_dir).glob("*.pt") if (m := CHECKPOINT_PATTERN.search(p.name))]
    return str(max(found)[1]) if found else None


def checkpoint_epoch(run_dir: str | Path) -> int:
    """The epoch of the newest epoch checkpoint in a run directory (0 when there is none)."""
    path = latest_checkpoint(run_dir)
    return int(CHECKPOINT_PATTERN.search(Path(path).name).group(1)) if path else 0


def write_run_info(run_dir: str | Path, settings: dict | None = None) -> dict:
    """Record how this run was made: command line, settings, seed, library versions and git commit."""
    import monai
    import torch

    info = {
        "started": _dt.datetime.now().isoformat(timespec="seconds"),
        "argv": sys.argv,
        "settings": {k: _jsonable(v) for k, v in (settings or {}).items()},
        "python": platform.python_version(),
        "torch": torch.__version__,
        "monai": monai.__version__,
        "git_commit": _git_commit(),
        "hostname": platform.node(),
    }
    path = Path(run_dir) / "run_info.json"
    if path.exists():  # a resumed run keeps the history of how it was started
        previous = json.loads(path.read_text())
        info["previous"] = previous.get("previous", []) + [{k: v for k, v in previous.items() if k != "previous"}]
    from medtransfer.report import save_json  # report imports plotting; only this function needs it

    save_json(info, path)
    return info


def _jsonable(value):
    if isinstance(value, (str, int, float, bool)) or value is None:
        return value
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    return str(value)


def _git_commit() -> str | None:
    try:
        out = subprocess.run(
            ["git", "rev-parse", "HEAD"], capture_output=True, text=True, timeout=5, cwd=Path(__file__).parent
        )
        return out.stdout.strip() or None
    except (OSError, subprocess.SubprocessError):
        return None


def run_bundle_workflow(
    config_files: list[str | Path], overrides: dict | None = None, meta_file: str | Path | None = None
):
    """Run a bundle's ``initialize`` / ``run`` / ``finalize`` in this process, as ``python -m monai.bundle run`` would.

    Used by commands that chain several runs (cross-validation folds, pre-train then fine-tune): no interpreter start
    and no re-import per run, and errors surface as Python exceptions.
    """
    from monai.bundle import ConfigWorkflow

    files = [str(f) for f in config_files]
    meta = str(meta_file) if meta_file is not None else str(Path(files[0]).parent / "metadata.json")
    workflow = ConfigWorkflow(config_file=files, meta_file=meta, logging_file=False, **dict(overrides or {}))
    workflow.initialize()
    workflow.run()
    workflow.finalize()
    return workflow


def training_finished(run_dir: Path) -> bool:
    """True when the run's newest epoch checkpoint is its last epoch; a run with nothing to resume is an error."""
    from medtransfer.errors import RunDirectoryError

    info = Path(run_dir) / "run_info.json"
    epoch = checkpoint_epoch(run_dir)
    if not info.is_file() or epoch == 0:
        raise RunDirectoryError(
            f"{run_dir} exists but holds no run_info.json or epoch checkpoint to resume from; delete it and run again"
        )
    return epoch >= int(json.loads(info.read_text())["settings"]["epochs"])


def train_then_evaluate(
    run_dir: Path, train_configs: list[str | Path], evaluate_configs: list[str | Path], settings: dict
) -> str:
    """Train a run (or resume it from its last epoch checkpoint, or skip a finished training), then evaluate it.

    ``settings`` must put the run in ``run_dir`` (``runs_dir`` and ``run_name``). Returns ``"new"``, ``"resumed"`` or
    ``"trained"`` (training had finished; only the evaluation ran), for the caller's log.
    """
    run_dir = Path(run_dir)
    if not run_dir.exists():
        attempt = "new"
        run_bundle_workflow(train_configs, settings)
    elif not training_finished(run_dir):
        attempt = "resumed"
        logger.info(f"{run_dir}: resuming training from epoch {checkpoint_epoch(run_dir)}")
        run_bundle_workflow(train_configs, {**settings, "resume": True})
    else:
        attempt = "trained"
    run_bundle_workflow(evaluate_configs, settings)
    return attempt
