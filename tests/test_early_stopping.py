"""Early stopping: stops at the epoch the patience rule says, counts as finished, and resumes exactly."""

from __future__ import annotations

import json
import math

from conftest import BUSI_CONFIGS, run_bundle

from medtransfer.handlers.early_stopping import patience_spent
from medtransfer.runs import training_finished

TRAIN = BUSI_CONFIGS / "train.json"


def test_the_patience_rule_on_known_values():
    assert patience_spent([0.5, 0.6, 0.6, 0.55]) == (2, 1)  # a tie is no progress
    assert patience_spent([0.5, math.nan, 0.7]) == (0, 2)
    assert patience_spent([]) == (0, -1)


def _expected_stop(values: list[float], patience: int) -> int | None:
    """The 1-based epoch at which the rule stops, computed here from the validation values alone."""
    best, waited = -math.inf, 0
    for epoch, value in enumerate(values, start=1):
        if value > best:
            best, waited = value, 0
        else:
            waited += 1
        if waited >= patience:
            return epoch
    return None


def test_a_run_stops_where_the_rule_says_counts_as_finished_and_resumes_to_the_same_end(demo_dir, tmp_path):
    common = ["--runs_dir", str(tmp_path), "--dataset_dir", str(demo_dir), "--image_size", "32", "--batch_size", "8",
              "--epochs", "6", "--lr", "0.03"]  # fmt: skip
    run_bundle([TRAIN], *common, "--run_name", "free")  # the same run without early stopping: its validation curve
    values = [row["val_auc"] for row in json.loads((tmp_path / "free" / "history.json").read_text())["epochs"]]
    patience = next((k for k in (2, 1) if (_expected_stop(values, k) or 99) < 6), None)  # a curve that stalls
    assert patience is not None, f"this validation curve never stalls: {values}"
    stop = _expected_stop(values, patience)

    run_bundle([TRAIN], *common, "--run_name", "early", "--early_stop_patience", str(patience))
    history = json.loads((tmp_path / "early" / "history.json").read_text())
    assert [row["epoch"] for row in history["epochs"]] == list(range(1, stop + 1))
    assert [row["val_auc"] for row in history["epochs"]] == values[:stop]  # the same run up to the stop
    assert history["early_stopped"]["epoch"] == stop and history["early_stopped"]["patience"] == patience
    assert training_finished(tmp_path / "early")
    before = (tmp_path / "early" / "model.pt").read_bytes()
    run_bundle([TRAIN], *common, "--run_name", "early", "--early_stop_patience", str(patience), "--resume", "true")
    after = json.loads((tmp_path / "early" / "history.json").read_text())
    assert after["epochs"] == history["epochs"] and after["early_stopped"] == history["early_stopped"]
    assert (tmp_path / "early" / "model.pt").read_bytes() == before
