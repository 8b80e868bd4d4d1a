"""`transfer join`: T and MetaLR's learned LRs per layer group, and their rank correlation, on known cases."""

from __future__ import annotations

import csv
import itertools
import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import REPO
from scipy import stats

from medtransfer.cli import main
from medtransfer.data import make_synthetic_busi, make_synthetic_shapes
from medtransfer.layers import layer_groups
from medtransfer.models import build_classifier
from medtransfer.transferability.join import (
    join_runs,
    lr_summary,
    read_lr_history,
    save_join,
    spearman_permutation,
    verdict,
)
from medtransfer.transferability.study import join_columns

BUNDLE = REPO / "bundles" / "natural_transferability"


def _exact_p(x, y) -> float:
    """Two-sided exact permutation p of Spearman's ρ by brute force, independent of the library's vectorised one."""
    rho = stats.spearmanr(x, y).statistic
    hits = [abs(stats.spearmanr(x, [y[i] for i in perm]).statistic) >= abs(rho) - 1e-12
            for perm in itertools.permutations(range(len(y)))]  # fmt: skip
    return sum(hits) / len(hits)


@pytest.mark.parametrize(
    "x, y",
    [([1.0, 2.0, 3.0, 4.0, 5.0, 6.0], [2.0, 1.0, 4.0, 3.0, 6.0, 5.0]),
     ([3.1, 0.2, 5.5, 1.0, 2.2, 4.4, 0.7], [1.0, 1.0, 2.0, 0.5, 0.5, 3.0, 2.0])],  # ties in y
)  # fmt: skip
def test_spearman_and_exact_permutation_p_match_scipy(x, y):
    result = spearman_permutation(x, y)
    assert result.exact and result.permutations == math.factorial(len(x))
    assert result.rho == pytest.approx(stats.spearmanr(x, y).statistic, abs=1e-12)
    assert result.p == pytest.approx(_exact_p(x, y), abs=1e-12)


def test_monte_carlo_permutation_p_is_close_to_the_exact_one():
    rng = np.random.default_rng(3)
    x = rng.normal(size=8)
    y = x + rng.normal(scale=1.5, size=8)
    exact = spearman_permutation(x, y)
    sampled = spearman_permutation(x, y, exact_up_to=5, resamples=20_000)
    assert not sampled.exact and sampled.rho == pytest.approx(exact.rho)
    assert sampled.p == pytest.approx(exact.p, abs=0.015) and 0 < sampled.p <= 1


def test_constant_side_gives_no_correlation():
    result = spearman_permutation([1, 2, 3, 4], [0.1, 0.1, 0.1, 0.1])
    assert math.isnan(result.rho) and math.isnan(result.p)


def test_lr_summary_is_the_geometric_mean_and_the_last_value():
    mean, final = lr_summary(np.array([1e-4, 1e-3, 1e-2]))
    assert mean == pytest.approx(1e-3) and final == pytest.approx(1e-2)
    assert lr_summary(np.array([0.0, 0.0])) == (0.0, 0.0)  # a frozen group


