"""`medtransfer run`: one bundle workflow with strategy fragments merged, overrides read as `monai.bundle run` reads them.

The bundle is an installed name (``busi_classification``) or any bundle folder; strategies are fragment names
(``metalr``) or ``.json`` paths, merged after ``train.json`` in the order given. Overrides go through the same
parser (python-fire) and the same ``monai.bundle.scripts.run`` as ``python -m monai.bundle run``, so every
``--key value`` means exactly what it means there. What this adds is the short form and the error contract: a project
error (bad data, a checkpoint that does not fit, a refused run folder, a bad override) ends the output as one clear
message, without a traceback unless ``--traceback``.
"""

from __future__ import annotations

import contextlib
import copy
import io
import sys
import traceback
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from medtransfer.bundling import bundle_path, strategy_path
from medtransfer.errors import (
    BundleError,
    MedTransferError,
    RunInterrupted,
    exception_chain,
    filesystem_message,
    find_in_chain,
)

WORKFLOWS = {
    "train": ("train.json",),
    "evaluate": ("train.json", "evaluate.json"),
    "inference": ("train.json", "inference.json"),
}
MULTI_GPU_CONFIG = "multi_gpu_train.json"
# where `--gpus N` workers leave the message of an error, for the launching process to end its output with
WORKER_ERRORS_ENV = "MEDTRANSFER_WORKER_ERRORS"
# arguments of monai.bundle.scripts.run that are not config overrides
_RUN_ARGUMENTS = ("run_id", "init_id", "final_id", "meta_file", "logging_file", "tracking", "args_file")


def parse_overrides(tokens: Sequence[str]) -> dict[str, Any]:
    """``--key value`` tokens as ``python -m monai.bundle run`` parses them (python-fire: Python literals, else
    strings; ``--key=value``), the one override parser of ``medtransfer run``, ``cv`` and ``transfer``. One
    difference, on purpose: a ``--key`` without a value is an error, not ``True``."""
    import fire

    def collect(**kwargs: Any) -> dict[str, Any]:
        return kwargs

    tokens = list(tokens)
    for i, token in enumerate(tokens):
        follows_key = i > 0 and tokens[i - 1].startswith("--") and "=" not in tokens[i - 1]
        if not token.startswith("--") and not follows_key:
            raise BundleError(f"unexpected argument {token!r}: overrides are written --key value (e.g. --epochs 5)")
        # fire would read a bare --key as True; for a bundle setting that is almost always a forgotten value
        if token.startswith("--") and "=" not in token and (i + 1 == len(tokens) or tokens[i + 1].startswith("--")):
            raise BundleError(f"{token} needs a value (e.g. {token} 5, or {token} True for a switch)")
    out, err = io.StringIO(), io.StringIO()
    try:
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            parsed = fire.Fire(collect, command=tokens, name="medtransfer run")
    except SystemExit as exc:  # fire reports a parse error by printing usage and exiting
        lines = [line for line in err.getvalue().splitlines() if line.strip()]
        raise BundleError(f"cannot read the overrides {' '.join(tokens)!r}: {lines[-1] if lines else exc}") from None
    # `--allow-changed-split` and `--allow_changed_split` name the same setting (bundle keys never hold a dash)
    return {key.replace("-", "_"): value for key, value in dict(parsed or {}).items()}


