"""Run directories: one folder per training run, never overwritten silently.

A run directory holds everything a run produced (checkpoints, metrics, plots, TensorBoard events, `run_info.json`
with the command line, seed and versions), so results can be traced back to the exact command that made them.
"""

from __future__ import annotations

import datetime as _dt
import json
import logging
import os
import platform
import re
import subprocess
import sys
import zipfile
from collections.abc import Iterable, Mapping
from pathlib import Path

from medtransfer.errors import RunDirectoryError

CHECKPOINT_PATTERN = re.compile(r"^checkpoint_epoch=(\d+)\.pt$")
LOCK_FILE = ".medtransfer.lock"
FAILED_ATTEMPTS = "failed_attempts"
# the copy of the executed config that `monai.bundle run --tracking mlflow` writes into the run folder first
TRACKING_CONFIG_COPY = re.compile(r"config_\d{8}_\d{6}\.json$")

logger = logging.getLogger(__name__)


def timestamp() -> str:
    """A sortable, filesystem-safe run name for runs that were not given one."""
    return _dt.datetime.now().strftime("%Y%m%d-%H%M%S")


def check_run_name(name: object, nested: bool = False) -> str:
    """`name` as a run name: one folder name (with `nested`, a relative path of such names, e.g. ``cv_a/fold0``).

    Refused before anything is created: an empty name (an unset shell variable), ``.`` or ``..``, an absolute path or
    a separator (which would put the run outside the runs folder, or make the runs folder itself the run's folder).
    """
    text = str(name)
    parts = text.replace("\\", "/").split("/") if nested else [text]
    bad = (
        not text.strip()
        or text.startswith(("/", "\\"))
        or "\0" in text
        or any(part in ("", ".", "..") or part != part.strip() for part in parts)
        or (not nested and ("/" in text or "\\" in text))
    )
    if bad:
        folds = " (evaluation also takes a fold's cv_<name>/fold<i>)" if nested else ""
        raise RunDirectoryError(
            f"--run_name {text!r} is not a run name: it must be a single folder name{folds}, not empty, not . or .., "
            "so the run stays one folder inside the runs folder. Pass e.g. --run_name busi_seed0"
        )
    return text


def run_folder(runs_dir: str | Path, run_name: object) -> str:
    """The folder of run `run_name` under `runs_dir` (the bundles' ``output_dir``), the name checked first.

    Names of cross-validation folds (``cv_<name>/fold<i>``, what :func:`latest_run` gives) are accepted for
    evaluation and inference; a training run's name is checked to be a single folder name by :func:`create_run_dir`.
    """
    return os.path.join(str(runs_dir), check_run_name(run_name, nested=True))


def is_run_folder(path: str | Path) -> bool:
    """Whether `path` carries a run's own marker: the lock file every run creates first, and keeps.

    Folders from before the lock existed are recognised by the files only a run writes (``run_info.json``, a model
    or an epoch checkpoint).
    """
    path = Path(path)
    own = (LOCK_FILE, "run_info.json", "model.pt")
    return any((path / name).is_file() for name in own) or bool(epoch_checkpoints(path))


def create_run_dir(path: str | Path, resume: bool = False, run_name: object = None) -> str:
    """Create `path` for a new run, or check it holds a run to resume; either way, lock it for this process.

    A new run refuses a folder holding a previous run, so a second run with the same name cannot destroy the first
    one's results. A folder that carries a run's marker (:func:`is_run_folder`) but no checkpoint (epoch or best
    model) is a failed attempt (it died before its first epoch ended): its files are set aside in
    ``failed_attempts/<time>/`` and the run starts afresh under its name. A folder that is not a run's own and is not
    empty is refused, untouched; so is `resume` of a folder that does not exist (nothing is created). The lock
    (:func:`lock_run_dir`) keeps a second process from training or resuming the same run at once.

    Args:
        path: the run's folder (``runs_dir/run_name``).
        resume: continue the run from its newest complete epoch checkpoint.
        run_name: the name the user gave, checked to be a single folder name before anything is created.
    """
    from medtransfer.settings import as_flag

    if run_name is not None:
        check_run_name(run_name)
    path = Path(path)
    resume = as_flag(resume, "resume")
    if resume and not path.is_dir():
        raise RunDirectoryError(
            f"cannot resume: there is no run {path}; check --run_name and --runs_dir (the runs there: "
            f"{_listing(path.parent)}), or drop --resume to start a new run"
        )
    if path.exists() and not path.is_dir():
        raise RunDirectoryError(f"{path} is a file, not a run folder; choose another --run_name")
    if path.is_dir() and not is_run_folder(path):
        foreign = [p for p in path.iterdir() if not _not_a_result(p)]
        if foreign:
            contents = ", ".join(sorted(p.name for p in foreign)[:5])
            raise RunDirectoryError(
                f"{path} exists and is not a medtransfer run ({contents}); nothing in it was touched. Choose another "
                "--run_name, or --runs_dir"
            )
    lock_run_dir(path)
    if resume:
        if latest_checkpoint(path) is None:
            raise RunDirectoryError(
                f"cannot resume: {path} holds no complete checkpoint_epoch=N.pt; check --run_name, or drop --resume "
                "to start the run afresh (a folder without a checkpoint is set aside and restarted)"
            )
        remove_stale_temporaries(path)
        return str(path)
    previous = [p for p in path.iterdir() if not _not_a_result(p)]
    if previous and latest_checkpoint(path) is None and not (path / "model.pt").is_file():
        aside = set_aside_failed_attempt(path, previous)
        logger.warning(f"{path} held a failed attempt without any checkpoint; its files are kept in {aside}")
    elif previous:
        contents = ", ".join(sorted(p.name for p in previous)[:5])
        raise RunDirectoryError(
            f"run directory {path} already exists and holds a previous run ({contents}). Choose another "
            f"--run_name, pass --resume true to continue it, or delete the folder yourself"
        )
    return str(path)


