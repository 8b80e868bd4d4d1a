"""Multi-run studies: the strategy comparison and the bi-directional sweep, on tiny runs of the demo bundle.

Each assertion is checked against the runs' own files (test_metrics.json), computed independently here.
"""

from __future__ import annotations

import json
import math

import numpy as np
import pytest

from medtransfer.errors import RunDirectoryError
from medtransfer.workflows.compare import collect_comparison, comparison_specs, run_comparison
from medtransfer.workflows.study import Placement, parse_shard, shard_of
from medtransfer.workflows.sweep import collect_sweep, run_bidirectional_sweep, sweep_specs

TINY = {"image_size": 32, "epochs": 1, "batch_size": 8, "train#trainer#epoch_length": 2,
        "dataset_dir": None}  # fmt: skip


@pytest.fixture
def tiny(demo_dir):
    return {**TINY, "dataset_dir": str(demo_dir)}


def _mtimes(study):
    return {p.relative_to(study): p.stat().st_mtime_ns for p in study.rglob("*") if p.is_file()}


@pytest.mark.slow
def test_comparison_table_is_the_mean_of_the_runs_and_finished_runs_are_never_redone(tmp_path, tiny):
    def compare(strategies=("full", "linear_probe_fast"), seeds=(0, 1)):
        return run_comparison(
            "busi_classification", strategies, seeds, overrides=tiny, placement=Placement("t", tmp_path)
        )

    study = compare()
    runs = {s: [json.loads((study / f"{s}_seed{k}" / "test_metrics.json").read_text()) for k in (0, 1)]
            for s in ("full", "linear_probe_fast")}  # fmt: skip
    summary = {r["label"]: r for r in json.loads((study / "compare_summary.json").read_text())["summary"]}
    for strategy, metrics in runs.items():
        auc = [m["auc"] for m in metrics]
        assert summary[strategy]["auc_mean"] == pytest.approx(np.mean(auc))
        assert summary[strategy]["auc_std"] == pytest.approx(np.std(auc, ddof=1))
        assert [m["seed"] for m in metrics] == [0, 1]
    assert (study / "compare_bars.png").stat().st_size > 1000
    table = (study / "compare_table.md").read_text()
    assert "| full | 2 (0 1) |" in table and "linear_probe_fast" in table

    before = _mtimes(study)
    compare()
    after = _mtimes(study)
    assert {k: v for k, v in after.items() if "seed" in str(k)} == {k: v for k, v in before.items() if "seed" in str(k)}

    # a crash after training, before the test: only that run's evaluation runs again
    crashed = study / "full_seed1"
    (crashed / "study_run.json").unlink()
    (crashed / "test_metrics.json").unlink()
    model_time = (crashed / "model.pt").stat().st_mtime_ns
    compare()
    assert (crashed / "model.pt").stat().st_mtime_ns == model_time
    assert json.loads((crashed / "test_metrics.json").read_text())["auc"] == pytest.approx(runs["full"][1]["auc"])
    untouched = study / "full_seed0" / "study_run.json"
    assert untouched.stat().st_mtime_ns == before[untouched.relative_to(study)]

    with pytest.raises(RunDirectoryError, match="another study"):
        compare(["full"], [0])


def test_shards_split_a_study_into_disjoint_slices_that_cover_it():
    specs = comparison_specs(["full", "llrd", "bss"], seeds=[0, 1, 2])
    slices = [shard_of(specs, (i, 4)) for i in range(1, 5)]
    names = [s.name for part in slices for s in part]
    assert sorted(names) == sorted(s.name for s in specs) and len(set(names)) == len(specs)
    assert parse_shard("2/4") == (2, 4)
    for bad in ("0/4", "5/4", "a/b", "3"):
        with pytest.raises(ValueError):
            parse_shard(bad)


@pytest.mark.slow
def test_sharded_comparison_collects_the_same_table(tmp_path, tiny):
    args = dict(strategies=["full", "llrd"], seeds=[0], overrides=tiny)
    study = run_comparison("busi_classification", **args, placement=Placement("s", tmp_path, shard=(1, 2)))
    partial = collect_comparison(study)
    assert partial["missing"] == 1 and [r["label"] for r in partial["runs"]] == ["full"]
    run_comparison("busi_classification", **args, placement=Placement("s", tmp_path, shard=(2, 2)))
    result = json.loads((study / "compare_summary.json").read_text())
    assert result["missing"] == 0 and [r["label"] for r in result["summary"]] == ["full", "llrd"]


