"""MetaLR under data parallelism: W gloo processes, each with its shard, give the single-process hypergradient.

The reference is a single process on the whole (global) validation batch; the processes are real ones
(``torch.multiprocessing`` with the gloo backend), each seeing only its shard, as under ``torchrun``.
"""

from __future__ import annotations

import os
import socket

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from torch import nn

from medtransfer import distributed
from medtransfer.layers import layer_groups
from medtransfer.metalr import CyclingBatches, hypergradient_from_directions


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def make_problem():
    """A small MLP (no batch-coupled layers), its training gradient and a validation batch of 7 (uneven shards)."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(5, 6), nn.Tanh(), nn.Linear(6, 4), nn.Tanh(), nn.Linear(4, 3)).double()
    groups = layer_groups(model)
    x, y = torch.randn(10, 5, dtype=torch.float64), torch.randint(0, 3, (10,))
    nn.functional.cross_entropy(model(x), y).backward()
    grads = [[p.grad.clone() for p in g.params] for g in groups]
    xv, yv = torch.randn(7, 5, dtype=torch.float64), torch.randint(0, 3, (7,))
    return model, groups, grads, (xv, yv), [0.05, 0.02, 0.1]


def _worker(rank: int, world: int, port: int, out: str) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=world)
    torch.set_num_threads(1)
    try:
        model, groups, grads, (xv, yv), lrs = make_problem()
        shard = slice(rank, None, world)  # uneven: 4 and 3 of the 7
        results = {
            normalize: hypergradient_from_directions(
                model, nn.functional.cross_entropy, (xv[shard], yv[shard]), lrs, groups, grads, normalize=normalize
            )
            for normalize in (False, True)
        }
        order = CyclingBatches(list(range(11)), batch_size=2, seed=3, collate_fn=list)
        torch.save(
            {"hyper": results, "batches": [next(order) for _ in range(8)], "rank": distributed.rank(),
             "frozen_then_unfrozen": frozen_then_unfrozen(rank)},
            os.path.join(out, f"rank{rank}.pt"),
        )  # fmt: skip
    finally:
        dist.destroy_process_group()


def frozen_then_unfrozen(rank: int) -> dict:
    """LP-FT under DDP: the first layer frozen when wrapped, then unfrozen; each rank backpropagates its own data."""
    torch.manual_seed(1)
    model = nn.Sequential(nn.Linear(3, 4), nn.Tanh(), nn.Linear(4, 2))
    model[0].requires_grad_(False)
    ddp = distributed.wrap(model)
    assert not model[0].weight.requires_grad  # wrapping leaves the freezing as it was
    steps = {}
    for step in ("frozen", "unfrozen"):
        if step == "unfrozen":
            model[0].requires_grad_(True)
        model.zero_grad(set_to_none=True)
        x = torch.full((2, 3), float(rank + 1))  # different data on each rank: only a reduction makes grads agree
        ddp(x).square().mean().backward()
        steps[step] = {n: (p.grad.clone() if p.grad is not None else None) for n, p in model.named_parameters()}
    return steps


@pytest.fixture(scope="module")
def two_ranks(tmp_path_factory):
    out = tmp_path_factory.mktemp("ddp")
    mp.start_processes(_worker, args=(2, free_port(), str(out)), nprocs=2, join=True, start_method="spawn")
    return [torch.load(out / f"rank{r}.pt", weights_only=True) for r in range(2)]


@pytest.mark.parametrize("normalize", [False, True])
def test_sharded_hypergradient_equals_the_single_process_one(two_ranks, normalize):
    model, groups, grads, val_batch, lrs = make_problem()
    single = hypergradient_from_directions(model, nn.functional.cross_entropy, val_batch, lrs, groups, grads,
                                      normalize=normalize)  # fmt: skip
    for result in two_ranks:
        torch.testing.assert_close(result["hyper"][normalize], single, rtol=1e-10, atol=1e-14)
    # every rank holds the very same bits (broadcast from rank 0), so their LRs can never drift apart
    assert torch.equal(two_ranks[0]["hyper"][normalize], two_ranks[1]["hyper"][normalize])
    assert single.abs().min() > 0  # a real signal in every group, not zeros that trivially agree


def test_sharded_batches_are_the_single_process_batches_split_as_distributed_sampler_splits(two_ranks):
    assert [r["rank"] for r in two_ranks] == [0, 1]
    single = CyclingBatches(list(range(11)), batch_size=4, seed=3, collate_fn=list)  # W·b = 2·2
    for step in range(8):
        expected = next(single)
        shards = [r["batches"][step] for r in two_ranks]
        if len(expected) >= 2:
            assert shards == [expected[0::2], expected[1::2]]
        else:  # the pass's last single item: the other rank borrows from the start of the order, none is empty
            assert shards[0] == expected and len(shards[1]) == 1


def test_cycling_batches_refuse_a_set_smaller_than_the_world():
    with pytest.raises(ValueError, match="fewer than the 3 processes"):
        CyclingBatches([1, 2], batch_size=1, rank=0, world_size=3)
    with pytest.raises(ValueError, match="rank 3"):
        CyclingBatches([1, 2, 3, 4], batch_size=1, rank=3, world_size=3)


def test_single_process_helpers_are_trivial():
    model = nn.Linear(2, 2)
    assert distributed.rank() == 0 and distributed.world_size() == 1 and distributed.is_main_process()
    assert distributed.wrap(model) is model and distributed.unwrap(model) is model
    assert distributed.unwrap(nn.DataParallel(model)) is model
    assert distributed.gather_objects({"a": 1}) == [{"a": 1}]
    assert distributed.on_main_process(lambda: 7) == 7


def test_rank_zero_keeps_the_writers_the_others_drop_them(monkeypatch):
    from monai.handlers import StatsHandler

    from medtransfer.handlers import EpochSeed, LRRecorder, TrainingHistory

    seed = EpochSeed(0)
    writers = [StatsHandler(), TrainingHistory("x"), LRRecorder.__new__(LRRecorder)]
    handlers = [seed, *writers]
    assert distributed.handlers_for_this_rank(handlers) == handlers
    monkeypatch.setattr(distributed, "rank", lambda: 1)
    assert distributed.handlers_for_this_rank(handlers) == [seed]


def test_init_without_torchrun_names_the_launch_command(monkeypatch):
    for name in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT"):
        monkeypatch.delenv(name, raising=False)
    with pytest.raises(RuntimeError, match="medtransfer run NAME --gpus N"):
        distributed.init_process_group()


def test_a_layer_frozen_when_wrapped_and_unfrozen_later_is_averaged_like_the_others(two_ranks):
    first, second = (r["frozen_then_unfrozen"] for r in two_ranks)
    assert first["frozen"]["0.weight"] is None and second["frozen"]["0.weight"] is None
    for step in ("frozen", "unfrozen"):
        for name, grad in first[step].items():
            if grad is not None:
                assert torch.equal(grad, second[step][name]), (step, name)
    assert first["unfrozen"]["0.weight"] is not None and first["unfrozen"]["0.weight"].abs().sum() > 0
