"""Handlers: metrics match the pure functions, reports are written from what the evaluator saw, NaN stops loudly."""

import csv
import json

import numpy as np
import pytest
import torch
from ignite.engine import Engine, Events

from medtransfer.engine import (
    ClassificationMetric,
    ClassificationReport,
    EpochSeed,
    StopOnNonFiniteLoss,
    TrainingHistory,
)
from medtransfer.metrics import classification_report


def _rows(probs, labels, paths=None):
    """Decollated evaluator output: one dict per sample, as MONAI hands it to handlers."""
    return [
        {"pred": torch.tensor(p), "label": torch.tensor(y), **({"image_path": paths[i]} if paths else {})}
        for i, (p, y) in enumerate(zip(probs, labels, strict=True))
    ]


def _evaluator(batches):
    def step(engine, batch):
        engine.state.batch = batch
        return batch

    return Engine(step), batches


@pytest.fixture
def data():
    rng = np.random.default_rng(0)
    probs = rng.dirichlet(np.ones(3), size=20).astype(np.float32)
    labels = rng.integers(0, 3, size=20)
    return probs, labels


@pytest.mark.parametrize("name", ClassificationMetric.NAMES)
def test_metric_equals_report(data, name):
    probs, labels = data
    metric = ClassificationMetric(name)
    metric.reset()
    rows = _rows(probs, labels)
    for chunk in (rows[:7], rows[7:]):  # two batches
        metric.update(([r["pred"] for r in chunk], [r["label"] for r in chunk]))
    expected = classification_report(probs, labels, ["0", "1", "2"])[name]
    assert metric.compute() == pytest.approx(expected)


def test_metric_accepts_one_hot_labels(data):
    probs, labels = data
    metric = ClassificationMetric("accuracy")
    metric.reset()
    metric.update(([torch.tensor(p) for p in probs], [torch.nn.functional.one_hot(torch.tensor(y), 3) for y in labels]))
    assert metric.compute() == pytest.approx(float((probs.argmax(1) == labels).mean()))


def test_report_writes_csv_json_png(tmp_path, data):
    probs, labels = data
    paths = [f"img_{i}.png" for i in range(20)]
    rows = _rows(probs, labels, paths)
    engine, batches = _evaluator([rows[:8], rows[8:]])
    handler = ClassificationReport(str(tmp_path), ["benign", "malignant", "normal"], prefix="test", extra={"seed": 3})
    handler.attach(engine)
    engine.run(batches, max_epochs=1)
    report = json.loads((tmp_path / "test_metrics.json").read_text())
    assert report["n"] == 20 and report["seed"] == 3
    assert report["accuracy"] == pytest.approx(float((probs.argmax(1) == labels).mean()))
    assert np.asarray(report["confusion_matrix"]).sum() == 20
    with open(tmp_path / "test_predictions.csv") as f:
        table = list(csv.DictReader(f))
    assert [r["source"] for r in table] == paths
    assert float(table[4]["p_malignant"]) == pytest.approx(float(probs[4, 1]), abs=1e-6)
    assert table[4]["label"] == ["benign", "malignant", "normal"][labels[4]]
    assert (tmp_path / "test_confusion_matrix.png").stat().st_size > 1000


def test_report_without_labels_writes_only_predictions(tmp_path, data):
    probs, _ = data
    rows = [{"pred": torch.tensor(p), "image_path": f"x{i}.png"} for i, p in enumerate(probs)]
    engine, batches = _evaluator([rows])
    ClassificationReport(str(tmp_path), ["a", "b", "c"], prefix="inference").attach(engine)
    engine.run(batches, max_epochs=1)
    header = (tmp_path / "inference_predictions.csv").read_text().splitlines()[0]
    assert header == "source,p_a,p_b,p_c,predicted"
    assert not (tmp_path / "inference_metrics.json").exists()