def test_sweep_runs_both_directions_and_shares_the_linear_probe_and_full_ends():
    backbone = ["stem", "s1", "s2"]
    specs = sweep_specs(backbone, seeds=[0])
    trainable = {(s.extra["direction"], s.extra["k"]): s.extra["trainable"] for s in specs}
    assert trainable == {
        ("both", 0): "", ("bottom-up", 1): "stem", ("top-down", 1): "s2", ("bottom-up", 2): "stem s1",
        ("top-down", 2): "s1 s2", ("both", 3): "stem s1 s2",
    }  # fmt: skip
    for s in specs:
        k = s.extra["k"]
        first, last = s.overrides["partial_first_k"], s.overrides["partial_last_k"]
        assert (first, last) == ((None, k) if s.extra["direction"] == "top-down" else (k, None))


@pytest.mark.slow
def test_bidirectional_sweep_freezes_what_it_says_and_plots(tmp_path, tiny):
    overrides = {**tiny, "layer_granularity": "stage", "save_init": True}  # ResNet-18 stages: 5 groups, 10 runs
    study = run_bidirectional_sweep("busi_classification", [0], overrides=overrides, placement=Placement("b", tmp_path))
    rows = {(r["direction"], r["k"]): r for r in json.loads((study / "sweep_summary.json").read_text())["runs"]}
    assert len(rows) == 10 and rows[("top-down", 1)]["trainable"] == "layer4"
    info = json.loads((study / "top-down_k1_seed0" / "run_info.json").read_text())["settings"]
    assert info["strategy_settings"] == {"strategy": "partial", "partial_first_k": None, "partial_last_k": 1}
    import torch

    run = study / "top-down_k1_seed0"
    start = torch.load(run / "init.pt", weights_only=True)
    end = torch.load(sorted(run.glob("checkpoint_epoch=*.pt"))[-1], weights_only=True)["model"]
    moved = {k.split(".")[0] for k in start if not torch.equal(start[k], end[k])}
    assert moved == {"layer4", "fc"}  # weights and BatchNorm statistics of the frozen stages are bit-identical
    assert (study / "sweep.png").stat().st_size > 1000 and (study / "sweep.csv").is_file()
    assert "| top-down | 1 | layer4 |" in (study / "sweep.md").read_text()
    again = collect_sweep(study, metric="accuracy")
    assert again["missing"] == 0


@pytest.mark.slow
def test_devices_run_one_worker_process_per_device_each_with_its_slice(tmp_path, tiny):
    # without GPUs the "devices" are just the CUDA_VISIBLE_DEVICES values each worker gets; both fall back to the CPU
    placement = Placement("d", tmp_path, devices=["x", "y"])
    study = run_comparison("busi_classification", ["full", "linear_probe"], [0], overrides=tiny, placement=placement)
    logs = {p.name: p.read_text() for p in study.glob("worker*_of2.log")}
    assert set(logs) == {"worker1_of2.log", "worker2_of2.log"}
    assert "full_seed0" in logs["worker1_of2.log"] and "linear_probe_seed0" not in logs["worker1_of2.log"]
    assert "linear_probe_seed0" in logs["worker2_of2.log"]
    assert json.loads((study / "compare_summary.json").read_text())["missing"] == 0


def _fake_run(study, name, metrics, best_epoch, val_auc, wall_s=60.0, attempt="new"):
    run = study / name
    run.mkdir(parents=True)
    (run / "test_metrics.json").write_text(json.dumps(metrics))
    best = {"epoch": best_epoch, "val_auc": val_auc}
    (run / "history.json").write_text(json.dumps({"epochs": [best], "best": best, "key_metric": "auc"}))
    (run / "study_run.json").write_text(json.dumps({"wall_s": wall_s, "attempt": attempt}))


def test_table_flags_first_epoch_and_near_chance_selections_and_reads_segmentation_runs(tmp_path):
    from medtransfer.workflows.study import write_study

    specs = comparison_specs(["full", "bss"], seeds=[0, 1])
    study = tmp_path / "compare_fake"
    write_study(study, "busi_classification", specs, "compare", {"folds": None})
    values = {"full_seed0": (0.80, 0.90, 5, 0.95), "full_seed1": (0.70, 0.86, 1, 0.91),
              "bss_seed0": (0.60, 0.70, 4, 0.55), "bss_seed1": (0.65, 0.72, 6, 0.80)}  # fmt: skip
    for name, (acc, auc, epoch, val) in values.items():
        attempt = "resumed" if name == "bss_seed1" else "new"
        _fake_run(study, name, {"accuracy": acc, "auc": auc, "macro_f1": acc - 0.1}, epoch, val, 90, attempt)
    result = collect_comparison(study)
    rows = {r["label"]: r for r in result["summary"]}
    assert rows["full"]["accuracy_mean"] == pytest.approx(0.75) and rows["full"]["wall_min_mean"] == pytest.approx(1.5)
    assert rows["full"]["flags"] == "seed 1: first-epoch checkpoint"
    assert rows["bss"]["flags"] == "seed 0: validation AUC <= 0.6 | seed 1: resumed: wall time is the last attempt's"
    table = (study / "compare_table.md").read_text()
    assert "seed 1: first-epoch checkpoint" in table and "mean Dice" not in table

    seg = tmp_path / "compare_seg"
    write_study(seg, "lits_segmentation", specs[:2], "compare", {"folds": None})
    for spec, dice in zip(specs[:2], (0.81, 0.77), strict=True):
        _fake_run(seg, spec.name, {"mean_dice": dice, "dice": {"liver": dice}}, 3, 0.9)
    rows = collect_comparison(seg)["summary"]
    assert [r["label"] for r in rows] == ["full", "bss"] and rows[0]["mean_dice_mean"] == pytest.approx(0.81)
    assert "mean Dice (test split)" in (seg / "compare_table.md").read_text()


