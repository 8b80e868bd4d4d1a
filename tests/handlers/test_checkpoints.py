"""Training-state handlers: history selection, NaN stops loudly, seeding per epoch, resume keeps the best model."""

import json

import pytest
import torch
from ignite.engine import Engine, Events

from medtransfer.handlers.checkpoints import (
    BestModelSaver,
    EpochCheckpoint,
    EpochSeed,
    ResumeFromRun,
    StopOnNonFiniteLoss,
    TrainingHistory,
)


def test_history_best_is_the_latest_of_tied_epochs(tmp_path):
    history = TrainingHistory(str(tmp_path), key_metric="auc")
    history.rows = [{"epoch": 1, "val_auc": 1.0}, {"epoch": 2, "val_auc": 0.9}, {"epoch": 3, "val_auc": 1.0}]
    assert history.best()["epoch"] == 3  # a saturated metric must not freeze selection at epoch 1
    history.rows.append({"epoch": 4, "val_auc": float("nan")})
    assert history.best()["epoch"] == 3


def test_nan_loss_stops_with_a_clear_error(tmp_path):
    losses = iter([0.5, float("nan")])
    engine = Engine(lambda e, b: [{"loss": torch.tensor(next(losses))}])
    StopOnNonFiniteLoss(str(tmp_path)).attach(engine)
    with pytest.raises(FloatingPointError, match=r"nan at epoch 1, iteration 2.*--lr"):
        engine.run([0, 1, 2], max_epochs=1)


def test_epoch_seed_makes_each_epoch_reproducible():
    def run() -> dict[int, list[float]]:
        draws: dict[int, list[float]] = {}
        engine = Engine(lambda e, b: draws.setdefault(e.state.epoch, []).append(torch.rand(1).item()))
        EpochSeed(seed=7).attach(engine)
        torch.rand(3)  # move the global RNG: each epoch must still start from (seed, epoch) alone
        engine.run([0, 1], max_epochs=3)
        return draws

    first, second = run(), run()
    assert first == second
    assert first[1] != first[2]


def _evaluator_with_scores(scores: list[float]) -> Engine:
    """An evaluator whose key metric ``val_auc`` takes the given values, one per run."""
    values = iter(scores)
    evaluator = Engine(lambda e, b: None)
    evaluator.state.key_metric_name = "val_auc"
    evaluator.add_event_handler(Events.EPOCH_COMPLETED, lambda e: e.state.metrics.update(val_auc=next(values)))
    return evaluator


def test_best_model_and_epoch_checkpoints_load_with_monai_checkpoint_loader(tmp_path):
    """The files keep the format of ignite's Checkpoint: MONAI's CheckpointLoader (evaluate, resume) reads them."""
    from monai.handlers import CheckpointLoader

    model, optimizer = torch.nn.Linear(2, 1), None
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    evaluator = _evaluator_with_scores([0.5])
    BestModelSaver(str(tmp_path), {"model": model}).attach(evaluator)
    evaluator.run([0], max_epochs=1)
    trainer = Engine(lambda e, b: None)
    EpochCheckpoint(str(tmp_path), {"model": model, "optimizer": optimizer}).attach(trainer)
    trainer.run([0, 1], max_epochs=1)
    assert set(torch.load(tmp_path / "model.pt", weights_only=True)) == {"weight", "bias"}  # a bare state dict

    fresh = torch.nn.Linear(2, 1)
    loader_engine = Engine(lambda e, b: None)
    CheckpointLoader(str(tmp_path / "model.pt"), {"model": fresh}).attach(loader_engine)
    loader_engine.run([0], max_epochs=1)
    assert torch.equal(fresh.weight, model.weight)
    resumed = Engine(lambda e, b: None)
    CheckpointLoader(str(tmp_path / "checkpoint_epoch=1.pt"), {"model": fresh, "trainer": resumed}).attach(resumed)
    resumed.run([0, 1], max_epochs=2)  # continues from epoch 1, so one more epoch runs
    assert resumed.state.epoch == 2 and resumed.state.iteration == 4


def test_epoch_checkpoint_writes_the_new_file_before_deleting_the_old(tmp_path, monkeypatch):
    import os

    model = torch.nn.Linear(2, 1)
    deleted_while_newest_existed = []
    real_unlink = os.unlink

    def unlink(path, *args, **kwargs):
        name = os.path.basename(path)
        if name.startswith("checkpoint_epoch="):
            epoch = int(name.split("=")[1].split(".")[0])
            deleted_while_newest_existed.append((tmp_path / f"checkpoint_epoch={epoch + 1}.pt").is_file())
        return real_unlink(path, *args, **kwargs)

    monkeypatch.setattr(os, "unlink", unlink)
    trainer = Engine(lambda e, b: None)
    EpochCheckpoint(str(tmp_path), {"model": model}, n_saved=1).attach(trainer)
    trainer.run([0], max_epochs=3)
    assert deleted_while_newest_existed == [True, True]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["checkpoint_epoch=3.pt"]  # no temporary file left


