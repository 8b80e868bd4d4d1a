"""The split guard: resuming and evaluating see the split the run was trained on, or are refused naming the change."""

import json

import numpy as np
import pytest

from medtransfer.errors import SettingsError
from medtransfer.guards import SPLIT_FILE, fingerprint, guard_split


def _records(root, names, label=0):
    out = []
    for name in names:
        path = root / name
        path.write_bytes(name.encode())
        out.append({"image": str(path), "label": label, "id": name})
    return out


@pytest.fixture
def trained(tmp_path):
    data = tmp_path / "data"
    data.mkdir()
    run = tmp_path / "run"
    run.mkdir()
    lists = {"train": _records(data, ["a.png", "b.png"]), "val": _records(data, ["c.png"], label=1)}
    settings = {"dataset_dir": str(data), "dataset_format": "busi", "split_seed": 0}
    assert guard_split(run, settings, ["benign", "malignant"], lists) == []
    return run, data, settings, lists


def test_a_new_run_records_its_split_once(trained):
    run, data, _, lists = trained
    recorded = json.loads((run / SPLIT_FILE).read_text())
    assert recorded["settings"]["dataset_dir"] == str(data.resolve())
    assert recorded["sizes"] == {"train": 2, "val": 1}
    assert recorded["fingerprints"]["train"] == fingerprint(lists["train"])


def test_the_same_folder_written_differently_passes(trained, monkeypatch):
    run, data, settings, lists = trained
    monkeypatch.chdir(data.parent)
    for same in (str(data) + "/", "data", "./data/"):
        assert guard_split(run, {**settings, "dataset_dir": same}, ["benign", "malignant"], lists, resume=True) == []


def test_resume_refuses_a_changed_split_setting_naming_both_values(trained):
    run, _, settings, lists = trained
    with pytest.raises(SettingsError, match=r"split_seed: trained with 0, now 1.*--allow_changed_split true"):
        guard_split(run, {**settings, "split_seed": 1}, ["benign", "malignant"], lists, resume=True)
    with pytest.raises(SettingsError, match=r"classes: trained with \['benign', 'malignant'\]"):
        guard_split(run, settings, ["benign", "malignant", "normal"], lists, resume=True)


def test_resume_refuses_changed_files_behind_the_same_settings(trained):
    run, data, settings, lists = trained
    (data / "a.png").write_bytes(b"another image of another size")
    with pytest.raises(SettingsError, match=r"train images: trained with '2 files"):
        guard_split(run, settings, ["benign", "malignant"], lists, resume=True)


def test_evaluation_refuses_test_images_the_run_trained_or_selected_on(trained):
    run, data, settings, lists = trained
    test = _records(data, ["d.png"]) + [lists["val"][0]]
    with pytest.raises(SettingsError, match=r"test images the run trained or selected on: 1 of 2, e.g. c.png"):
        guard_split(run, settings, ["benign", "malignant"], test=test)
    assert guard_split(run, settings, ["benign", "malignant"], test=_records(data, ["d.png"])) == []


def test_allow_changed_split_lets_a_deliberate_change_through_and_records_it(trained, tmp_path):
    run, _, settings, _ = trained
    external = {**settings, "dataset_dir": str(tmp_path / "external")}
    with pytest.raises(SettingsError, match="dataset_dir: trained with"):
        guard_split(run, external, ["benign", "malignant"], test=[])
    changes = guard_split(run, external, ["benign", "malignant"], test=[], allow_changed=True)
    assert [c["setting"] for c in changes] == ["dataset_dir"]
    recorded = json.loads((run / SPLIT_FILE).read_text())
    assert recorded["allowed_changes"][0]["changes"][0]["now"] == str((tmp_path / "external").resolve())


def test_in_memory_images_are_fingerprinted_by_their_pixels():
    a = [{"image": np.zeros((2, 2), np.uint8), "label": 0, "id": "train_0"}]
    b = [{"image": np.ones((2, 2), np.uint8), "label": 0, "id": "train_0"}]
    assert fingerprint(a) != fingerprint(b)
    assert fingerprint(a) == fingerprint([dict(a[0])])