def _save(state: dict, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save(state, path)


@pytest.fixture()
def known_runs(tmp_path):
    """ResNet-18 runs whose body groups moved by known amounts, with a known LR history.

    θA is a trained-looking state; θr = θA + c and θFB = θA + δ_j element-wise for conv weights (0 < δ_j < c), so
    D(θr, θFB) = c − δ_j, D(θA, θFB) = δ_j and T_j = (c − δ_j) / δ_j exactly. The LR of group j rises with δ_j.
    """
    torch.manual_seed(0)
    model = build_classifier("resnet18", num_classes=3)
    groups = layer_groups(model)
    body = groups[:-1]
    c = 1.0
    deltas = [0.05 * (k + 1) for k in range(len(body))]  # group k moved by δ_k: T falls from the stem to layer4.1
    theta_a = {k: v.clone() for k, v in model.state_dict().items()}
    theta_a["fc.weight"], theta_a["fc.bias"] = torch.zeros(10, 512), torch.zeros(10)  # θA's own 10-class head
    theta_r = {k: v.clone() for k, v in theta_a.items()}
    theta_fb = {k: v.clone() for k, v in model.state_dict().items()}
    theta_b0 = {k: v.clone() for k, v in model.state_dict().items()}
    for group, delta in zip(body, deltas, strict=True):
        for name in group.param_names:
            if name.endswith("weight") and theta_a[name].dim() > 1:  # conv weights: what paper mode counts
                theta_r[name] = theta_a[name] + c
                theta_fb[name] = theta_a[name] + delta
    theta_fb["fc.weight"] = theta_b0["fc.weight"] + 0.3
    pre, ft = tmp_path / "pre", tmp_path / "ft"
    _save(theta_r, pre / "init.pt")
    _save(theta_a, pre / "model.pt")
    _save(theta_b0, ft / "init.pt")
    _save(theta_fb, ft / "model.pt")
    (ft / "run_info.json").write_text(json.dumps({"settings": {"arch": "resnet18"}}))
    lrs = {g.name: [1e-4 * (k + 1), 2e-4 * (k + 1), 4e-4 * (k + 1)] for k, g in enumerate(body)}
    lrs["fc"] = [1e-3, 1e-3, 2e-3]
    with open(ft / "lr_history.csv", "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["iteration", *lrs])
        for i in range(3):
            writer.writerow([i + 1, *(v[i] for v in lrs.values())])
    return pre, ft, c, deltas, lrs


def test_join_of_runs_moved_by_known_amounts(known_runs, tmp_path):
    pre, ft, c, deltas, lrs = known_runs
    result = join_runs(pre, {"metalr": ft})["metalr"]
    assert [la.t for la in result.layers] == pytest.approx([(c - d) / d for d in deltas], rel=1e-5)
    for layer in result.layers:
        history = lrs[layer.name]
        assert layer.lr_mean == pytest.approx(math.prod(history) ** (1 / 3))
        assert layer.lr_final == pytest.approx(history[-1])
    assert result.head_lr_final == pytest.approx(2e-3)
    # T falls and the LR rises from input to output: a perfect negative rank correlation, which 2 of 9! pairings reach
    assert result.mean_lr.rho == pytest.approx(-1.0) and result.final_lr.rho == pytest.approx(-1.0)
    assert result.mean_lr.p == pytest.approx(2 / math.factorial(9))
    assert verdict(result).startswith("follow T")
    assert read_lr_history(ft)["fc"].tolist() == pytest.approx(lrs["fc"])
    # against another run's T: a plain run whose T order is reversed gives the opposite correlation
    from dataclasses import replace

    from medtransfer.transferability.study import measure_runs

    measured = measure_runs(pre, ft)
    reversed_t = replace(measured, layers=[replace(la, t=1 / la.t) for la in measured.layers])
    against_plain = join_runs(pre, {"metalr": ft}, reference=reversed_t)["metalr"]
    assert against_plain.mean_lr.rho == pytest.approx(-1.0) and against_plain.plain_mean_lr.rho == pytest.approx(1.0)
    # with plain fine-tuning's T at hand, the verdict is judged on it, not on the coupled own T
    assert verdict(against_plain).startswith("run against T") and "plain fine-tuning's T" in verdict(against_plain)
    assert "own T" in verdict(result)
    # the study's join columns read what the join saved
    text = save_join({"metalr": result}, tmp_path / "join", title="known")
    assert "follow T" in text and (tmp_path / "join" / "join.png").is_file()
    columns = join_columns(tmp_path / "join")["metalr"]
    assert columns["rho_mean_lr"] == pytest.approx(-1.0) and columns["p_mean_lr"] == pytest.approx(result.mean_lr.p)


def test_join_refuses_other_layer_groups(known_runs):
    pre, ft, *_ = known_runs
    with open(ft / "lr_history.csv", "w", newline="") as f:
        csv.writer(f).writerows([["iteration", "layer1", "fc"], [1, 1e-3, 1e-3]])
    with pytest.raises(ValueError, match="no column for layer group"):
        join_runs(pre, {"metalr": ft})


def test_join_command_trains_metalr_and_writes_table_and_plot(tmp_path, capsys):
    """End to end on tiny synthetic sets: θr → θA on shapes, MetaLR fine-tuning on BUSI-layout images, the join."""
    shapes = make_synthetic_shapes(tmp_path / "shapes", n_per_class=12)
    busi = make_synthetic_busi(tmp_path / "busi", n_per_class=8, image_size=48)
    runs = tmp_path / "runs"
    tiny = ["--epochs", "2", "--batch_size", "16", "--image_size", "32"]
    assert main(["transfer", "pretrain", "--dataset", "imagefolder", "--root", str(shapes), "--name", "pre",
                 "--runs-dir", str(runs), "--bundle", str(BUNDLE), *tiny]) == 0  # fmt: skip
    tiny = ["--epochs", "2", "--batch_size", "6", "--image_size", "32"]  # 17 training images: a meta batch of 6 held out
    argv = ["transfer", "join", "--dataset", "busi", "--root", str(busi), "--name", "busi", "--runs-dir", str(runs),
            "--bundle", str(BUNDLE), "--pretrained-run", str(runs / "pre"), "--strategy", "metalr",
            "--metalr_pin_epochs", "0", *tiny]  # fmt: skip
    assert main(argv) == 0
    out = runs / "busi_join"
    saved = json.loads((out / "join.json").read_text())["results"]["metalr"]
    history = read_lr_history(runs / "busi_metalr")
    assert len(saved["layers"]) == 9 and saved["layers"][0]["name"] == "conv1+bn1"
    assert saved["layers"][0]["lr_final"] == pytest.approx(history["conv1+bn1"][-1])
    assert len(set(history["layer4.1"].round(12))) > 1  # MetaLR moved the LRs during the run
    assert (out / "join.png").stat().st_size > 5000
    text = (out / "join.md").read_text()
    assert "ρ(T, mean LR)" in text and "layer4.1" in text and text in capsys.readouterr().out
    # a finished run joins without training again (e.g. the metalr run of a `medtransfer compare`)
    again = [*argv[: argv.index("--strategy")], "--run", f"metalr={runs / 'busi_metalr'}", "--out", str(tmp_path / "j2")]
    assert main(again + tiny) == 0
    rejoined = json.loads((tmp_path / "j2" / "join.json").read_text())
    assert rejoined["results"]["metalr"] == saved and rejoined["settings"]["strategies"] == []
