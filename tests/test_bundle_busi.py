"""The BUSI bundle end to end through `python -m monai.bundle run`, as a user runs it (in a subprocess)."""

import csv
import json
from pathlib import Path

import pytest
import torch
from conftest import BUSI_CONFIGS, FAST, run_bundle, train_then_evaluate

TRAIN, EVALUATE, INFERENCE = (str(BUSI_CONFIGS / f"{n}.json") for n in ("train", "evaluate", "inference"))

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def trained(tmp_path_factory, demo_dir) -> Path:
    """One epoch of training on the synthetic demo set, then evaluation and inference on it."""
    runs = tmp_path_factory.mktemp("runs")
    common = ["--runs_dir", str(runs), "--run_name", "one_epoch", "--dataset_dir", str(demo_dir), *FAST]
    run_bundle([TRAIN], *common)
    run_bundle([TRAIN, EVALUATE], *common)
    run_bundle([TRAIN, INFERENCE], *common, "--input_dir", str(demo_dir / "benign"))
    return runs / "one_epoch"


def test_training_leaves_best_checkpoint_history_and_run_info(trained):
    state = torch.load(trained / "model.pt", weights_only=True)
    assert state["fc.weight"].shape == (3, 512)  # a plain state dict; 3 BUSI classes
    assert (trained / "checkpoint_epoch=1.pt").is_file()
    history = json.loads((trained / "history.json").read_text())
    assert [row["epoch"] for row in history["epochs"]] == [1]
    assert 0.0 <= history["epochs"][0]["val_auc"] <= 1.0 and history["epochs"][0]["train_loss"] > 0
    assert (trained / "history.png").stat().st_size > 1000
    info = json.loads((trained / "run_info.json").read_text())
    assert info["settings"]["seed"] == 0 and info["settings"]["classes"] == ["benign", "malignant", "normal"]
    assert list((trained / "tensorboard").glob("events.*"))


def test_evaluation_reports_on_the_held_out_test_split(trained, demo_dir):
    from medtransfer.data.classification import classification_datalist

    report = json.loads((trained / "test_metrics.json").read_text())
    test_ids = {r["image"] for r in classification_datalist(demo_dir, "busi", "test")}
    train_ids = {r["image"] for r in classification_datalist(demo_dir, "busi", "train")}
    assert report["n"] == len(test_ids) and not test_ids & train_ids
    with open(trained / "test_predictions.csv") as f:
        sources = {row["source"] for row in csv.DictReader(f)}
    assert sources == test_ids
    assert sum(map(sum, report["confusion_matrix"])) == report["n"]
    assert set(report["per_class"]) == {"benign", "malignant", "normal"}
    assert (trained / "test_confusion_matrix.png").is_file()


def test_inference_writes_probabilities_for_every_image(trained, demo_dir):
    with open(trained / "inference_predictions.csv") as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == len([p for p in (demo_dir / "benign").glob("*.png") if "_mask" not in p.name])
    for row in rows:
        assert sum(float(row[f"p_{c}"]) for c in ("benign", "malignant", "normal")) == pytest.approx(1.0, abs=1e-4)


def test_existing_run_directory_is_not_overwritten(trained, demo_dir):
    before = (trained / "model.pt").read_bytes()
    proc = run_bundle(
        [TRAIN], "--runs_dir", str(trained.parent), "--run_name", trained.name, "--dataset_dir", str(demo_dir), *FAST,
        check=False,
    )  # fmt: skip
    assert proc.returncode != 0
    assert "already exists" in proc.stdout + proc.stderr
    assert (trained / "model.pt").read_bytes() == before


def test_resume_continues_exactly(demo_dir, tmp_path):
    """Stopping after epoch 1 and resuming gives bit-identical weights and optimizer state to the uninterrupted run."""
    import shutil

    full = ["--runs_dir", str(tmp_path), "--dataset_dir", str(demo_dir), *FAST, "--epochs", "2"]
    run_bundle([TRAIN], *full, "--run_name", "full", "--keep_checkpoints", "2")
    shutil.copytree(tmp_path / "full", tmp_path / "cut")
    (tmp_path / "cut" / "checkpoint_epoch=2.pt").unlink()  # as if the process died during epoch 2
    run_bundle([TRAIN], *full, "--run_name", "cut", "--resume", "true")
    a = torch.load(tmp_path / "full" / "checkpoint_epoch=2.pt", weights_only=True)
    b = torch.load(tmp_path / "cut" / "checkpoint_epoch=2.pt", weights_only=True)
    assert a["trainer"]["iteration"] == b["trainer"]["iteration"] > 0
    for key, value in a["model"].items():
        assert torch.equal(value, b["model"][key]), key
    assert torch.equal(a["optimizer"]["state"][0]["exp_avg"], b["optimizer"]["state"][0]["exp_avg"])
    history = json.loads((tmp_path / "cut" / "history.json").read_text())
    assert [r["epoch"] for r in history["epochs"]] == [1, 2]