def test_evaluation_refuses_a_test_image_the_run_trained_on_under_another_name(trained):
    run, data, settings, _ = trained
    copy = data / "renamed.png"
    copy.write_bytes((data / "b.png").read_bytes())  # the training image b.png under another name
    test = [{"image": str(copy), "label": 0, "id": "renamed.png"}, *_records(data, ["d.png"])]
    with pytest.raises(SettingsError, match=r"1 of 2 by content, under other names \(renamed.png = b.png\)"):
        guard_split(run, settings, ["benign", "malignant"], test=test)


def test_splits_the_toolkit_makes_keep_copies_of_one_image_together(demo_dir, tmp_path):
    """A BUSI image copied under another name lands in the split of its original, for every split seed; without copies
    the split is exactly what it was."""
    import hashlib
    import shutil

    from medtransfer.data import dataset_records

    busi = tmp_path / "busi"
    shutil.copytree(demo_dir, busi)
    original = sorted(p for p in (busi / "benign").iterdir() if "_mask" not in p.name)[0]
    for seed in range(4):
        before = {s: [r["id"] for r in dataset_records("busi", busi, s, seed=seed)] for s in ("train", "val", "test")}
        shutil.copy(original, busi / "benign" / "benign (999).png")
        shutil.copy(original.with_name(original.stem + "_mask.png"), busi / "benign" / "benign (999)_mask.png")
        after = {s: dataset_records("busi", busi, s, seed=seed) for s in ("train", "val", "test")}
        key = hashlib.sha256(original.read_bytes()).hexdigest()
        holding = {s for s, records in after.items() for r in records
                   if hashlib.sha256(open(r["image"], "rb").read()).hexdigest() == key}  # fmt: skip
        assert len(holding) == 1, (seed, holding)
        assert sum(len(r) for r in after.values()) == sum(len(r) for r in before.values()) + 1
        for p in busi.glob("benign/benign (999)*"):
            p.unlink()
        assert {s: [r["id"] for r in dataset_records("busi", busi, s, seed=seed)] for s in before} == before


def test_copies_in_an_official_split_are_left_out_of_training_and_recorded(tmp_path, caplog):
    """BreastMNIST-like arrays whose test split holds a training image: training loses the copy, the test split keeps
    all its images, the run's split.json records what was left out, and `doctor` says the same."""
    from medtransfer.data import dataset_records
    from medtransfer.doctor import diagnose

    rng = np.random.default_rng(0)
    images = {split: rng.integers(0, 256, (n, 8, 8), dtype=np.uint8) for split, n in (("train", 6), ("val", 3), ("test", 4))}  # fmt: skip
    images["test"][3] = images["train"][2]
    images["val"][0] = images["train"][4]
    labels = {"train": [0, 0, 1, 1, 0, 1], "val": [0, 1, 1], "test": [0, 0, 1, 1]}
    npz = tmp_path / "breastmnist.npz"
    np.savez(npz, **{f"{s}_images": images[s] for s in images}, **{f"{s}_labels": np.array(labels[s])[:, None] for s in labels})  # fmt: skip

    train = dataset_records("medmnist", npz, "train")
    assert [r["id"] for r in train] == ["train-0", "train-1", "train-3", "train-5"]
    assert len(dataset_records("medmnist", npz, "test")) == 4 and len(dataset_records("medmnist", npz, "val")) == 3
    assert "2 train images are copies of test and val images" in caplog.text
    run = tmp_path / "run"
    run.mkdir()
    settings = {"dataset_dir": str(npz), "dataset_format": "medmnist", "split_seed": 0}
    val = dataset_records("medmnist", npz, "val")
    guard_split(run, settings, ["malignant", "normal_benign"], {"train": train, "val": val})
    assert json.loads((run / SPLIT_FILE).read_text())["copies_left_out"] == {"train": ["train-2", "train-4"]}
    test = dataset_records("medmnist", npz, "test")
    assert guard_split(run, settings, ["malignant", "normal_benign"], test=test) == []
    rows = [(p.check, p.split, p.where) for p in diagnose(npz, "medmnist", progress=False).problems]
    assert {("copy of a held-out image", "train", f"train-{i}") for i in (2, 4)} <= set(rows)