def config_files(
    bundle: str | Path, strategies: Sequence[str] = (), workflow: str = "train", distributed: bool = False
) -> list[Path]:
    """The config files of one workflow: the bundle's own, with the strategy fragments right after ``train.json`` (and
    with `distributed` after the bundle's ``multi_gpu_train.json``, which follows ``train.json`` as in MONAI's model
    zoo), so a fragment can add to what the multi-process wiring set, e.g. a ``+run`` step."""
    if workflow not in WORKFLOWS:
        raise BundleError(f"unknown workflow {workflow!r}; choose one of {', '.join(WORKFLOWS)}")
    configs = bundle_path(bundle) / "configs"
    files = [configs / name for name in WORKFLOWS[workflow]]
    missing = [f for f in files if not f.is_file()]
    if missing:
        raise BundleError(f"{missing[0]} not found: the bundle {configs.parent} has no {workflow} workflow")
    base = files[:1]
    if distributed:
        if workflow != "train":
            raise BundleError(f"only training runs on several processes; run {workflow} without --gpus")
        multi = configs / MULTI_GPU_CONFIG
        if not multi.is_file():
            raise BundleError(
                f"{multi} not found: the bundle {configs.parent} has no multi-process training; copy "
                f"configs/{MULTI_GPU_CONFIG} from an installed bundle (`medtransfer bundle path busi_classification`)"
            )
        base.append(multi)
    return [*base, *(strategy_path(s) for s in strategies), *files[1:]]


def check_overrides(bundle: str | Path, strategies: Sequence[str], overrides: Mapping[str, Any]) -> None:
    """Refuse overrides that name no setting of the bundle (with these fragments) in any of its workflows.

    The entry points that take a user's ``--key value`` call it (``run``, ``cv``, ``compare``, ``sweep``,
    ``transfer``) before anything runs; a misspelled key would otherwise be added and ignored.
    """
    from medtransfer.settings import check_override_keys

    files = config_files(bundle, strategies, "train")
    files += [
        f
        for step in ("evaluate", "inference")
        if (f := bundle_path(bundle) / "configs" / WORKFLOWS[step][-1]).is_file()
    ]
    check_override_keys(files, overrides, ignore=_RUN_ARGUMENTS, fragments=[strategy_path(s) for s in strategies])


def check_monai_command_line(argv: Sequence[str] | None = None) -> None:
    """Under ``python -m monai.bundle run``, refuse a misspelled override on that command line too.

    MONAI adds an unknown key to the config without a word, so the bundles call this first in ``initialize``: the
    plain MONAI command then gets the check ``medtransfer run`` makes. In any other process (``medtransfer run``, a
    study, a test) it does nothing; those check their overrides before a workflow starts.
    """
    argv = list(sys.argv if argv is None else argv)
    if len(argv) < 2 or not Path(argv[0]).as_posix().endswith("monai/bundle/__main__.py") or argv[1] != "run":
        return
    install_error_hook()
    try:
        settings = parse_overrides(argv[2:])
    except BundleError:
        return  # MONAI's own parser has the last word on its command line
    files = settings.pop("config_file", None)
    if files:
        from medtransfer.settings import check_override_keys

        check_override_keys([files] if isinstance(files, str) else list(files), settings, ignore=_RUN_ARGUMENTS)


TRACEBACK_ENV = "MEDTRANSFER_TRACEBACK"


def quiet_background_errors() -> None:
    """A file system error in a background writer thread (TensorBoard's event writer, when the run folder is removed
    or the disk fills) becomes one warning line naming the file and the fix; the main thread meets the same error and
    ends the output with it. Any other error in a thread keeps Python's report."""
    import threading

    from medtransfer.errors import filesystem_message

    if getattr(threading.excepthook, "medtransfer", False):
        return  # installed already (each `medtransfer run` in one process calls this)
    default = threading.excepthook

    def hook(args) -> None:
        message = filesystem_message(args.exc_value) if args.exc_value is not None else None
        if message is None:
            default(args)
            return
        print(f"warning: a background writer stopped: {message}", file=sys.stderr)

    hook.medtransfer = True
    threading.excepthook = hook


def install_error_hook() -> None:
    """Under ``python -m monai.bundle run``: end an uncaught error's output with the message ``medtransfer run``
    prints, naming the file and the fix (a project error without its traceback, unless ``MEDTRANSFER_TRACEBACK=1``).
    """
    import os

    def hook(kind, exc, tb) -> None:
        if isinstance(exc, KeyboardInterrupt):
            sys.__excepthook__(kind, exc, tb)
            return
        show = os.environ.get(TRACEBACK_ENV, "").strip().lower() in ("1", "true", "yes", "on")
        report_error(exc, show_traceback=show, stream=sys.stderr)

    sys.excepthook = hook
    quiet_background_errors()


