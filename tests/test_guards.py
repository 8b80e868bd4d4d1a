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
