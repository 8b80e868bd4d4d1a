"""The BUSI bundle with MetaLR as 2 data-parallel CPU processes (gloo) under torchrun: `medtransfer run --gpus 2`.

Checks that both ranks end with the same LR history and the same weights, that a run resumed from its epoch-1
checkpoint on two processes ends exactly where the uninterrupted one did, and that the history is the one a single
process takes on the same global batches (twice the per-process batch, sampled in the same order). Three choices make
"the same" a float-tolerance question: the network is ConvNeXt-atto (LayerNorm; with BatchNorm each process
normalises over its own shard, which one process on the whole batch cannot reproduce); the optimizer is SGD (Adam's
first steps are lr·sign(g), so rounding-level differences in near-zero gradients flip whole steps); and the hyper-LR
is 0.01 (at the default 0.1 the published multiplicative rule drives LRs bound to bound, where 1 − η·∂L/∂α cancels).
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from medtransfer.data.synthetic import make_synthetic_busi

pytestmark = pytest.mark.slow

PER_PROCESS_BATCH = 4
COMMON = [
    "--epochs", "2", "--image_size", "32", "--keep_checkpoints", "2", "--arch", "timm:convnext_atto", "--augment_transforms", "[]",
    "--metalr_pin_epochs", "0", "--metalr_hyper_lr", "0.01", "--num_workers", "0", "--metalr_meta_fraction", "0.34",
]  # fmt: skip

# SGD, and what each process holds at the end, saved after the bundle's own run steps
DUMP = {
    "optimizer#_target_": "torch.optim.SGD",
    "+run": [
        "$torch.save({'lrs': torch.tensor(@metalr.history, dtype=torch.float64), "
        "'weights': {k: v.detach().clone() for k, v in @network.state_dict().items()}}, "
        "os.path.join(@output_dir, f'rank{medtransfer.distributed.rank()}.pt'))"
    ],
}
# the single process's training order: the permutation DistributedSampler draws from (seed, epoch), unsplit
SINGLE_PROCESS_ORDER = {
    "train#sampler": {
        "_target_": "DistributedSampler", "dataset": "@train#dataset", "num_replicas": 1, "rank": 0,
        "even_divisible": True, "shuffle": True, "seed": "@seed",
    },
    "train#dataloader#sampler": "@train#sampler",
    "train#dataloader#shuffle": False,
}  # fmt: skip


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    root = tmp_path_factory.mktemp("ddp_busi")
    data = make_synthetic_busi(root / "synthetic_busi_demo", n_per_class=17, image_size=64)
    # 36 training images, 12 held out as MetaLR's meta slice: DistributedSampler pads a set not divisible by the
    # processes with repeats, which one process does not see; an even set keeps "the same global batches" true to the
    # last batch
    from medtransfer.data.classification import classification_datalist
    from medtransfer.data.heldout import fit_and_meta

    records = classification_datalist(data, "busi", "train")
    fit = fit_and_meta(records, meta_source="heldout", meta_fraction=0.34, min_meta=2 * PER_PROCESS_BATCH)
    assert len(fit["train"]) % 2 == 0 and len(fit["meta"]) >= 2 * PER_PROCESS_BATCH
    dump, order = root / "dump.json", root / "single_order.json"
    dump.write_text(json.dumps(DUMP))
    order.write_text(json.dumps(SINGLE_PROCESS_ORDER))
    common = [*COMMON, "--dataset_dir", str(data), "--runs_dir", str(root / "runs")]
    launched = subprocess.run(
        [sys.executable, "-m", "medtransfer.cli", "run", "busi_classification", "--gpus", "2",
         "--strategy", "metalr", "--strategy", str(dump), *common,
         "--batch_size", str(PER_PROCESS_BATCH), "--run_name", "ddp"],
        capture_output=True, text=True, timeout=900,
    )  # fmt: skip
    assert launched.returncode == 0, launched.stdout[-3000:] + launched.stderr[-5000:]
    single = subprocess.run(
        [sys.executable, "-m", "medtransfer.cli", "run", "busi_classification",
         "--strategy", "metalr", "--strategy", str(order), "--strategy", str(dump), *common,
         "--batch_size", str(2 * PER_PROCESS_BATCH), "--run_name", "single"],
        capture_output=True, text=True, timeout=900,
    )  # fmt: skip
    assert single.returncode == 0, single.stderr[-5000:]
    # as if both processes died during epoch 2: resume from the epoch-1 checkpoint, again on 2 processes
    shutil.copytree(root / "runs" / "ddp", root / "runs" / "cut")
    for leftover in ("checkpoint_epoch=2.pt", "rank0.pt", "rank1.pt"):
        (root / "runs" / "cut" / leftover).unlink()
    resumed = subprocess.run(
        [sys.executable, "-m", "medtransfer.cli", "run", "busi_classification", "--gpus", "2",
         "--strategy", "metalr", "--strategy", str(dump), *common,
         "--batch_size", str(PER_PROCESS_BATCH), "--run_name", "cut", "--resume", "true"],
        capture_output=True, text=True, timeout=900,
    )  # fmt: skip
    assert resumed.returncode == 0, resumed.stdout[-3000:] + resumed.stderr[-5000:]
    return root / "runs", launched


def load(run_dir: Path, rank: int) -> dict:
    return torch.load(run_dir / f"rank{rank}.pt", weights_only=True)


def test_both_ranks_end_with_identical_lr_histories_and_weights(runs):
    ddp = runs[0] / "ddp"
    first, second = load(ddp, 0), load(ddp, 1)
    assert first["lrs"].shape[0] >= 3 and first["lrs"].shape[1] > 2  # several iterations, several layer groups
    assert torch.equal(first["lrs"], second["lrs"])
    for name, value in first["weights"].items():
        assert torch.equal(value, second["weights"][name]), name


def test_the_lr_history_is_the_single_process_one_on_the_same_global_batches(runs):
    ddp, single = load(runs[0] / "ddp", 0), load(runs[0] / "single", 0)
    assert ddp["lrs"].shape == single["lrs"].shape
    moved = (single["lrs"][-1] != single["lrs"][0]).sum()
    assert moved >= 2  # MetaLR really moved the LRs, so agreeing means something
    torch.testing.assert_close(ddp["lrs"], single["lrs"], rtol=1e-4, atol=0)
    for name, value in single["weights"].items():
        torch.testing.assert_close(ddp["weights"][name], value, rtol=1e-3, atol=1e-5, msg=name)


def test_only_rank_zero_writes_and_the_run_is_complete(runs):
    ddp = runs[0] / "ddp"
    assert (ddp / "model.pt").is_file() and (ddp / "checkpoint_epoch=2.pt").is_file()
    history = json.loads((ddp / "history.json").read_text())
    assert [row["epoch"] for row in history["epochs"]] == [1, 2]
    with open(ddp / "lr_history.csv") as f:
        rows = f.read().splitlines()[1:]
    assert len(rows) == load(ddp, 0)["lrs"].shape[0]  # one recorder, not two appending to one file
    assert "on 2 processes" in runs[1].stdout


def test_resuming_on_two_processes_continues_exactly(runs):
    straight, resumed = load(runs[0] / "ddp", 0), load(runs[0] / "cut", 0)
    assert torch.equal(straight["lrs"], resumed["lrs"])  # MetaLR's history and LRs, on the same batches
    for name, value in straight["weights"].items():
        assert torch.equal(value, resumed["weights"][name]), name
    assert torch.equal(resumed["lrs"], load(runs[0] / "cut", 1)["lrs"])