def test_report_per_clip_averages_frame_probabilities(tmp_path, data):
    probs, labels = data
    clips = [f"clip{i // 4}" for i in range(20)]  # 5 clips of 4 frames; a clip has one label
    labels = np.repeat(labels[::4], 4)
    rows = [dict(r, clip=c) for r, c in zip(_rows(probs, labels), clips, strict=True)]
    engine, batches = _evaluator([rows[:6], rows[6:]])  # a clip split across batches
    ClassificationReport(str(tmp_path), ["a", "b", "c"], prefix="test", group_key="clip").attach(engine)
    engine.run(batches, max_epochs=1)
    clip_report = json.loads((tmp_path / "test_clip_metrics.json").read_text())
    means = probs.reshape(5, 4, 3).mean(axis=1)
    expected = classification_report(means, labels[::4], ["a", "b", "c"])
    assert clip_report["n"] == 5 and clip_report["confusion_matrix"] == expected["confusion_matrix"]
    with open(tmp_path / "test_clip_predictions.csv") as f:
        table = list(csv.DictReader(f))
    assert [r["source"] for r in table] == [f"clip{i}" for i in range(5)]
    assert float(table[2]["p_b"]) == pytest.approx(float(means[2, 1]), abs=1e-6)

    bad = [dict(r, clip="one") for r in _rows(probs[:2], [0, 1])]  # one clip, two diagnoses
    engine, batches = _evaluator([bad])
    ClassificationReport(str(tmp_path), ["a", "b", "c"], prefix="bad", group_key="clip").attach(engine)
    with pytest.raises(ValueError, match="group 'one' has samples with different labels"):
        engine.run(batches, max_epochs=1)


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


def test_metalr_iteration_reuses_training_gradients_and_steps_with_new_lrs():
    """In a real SupervisedTrainer: one training + one validation forward per iteration, and the optimizer's real
    step uses the LRs MetaLR just set (θ' = θ − α_new·g for plain SGD)."""
    from monai.engines import SupervisedTrainer

    from medtransfer.engine import MetaLRIteration
    from medtransfer.layers import layer_groups, param_groups
    from medtransfer.metalr import CyclingBatches, MetaLR

    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.ReLU(), torch.nn.Linear(8, 3))
    forwards = []
    model.register_forward_hook(lambda m, i, o: forwards.append(1))
    groups = layer_groups(model)
    optimizer = torch.optim.SGD(param_groups(groups, 0.01))
    metalr = MetaLR(optimizer, groups, base_lr=0.01, pin_epochs=0, hyper_lr=1.0)
    val = [{"image": torch.randn(4), "label": torch.tensor(i % 3)} for i in range(6)]
    train = [{"image": torch.randn(5, 4), "label": torch.randint(0, 3, (5,))} for _ in range(3)]
    trainer = SupervisedTrainer(
        device=torch.device("cpu"), max_epochs=1, train_data_loader=train, network=model, optimizer=optimizer,
        loss_function=torch.nn.CrossEntropyLoss(), iteration_update=MetaLRIteration(metalr, CyclingBatches(val, 3)),
        decollate=False,
    )  # fmt: skip
    before, checked = {}, []

    @trainer.on(Events.ITERATION_STARTED)
    def keep(engine):
        before.update({n: p.detach().clone() for n, p in model.named_parameters()})

    @trainer.on(Events.ITERATION_COMPLETED)
    def check(engine):
        lr_of = {n: optimizer.param_groups[j]["lr"] for j, g in enumerate(groups) for n in g.param_names}
        for name, p in model.named_parameters():
            assert torch.allclose(p.detach(), before[name] - lr_of[name] * p.grad, atol=1e-7), name
        checked.append(lr_of)

    trainer.run()
    assert len(forwards) == 2 * 3  # train + validation forward per iteration, no second training pass
    assert len(checked) == 3 and metalr.updates == 3
    first_layer_lrs = [lrs["0.weight"] for lrs in checked]
    assert first_layer_lrs[-1] != pytest.approx(0.001, rel=1e-6)  # moved away from 0.1 x base, so the check above bites