def interrupted_message(bundle: str | Path, settings: Mapping[str, Any]) -> str:
    """What a user reads after Ctrl-C: which run stopped, what is kept, and the command that continues it."""
    from medtransfer.bundling import default_runs_dir
    from medtransfer.runs import latest_checkpoint

    name = settings.get("run_name")
    if name is None:
        return "interrupted (no run had started)"
    run_dir = Path(str(settings.get("runs_dir") or default_runs_dir(bundle_path(bundle)))) / str(name)
    checkpoint = latest_checkpoint(run_dir)
    if checkpoint is None:
        return f"interrupted: run {run_dir} had not finished an epoch; run the same command again to start it afresh"
    return (
        f"interrupted: run {run_dir} keeps its last complete checkpoint {Path(checkpoint).name}; continue it exactly "
        f"with the same command plus --run_name {name} --resume true"
    )


def tracking_settings(bundle: str | Path) -> dict:
    """MONAI's MLflow settings, with the experiment named after the bundle and the run's settings logged as params.

    Per-group learning rates are logged by MONAI's MLFlowHandler from the optimizer's groups (``lr_group_<i>``, in
    layer-group order; ``lr_history.csv`` in the run folder names them).
    """
    try:
        import mlflow  # noqa: F401
    except ImportError:
        raise BundleError("--tracking mlflow needs mlflow: pip install 'medtransfer[mlflow]'") from None
    from monai.bundle.utils import DEFAULT_MLFLOW_SETTINGS

    settings = copy.deepcopy(DEFAULT_MLFLOW_SETTINGS)
    settings["configs"]["experiment_name"] = bundle_path(bundle).name
    settings["configs"]["trainer"]["experiment_param"] = "@run_settings"
    return settings


def run(
    bundle: str | Path,
    strategies: Sequence[str] = (),
    workflow: str = "train",
    evaluate: bool = False,
    overrides: Sequence[str] = (),
    gpus: int = 1,
    distributed_worker: bool = False,
) -> str:
    """Run one bundle workflow (and, with `evaluate`, evaluate the trained run on the test split); return the run name.

    ``overrides`` are command-line tokens (``["--epochs", "5"]``). With `gpus` > 1 the training runs as that many
    data-parallel processes under ``torchrun --standalone`` (one per GPU; gloo processes on a machine without CUDA),
    each a `distributed_worker` that merges the bundle's ``multi_gpu_train.json``; the evaluation runs here, on one.
    """
    from monai.bundle.scripts import run as monai_run

    from medtransfer.runs import timestamp

    if int(gpus) < 1:
        raise BundleError(f"--gpus must be 1 or more, got {gpus}")
    quiet_background_errors()
    if evaluate and workflow != "train":
        raise BundleError(
            f"--evaluate evaluates a run after training it; with --workflow {workflow} it would do nothing. Drop "
            "--evaluate, or use --workflow evaluate to score a finished run on its test split"
        )
    settings = parse_overrides(overrides)
    if "config_file" in settings:
        raise BundleError("--config_file is chosen by `medtransfer run`; add fragments with --strategy FILE.json")
    distributed = distributed_worker or int(gpus) > 1
    check_overrides(bundle, strategies, settings)
    if settings.get("tracking") == "mlflow":
        settings["tracking"] = tracking_settings(bundle)
    if workflow == "train":  # one name for the training run and its evaluation; evaluate alone takes the newest
        settings.setdefault("run_name", timestamp())
    steps = [workflow] + (["evaluate"] if evaluate and workflow == "train" else [])
    for step in steps:
        files = config_files(bundle, strategies, step, distributed=distributed and step == "train")
        step_settings = dict(settings)
        if step != "train":
            step_settings.pop("tracking", None)
        try:
            if step == "train" and int(gpus) > 1 and not distributed_worker:
                _launch_workers(bundle, strategies, overrides, int(gpus), str(settings["run_name"]))
            else:
                with _reported_to_launcher():
                    monai_run(config_file=[str(f) for f in files], **step_settings)
        except KeyboardInterrupt:
            raise RunInterrupted(interrupted_message(bundle, settings)) from None
    return str(settings.get("run_name", "the newest finished run"))