def test_keep_checkpoints_is_counted_on_disk_so_a_resumed_run_honours_it(tmp_path):
    model = torch.nn.Linear(2, 1)
    for epoch in (1, 2, 3):  # left by an earlier attempt that kept more
        torch.save({"model": model.state_dict()}, tmp_path / f"checkpoint_epoch={epoch}.pt")
    trainer = Engine(lambda e, b: None)
    trainer.add_event_handler(Events.STARTED, lambda e: setattr(e.state, "epoch", 3))
    EpochCheckpoint(str(tmp_path), {"model": model}, n_saved=2).attach(trainer)
    trainer.run([0], max_epochs=4)
    assert sorted(p.name for p in tmp_path.glob("checkpoint_epoch=*.pt")) == [
        "checkpoint_epoch=3.pt",
        "checkpoint_epoch=4.pt",
    ]


def test_a_full_disk_keeps_the_previous_best_model_and_says_so(tmp_path, monkeypatch):
    import errno

    from medtransfer.errors import CheckpointWriteError

    model = torch.nn.Linear(2, 1)
    evaluator = _evaluator_with_scores([0.5, 0.9])
    BestModelSaver(str(tmp_path), {"model": model}).attach(evaluator)
    evaluator.run([0], max_epochs=1)
    before = torch.load(tmp_path / "model.pt", weights_only=True)
    with torch.no_grad():
        model.weight.add_(1.0)

    def fill_the_disk(obj, file) -> None:  # a little gets written, then the disk is full
        file.write(b"PK\x03\x04 partial")
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(torch, "save", fill_the_disk)
    with pytest.raises(CheckpointWriteError) as error:
        evaluator.run([0], max_epochs=1)
    message = str(error.value)
    assert "no space left on device" in message and str(tmp_path / "model.pt") in message
    assert "previous checkpoint" in message and "is intact" in message
    after = torch.load(tmp_path / "model.pt", weights_only=True)
    assert all(torch.equal(before[k], after[k]) for k in before)  # the good model.pt is untouched
    assert [p.name for p in tmp_path.iterdir()] == ["model.pt"]  # and the torn temporary file is gone


def test_an_unwritable_folder_is_a_clear_error(tmp_path, monkeypatch):
    import errno
    import tempfile

    from medtransfer.atomic import save_torch_atomic
    from medtransfer.errors import CheckpointWriteError

    def refuse(*args, **kwargs):  # what a read-only folder answers, also when the tests run as root
        raise PermissionError(errno.EACCES, "Permission denied")

    monkeypatch.setattr(tempfile, "mkstemp", refuse)
    with pytest.raises(CheckpointWriteError, match=r"not writable while writing .*model\.pt; no earlier checkpoint"):
        save_torch_atomic({"a": torch.zeros(1)}, tmp_path / "model.pt")


def test_resume_keeps_the_best_model_until_a_better_epoch(tmp_path):
    model = torch.nn.Linear(2, 1)
    EpochCheckpoint(str(tmp_path), {"model": model}).attach(trainer := Engine(lambda e, b: None))
    trainer.run([0], max_epochs=1)  # checkpoint_epoch=1.pt to resume from
    rows = [{"epoch": 1, "val_auc": 0.9}, {"epoch": 2, "val_auc": 0.99}]  # epoch 2 ran, but its checkpoint was lost
    (tmp_path / "history.json").write_text(json.dumps({"epochs": rows, "best": rows[1], "key_metric": "auc"}))
    torch.save({"marker": torch.tensor(1)}, tmp_path / "model.pt")  # the run's best model so far

    evaluator = _evaluator_with_scores([0.8, 0.95])
    saver = BestModelSaver(str(tmp_path), {"model": model})
    saver.attach(evaluator)
    ResumeFromRun(str(tmp_path), {"model": model}, enabled=True, best_saver=saver).attach(Engine(lambda e, b: None))
    assert saver.best_score == 0.9  # from the epochs up to the checkpoint, not the lost epoch 2

    evaluator.run([0], max_epochs=1)  # worse than the recorded 0.9: the best model stays
    assert "marker" in torch.load(tmp_path / "model.pt", weights_only=True)
    evaluator.run([0], max_epochs=1)  # better: replaced
    assert set(torch.load(tmp_path / "model.pt", weights_only=True)) == set(model.state_dict())


def test_resume_without_a_best_model_on_disk_writes_one_at_the_next_validation(tmp_path):
    model = torch.nn.Linear(2, 1)
    EpochCheckpoint(str(tmp_path), {"model": model}).attach(trainer := Engine(lambda e, b: None))
    trainer.run([0], max_epochs=1)
    rows = [{"epoch": 1, "val_auc": 0.9}]
    (tmp_path / "history.json").write_text(json.dumps({"epochs": rows, "best": rows[0], "key_metric": "auc"}))
    saver = BestModelSaver(str(tmp_path), {"model": model})  # model.pt is gone (killed while it was replaced)
    ResumeFromRun(str(tmp_path), {"model": model}, enabled=True, best_saver=saver).attach(Engine(lambda e, b: None))
    assert saver.best_score is None
    evaluator = _evaluator_with_scores([0.5])
    saver.attach(evaluator)
    evaluator.run([0], max_epochs=1)
    assert (tmp_path / "model.pt").is_file()