def test_bundle_properties(trained, demo_dir, tmp_path):
    """MONAI's own check that the bundle exposes the standard train/infer properties under their standard ids."""
    from monai.bundle import ConfigWorkflow

    overrides = {"dataset_dir": str(demo_dir), "image_size": 32}
    train = ConfigWorkflow(config_file=TRAIN, workflow_type="train", runs_dir=str(tmp_path), **overrides)
    train.initialize()
    assert train.check_properties() == []
    infer = ConfigWorkflow(
        config_file=[TRAIN, EVALUATE], workflow_type="infer", runs_dir=str(trained.parent), run_name=trained.name,
        **overrides,
    )  # fmt: skip
    infer.initialize()
    assert infer.check_properties() == []


@pytest.mark.realdata
def test_real_busi_trains_and_evaluates(need, tmp_path):
    from medtransfer.data.classification import classification_datalist

    busi = need("busi")
    report = train_then_evaluate(BUSI_CONFIGS, tmp_path, "busi", "--dataset_dir", str(busi))
    test = classification_datalist(busi, "busi", "test")
    assert report["n"] == len(test) and {r["label"] for r in test} == {0, 1, 2}
    assert report["dataset_dir"] == str(busi)


@pytest.mark.realdata
def test_real_breastmnist_uses_the_official_test_split(need, tmp_path):
    npz = need("medmnist/breastmnist.npz")
    report = train_then_evaluate(
        BUSI_CONFIGS, tmp_path, "bm", "--dataset_format", "medmnist", "--dataset_dir", str(npz)
    )
    assert report["n"] == 156 and report["class_names"] == ["malignant", "normal_benign"]


def test_augment_on_device_moves_the_flip_and_affine_off_the_loader(demo_dir, tmp_path):
    """--augment_on_device true: the loader keeps no RandFlipd/RandAffined, the trainer augments whole batches, and
    the run trains to the end (on the CPU here: the device is wherever the trainer runs)."""
    from monai.bundle import ConfigWorkflow
    from monai.transforms import RandAffined, RandFlipd

    from medtransfer.handlers import BatchAugmentation

    overrides = {"dataset_dir": str(demo_dir), "image_size": 32, "runs_dir": str(tmp_path), "augment_on_device": True}
    workflow = ConfigWorkflow(config_file=TRAIN, workflow_type="train", **overrides)
    workflow.initialize()
    loader_transforms = workflow.parser.get_parsed_content("train#preprocessing").transforms
    assert not any(isinstance(t, (RandFlipd, RandAffined)) for t in loader_transforms)
    handlers = workflow.parser.get_parsed_content("train#handlers")
    device_aug = next(h for h in handlers if isinstance(h, BatchAugmentation))
    assert device_aug.enabled and len(device_aug.specs) == 2
    workflow.finalize()
    run_bundle([TRAIN], "--runs_dir", str(tmp_path), "--run_name", "device_aug", "--dataset_dir", str(demo_dir),
               *FAST, "--augment_on_device", "true")  # fmt: skip
    history = json.loads((tmp_path / "device_aug" / "history.json").read_text())
    assert [row["epoch"] for row in history["epochs"]] == [1] and history["epochs"][0]["train_loss"] > 0


def test_a_last_training_batch_of_one_image_is_dropped_and_recorded(demo_dir, tmp_path):
    """BatchNorm cannot normalise one image: with a batch size that leaves one image over, the run still trains (the
    single-image batch dropped each epoch) and says so in run_info.json."""
    from monai.bundle import ConfigParser

    parser = ConfigParser()
    parser.read_config(TRAIN)
    parser.update({"dataset_dir": str(demo_dir), "image_size": 32})
    n_train = len(parser.get_parsed_content("train#datalist"))
    batch = n_train - 1  # n_train % batch == 1
    run_bundle([TRAIN], "--runs_dir", str(tmp_path), "--run_name", "one_left", "--dataset_dir", str(demo_dir),
               "--epochs", "1", "--image_size", "32", "--batch_size", str(batch), "--arch", "resnet18")  # fmt: skip
    info = json.loads((tmp_path / "one_left" / "run_info.json").read_text())
    assert info["settings"]["drop_last"] is True and (tmp_path / "one_left" / "model.pt").is_file()
