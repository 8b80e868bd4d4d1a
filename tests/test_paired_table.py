"""The comparison's paired table matches runs by seed and test images by name, and assembles the tests as documented."""

from __future__ import annotations

import csv

import numpy as np
import pytest

from medtransfer.paired_images import combine_over_seeds, delong_test, holm, mcnemar_test
from medtransfer.workflows.paired_table import paired_against_reference


def _run(folder, names, labels, p_positive):
    folder.mkdir(parents=True)
    with (folder / "test_predictions.csv").open("w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["source", "p_benign", "p_malignant", "predicted", "label"])
        for name, label, p in zip(names, labels, p_positive, strict=True):
            writer.writerow([name, f"{1 - p:.6f}", f"{p:.6f}", "malignant" if p >= 0.5 else "benign", label])


def test_the_table_is_delong_and_mcnemar_per_seed_stouffer_over_seeds_holm_over_strategies(tmp_path):
    rng = np.random.default_rng(0)
    names = [f"img{i}" for i in range(60)]
    y = rng.integers(0, 2, 60)
    labels = ["malignant" if v else "benign" for v in y]
    rows, scores = [], {}
    for seed in range(3):
        for strategy, signal in (("full", 1.0), ("better", 2.0), ("same", None)):
            p = (
                scores[("full", seed)]
                if signal is None
                else 1 / (1 + np.exp(-(signal * (2 * y - 1) + rng.normal(0, 1.5, 60))))
            )
            scores[(strategy, seed)] = p
            order = rng.permutation(60)  # each run lists the images in another order: matched by name
            _run(tmp_path / f"{strategy}_{seed}", [names[i] for i in order], [labels[i] for i in order], p[order])
            auc = delong_test(y, p, p).score_a
            rows.append({"label": strategy, "seed": seed, "run": f"{strategy}_{seed}", "auc": auc,
                         "accuracy": float(np.mean((p >= 0.5) == y))})  # fmt: skip
    table = paired_against_reference(tmp_path, rows, "full")
    per_seed = {s: [delong_test(y, scores[(s, k)], scores[("full", k)]) for k in range(3)] for s in ("better", "same")}
    mcnemar = {s: [mcnemar_test(y, scores[(s, k)] >= 0.5, scores[("full", k)] >= 0.5) for k in range(3)]
               for s in ("better", "same")}  # fmt: skip
    expected_auc = holm([combine_over_seeds(per_seed[s])[1] for s in ("better", "same")])
    expected_acc = holm([combine_over_seeds(mcnemar[s])[1] for s in ("better", "same")])
    line = next(row for row in table.splitlines() if row.startswith("| better |"))
    cells = [c.strip() for c in line.split("|")[1:-1]]
    assert float(cells[2]) == pytest.approx(expected_auc[0], abs=5e-4 if expected_auc[0] >= 0.001 else 5e-5)
    assert float(cells[4]) == pytest.approx(expected_acc[0], abs=5e-4)
    assert expected_auc[0] < 0.05  # a clearly better strategy is found on 60 images x 3 seeds
    same = [c.strip() for c in next(r for r in table.splitlines() if r.startswith("| same |")).split("|")[1:-1]]
    assert same[1].startswith("+0.000") and float(same[2]) == pytest.approx(1.0)
