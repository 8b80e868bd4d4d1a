"""Training-state handlers: history selection, NaN stops loudly, seeding per epoch, resume keeps the best model."""

import json

import pytest
import torch
from ignite.engine import Engine, Events

from medtransfer.handlers.checkpoints import (
    EpochCheckpoint,
    EpochSeed,
    ResumeFromRun,
    StopOnNonFiniteLoss,
    TrainingHistory,
    best_model_state,
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


# ResumeFromRun hands the best score so far to MONAI's CheckpointSaver through its public load_state_dict, in the
# state format of ignite's Checkpoint.state_dict(); these two tests fail if a MONAI or ignite release changes that.


def test_best_model_state_is_the_format_ignite_checkpoint_saves(tmp_path):
    from ignite.handlers import Checkpoint, DiskSaver

    engine = Engine(lambda e, b: None)
    checkpoint = Checkpoint(
        {"model": torch.nn.Linear(2, 1)}, DiskSaver(str(tmp_path), require_empty=False), score_function=lambda e: 0.75
    )
    engine.add_event_handler(Events.EPOCH_COMPLETED, checkpoint)
    engine.run([0], max_epochs=1)
    saved = checkpoint.state_dict()
    ours = best_model_state(0.75, saved["_saved"][0][1])
    assert dict(saved) == ours
    fresh = Checkpoint({"model": torch.nn.Linear(2, 1)}, DiskSaver(str(tmp_path), require_empty=False))
    fresh.load_state_dict(ours)
    assert dict(fresh.state_dict()) == ours


def test_resume_keeps_the_best_model_until_a_better_epoch(tmp_path):
    from monai.handlers import CheckpointSaver

    model = torch.nn.Linear(2, 1)
    EpochCheckpoint(str(tmp_path), {"model": model}).attach(trainer := Engine(lambda e, b: None))
    trainer.run([0], max_epochs=1)  # checkpoint_epoch=1.pt to resume from
    best = {"epoch": 1, "val_auc": 0.9}
    (tmp_path / "history.json").write_text(json.dumps({"epochs": [best], "best": best, "key_metric": "auc"}))
    torch.save({"marker": torch.tensor(1)}, tmp_path / "model.pt")  # the run's best model so far

    scores = iter([0.8, 0.95])
    evaluator = Engine(lambda e, b: None)
    evaluator.add_event_handler(Events.EPOCH_COMPLETED, lambda e: e.state.metrics.update(val_auc=next(scores)))
    saver = CheckpointSaver(
        str(tmp_path), {"model": model}, save_key_metric=True, key_metric_name="val_auc",
        key_metric_filename="model.pt", key_metric_greater_or_equal=True,
    )  # fmt: skip
    saver.attach(evaluator)
    ResumeFromRun(str(tmp_path), {"model": model}, enabled=True, best_saver=saver).attach(Engine(lambda e, b: None))

    evaluator.run([0], max_epochs=1)  # worse than the recorded 0.9: the best model stays
    assert "marker" in torch.load(tmp_path / "model.pt", weights_only=True)
    evaluator.run([0], max_epochs=1)  # better: replaced
    assert set(torch.load(tmp_path / "model.pt", weights_only=True)) == set(model.state_dict())