def _listing(folder: Path) -> str:
    names = sorted(p.name for p in folder.iterdir() if p.is_dir()) if folder.is_dir() else []
    return ", ".join(names[:8]) + (", ..." if len(names) > 8 else "") if names else "none"


def _not_a_result(path: Path) -> bool:
    """Files a run folder may hold before any result: the lock, earlier failed attempts, MLflow's config copy."""
    return path.name in (LOCK_FILE, FAILED_ATTEMPTS) or bool(TRACKING_CONFIG_COPY.match(path.name))


def set_aside_failed_attempt(path: Path, files: list[Path]) -> Path:
    """Move a failed attempt's files (its log, ``run_info.json``) into ``failed_attempts/<time>/`` of its folder."""
    aside = path / FAILED_ATTEMPTS / timestamp()
    while aside.exists():
        aside = aside.with_name(aside.name + "_")
    aside.mkdir(parents=True)
    for file in files:
        file.rename(aside / file.name)
    return aside


def remove_stale_temporaries(path: Path) -> list[Path]:
    """Delete the temporary files a killed writer left (``.<name>.*.tmp``); under the run's lock nobody else writes."""
    stale = [p for p in path.glob(".*.tmp") if p.is_file()]
    for p in stale:
        p.unlink(missing_ok=True)
    return stale


# one open lock file per run folder this process holds (flock locks belong to the open file, so keep it open)
_HELD_LOCKS: dict[str, object] = {}


def lock_run_dir(path: str | Path) -> None:
    """Create `path` and take its lock for this process, or refuse with the pid of the process holding it.

    The lock is an ``flock`` on ``.medtransfer.lock`` in the folder: the operating system drops it when the process
    ends, however it ends, so a killed run never leaves a stale lock. Taking it again in the same process is a no-op.
    """
    path = Path(path)
    key = os.path.realpath(path)
    if key in _HELD_LOCKS:
        return
    path.mkdir(parents=True, exist_ok=True)
    try:
        import fcntl
    except ImportError:  # Windows: no flock; runs are not locked there
        return
    handle = open(path / LOCK_FILE, "a+")
    try:
        fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        handle.seek(0)
        holder = handle.read().strip() or "unknown"
        handle.close()
        raise RunDirectoryError(
            f"run directory {path} is in use by pid {holder} (another process is training or resuming this run); "
            "wait for it to finish, or stop that process first"
        ) from None
    handle.seek(0)
    handle.truncate()
    handle.write(f"{os.getpid()}\n")
    handle.flush()
    _HELD_LOCKS[key] = handle


def release_run_dir(path: str | Path) -> None:
    """Give up this process's lock on a run folder (the bundles' ``finalize``; process exit does it too)."""
    handle = _HELD_LOCKS.pop(os.path.realpath(path), None)
    if handle is not None:
        handle.close()


def require_run_dir(path: str | Path, needs: str = "model.pt") -> str:
    """Check that `path` is a finished run holding `needs` (used by evaluate and inference configs)."""
    path = Path(path)
    if not _complete(path / needs):
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
        (p.parent for pattern in (f"*/{needs}", f"*/*/{needs}") for p in root.glob(pattern) if _complete(p)),
        key=lambda p: (p / needs).stat().st_mtime,
    )
    if not runs:
        raise RunDirectoryError(f"no finished run (with {needs}) under {runs_dir}; train first, or pass --run_name")
    name = runs[-1].relative_to(root).as_posix()
    logger.info(f"no --run_name given: using the newest finished run {name} under {root}")
    return name


def require_trained_model(run_dir: str | Path, needs: str = "model.pt") -> str:
    """Fail a training run that ended without a best model, so it exits non-zero instead of "succeeding" at nothing.

    Without it, a run whose validation never produced a finite key metric would end with status 0, and a later
    evaluation without ``--run_name`` would silently score some other run.
    """
    path = Path(run_dir) / needs
    if not path.is_file():
        raise RunDirectoryError(
            f"training ended without writing {path}: no validation produced a finite key metric (see history.csv). "
            "Check the validation split and --val_interval (it must be <= --epochs), then train again under this name"
        )
    return str(run_dir)


