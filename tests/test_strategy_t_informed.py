"""The T-informed start: the rule's LR vector from a given T, the probe, and the fragment's first iterations."""

from __future__ import annotations

import json
import math

import pytest
import torch
from torch import nn
from torch.utils.data import TensorDataset

from medtransfer.layers import layer_groups
from medtransfer.models import build_classifier
from medtransfer.strategies.t_informed import (
    PROBE_FILE,
    kept_init,
    probe_transferability,
    t_informed_lrs,
    t_informed_start,
)


def test_rule_spaces_the_lrs_geometrically_in_log_t():
    lr = 1e-3
    # T = 1, 10, 100: least, middle, most transferable -> high·lr, √(low·high)·lr, low·lr, then the head at lr
    assert t_informed_lrs([1.0, 10.0, 100.0], lr) == pytest.approx([1e-3, 1e-4, 1e-5, 1e-3])
    assert t_informed_lrs([100.0, 1.0, 10.0], lr, low=0.1, high=0.5) == pytest.approx(
        [lr * 0.1, lr * 0.5, lr * 0.5 * (0.1 / 0.5) ** 0.5, lr]
    )
    # the formula at an arbitrary point: position = (log T − log T_min) / (log T_max − log T_min)
    t = [2.0, 3.0, 5.0]
    position = (math.log(3.0) - math.log(2.0)) / (math.log(5.0) - math.log(2.0))
    assert t_informed_lrs(t, lr)[1] == pytest.approx(lr * 0.01**position)


def test_rule_without_a_spread_starts_where_metalr_does():
    assert t_informed_lrs([2.0, 2.0, 2.0], 1e-3) == pytest.approx([1e-4, 1e-4, 1e-4, 1e-3])
    assert t_informed_lrs([2.0, math.nan, 8.0], 1e-3) == pytest.approx([1e-3, 1e-4, 1e-5, 1e-3])  # undefined: middle
    with pytest.raises(ValueError, match="low <= high"):
        t_informed_lrs([1.0, 2.0], 1e-3, low=1.0, high=0.1)


def _tiny_set(n: int = 32, classes: int = 3) -> TensorDataset:
    generator = torch.Generator().manual_seed(0)
    return TensorDataset(torch.randn(n, 3, 32, 32, generator=generator), torch.arange(n) % classes)


def test_probe_moves_a_copy_and_measures_t_against_the_given_init():
    torch.manual_seed(0)
    model = build_classifier("resnet18", num_classes=3)
    groups = layer_groups(model)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    init = {k: v + 0.5 if v.is_floating_point() else v for k, v in before.items()}  # θr far from θA
    result = probe_transferability(model, groups, _tiny_set(), nn.CrossEntropyLoss(), 1e-3, init, batch_size=8)
    for key, value in model.state_dict().items():  # the network itself is untouched
        assert torch.equal(value, before[key]), key
    body = [la for la in result.layers if not la.is_head]
    assert len(body) == 9 and result.sources["probe_iterations"] == "4"
    for la in body:  # four small steps from θA: far closer to θA than to θr, which is 0.5 away everywhere
        assert la.t > 10 and la.d_init_ft == pytest.approx(0.5, abs=0.05)


def test_start_saves_the_probe_and_reads_it_back(tmp_path):
    torch.manual_seed(0)
    model = build_classifier("resnet18", num_classes=3)
    groups = layer_groups(model)
    lrs = t_informed_start(model, groups, _tiny_set(), nn.CrossEntropyLoss(), 1e-3, str(tmp_path), batch_size=8,
                           probe_iterations=2)  # fmt: skip
    saved = json.loads((tmp_path / PROBE_FILE).read_text())
    assert saved["theta_r"].startswith("proxy") and saved["probe_iterations"] == 2
    assert lrs == pytest.approx(t_informed_lrs(list(saved["t"].values()), 1e-3))  # the rule applied to the probe's T
    assert len(lrs) == len(groups) and lrs[-1] == 1e-3 and min(lrs) == pytest.approx(1e-5)
    # a rerun (resume) reads the saved start instead of probing again: an empty training set would fail to probe
    again = t_informed_start(model, groups, TensorDataset(torch.zeros(0, 3, 32, 32), torch.zeros(0)),
                             nn.CrossEntropyLoss(), 1e-3, str(tmp_path), batch_size=8, probe_iterations=2)  # fmt: skip
    assert again == lrs


def test_kept_init_is_the_pretraining_runs_init(tmp_path):
    assert kept_init(None) is None and kept_init(str(tmp_path / "model.pt")) is None
    (tmp_path / "init.pt").write_bytes(b"")
    assert kept_init(str(tmp_path / "model.pt")) == str(tmp_path / "init.pt")
