"""Every switch reaches the code as a boolean, whichever spelling the user gives, on the command line (parsed as
`medtransfer run` and `python -m monai.bundle run` both parse it: python-fire) and in a fragment. Each test checks the
effect on the built objects (a scaler, the weights' memory layout, the handlers), not the value."""

from __future__ import annotations

import json

import pytest
import torch
from conftest import BUSI_CONFIGS

from medtransfer.errors import SettingsError
from medtransfer.handlers import BatchAugmentation, SaveInitialWeights
from medtransfer.launch import parse_overrides

OFF = ["false", "False", "0", "no", "OFF"]
ON = ["true", "TRUE", "1", "yes", "on"]


def _built(demo_dir, tmp_path, overrides: dict, fragment: dict | None = None) -> dict:
    """The trainer, network and training handlers the busi bundle builds with `overrides` (and a fragment)."""
    from monai.bundle import ConfigParser

    files = [str(BUSI_CONFIGS / "train.json")]
    if fragment is not None:
        path = tmp_path / "switches.json"
        path.write_text(json.dumps(fragment))
        files.append(str(path))
    parser = ConfigParser()
    parser.read_config(files)
    parser.update({"dataset_dir": str(demo_dir), "image_size": 32, "runs_dir": str(tmp_path / "runs"), **overrides})
    return {
        "trainer": parser.get_parsed_content("train#trainer"),
        "network": parser.get_parsed_content("network"),
        "handlers": parser.get_parsed_content("train#handlers"),
    }


def _channels_last(network: torch.nn.Module) -> bool:
    conv = next(p for p in network.parameters() if p.dim() == 4)
    return conv.is_contiguous(memory_format=torch.channels_last) and not conv.is_contiguous()


def _effects(built: dict) -> dict:
    trainer, handlers = built["trainer"], built["handlers"]
    return {
        # SupervisedTrainer.run makes a grad scaler and its iterations autocast `if self.amp`: truthiness is the effect
        "amp": bool(trainer.amp),
        "channels_last": _channels_last(built["network"]),
        "save_init": next(h for h in handlers if isinstance(h, SaveInitialWeights)).enabled is True,
        "augment_on_device": next(h for h in handlers if isinstance(h, BatchAugmentation)).enabled is True,
    }


@pytest.mark.parametrize("spelling", OFF + ON)
def test_a_switch_on_the_command_line_means_what_it_says(spelling, demo_dir, tmp_path):
    switches = ("amp", "channels_last", "save_init", "augment_on_device")
    overrides = parse_overrides([token for key in switches for token in (f"--{key}", spelling)])
    effects = _effects(_built(demo_dir, tmp_path, overrides))
    assert effects == dict.fromkeys(switches, spelling in ON)


@pytest.mark.parametrize("value", ["no", "0", 0, False])
def test_a_switch_in_a_fragment_means_what_it_says(value, demo_dir, tmp_path):
    """`--amp false` in a fragment, against the bundle's own default on (channels-last is on by default)."""
    built = _built(demo_dir, tmp_path, {}, fragment={"channels_last": value, "amp": value})
    assert _effects(built)["channels_last"] is False and _effects(built)["amp"] is False
    assert _effects(_built(demo_dir, tmp_path, {}, fragment={"channels_last": "yes"}))["channels_last"] is True


def test_a_switch_that_is_not_a_switch_is_refused_naming_it(demo_dir, tmp_path):
    with pytest.raises(Exception) as caught:
        _built(demo_dir, tmp_path, {"amp": "maybe"})
    from medtransfer.errors import find_in_chain

    assert "--amp 'maybe' is not a switch: pass --amp true or --amp false" in str(
        find_in_chain(caught.value, SettingsError)
    )


def test_metalr_bounds_relative_as_a_word():
    """Relative bounds scale with each group's initial LR: with "yes", (0.1, 10) x 0.05; with "false", taken as is."""
    from test_metalr import make_metalr

    relative = make_metalr(bounds=(0.1, 10.0), bounds_relative="yes", init_lrs=[0.05, 0.05, 0.05])
    absolute = make_metalr(bounds=(0.1, 10.0), bounds_relative="false", init_lrs=[0.05, 0.05, 0.05])
    assert relative.bounds_relative is True and absolute.bounds_relative is False
    with pytest.raises(SettingsError, match="metalr_bounds_relative"):
        make_metalr(bounds_relative="sometimes")