def torchrun_command(
    bundle: str | Path, strategies: Sequence[str], overrides: Sequence[str], processes: int, run_name: str
) -> list[str]:
    """The ``torchrun --standalone`` command line that trains one bundle run as `processes` data-parallel workers.

    Each worker is ``medtransfer run`` itself (so it checks its settings and reports errors as a single process
    does), told to merge ``multi_gpu_train.json``. For several machines use torchrun's rendezvous options instead
    of ``--standalone`` (the bundle README shows the command).
    """
    worker = ["-m", "medtransfer.cli", "run", str(bundle), *(t for s in strategies for t in ("--strategy", str(s)))]
    named = "run_name" in parse_overrides(overrides)
    return [
        sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={processes}",
        *worker, "--distributed-worker", *overrides, *([] if named else ["--run_name", run_name]),
    ]  # fmt: skip


def _launch_workers(
    bundle: str | Path, strategies: Sequence[str], overrides: Sequence[str], processes: int, run_name: str
) -> None:
    """Run the workers and wait; a failure ends with the first worker's own error message, not torchrun's summary."""
    import os
    import subprocess
    import tempfile

    with tempfile.TemporaryDirectory(prefix="medtransfer-workers-") as errors:
        env = {**os.environ, WORKER_ERRORS_ENV: errors}
        completed = subprocess.run(torchrun_command(bundle, strategies, overrides, processes, run_name), env=env)
        if completed.returncode != 0:
            messages = [p.read_text().strip() for p in sorted(Path(errors).glob("rank*.txt"))]
            reason = messages[0].removeprefix("error: ") if messages else f"torchrun exit status {completed.returncode}"
            raise BundleError(f"the {processes}-process training run {run_name} failed: {reason}")


@contextlib.contextmanager
def _reported_to_launcher():
    """In a `--gpus N` worker: leave the message of an error where the launching process reads it, then re-raise
    (anywhere else, where the launcher's variable is not set, it does nothing)."""
    import os

    try:
        yield
    except BaseException as exc:
        folder = os.environ.get(WORKER_ERRORS_ENV)
        if folder and not isinstance(exc, KeyboardInterrupt):
            rank = os.environ.get("RANK", "0")
            Path(folder, f"rank{int(rank):05d}.txt").write_text(error_message(exc)[0])
        raise


def project_error(exc: BaseException) -> MedTransferError | None:
    """The project error behind an exception, if any.

    Bundle runs wrap what their config expressions raise in ``RuntimeError("Failed to evaluate ...")``, which would
    bury the message that names the file and the fix under a long traceback.
    """
    return find_in_chain(exc, MedTransferError)


def root_cause(exc: BaseException) -> BaseException:
    """The innermost exception of a chain (the one a config wrapper hides)."""
    return exception_chain(exc)[-1]


def error_message(exc: BaseException) -> tuple[str, bool]:
    """The one line that ends the output, and whether the traceback is worth showing (not for project errors)."""
    found = project_error(exc)
    if found is not None:
        return f"error: {found}", False
    filesystem = next((m for e in exception_chain(exc) if (m := filesystem_message(e))), None)
    if filesystem is not None:
        return f"error: {filesystem}", False
    root = root_cause(exc)
    if isinstance(root, FileNotFoundError) and "config file" in str(root):
        return f"error: {root}", False
    return f"error: {type(root).__name__}: {root}", True


def report_error(exc: BaseException, show_traceback: bool, stream) -> None:
    """Print the traceback where it helps (always with `show_traceback`), then the message as the very last line."""
    message, useful = error_message(exc)
    if show_traceback or useful:
        traceback.print_exception(exc, file=stream)
        if not show_traceback:
            print("(the traceback above is from inside the bundle run; the cause is:)", file=stream)
    print(message, file=stream)
    stream.flush()
