"""Report handlers: metrics match the pure functions, reports are written from what the evaluator saw."""

import csv
import json

import numpy as np
import pytest
import torch
from ignite.engine import Engine

from medtransfer.handlers.reports import ClassificationMetric, ClassificationReport
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