def test_a_study_says_each_repeated_monai_start_up_notice_once(tmp_path, monkeypatch):
    """Every run of a study starts MONAI workflows that log the same notices; the study's log holds each once,
    and a notice that differs between runs is still said for each run."""
    import logging

    from medtransfer.workflows import study as study_module

    workflow_logger = logging.getLogger("monai.bundle.workflows")

    def fake_execute(bundle, spec, study_dir):
        workflow_logger.warning("Logging file is set to False")
        workflow_logger.warning(f"run folder {spec.name}")
        return {"name": spec.name, "wall_s": 0.0}

    records: list[logging.LogRecord] = []
    handler = logging.Handler()
    handler.emit = records.append
    workflow_logger.addHandler(handler)
    monkeypatch.setattr(study_module, "execute", fake_execute)
    specs = [study_module.RunSpec(name=f"full_seed{k}", label="full", strategy="full", seed=k) for k in range(3)]
    study_module.write_study(tmp_path, "busi_classification", specs, "compare", {})
    try:
        study_module.run_study(tmp_path)
    finally:
        workflow_logger.removeHandler(handler)
    messages = [r.getMessage() for r in records]
    assert messages.count("Logging file is set to False") == 1
    assert [m for m in messages if m.startswith("run folder")] == [f"run folder full_seed{k}" for k in range(3)]
    assert not workflow_logger.filters  # the filter is gone once the study ends


def test_epochs_to_reach_plain_fine_tunings_best_validation_score(tmp_path):
    from medtransfer.workflows.study import write_study

    specs = comparison_specs(["full", "metalr", "t_informed"], seeds=[0, 1])
    study = tmp_path / "compare_speed"
    write_study(study, "natural_transferability", specs, "compare", {"folds": None})
    curves = {  # validation accuracy per epoch; plain's best is 0.80 (seed 0) and 0.70 (seed 1)
        "full_seed0": [0.5, 0.7, 0.8, 0.75], "full_seed1": [0.6, 0.7, 0.65, 0.7],
        "metalr_seed0": [0.6, 0.8, 0.85, 0.9], "metalr_seed1": [0.5, 0.55, 0.6, 0.69],
        "t_informed_seed0": [0.81, 0.7, 0.8, 0.8], "t_informed_seed1": [0.7, 0.72, 0.8, 0.8],
    }  # fmt: skip
    for name, curve in curves.items():
        run = study / name
        run.mkdir(parents=True)
        epochs = [{"epoch": e, "val_accuracy": v} for e, v in enumerate(curve, 1)]
        best = max(reversed(epochs), key=lambda r: r["val_accuracy"])
        (run / "history.json").write_text(json.dumps({"epochs": epochs, "best": best, "key_metric": "accuracy"}))
        (run / "test_metrics.json").write_text(json.dumps({"accuracy": curve[-1]}))
        (run / "study_run.json").write_text(json.dumps({"wall_s": 60, "attempt": "new"}))
    rows = {r["run"]: r for r in collect_comparison(study)["runs"]}
    expected = {"full_seed0": 3, "full_seed1": 2, "metalr_seed0": 2, "metalr_seed1": None, "t_informed_seed0": 1,
                "t_informed_seed1": 1}  # fmt: skip
    for name, epoch in expected.items():
        value = rows[name]["epochs_to_plain_best"]
        assert (math.isnan(value) if epoch is None else value == epoch), name
    table = (study / "compare_table.md").read_text()
    assert "epochs to plain's best val (reached)" in table
    assert "| 2.0 ± 0.0 (1/2) |" in table and "| 1.0 ± 0.0 (2/2) |" in table  # metalr reached once, t_informed twice
