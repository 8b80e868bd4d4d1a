"""Settings checked before training: unknown override keys, ranges, empty splits and labels outside the classes."""

import pytest

from medtransfer.errors import DatasetError, SettingsError
from medtransfer.settings import check_datalists, check_override_keys, check_settings, known_keys


def test_known_keys_are_top_level_and_nested_ids():
    assert known_keys({"a": 1, "train": {"dataset": {"cache_rate": 1}, "handlers": [{"x": 1}]}}) == {
        "a", "train", "train#dataset", "train#dataset#cache_rate", "train#handlers", "train#handlers#0",
        "train#handlers#0#x",
    }  # fmt: skip


def test_a_misspelled_override_names_the_closest_settings(tmp_path):
    config = tmp_path / "train.json"
    config.write_text('{"epochs": 10, "lr": 0.001, "train": {"dataset": {"cache_rate": 1.0}}}')
    check_override_keys([config], ["epochs", "train#dataset#cache_rate", "run_id"], ignore=["run_id"])
    check_override_keys([config], ["train#dataset#num_workers"])  # a new argument of an existing component
    with pytest.raises(SettingsError, match="unknown setting --train#datset#cache_rate"):
        check_override_keys([config], ["train#datset#cache_rate"])
    with pytest.raises(SettingsError, match=r"unknown setting --epcohs: did you mean --epochs\?"):
        check_override_keys([config], ["epcohs"])
    with pytest.raises(SettingsError, match=r"unknown setting --zzz: it is not a setting"):
        check_override_keys([config], ["zzz"])


@pytest.mark.parametrize(
    ("settings", "message"),
    [
        ({"epochs": 0}, r"--epochs 0 is out of range: training epochs must be a whole number >= 1"),
        ({"batch_size": 2.5}, r"--batch_size 2.5 is out of range"),
        ({"lr": 0}, r"--lr 0 is out of range: the learning rate must be a number > 0"),
        ({"lr": float("nan")}, r"--lr nan is out of range"),
        ({"lr": "fast"}, r"--lr 'fast' is out of range"),
        ({"val_fraction": 1.0}, r"--val_fraction 1.0 is out of range: it must be a number between 0 and 1"),
        ({"fold": 5, "num_folds": 5}, r"--fold 5 is out of range: with --num_folds 5 the folds are 0..4"),
        ({"image_size": 4}, r"--image_size 4 is out of range"),
        ({"val_interval": 5}, r"--val_interval 5 is out of range: with --epochs 3 no validation would run"),
    ],
)
def test_out_of_range_settings_are_named(settings, message):
    with pytest.raises(SettingsError, match=message):
        check_settings({"epochs": 3, "lr": 1e-3, "batch_size": 8, **settings})


def test_good_settings_pass():
    check_settings(
        {"epochs": 1, "lr": 1e-4, "batch_size": 1, "fold": 4, "num_folds": 5, "max_train": None, "arch": "x"}
    )


def test_an_empty_split_and_an_unknown_label_are_named():
    good = {"train": [{"image": "a.png", "label": 0}], "val": [{"image": "b.png", "label": 1}]}
    check_datalists(good, ["benign", "malignant"])
    with pytest.raises(DatasetError, match=r"the val split of /data is empty.*medtransfer doctor"):
        check_datalists({**good, "val": []}, ["benign", "malignant"], "/data")
    with pytest.raises(DatasetError, match=r"b.png in the val split has label 2, but there are 2 classes \(benign, "):
        check_datalists({**good, "val": [{"image": "b.png", "label": 2}]}, ["benign", "malignant"])
    check_datalists({"train": [{"image": "a.nii.gz", "label": "a_seg.nii.gz"}]}, ["liver"])  # masks: the reader's


def test_switches_read_true_and_false_in_any_case_and_refuse_anything_else():
    from medtransfer.settings import as_flag

    assert [as_flag(v) for v in (True, "true", "TRUE", "yes", 1, "on")] == [True] * 6
    assert [as_flag(v) for v in (False, "false", "False", "no", 0, "off")] == [False] * 6
    with pytest.raises(SettingsError, match=r"--amp 'flase' is not a switch: pass --amp true or --amp false"):
        check_settings({"amp": "flase"})


def test_amp_dtype_names_map_to_autocast_arguments_and_a_typo_is_a_clear_error():
    import torch

    from medtransfer.settings import amp_kwargs

    assert amp_kwargs("bf16") == amp_kwargs("BFloat16") == {"dtype": torch.bfloat16}
    assert amp_kwargs() == amp_kwargs("fp16") == {"dtype": torch.float16}
    with pytest.raises(SettingsError, match="--amp_dtype 'fp8'.*bfloat16"):
        amp_kwargs("fp8")


def test_every_trainer_and_evaluator_takes_its_autocast_type_from_amp_dtype():
    import json

    from medtransfer.bundling import bundles_dir

    for configs in sorted(bundles_dir().glob("*/configs")):
        train = json.loads((configs / "train.json").read_text())
        assert train["amp_dtype"] == "float16"  # MONAI's default, as before the setting existed
        engines = [train["train"]["trainer"], train["validate"]["evaluator"]]
        for workflow in ("evaluate", "inference"):
            config = json.loads((configs / f"{workflow}.json").read_text())
            engines += [v for k, v in config.items() if isinstance(v, dict) and "amp" in v]
            engines += [v["evaluator"] for v in config.values() if isinstance(v, dict) and "evaluator" in v]
        assert len(engines) >= 3, configs
        for engine in engines:
            # the switch as a bool whatever its spelling ("false" would be a true string to MONAI's `if self.amp`)
            assert engine["amp"] == "$medtransfer.settings.as_flag(@amp, 'amp')"
            assert engine["amp_kwargs"] == "$medtransfer.settings.amp_kwargs(@amp_dtype)"