def epoch_checkpoints(run_dir: str | Path) -> list[tuple[int, Path]]:
    """Every complete epoch checkpoint of a run folder as (epoch, path), oldest first.

    Complete means a whole zip archive (what ``torch.save`` writes): a file torn by a crash outside the atomic
    writer has no central directory and is passed over, so resuming takes the newest checkpoint that loads.
    """
    found = [(int(m.group(1)), p) for p in Path(run_dir).glob("*.pt") if (m := CHECKPOINT_PATTERN.match(p.name))]
    return sorted((epoch, p) for epoch, p in found if _complete(p))


def _complete(path: Path) -> bool:
    """A file that ``torch.save`` finished: a whole zip archive (a torn one lacks its central directory)."""
    return path.is_file() and zipfile.is_zipfile(path)


def latest_checkpoint(run_dir: str | Path) -> str | None:
    """The newest complete epoch checkpoint in a run directory, or None."""
    found = epoch_checkpoints(run_dir)
    return str(found[-1][1]) if found else None


def checkpoint_epoch(run_dir: str | Path) -> int:
    """The epoch of the newest epoch checkpoint in a run directory (0 when there is none)."""
    path = latest_checkpoint(run_dir)
    return int(CHECKPOINT_PATTERN.search(Path(path).name).group(1)) if path else 0


def selected_on_meta_data(run_dir: str | Path) -> bool:
    """Whether the run tuned its LRs on the validation split that also selected its checkpoint.

    Such a run (``metalr_meta_source validation``) has a validation score biased upward and a selection that saw its
    meta data: reports and comparison tables flag it as "selected on meta data". Reads ``run_info.json``.
    """
    path = Path(run_dir) / "run_info.json"
    if not path.is_file():
        return False
    settings = json.loads(path.read_text()).get("settings", {})
    return any(key.endswith("_meta_source") and value == "validation" for key, value in settings.items())


def write_run_info(
    run_dir: str | Path, settings: dict | None = None, resume: bool = False, split_settings: Mapping | None = None
) -> dict:
    """Record how this run was made: command line, settings, seed, library versions and git commit.

    A resumed run must continue the same run: a setting that differs from what the run was started with (another
    learning rate, strategy, epoch count) is refused, naming both values. The `split_settings` are the split guard's
    to check (:func:`medtransfer.guards.guard_split`, paths resolved).
    """
    import monai
    import torch

    from medtransfer.settings import as_flag

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
        if as_flag(resume, "resume"):
            check_unchanged(run_dir, previous.get("settings", {}), info["settings"], split_keys=split_settings or ())
        info["previous"] = previous.get("previous", []) + [{k: v for k, v in previous.items() if k != "previous"}]
    from medtransfer.report import save_json  # report imports plotting; only this function needs it

    save_json(info, path)
    return info


def check_unchanged(run_dir: str | Path, recorded: dict, settings: dict, split_keys: Iterable[str] = ()) -> None:
    """Refuse to resume `run_dir` with settings other than those it was started with.

    `split_keys` (and the classes) are left to :func:`medtransfer.guards.guard_split`, which compares paths resolved
    and lets ``allow_changed_split`` through.
    """
    from medtransfer.errors import SettingsError

    for key in sorted(set(recorded) & set(settings) - {*split_keys, "classes"}):
        if recorded[key] != settings[key]:
            raise SettingsError(
                f"cannot resume {run_dir} with --{key} {settings[key]!r}: it was started with --{key} "
                f"{recorded[key]!r}, and a resumed run must continue exactly. Pass --{key} {recorded[key]!r}, or start "
                "a new run under another --run_name"
            )


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
    """True when the run's newest epoch checkpoint is its last epoch, or the run stopped early (``history.json``
    records ``early_stopped``); False for a run with no checkpoint yet."""
    info = Path(run_dir) / "run_info.json"
    epoch = checkpoint_epoch(run_dir)
    if not info.is_file() or epoch == 0:
        return False
    history = Path(run_dir) / "history.json"
    stopped = history.is_file() and json.loads(history.read_text()).get("early_stopped", {}).get("epoch")
    if stopped and epoch >= stopped:
        return True
    return epoch >= int(json.loads(info.read_text())["settings"]["epochs"])


def train_then_evaluate(
    run_dir: Path, train_configs: list[str | Path], evaluate_configs: list[str | Path], settings: dict
) -> str:
    """Train a run (or resume it from its last epoch checkpoint, or skip a finished training), then evaluate it.

    ``settings`` must put the run in ``run_dir`` (``runs_dir`` and ``run_name``). Returns ``"new"``, ``"resumed"`` or
    ``"trained"`` (training had finished; only the evaluation ran), for the caller's log.
    """
    run_dir = Path(run_dir)
    if checkpoint_epoch(run_dir) == 0:  # nothing yet, or a failed attempt that create_run_dir sets aside
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
