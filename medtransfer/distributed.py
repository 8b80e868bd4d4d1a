"""Data-parallel training across processes (``torchrun``): the process group, the device, the wrapper, the writers.

Why its own module: a bundle's ``multi_gpu_train.json`` (MONAI model-zoo pattern) and MetaLR both need the same few
facts — am I one of several processes, which one, on which device — and every writer must agree that only rank 0
writes. Single-process code calls the same functions and gets the trivial answers (rank 0 of 1, no wrapper), so no
path differs between one process and many except where it must.
"""

from __future__ import annotations

import datetime
import os
from collections.abc import Callable, Sequence
from typing import Any, TypeVar

import torch
import torch.distributed as dist
from torch import nn

T = TypeVar("T")

# the environment torchrun (and every launcher it documents) sets for each process
_LAUNCH_VARIABLES = ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT")


def is_distributed() -> bool:
    """Whether this process is one of several in an initialised process group."""
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def rank() -> int:
    return dist.get_rank() if dist.is_available() and dist.is_initialized() else 0


def world_size() -> int:
    return dist.get_world_size() if dist.is_available() and dist.is_initialized() else 1


def is_main_process() -> bool:
    """Rank 0, the one process that writes files (checkpoints, reports, TensorBoard, CSVs)."""
    return rank() == 0


def local_device() -> torch.device:
    """``cuda:LOCAL_RANK`` when CUDA is there, else the CPU (several CPU processes with the gloo backend)."""
    if torch.cuda.is_available():
        return torch.device("cuda", int(os.environ.get("LOCAL_RANK", 0)))
    return torch.device("cpu")


def init_process_group(backend: str | None = None, timeout_minutes: float = 30) -> torch.device:
    """Start this process's group from torchrun's environment (once) and return its device.

    NCCL on CUDA, gloo on the CPU unless `backend` says otherwise. Without torchrun's variables it raises a clear
    error naming the launch command instead of waiting forever for a rendezvous.
    """
    missing = [v for v in _LAUNCH_VARIABLES if v not in os.environ]
    if missing:
        raise RuntimeError(
            f"multi_gpu_train.json needs the environment torchrun sets ({', '.join(missing)} missing); launch with "
            "`medtransfer run NAME --gpus N` or `torchrun --standalone --nproc_per_node=N -m monai.bundle run "
            '--config_file "[configs/train.json, configs/multi_gpu_train.json]"`'
        )
    device = local_device()
    if device.type == "cuda":
        torch.cuda.set_device(device)
    if not dist.is_initialized():
        dist.init_process_group(
            backend=backend or ("nccl" if device.type == "cuda" else "gloo"),
            timeout=datetime.timedelta(minutes=timeout_minutes),
        )
    return device


def destroy_process_group() -> None:
    """The bundles' ``finalize``: leave the group (a barrier first, so no rank exits while another still sends)."""
    if dist.is_available() and dist.is_initialized():
        dist.barrier()
        dist.destroy_process_group()


def wrap(
    network: nn.Module,
    device: torch.device | str | None = None,
    optimizer: torch.optim.Optimizer | None = None,
    find_unused_parameters: bool | None = None,
    **ddp_options: Any,
) -> nn.Module:
    """`network` inside ``DistributedDataParallel`` when several processes train, else `network` itself.

    Bundles keep the bare network for layer groups, the optimizer and checkpoints (so parameter names carry no
    ``module.`` prefix) and give only the trainer the wrapper; every rank starts from rank 0's weights. Pass the
    `optimizer` so it is built first: building it is where a strategy freezes layer groups. Every parameter is
    registered, frozen or not, since a strategy may unfreeze mid-run (LP-FT), and a parameter DDP does not know would
    then train differently on every rank; while any is frozen DDP looks for the unused ones at each step
    (`find_unused_parameters`, default: exactly when some parameter is frozen now).
    """
    del optimizer  # only its construction (and the freezing it does) had to happen before this
    if not is_distributed():
        return network
    device = torch.device(device) if device is not None else next(network.parameters()).device
    frozen = [p for p in network.parameters() if not p.requires_grad]
    if find_unused_parameters is None:
        find_unused_parameters = bool(frozen)
    for p in frozen:
        p.requires_grad_(True)
    try:
        return nn.parallel.DistributedDataParallel(
            network,
            device_ids=[device.index] if device.type == "cuda" else None,
            find_unused_parameters=find_unused_parameters,
            **ddp_options,
        )
    finally:
        for p in frozen:
            p.requires_grad_(False)


def unwrap(network: nn.Module) -> nn.Module:
    """The module inside a (Distributed)DataParallel wrapper, else `network`."""
    wrappers = (nn.DataParallel, nn.parallel.DistributedDataParallel)
    return network.module if isinstance(network, wrappers) else network


def on_main_process(action: Callable[[], T]) -> T | None:
    """Run `action` on rank 0 only, then hold every rank until it is done (run folders, run records, guards)."""
    result = action() if is_main_process() else None
    if is_distributed():
        dist.barrier()
    return result


def rank_seed(seed: int, step: int) -> int:
    """A seed for (`seed`, `step`) that differs between processes: each rank draws its own random stream, and rank 0's
    is the single-process one (so one process and rank 0 of many augment alike)."""
    return int(seed) + int(step) + 7_919 * rank()


def all_reduce_sum_(tensor: torch.Tensor) -> torch.Tensor:
    """Sum `tensor` over all processes in place (identity in a single process)."""
    if is_distributed():
        dist.all_reduce(tensor, op=dist.ReduceOp.SUM)
    return tensor


def broadcast_(tensor: torch.Tensor, source: int = 0) -> torch.Tensor:
    """Every process gets `source`'s `tensor` in place, bit for bit (identity in a single process)."""
    if is_distributed():
        dist.broadcast(tensor, src=source)
    return tensor


def gather_objects(obj: T) -> list[T]:
    """Every process's `obj`, in rank order (``[obj]`` in a single process): per-sample outputs of sharded
    validation, whose shards may differ in size."""
    if not is_distributed():
        return [obj]
    gathered: list[Any] = [None] * world_size()
    dist.all_gather_object(gathered, obj)
    return gathered


def writes_files(handler: object) -> bool:
    """Whether a handler writes run files or logs (only rank 0 keeps those under data-parallel training).

    The toolkit's writers say so with a ``writes_files`` attribute; MONAI's logging, TensorBoard, checkpoint and
    tracking handlers are recognised by type.
    """
    if getattr(handler, "writes_files", False):
        return True
    from monai import handlers as monai_handlers

    monai_writers = tuple(
        getattr(monai_handlers, name)
        for name in ("StatsHandler", "TensorBoardStatsHandler", "CheckpointSaver", "MLFlowHandler", "ClearMLHandler")
        if hasattr(monai_handlers, name)
    )
    return isinstance(handler, monai_writers)


def handlers_for_this_rank(handlers: Sequence[object]) -> list[object]:
    """`handlers` on rank 0; on the other ranks without the writers (:func:`writes_files`), in the same order."""
    return list(handlers) if is_main_process() else [h for h in handlers if not writes_files(h)]
